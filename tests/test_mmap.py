"""Memory-mapped loading: the weights are read-only views of the file (no copy, little memory,
fast), give the same logits as a normal load, leave the file untouched, are copied in before any
training, and the cases a map cannot serve (a misaligned offset, BF16) are copied."""
import hashlib
import os
import time

import numpy as np
import pytest

import pyllm
from pyllm.checkpoint import CheckpointError
from pyllm.tensorfile import BF16Array, load_safetensors, save_safetensors

from test_model import _hf_checkpoint

CFG = dict(vocab_size=300, block_size=32, n_layer=2, n_head=2, n_embd=32)


def _rss_mb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_mapped_model_gives_the_same_logits_and_never_writes_the_file(tmp_path, backend):
    m = pyllm.GPT(pyllm.GPTConfig(**CFG), seed=0)
    m.save(tmp_path / "m.safetensors")
    before = _digest(tmp_path / "m.safetensors")
    mm = pyllm.load(tmp_path / "m.safetensors", mmap=True)
    assert mm.mapped
    for name, w in mm.state_dict().items():
        assert not w.flags.writeable, name                  # a view of the file's pages
        assert not np.shares_memory(w, mm.params)
    idx = np.random.default_rng(0).integers(0, 300, (2, 20))
    assert np.array_equal(mm.forward(idx), m.forward(idx))
    assert np.array_equal(mm.generate(idx[:, :3], 40, temperature=0.8, seed=3),
                          m.generate(idx[:, :3], 40, temperature=0.8, seed=3))
    q = pyllm.quantize(mm)                                  # quantize reads a mapped model too
    assert np.array_equal(q.forward(idx), pyllm.quantize(m).forward(idx))
    assert mm.mapped and _digest(tmp_path / "m.safetensors") == before


def test_training_a_mapped_model_copies_it_first_and_trains_as_a_loaded_one(tmp_path):
    m = pyllm.GPT(pyllm.GPTConfig(**CFG), seed=0)
    m.save(tmp_path / "m.safetensors")
    before = _digest(tmp_path / "m.safetensors")
    a = pyllm.load(tmp_path / "m.safetensors")
    b = pyllm.load(tmp_path / "m.safetensors", mmap=True)
    idx = np.random.default_rng(1).integers(0, 300, (2, 17))
    for model in (a, b):
        opt = pyllm.AdamW(model, lr=1e-2)
        for _ in range(3):
            _, g = model.loss_and_grads(idx[:, :-1], idx[:, 1:])
            opt.step(g)
    assert not b.mapped and b.state_dict()["wte.weight"].flags.writeable
    assert np.array_equal(a.params, b.params)
    assert _digest(tmp_path / "m.safetensors") == before
    c = pyllm.load(tmp_path / "m.safetensors", mmap=True)
    c.load_state_dict(a.state_dict())                      # also copies in first
    assert not c.mapped and np.array_equal(c.params, a.params)


def test_opening_a_large_file_is_fast_and_takes_little_memory(tmp_path):
    """About 100 MB of weights: mapped in well under 0.5 s with under 20 MB of resident
    memory more (the issue's bar is 0.5 s and 50 MB for GPT-2's 500 MB)."""
    if _rss_mb() is None:
        pytest.skip("needs /proc/self/status")
    m = pyllm.GPT(pyllm.GPTConfig(vocab_size=30000, block_size=256, n_layer=4, n_head=8,
                                  n_embd=512), seed=None)
    m.params[...] = 0.01
    m.save(tmp_path / "big.safetensors")
    del m
    assert os.path.getsize(tmp_path / "big.safetensors") > 90e6
    r0, t0 = _rss_mb(), time.perf_counter()
    mm = pyllm.load(tmp_path / "big.safetensors", mmap=True)
    dt, grown = time.perf_counter() - t0, _rss_mb() - r0
    assert dt < 0.5 and grown < 20, (dt, grown)
    assert mm.forward(np.arange(4)).shape == (1, 4, 30000)


def test_int8_and_hugging_face_files_map_too(tmp_path):
    m = pyllm.GPT(pyllm.GPTConfig(**CFG), seed=0)
    q = pyllm.quantize(m)
    q.save(tmp_path / "q.safetensors")
    qm = pyllm.load(tmp_path / "q.safetensors", mmap=True)
    assert not qm.m["h.0.mlp.c_fc"].q.flags.writeable
    idx = np.random.default_rng(2).integers(0, 300, (1, 12))
    assert np.array_equal(qm.forward(idx), q.forward(idx))
    assert np.array_equal(qm.generate(idx, 10, temperature=0), q.generate(idx, 10, temperature=0))
    _hf_checkpoint(m, tmp_path / "hf")
    g = pyllm.load_gpt2(tmp_path / "hf", mmap=True)
    assert g.mapped and np.array_equal(g.forward(idx), m.forward(idx))


def test_what_a_map_cannot_serve_is_copied_and_truncation_is_caught_at_open(tmp_path):
    p = tmp_path / "t.safetensors"
    # a 3-byte I8 tensor first puts the F32 one after it at an offset not divisible by 4
    save_safetensors(p, {"a": np.arange(3, dtype=np.int8), "b": np.arange(6, dtype=np.float32),
                         "c": BF16Array.from_float(np.array([1.5, -2.0]))})
    t, _ = load_safetensors(p, mmap=True)
    assert not t["a"].flags.writeable                       # int8: any offset is aligned
    assert t["b"].flags.writeable and t["b"].flags.aligned  # misaligned: copied
    assert np.array_equal(t["b"], np.arange(6, dtype=np.float32))
    assert t["c"].dtype == np.float32 and list(t["c"]) == [1.5, -2.0]   # BF16: widened copy
    m = pyllm.GPT(pyllm.GPTConfig(**CFG), seed=0)
    m.save(tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match="truncated|beyond|exceed|size"):
        pyllm.load(tmp_path / "cut.safetensors", mmap=True)
