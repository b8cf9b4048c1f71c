"""Fuzz driver for pyllm's file loaders (tests/test_fuzz.py runs it in a child process, so that a
crash or a hang fails the test instead of taking pytest down or stalling it).

    python tests/_fuzz_loaders.py KIND CASES SEED WORKDIR

KIND is one of ``safetensors``, ``model``, ``favor-model`` (a model file with attention="favor",
whose random features are tensors of their own), ``q8-model`` (an int8 model: int8 and scale
tensors), ``lora`` (LoRA adapters, loaded over their base), ``checkpoint``, ``char-tokenizer``,
``bpe-tokenizer``. The driver writes a real file of that kind with pyllm itself, then CASES
times: mutates its bytes (byte flips, truncations, insertions, deletions, duplicated spans, and
digits changed or added, which reach the checks on sizes, shapes and ids), writes the result and
loads it (model files: every third case memory-mapped, ``mmap=True``, whose values go
unchecked, so the forward pass only has to run). A load must either succeed, with a result that
is valid (checked per kind), or raise the loader's documented exception with a message naming
the file:

    safetensors      read_safetensors_header, load_safetensors   TensorFileError
    model            pyllm.load (model file)                     CheckpointError
    favor-model      pyllm.load (model file)                     CheckpointError
    q8-model         pyllm.load (int8 model file)                CheckpointError
    lora             pyllm.LoRA.load (adapter file)              CheckpointError
    checkpoint       pyllm.checkpoint.load_checkpoint (dir)      CheckpointError
    char-tokenizer   load_tokenizer, CharTokenizer.load          ValueError
    bpe-tokenizer    load_tokenizer, BPETokenizer.load           ValueError

It prints one JSON line: counts of outcomes, the slowest case, and the first failure (case
number, exception, traceback; the offending file is kept in WORKDIR as ``failure.bin``).
"""
import json
import os
import random
import sys
import time
import traceback

import numpy as np

import pyllm  # the test puts the pyllm it imported itself on PYTHONPATH
from pyllm.checkpoint import CheckpointError, load, load_checkpoint, save_checkpoint
from pyllm.tensorfile import (BF16Array, TensorFileError, load_safetensors,
                              read_safetensors_header, save_safetensors)
from pyllm.tokenizer import BPETokenizer, CharTokenizer, load_tokenizer

TEXT = ("To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune. Übermäßig naïve café, 日本語, 👋🏽!\n") * 4
CFG = dict(vocab_size=13, block_size=8, n_layer=1, n_head=2, n_embd=8)


# ---- the real files --------------------------------------------------------------------------

def make_source(kind, work):
    """Write the real file of this kind; return (path the loader gets, file to mutate)."""
    if kind == "safetensors":
        p = os.path.join(work, "src.safetensors")
        save_safetensors(p, {
            "w": np.arange(12, dtype=np.float32).reshape(3, 4),
            "b": BF16Array.from_float(np.array([1.0, 2.0])),
            "m": np.array([True, False]),
            "s": np.array(7, np.int64),
            "h": np.array([[0.5, -1.0]], np.float16),
            "e": np.zeros((0, 2), np.float16),
        }, {"k": "v"})
        return p, p
    if kind == "lora":
        p = os.path.join(work, "adapters.safetensors")
        pyllm.LoRA(pyllm.GPT(pyllm.GPTConfig(**CFG), seed=0), rank=2).save(p)
        return p, p
    if kind in ("model", "favor-model", "q8-model", "checkpoint"):
        extra = dict(attention="favor", n_features=4) if kind == "favor-model" else {}
        model = pyllm.GPT(pyllm.GPTConfig(**CFG, **extra), seed=0)
        if kind == "q8-model":
            p = os.path.join(work, "model-q8.safetensors")
            pyllm.quantize(model).save(p)
            return p, p
        if kind in ("model", "favor-model"):
            p = os.path.join(work, "model.safetensors")
            model.save(p)
            return p, p
        opt = pyllm.AdamW(model, lr=1e-2)
        idx = np.random.default_rng(0).integers(0, CFG["vocab_size"], (2, 9))
        _, grads = model.loss_and_grads(idx[:, :-1], idx[:, 1:])
        opt.step(grads)  # non-zero moments
        d = os.path.join(work, "ckpt")
        save_checkpoint(d, model, opt, {"step": 1, "rng": [1, 2], "train": {"lr": 0.01}})
        return d, os.path.join(d, "checkpoint.safetensors")
    if kind == "char-tokenizer":
        p = os.path.join(work, "char.txt")
        CharTokenizer.train(TEXT).save(p)
        return p, p
    if kind == "bpe-tokenizer":
        p = os.path.join(work, "bpe.txt")
        BPETokenizer.train(TEXT, 300).save(p)
        return p, p
    raise SystemExit("unknown kind %r" % kind)


# ---- mutations -------------------------------------------------------------------------------

def regions_of(kind, good):
    """(weight, lo, hi) byte ranges to mutate: safetensors files weigh the header most."""
    if kind in ("safetensors", "model", "favor-model", "q8-model", "lora", "checkpoint"):
        n = 8 + int.from_bytes(good[:8], "little")
        return [(0.1, 0, 8), (0.7, 8, n), (0.2, n, len(good))]
    return [(1.0, 0, len(good))]


