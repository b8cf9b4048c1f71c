"""Training: resume equals uninterrupted, accumulation, divergence handling, logs, Ctrl-C."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import pyllm
from pyllm.train import TrainConfig, TrainingDiverged, train

SMALL = dict(n_layer=2, n_head=2, n_embd=16, block_size=16, batch_size=4, eval_interval=4,
             eval_iters=2, warmup=2, lr=3e-3, min_lr=3e-4)


def corpus(tmp_path):
    """A small made-up text (no outside text in the repository)."""
    words = ["alpha", "beta", "gamma", "delta", "lambda", "sigma", "omega", "kappa"]
    r = np.random.default_rng(0)
    lines = [" ".join(r.choice(words, 8)) + "." for _ in range(400)]
    path = tmp_path / "text.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    return str(path)


def losses(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return {e["step"]: e["loss"] for e in map(json.loads, f) if "loss" in e}


def run(tmp_path, name, resume=False, **kw):
    cfg = TrainConfig(data=corpus(tmp_path), out=str(tmp_path / name), **dict(SMALL, **kw))
    return train(cfg, resume=resume, log=lambda s: None, progress=False)


def test_resume_equals_uninterrupted(tmp_path, backend):
    full = run(tmp_path, "a", steps=12)
    assert full["step"] == 12 and not full["interrupted"]
    part = run(tmp_path, "b", steps=12, stop_at=6)
    assert part["interrupted"] and part["step"] == 6
    assert sorted(losses(tmp_path / "b")) == list(range(6))
    run(tmp_path, "b", resume=True)
    la, lb = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(lb) == list(range(12))
    assert [la[s] for s in range(12)] == [lb[s] for s in range(12)]  # bit for bit
    a = pyllm.load(tmp_path / "a")
    b = pyllm.load(tmp_path / "b")
    assert np.array_equal(a.params, b.params)


def test_outputs_written(tmp_path):
    res = run(tmp_path, "o", steps=8)
    out = tmp_path / "o"
    for f in ("checkpoint.safetensors", "tokenizer.txt", "config.json", "log.jsonl", "loss.svg",
              "tokens.bin"):
        assert (out / f).exists(), f
    entries = [json.loads(line) for line in open(out / "log.jsonl")]
    assert [e["step"] for e in entries] == list(range(8))
    assert all({"loss", "lr", "grad_norm", "tokens_per_s"} <= set(e) for e in entries)
    assert "val_loss" in entries[3] and "val_loss" in entries[7]
    assert res["val_loss"] == entries[7]["val_loss"]
    cfg = json.load(open(out / "config.json"))
    assert cfg["model"]["n_embd"] == 16 and cfg["train"]["steps"] == 8
    import xml.etree.ElementTree as ET
    assert ET.parse(out / "loss.svg").getroot().tag.endswith("svg")
    # the loss went down and the tokenizer round-trips the corpus
    assert entries[-1]["loss"] < entries[0]["loss"]
    tok = pyllm.load_tokenizer(out / "tokenizer.txt")
    text = open(corpus(tmp_path)).read()
    assert tok.decode(tok.encode(text)) == text


def test_gradient_accumulation_matches_big_batch(tmp_path):
    big = run(tmp_path, "big", steps=4, batch_size=4)
    acc = run(tmp_path, "acc", steps=4, batch_size=2, grad_accum=2)
    lb, la = losses(tmp_path / "big"), losses(tmp_path / "acc")
    for s in range(4):  # the same rows in the same order, split in two micro-batches
        assert abs(lb[s] - la[s]) < 1e-5
    assert np.allclose(big["model"].params, acc["model"].params, atol=1e-5)


def test_bpe_tokenizer_run(tmp_path):
    res = run(tmp_path, "bpe", steps=2, tokenizer="bpe", vocab_size=300)
    assert res["tokenizer"].vocab_size <= 300 and res["model"].config.vocab_size <= 300


def test_nan_loss_stops_and_keeps_checkpoint(tmp_path, monkeypatch):
    run(tmp_path, "n", steps=4)
    ck = tmp_path / "n" / "checkpoint.safetensors"
    before = ck.read_bytes()
    real = pyllm.GPT.loss_and_grads

    def poisoned(self, *a, **k):
        loss, g = real(self, *a, **k)
        return float("nan"), g

    monkeypatch.setattr(pyllm.GPT, "loss_and_grads", poisoned)
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        run(tmp_path, "n", resume=True, steps=8)
    assert ck.read_bytes() == before


def test_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="preset"):
        TrainConfig(preset="huge").resolved()
    with pytest.raises(ValueError, match="divisible"):
        TrainConfig(n_embd=10, n_head=3).resolved()
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0).resolved()
    with pytest.raises(FileNotFoundError):
        train(TrainConfig(data=str(tmp_path / "nope.txt"), out=str(tmp_path / "x")),
              log=lambda s: None, progress=False)
    with pytest.raises(ValueError, match="too few"):
        (tmp_path / "tiny.txt").write_text("abc")
        train(TrainConfig(data=str(tmp_path / "tiny.txt"), out=str(tmp_path / "y"), steps=1,
                          **{k: v for k, v in SMALL.items() if k != "eval_interval"}),
              log=lambda s: None, progress=False)


@pytest.mark.slow
def test_ctrl_c_saves_and_exits_cleanly(tmp_path):
    data = corpus(tmp_path)
    out = tmp_path / "c"
    cmd = [sys.executable, "-m", "pyllm", "train", "--data", data, "--out", str(out),
           "--steps", "100000", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
           "--block-size", "16", "--batch-size", "2", "--eval-interval", "100000", "--quiet"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=str(tmp_path))
    log = out / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and log.stat().st_size > 2000):
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 130, stderr
    assert "checkpoint saved" in stderr and "Traceback" not in stderr
    steps = max(losses(out)) + 1
    m, _, state = pyllm.checkpoint.load_checkpoint(out)
    assert state["step"] == steps
