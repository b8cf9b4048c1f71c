"""Int8 (Q8_0) inference: the quantizer against hand-computed blocks, the int8 kernels against a
float64 product with the dequantized matrix (C against NumPy, same bits for any thread count),
the quantized model against a float model holding the dequantized weights, its one-call decoder
against its forward, sampling, files (round trip, size, refused corruptions), the quality of a
quantized model against its float original, and the CLI."""
import os

import numpy as np
import pytest

import pyllm
from pyllm.backend import backend_module
from pyllm.checkpoint import CheckpointError
from pyllm.quant import dequantize_q8_0, quantize, quantize_q8_0
from pyllm.tensorfile import load_safetensors, save_safetensors

from _close import assert_close
from conftest import need_c
from test_kernels import TOL
from test_model import assert_edited_file_refused
import test_kernels

kimpl = test_kernels.kimpl      # the fixture: the NumPy kernels, and C at every SIMD level

SHAPE = dict(vocab_size=37, block_size=24, n_layer=2, n_head=2, n_embd=40)   # C = 40: a short block


def model(seed=0, **kw):
    m = pyllm.GPT(pyllm.GPTConfig(**dict(SHAPE, **kw)), seed=seed)
    r = np.random.default_rng(seed)
    m.params[...] += r.standard_normal(m.params.shape).astype(np.float32) * 0.05
    return m


# ---- the quantizer ---------------------------------------------------------------------------

def test_quantize_blocks_by_hand():
    w = np.zeros((3, 40), np.float32)
    w[0, :32] = np.linspace(-1, 0.5, 32)        # block max |w| = 1: scale 1/127
    w[0, 32:] = [2, -4, 0, 1, 0, 0, 0, 0]        # the short last block: scale 4/127
    w[2, 5] = 1e-30                              # a tiny one: scale 1e-30/127, q = 127
    q, s = quantize_q8_0(w)
    assert q.dtype == np.int8 and q.shape == (3, 40) and s.shape == (3, 2)
    np.testing.assert_allclose(s[0], [1 / 127, 4 / 127], rtol=1e-7)
    assert q[0, 0] == -127 and list(q[0, 32:36]) == [64, -127, 0, 32]   # 2*127/4 = 63.5 -> 64
    assert np.all(q[1] == 0) and np.all(s[1] == 0)                    # all zero: zeros, not NaN
    assert q[2, 5] == 127 and np.all(np.isfinite(s))
    err = np.abs(dequantize_q8_0(q, s) - w)
    assert np.all(err <= np.repeat(s, 32, axis=1)[:, :40] / 2 + 1e-12)  # half a step at most
    for bad in (np.array([[np.nan, 1.0]]), np.array([[np.inf]])):
        with pytest.raises(ValueError, match="NaN or Inf"):
            quantize_q8_0(bad)


# ---- the kernels -----------------------------------------------------------------------------

def assert_q8_product(out, x, q, s, b=None, res=None, what=""):
    """out (float32) against the float64 product x @ dequantized(q, s).T (+ b + res), with the
    GEMM tolerance of test_kernels.py: relative, plus a floor of a few ulps of the L2 norm of the
    summed terms times sqrt(their number) (tests/_close.py)."""
    x64, w64 = x.astype(np.float64), dequantize_q8_0(q, s).astype(np.float64)
    want, terms = x64 @ w64.T, (x64 * x64) @ (w64 * w64).T
    for extra in (b, res):
        if extra is not None:
            want, terms = want + extra, terms + extra.astype(np.float64) ** 2
    rtol, floor_ulps = TOL["matmul_forward"]
    assert_close(out, want, rtol=rtol, floor_ulps=floor_ulps, k=x.shape[1] + 2,
                 scale=np.sqrt(terms), dtype=np.float32, what=what)


@pytest.mark.parametrize("N,C,OC", [(1, 40, 7), (3, 64, 5), (20, 8, 3), (2, 100, 33)])
def test_q8_matmul_matches_the_dequantized_product(kimpl, N, C, OC):
    r = np.random.default_rng(N * C)
    q, s = quantize_q8_0(r.standard_normal((OC, C)))
    x = r.standard_normal((N, C)).astype(np.float32)
    b, res = r.standard_normal(OC).astype(np.float32), r.standard_normal((N, OC)).astype(np.float32)
    out = np.empty((N, OC), np.float32)
    kimpl.q8_matmul_forward(out, x, q, s, b, res)
    assert_q8_product(out, x, q, s, b, res, "with bias and residual")
    kimpl.q8_matmul_forward(out, x, q, s)
    assert_q8_product(out, x, q, s, what="plain")
    w = np.empty((OC, C), np.float32)
    kimpl.q8_dequantize(w, q, s)
    assert np.array_equal(w, dequantize_q8_0(q, s))                 # one product each: exact