def mutate(buf, rng, regions):
    for _ in range(rng.randint(1, 3)):
        r, acc = rng.random(), 0.0
        for w, lo, hi in regions:
            acc += w
            if r < acc:
                break
        hi = max(lo + 1, min(hi, len(buf)))
        pos = rng.randrange(lo, hi) if lo < len(buf) else len(buf)
        op = rng.random()
        if op < 0.35 and pos < len(buf):                       # flip bits of one byte
            buf[pos] ^= rng.randrange(1, 256)
        elif op < 0.45:                                         # truncate
            del buf[pos:]
        elif op < 0.55:                                         # insert random bytes
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op < 0.65:                                         # delete a span
            del buf[pos:pos + rng.randint(1, 16)]
        elif op < 0.75:                                         # duplicate a span elsewhere
            k = rng.randint(1, 24)
            buf[rng.randrange(0, len(buf) + 1):0] = buf[pos:pos + k]
        else:                                                   # change or add digits
            digits = [i for i in range(lo, min(hi, len(buf))) if 48 <= buf[i] <= 57]
            if not digits:
                continue
            i = rng.choice(digits)
            if rng.random() < 0.5:
                buf[i] = rng.choice(b"0123456789")
            else:
                buf[i:i] = bytes(rng.choice(b"0123456789") for _ in range(rng.randint(1, 12)))
    return buf


# ---- loading one case ------------------------------------------------------------------------

def load_case(kind, path, case):
    """Load ``path``; check a successful result. Returns the outcome label."""
    if kind == "safetensors":
        header, _ = read_safetensors_header(path)
        tensors, meta = load_safetensors(path)
        assert isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
        assert set(tensors) == {k for k in header if k != "__metadata__"}
        for name, arr in tensors.items():
            assert isinstance(arr, np.ndarray) and arr.shape == tuple(header[name]["shape"])
        return "ok"
    if kind == "lora":
        lora = pyllm.LoRA.load(pyllm.GPT(pyllm.GPTConfig(**CFG), seed=0), path)
        assert np.all(np.isfinite(lora.params)) and lora.rank >= 1
        with np.errstate(all="ignore"):   # finite but huge adapters may overflow: no crash
            lora.forward(np.arange(4) % CFG["vocab_size"])
        return "ok"
    mapped = case % 3 == 1             # every third case through mmap=True (values unchecked)
    if kind == "q8-model":
        qm = load(path, mmap=mapped)
        assert isinstance(qm, pyllm.QuantizedGPT)
        logits = qm.forward(np.arange(4) % qm.config.vocab_size)
        if not mapped:
            for name, m in qm.m.items():
                assert np.all(np.isfinite(m.scales)) and np.all(m.scales >= 0), name
            assert np.all(np.isfinite(logits))
        return "ok"
    if kind in ("model", "favor-model") and mapped:
        model = load(path, mmap=True)
        assert isinstance(model, pyllm.GPT) and model.mapped
        model.forward(np.arange(4) % model.config.vocab_size)   # runs, NaN or not
        return "ok"
    if kind in ("model", "favor-model"):
        model = load(path)
        assert isinstance(model, pyllm.GPT) and np.all(np.isfinite(model.params))
        for name, w in model.buffers().items():
            assert np.all(np.isfinite(w)), name
        if kind == "favor-model":
            assert len(model.buffers()) == model.config.n_layer or model.config.attention != \
                "favor"
        return "ok"
    if kind == "checkpoint":
        model, optim, state = load_checkpoint(path)
        assert np.all(np.isfinite(model.params))
        assert optim["m"].shape == optim["v"].shape == model.params.shape
        assert isinstance(optim["t"], int) and isinstance(state["step"], int)
        return "ok"
    cls = CharTokenizer if kind == "char-tokenizer" else BPETokenizer
    tok = load_tokenizer(path) if case % 2 else cls.load(path)
    assert type(tok) is cls or case % 2, type(tok)  # load_tokenizer may meet the other kind
    ids = list(range(tok.vocab_size))
    tok.decode(ids)
    if isinstance(tok, BPETokenizer):
        assert tok.decode(tok.encode(TEXT)) == TEXT
    back = os.path.join(os.path.dirname(path), "back.txt")
    tok.save(back)
    assert type(tok).load(back) == tok
    return "ok"


ALLOWED = {"safetensors": TensorFileError, "model": CheckpointError,
           "favor-model": CheckpointError, "q8-model": CheckpointError, "lora": CheckpointError,
           "checkpoint": CheckpointError, "char-tokenizer": ValueError,
           "bpe-tokenizer": ValueError}


def main():
    kind, cases, seed, work = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    path, target = make_source(kind, work)
    good = open(target, "rb").read()
    load_case(kind, path, 0)  # the real file loads
    regions = regions_of(kind, good)
    rng = random.Random(seed)
    counts, slowest, failure = {}, (0.0, -1), None
    for case in range(cases):
        buf = mutate(bytearray(good), rng, regions)
        with open(target, "wb") as f:
            f.write(buf)
        t0 = time.perf_counter()
        try:
            outcome = load_case(kind, path, case)
        except ALLOWED[kind] as exc:
            if os.fspath(path) not in str(exc) and os.fspath(target) not in str(exc):
                failure = (case, exc, "message does not name the file")
                break
            outcome = type(exc).__name__
        except BaseException as exc:  # anything else, assertion failures included
            failure = (case, exc, "not the documented exception")
            break
        finally:
            dt = time.perf_counter() - t0
            slowest = max(slowest, (dt, case))
        counts[outcome] = counts.get(outcome, 0) + 1
    report = {"kind": kind, "cases": cases, "counts": counts, "slowest_s": slowest[0],
              "slowest_case": slowest[1], "failure": None}
    if failure is not None:
        case, exc, why = failure
        keep = os.path.join(work, "failure.bin")
        with open(keep, "wb") as f:
            f.write(buf)
        report["failure"] = {"case": case, "why": why, "type": type(exc).__name__,
                             "message": str(exc)[:500], "file": keep,
                             "traceback": "".join(traceback.format_exception(
                                 type(exc), exc, exc.__traceback__))[-3000:]}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
