"""The command line's success paths, run in this process through ``pyllm.cli.main``: sampling
options (--seed, --top-k, --top-p) against the API and against greedy decoding, training on the
default corpus, --resume, --tokenizer bpe, and --backend / --threads / --preset honoured.

Each run restores the backend, its reason and the thread count afterwards (``main`` sets them
from --backend / --threads for the rest of the process)."""
import io
import json
import re
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest

import pyllm
import pyllm.backend as backend_pkg
from pyllm.checkpoint import load_checkpoint
from pyllm.cli import main
from pyllm.data import default_corpus
from pyllm.train import PRESETS

from conftest import need_c

WORDS = ["alpha", "beta", "gamma", "delta", "lambda", "sigma", "omega", "kappa"]
# a small model, a short run: seconds in all
SIZE = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
        "--batch-size", "4", "--eval-iters", "1", "--sample-tokens", "0", "--quiet"]
PROMPT = "alpha beta"


def run(*argv):
    """``pyllm *argv`` in this process: returns (exit code, stdout, stderr)."""
    state, threads = dict(backend_pkg._state), pyllm.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    try:
        with redirect_stdout(out), redirect_stderr(err):
            rc = main([str(a) for a in argv])
    finally:
        backend_pkg._state.update(state)
        pyllm.set_num_threads(threads)
    return rc, out.getvalue(), err.getvalue()


def ok(*argv):
    rc, out, err = run(*argv)
    assert rc == 0, "pyllm %s: exit code %s\n%s" % (" ".join(map(str, argv)), rc, err)
    return out, err


def corpus(path, lines=300):
    r = np.random.default_rng(0)
    text = "\n".join(" ".join(r.choice(WORDS, 6)) + "." for _ in range(lines)) + "\n"
    path.write_text(text, encoding="utf-8")
    return text


def log_losses(out):
    with open(out / "log.jsonl", encoding="utf-8") as f:
        return {e["step"]: e["loss"] for e in map(json.loads, f) if "loss" in e}


# ---- sampling -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(checkpoint directory, model, tokenizer) of a short run through ``pyllm train``."""
    d = tmp_path_factory.mktemp("cli-sample")
    corpus(d / "text.txt")
    ok("train", "--data", d / "text.txt", "--out", d / "run", "--steps", "120", "--lr", "1e-2",
       "--eval-interval", "120", *SIZE)
    return d / "run", pyllm.load(d / "run"), pyllm.load_tokenizer(d / "run" / "tokenizer.txt")


def sample(ckpt, *args, n=40):
    """The text ``pyllm sample`` adds to PROMPT."""
    out, err = ok("sample", "--ckpt", ckpt, "--prompt", PROMPT, "--max-new-tokens", n, *args)
    assert out.startswith(PROMPT) and out.endswith("\n") and "tokens/s" in err
    return out[len(PROMPT):-1]


def api(model, tok, n=40, **kw):
    """What model.generate continues PROMPT with, decoded."""
    ids = model.generate(np.array([tok.encode(PROMPT)]), n, **kw)[0, len(tok.encode(PROMPT)):]
    return tok.decode(ids.tolist())


def test_sample_seed_is_reproducible_and_matters(trained):
    ckpt, model, tok = trained
    a = sample(ckpt, "--temperature", "1.0", "--seed", "5")
    assert len(a) == 40  # a character tokenizer: one character per token
    assert sample(ckpt, "--temperature", "1.0", "--seed", "5") == a
    assert sample(ckpt, "--temperature", "1.0", "--seed", "6") != a
    assert a == api(model, tok, temperature=1.0, seed=5)


def test_sample_top_k_and_top_p_are_honoured(trained):
    """--top-k 1 and a tiny --top-p leave only the most likely token: greedy decoding, whatever
    the temperature and seed (which, unrestricted, sample something else); other values give
    what the API gives with them."""
    ckpt, model, tok = trained
    greedy = sample(ckpt, "--temperature", "0")
    assert greedy == api(model, tok, temperature=0)
    assert sample(ckpt, "--temperature", "1.5", "--seed", "5") != greedy
    assert sample(ckpt, "--temperature", "1.5", "--seed", "5", "--top-k", "1") == greedy
    assert sample(ckpt, "--temperature", "1.5", "--seed", "5", "--top-p", "1e-6") == greedy
    assert sample(ckpt, "--temperature", "1.5", "--seed", "7", "--top-k", "3") == \
        api(model, tok, temperature=1.5, seed=7, top_k=3)
    assert sample(ckpt, "--temperature", "1.5", "--seed", "7", "--top-p", "0.6") == \
        api(model, tok, temperature=1.5, seed=7, top_p=0.6)


# ---- training -----------------------------------------------------------------------------------

def test_train_on_the_default_corpus(tmp_path):
    """No --data: the default corpus (this Python's standard library, no download); the
    checkpoint loads, the char tokenizer is the corpus's character set and the token cache holds
    the corpus."""
    out = tmp_path / "run"
    _, err = ok("train", "--out", out, "--steps", "1", *SIZE)
    text, desc = default_corpus()
    assert "data: the default corpus (%s)" % desc in err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["data"] is None
    tok = pyllm.load_tokenizer(out / "tokenizer.txt")
    assert tok.vocab_size == len(set(text))
    model = pyllm.load(out)
    assert model.config.vocab_size == tok.vocab_size and model.config.n_embd == 16
    tokens = np.fromfile(out / "tokens.bin", np.uint16)
    assert tokens.size == len(text) and tok.decode(tokens.tolist()) == text