def test_c_q8_kernels_same_bits_for_any_thread_count_and_both_simd_paths():
    need_c()
    C = backend_module("c")
    r = np.random.default_rng(3)
    q, s = quantize_q8_0(r.standard_normal((50, 96)))
    x = r.standard_normal((4, 96)).astype(np.float32)
    old = pyllm.get_num_threads()
    outs = []
    try:
        for n in (1, 2, 3):
            pyllm.set_num_threads(n)
            out = np.empty((4, 50), np.float32)
            C.q8_matmul_forward(out, x, q, s)
            outs.append(out)
    finally:
        pyllm.set_num_threads(old)
    assert all(np.array_equal(o, outs[0]) for o in outs[1:])
    prev = pyllm.get_simd()
    try:
        for level in pyllm.available_simd():                          # portable C, AVX2, ...
            pyllm.set_simd(level)
            out = np.empty((4, 50), np.float32)
            C.q8_matmul_forward(out, x, q, s)
            assert_q8_product(out, x, q, s, what=level)
    finally:
        pyllm.set_simd(prev)


def test_q8_kernels_refuse_bad_arguments_by_name(kmod):
    q, s = quantize_q8_0(np.ones((4, 40)))
    x, out = np.ones((2, 40), np.float32), np.empty((2, 4), np.float32)
    with pytest.raises(TypeError, match="q must be an int8"):
        kmod.q8_matmul_forward(out, x, q.astype(np.int16), s)
    with pytest.raises(ValueError, match="scales must have shape"):
        kmod.q8_matmul_forward(out, x, q, s[:, :1].copy())
    with pytest.raises(ValueError, match=r"q must have shape \(OC, 40\)"):
        kmod.q8_matmul_forward(out, x, np.ascontiguousarray(q[:, :32]), s)
    with pytest.raises(ValueError, match="out must"):
        kmod.q8_matmul_forward(np.empty((2, 5), np.float32), x, q, s)


# ---- the model -------------------------------------------------------------------------------

def assert_logits_close(got, want, what=""):
    """Two float32 computations of the same model's logits (B,T,V) or (B,V): relative, with a
    floor of 8 ulps of each row's largest logit times sqrt(n_embd) (the last product sums n_embd
    terms). Measured: at most 4.6 ulps of the row maximum and 1.7e-6 relative on the large
    logits, on both backends."""
    assert_close(got, want, rtol=2e-5, floor_ulps=8, k=SHAPE["n_embd"], what=what)


def dequantized_float_model(qm):
    """A float GPT holding exactly the quantized model's (dequantized) weights."""
    f = pyllm.GPT(qm.config, seed=None)
    sd = f.state_dict()
    sd["wte.weight"][...] = dequantize_q8_0(qm.m["wte"].q, qm.m["wte"].scales)
    sd["wpe.weight"][...] = dequantize_q8_0(qm.m["wpe"].q, qm.m["wpe"].scales)
    for name, m in qm.m.items():
        if name.startswith("h."):
            sd[name + ".weight"][...] = dequantize_q8_0(m.q, m.scales).T
    for name, v in qm.v.items():
        sd[name][...] = v
    return f


def test_quantized_model_is_the_float_model_of_its_weights(backend):
    """Every row count (the int8 kernel up to 16 rows, dequantize + GEMM beyond) gives the
    float model of the dequantized weights; the decoder's steps give the forward's logits."""
    qm = quantize(model())
    ref = dequantized_float_model(qm)
    idx = np.random.default_rng(1).integers(0, 37, (2, 20))
    for T in (3, 20):                                # 6 rows and 40 rows
        assert_logits_close(qm.forward(idx[:, :T]), ref.forward(idx[:, :T]), "T=%d" % T)
    cache, dec = qm._decoder(2)
    logits = qm._prefill(np.ascontiguousarray(idx[:, :5].astype(np.int32)), cache)
    assert_logits_close(logits, ref.forward(idx[:, :5])[:, -1], "prefill")
    for T in range(5, 12):
        step = dec.step(idx[:, T].astype(np.int32), T)
        assert_logits_close(step, ref.forward(idx[:, :T + 1])[:, -1], "step %d" % T)


def test_generate_same_tokens_both_backends_with_and_without_cache():
    need_c()
    qm = quantize(model(seed=2))
    prompt = np.random.default_rng(2).integers(0, 37, (2, 4))
    outs = []
    for be in ("numpy", "c"):
        pyllm.set_backend(be)
        try:
            a = qm.generate(prompt, 30, temperature=0.9, top_k=10, seed=7)   # past block_size
            b = qm.generate(prompt, 30, temperature=0.9, top_k=10, seed=7, use_cache=False)
        finally:
            pyllm.set_backend("auto")
        assert np.array_equal(a, b)
        outs.append(a)
    assert np.array_equal(outs[0], outs[1])


