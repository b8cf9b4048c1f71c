"""The command line: info, train then sample, sampling a GPT-2 directory, and clear errors."""
import json
import os
import subprocess
import sys

import numpy as np

import pyllm
from pyllm.tokenizer import bytes_to_unicode


def cli(*args, cwd=None, timeout=300):
    env = dict(os.environ)
    env.pop("PYLLM_BACKEND", None)
    return subprocess.run([sys.executable, "-m", "pyllm", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=env)


def test_info():
    r = cli("info")
    assert r.returncode == 0, r.stderr
    assert "pyllm %s" % pyllm.__version__ in r.stdout
    assert "backend: %s" % pyllm.get_backend() in r.stdout
    if pyllm.get_backend() == "c":
        assert "self-test: ok" in r.stdout and "openmp" in r.stdout.lower()


def test_train_then_sample(tmp_path):
    text = "\n".join("line %d: the cat sat on the mat and the dog sat on the log." % i
                     for i in range(300))
    (tmp_path / "t.txt").write_text(text)
    out = str(tmp_path / "run")
    r = cli("train", "--data", str(tmp_path / "t.txt"), "--out", out, "--steps", "6",
            "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--block-size", "16",
            "--batch-size", "4", "--eval-interval", "3", "--eval-iters", "2",
            "--sample-tokens", "20")
    assert r.returncode == 0, r.stderr
    assert "val loss" in r.stderr and "step 6/6" in r.stderr
    assert "sample" in r.stderr and len(r.stdout) >= 10
    r = cli("sample", "--ckpt", out, "--prompt", "the cat", "--max-new-tokens", "15",
            "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("the cat") and "tokens/s" in r.stderr
    # greedy with and without the cache print the same text
    r2 = cli("sample", "--ckpt", out, "--prompt", "the cat", "--max-new-tokens", "15",
             "--temperature", "0", "--no-cache")
    assert r2.stdout == r.stdout
    # the model file inside the checkpoint directory loads on its own too
    m = pyllm.load(out)
    assert m.config.n_embd == 16


def test_sample_gpt2_directory(tmp_path):
    """A GPT-2 download (Hugging Face layout) made here: byte-level vocab, no merges."""
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: i for i, b in enumerate(sorted(b2u))}
    vocab["<|endoftext|>"] = 256
    d = tmp_path / "gpt2"
    d.mkdir()
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    cfg = pyllm.GPTConfig(vocab_size=257, block_size=32, n_layer=1, n_head=2, n_embd=16)
    m = pyllm.GPT(cfg, seed=3)
    from test_model import _hf_checkpoint
    _hf_checkpoint(m, str(d))
    r = cli("sample", "--gpt2", str(d), "--prompt", "Hi", "--max-new-tokens", "5",
            "--temperature", "0")
    assert r.returncode == 0, r.stderr
    tok = pyllm.BPETokenizer.from_gpt2(str(d))
    want = m.generate(np.array([tok.encode("Hi")]), 5, temperature=0)
    assert r.stdout.rstrip("\n") == tok.decode(want[0].tolist())


def test_errors_are_messages_not_tracebacks(tmp_path):
    r = cli("train", "--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01\x02binary")
    r = cli("train", "--data", str(tmp_path / "bin.txt"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr
    r = cli("sample", "--ckpt", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "error:" in r.stderr
    r = cli("train", "--n-embd", "10", "--n-head", "3", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "divisible" in r.stderr
    r = cli("bogus")
    assert r.returncode == 2