def test_resume_continues_to_the_weights_of_one_run(tmp_path):
    """3 steps, then --resume to 6, equals 6 steps in one go: the same losses step for step, the
    same weights and optimizer state bit for bit. (With a constant learning rate, min-lr = lr
    and no warmup: the cosine schedule depends on the run's length, so 3 steps of a 3-step run
    are not the first 3 of a 6-step one.)"""
    corpus(tmp_path / "text.txt")
    common = ["--data", tmp_path / "text.txt", "--lr", "3e-3", "--min-lr", "3e-3", "--warmup",
              "0", "--eval-interval", "3", *SIZE]
    ok("train", "--out", tmp_path / "one", "--steps", "6", *common)
    _, err = ok("train", "--out", tmp_path / "two", "--steps", "3", *common)
    assert "trained to step 3" in err
    _, err = ok("train", "--out", tmp_path / "two", "--steps", "6", "--resume", "--quiet")
    assert "resuming from step 3" in err and "trained to step 6" in err
    one, two = log_losses(tmp_path / "one"), log_losses(tmp_path / "two")
    assert sorted(two) == list(range(6)) and two == one
    m1, o1, s1 = load_checkpoint(tmp_path / "one")
    m2, o2, s2 = load_checkpoint(tmp_path / "two")
    assert s1["step"] == s2["step"] == 6 and o1["t"] == o2["t"] == 6
    assert np.array_equal(m1.params, m2.params)
    assert np.array_equal(o1["m"], o2["m"]) and np.array_equal(o1["v"], o2["v"])
    assert s2["train"]["steps"] == 6  # the new length is recorded


def test_bpe_tokenizer_through_the_cli(tmp_path):
    text = corpus(tmp_path / "text.txt")
    out = tmp_path / "run"
    ok("train", "--data", tmp_path / "text.txt", "--out", out, "--tokenizer", "bpe",
       "--vocab-size", "300", "--steps", "2", *SIZE)
    tok = pyllm.load_tokenizer(out / "tokenizer.txt")
    assert isinstance(tok, pyllm.BPETokenizer)
    assert 256 < tok.vocab_size <= 300 and pyllm.load(out).config.vocab_size == tok.vocab_size
    ids = tok.encode(text)
    assert len(ids) < len(text) / 2  # merges learned: fewer tokens than bytes
    assert tok.decode(ids) == text
    unseen = "naïve café 👋\ttabs\r\nand <|endoftext|> too"
    assert tok.decode(tok.encode(unseen)) == unseen  # byte-level: any text round-trips
    assert np.fromfile(out / "tokens.bin", np.uint16).tolist() == ids
    # and the model samples through it
    out_text, _ = ok("sample", "--ckpt", out, "--prompt", PROMPT, "--max-new-tokens", "5",
                     "--temperature", "0")
    model = pyllm.load(out)
    want = model.generate(np.array([tok.encode(PROMPT)]), 5, temperature=0)[0]
    assert out_text == tok.decode(want.tolist()) + "\n"


# ---- backend, threads, presets ------------------------------------------------------------------

@pytest.mark.parametrize("choice", ["numpy", "c", "auto"])
def test_backend_and_threads_options_are_honoured(tmp_path, choice):
    if choice == "c":
        need_c()
    want = pyllm.available_backends()[0] if choice == "auto" else choice
    reason = "requested explicitly"
    if choice == "auto":
        reason = "auto: " + ("the C extension imported" if want == "c" else
                             "C extension unavailable")
    out, _ = ok("info", "--backend", choice, "--threads", "1")
    assert re.search(r"^backend: %s \(%s" % (want, re.escape(reason)), out, re.M), out
    if want == "c":
        assert re.search(r"threads: 1\b", out) and "self-test: ok" in out, out
    corpus(tmp_path / "text.txt", lines=60)
    _, err = ok("train", "--data", tmp_path / "text.txt", "--out", tmp_path / "run", "--steps",
                "1", "--backend", choice, "--threads", "1", *SIZE)
    assert "backend: %s, 1 thread(s)" % want in err
    assert pyllm.load(tmp_path / "run").config.n_layer == 1


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_is_honoured(tmp_path, preset):
    """The run's recorded settings are the preset's wherever no option overrides them (the model
    is made small here, for time: those options win)."""
    corpus(tmp_path / "text.txt", lines=60)
    out = tmp_path / "run"
    ok("train", "--data", tmp_path / "text.txt", "--out", out, "--preset", preset, "--steps", "1",
       "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "8",
       "--eval-iters", "1", "--sample-tokens", "0", "--quiet")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["preset"] == preset
    for key, value in PRESETS[preset].items():
        if key not in ("steps", "n_layer", "n_head", "n_embd", "block_size"):
            assert cfg["train"][key] == value, key
    assert (cfg["model"]["n_layer"], cfg["model"]["n_embd"], cfg["model"]["block_size"]) == \
        (1, 16, 8)
    assert cfg["train"]["steps"] == 1