def test_quality_against_the_float_model():
    """Mean KL(float || int8) of the next-token distributions < 1e-3 and greedy agreement on a
    GPT-2-shaped (small) model with GPT-2's initialisation."""
    m = pyllm.GPT(pyllm.GPTConfig(vocab_size=512, block_size=64, n_layer=4, n_head=4,
                                  n_embd=128), seed=3)
    qm = quantize(m)
    idx = np.random.default_rng(4).integers(0, 512, (4, 64))
    lf, lq = m.forward(idx).astype(np.float64), qm.forward(idx).astype(np.float64)
    pf = np.exp(lf - lf.max(-1, keepdims=True))
    pf /= pf.sum(-1, keepdims=True)
    lpf = np.log(pf)
    lpq = lq - lq.max(-1, keepdims=True)
    lpq -= np.log(np.exp(lpq).sum(-1, keepdims=True))
    kl = (pf * (lpf - lpq)).sum(-1).mean()
    assert kl < 1e-3, kl
    assert (lf.argmax(-1) == lq.argmax(-1)).mean() >= 0.95


def test_quantize_refuses_what_it_cannot_do():
    m = model()
    with pytest.raises(ValueError, match="unknown quantization"):
        quantize(m, "q4_0")
    with pytest.raises(TypeError, match="pyllm.GPT"):
        quantize(quantize(m))
    with pytest.raises(ValueError, match="softmax"):
        quantize(pyllm.GPT(pyllm.GPTConfig(**SHAPE, attention="linear")))
    m.params[3] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantize(m)


# ---- files -----------------------------------------------------------------------------------

def test_file_round_trip_size_and_refused_corruptions(tmp_path):
    m = pyllm.GPT(pyllm.GPTConfig(vocab_size=256, block_size=64, n_layer=2, n_head=4,
                                  n_embd=128), seed=0)
    qm = quantize(m)
    m.save(tmp_path / "f.safetensors")
    qm.save(tmp_path / "q.safetensors")
    back = pyllm.load(tmp_path / "q.safetensors")
    assert isinstance(back, pyllm.QuantizedGPT) and back.config == qm.config
    idx = np.random.default_rng(0).integers(0, 256, (2, 9))
    assert np.array_equal(back.forward(idx), qm.forward(idx))
    ratio = os.path.getsize(tmp_path / "q.safetensors") / os.path.getsize(tmp_path / "f.safetensors")
    assert ratio <= 0.3, ratio
    assert qm.nbytes < 0.3 * m.params.nbytes
    tensors, meta = load_safetensors(tmp_path / "q.safetensors")
    cases = [
        ("h.0.mlp.c_fc.scale", tensors["h.0.mlp.c_fc.scale"][:, :2].copy(), "has shape"),
        ("h.1.attn.c_proj.scale", -tensors["h.1.attn.c_proj.scale"], "negative scale"),
        ("wte.q8", np.full_like(tensors["wte.q8"], -128), "-128"),
        ("ln_f.bias", np.full(128, np.nan, np.float32), "not finite"),
        ("wpe.q8", tensors["wpe.q8"].astype(np.float32), "dtype"),
        ("h.1.ln_2.weight", None, "lacks tensor"),
    ]
    for name, value, msg in cases:
        assert_edited_file_refused(tmp_path / "bad.safetensors", tensors, meta, name, value, msg)
    save_safetensors(tmp_path / "bad.safetensors", tensors, dict(meta, block="64"))
    with pytest.raises(CheckpointError, match="block size"):
        pyllm.load(tmp_path / "bad.safetensors")
    data = (tmp_path / "q.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError):
        pyllm.load(tmp_path / "cut.safetensors")


def test_cli_quantize_and_sample_int8(tmp_path, capsys):
    from pyllm.cli import main
    from test_train import corpus
    out = tmp_path / "run"
    assert main(["train", "--data", corpus(tmp_path), "--out", str(out), "--steps", "4",
                 "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16",
                 "--batch-size", "2", "--eval-interval", "4", "--eval-iters", "1",
                 "--sample-tokens", "0", "--quiet"]) == 0
    q8 = out / "model-q8.safetensors"
    assert main(["quantize", "--ckpt", str(out), "--out", str(q8)]) == 0
    assert "wrote %s: QuantizedGPT(q8_0" % q8 in capsys.readouterr().err
    assert isinstance(pyllm.load(q8), pyllm.QuantizedGPT)
    greedy = ["--prompt", "alpha", "--max-new-tokens", "12", "--temperature", "0"]
    assert main(["sample", "--ckpt", str(q8)] + greedy) == 0
    from_file = capsys.readouterr().out
    assert main(["sample", "--ckpt", str(out), "--int8"] + greedy) == 0
    assert capsys.readouterr().out == from_file            # the same int8 model, the same text
    assert main(["sample", "--ckpt", str(out), "--int8", "--backend", "numpy"] + greedy) == 0
    assert capsys.readouterr().out == from_file            # the NumPy backend runs it too
    assert main(["quantize", "--ckpt", str(q8), "--out", str(tmp_path / "again")]) == 2
    assert "already an int8 model" in capsys.readouterr().err
