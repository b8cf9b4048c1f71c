"""The boundary: every bad-input class raises the documented exception, on both backends, before
anything reaches C; and backend / thread selection behaves as documented."""
import os
import subprocess
import sys

import numpy as np
import pytest

import pyllm
from pyllm.backend import BackendUnavailable


def f32(*shape):
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def test_wrong_dtype_raises_type_error(kmod):
    out = np.empty((4, 6), np.float32)
    with pytest.raises(TypeError, match="inp must have dtype"):
        kmod.matmul_forward(out, np.ones((4, 3), np.int64), f32(3, 6))
    with pytest.raises(TypeError, match="weight"):
        kmod.matmul_forward(out, f32(4, 3), f32(3, 6).astype(np.float16))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        kmod.gelu_forward(np.empty(3, np.float32), [1.0, 2.0, 3.0])
    with pytest.raises(TypeError, match="integer array"):
        kmod.encoder_forward(np.empty((1, 2, 4), np.float32), np.array([[0.0, 1.0]]),
                             f32(5, 4), f32(8, 4))
    with pytest.raises(TypeError, match="integer array"):
        kmod.crossentropy_forward(np.empty(2, np.float32), f32(2, 5), np.array([True, False]))


def test_c_rejects_float64(cmod):
    with pytest.raises(TypeError, match="float32"):
        cmod.gelu_forward(np.empty(3), np.ones(3))


def test_mixed_float_dtypes_rejected(kmod):
    with pytest.raises(TypeError):
        kmod.residual_forward(np.empty(3, np.float32), np.ones(3, np.float32), np.ones(3))


def test_non_contiguous_raises(kmod):
    x = f32(4, 8)[:, ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        kmod.layernorm_forward(np.empty((4, 4), np.float32), None, None, x, f32(4), f32(4))
    with pytest.raises(ValueError, match="C-contiguous"):
        kmod.gemm(np.empty((3, 3), np.float32), np.asfortranarray(f32(3, 3)), f32(3, 3))


def test_wrong_shape_raises(kmod):
    with pytest.raises(ValueError, match="out must have shape"):
        kmod.matmul_forward(np.empty((4, 5), np.float32), f32(4, 3), f32(3, 6))
    with pytest.raises(ValueError, match="weight.shape"):
        kmod.matmul_forward(np.empty((4, 6), np.float32), f32(4, 3), f32(2, 6))
    with pytest.raises(ValueError, match="bias"):
        kmod.matmul_forward(np.empty((4, 6), np.float32), f32(4, 3), f32(3, 6), f32(5))
    with pytest.raises(ValueError, match="qkv"):
        kmod.attention_forward(np.empty((1, 2, 4), np.float32), np.empty((1, 1, 2), np.float32),
                               f32(1, 2, 10), 1)
    with pytest.raises(ValueError, match="inner dimensions"):
        kmod.gemm(np.empty((3, 3), np.float32), f32(3, 4), f32(3, 3))
    with pytest.raises(ValueError, match="0-d"):
        kmod.softmax_forward(np.empty((), np.float32), np.zeros((), np.float32))


def test_read_only_output_raises(kmod):
    out = np.empty(5, np.float32)
    out.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        kmod.gelu_forward(out, f32(5))
    # read-only inputs are fine
    x = f32(5)
    x.setflags(write=False)
    kmod.gelu_forward(np.empty(5, np.float32), x)


def test_token_ids_out_of_range(kmod):
    out = np.empty((1, 3, 4), np.float32)
    for bad in ([[0, 1, 5]], [[0, -1, 2]], [[2**40, 0, 0]]):
        with pytest.raises(ValueError, match="outside the valid range"):
            kmod.encoder_forward(out, np.array(bad), f32(5, 4), f32(8, 4))
    with pytest.raises(ValueError, match="targets"):
        kmod.crossentropy_forward(np.empty(2, np.float32), f32(2, 5), np.array([0, 5]))
    with pytest.raises(ValueError, match="targets"):      # -1 means "ignore"; -2 is wrong
        kmod.crossentropy_backward(np.empty((2, 5), np.float32), f32(2, 5), np.array([-2, 0]), 1.0)
    with pytest.raises(ValueError, match="idx"):
        kmod.encoder_backward(f32(5, 4), f32(8, 4), f32(1, 3, 4), np.array([[0, 9, 1]]))


def test_positions_beyond_block_size(kmod):
    with pytest.raises(ValueError, match="block size"):
        kmod.encoder_forward(np.empty((1, 9, 4), np.float32), np.zeros((1, 9), np.int64),
                             f32(5, 4), f32(8, 4))
    with pytest.raises(ValueError, match="block size"):
        kmod.encoder_forward(np.empty((1, 2, 4), np.float32), np.zeros((1, 2), np.int64),
                             f32(5, 4), f32(8, 4), 7)


def test_heads_must_divide(kmod):
    with pytest.raises(ValueError, match="n_head"):
        kmod.attention_forward(np.empty((1, 2, 6), np.float32), np.empty((1, 4, 2), np.float32),
                               f32(1, 2, 18), 4)
    with pytest.raises(ValueError, match="n_head"):
        kmod.attention_forward(np.empty((1, 2, 6), np.float32), np.empty((1, 0, 2), np.float32),
                               f32(1, 2, 18), 0)


def test_decode_position_checked(kmod):
    kc = np.zeros((1, 2, 4, 3), np.float32)
    with pytest.raises(ValueError, match="pos"):
        kmod.attention_decode(np.empty((1, 6), np.float32), kc, kc.copy(), f32(1, 18), 4, 2)


def test_overlapping_output_rejected(kmod):
    x = f32(4, 4)
    with pytest.raises(ValueError, match="overlap"):
        kmod.matmul_forward(x, x, f32(4, 4))
    out = f32(4, 4)  # in place (out = out + x @ w) would add into a sum still being accumulated
    with pytest.raises(ValueError, match="out must not overlap residual"):
        kmod.matmul_forward(out, x, f32(4, 4), residual=out)
    buf = f32(48)
    qkv, out = buf[:36].reshape(1, 3, 12), buf[30:42].reshape(1, 3, 4)
    with pytest.raises(ValueError, match="overlap"):
        kmod.attention_forward(out, np.empty((1, 1, 3), np.float32), qkv, 1)


def test_overlap_found_whoever_owns_the_memory(kmod):
    """Arrays of two NumPy allocations never overlap; anything else is compared by address."""
    raw = bytearray(4 * 48)  # memory of a bytearray, not of a NumPy allocation
    buf = np.frombuffer(raw, np.float32)
    qkv, out = buf[:36].reshape(1, 3, 12), buf[30:42].reshape(1, 3, 4)
    with pytest.raises(ValueError, match="out must not overlap qkv"):
        kmod.attention_forward(out, np.empty((1, 1, 3), np.float32), qkv, 1)
    x = f32(8, 4)
    a, b = x[2:][1:5], x[:5][:4]  # views of views of one allocation, rows 3-6 and 0-3
    with pytest.raises(ValueError, match="out must not overlap inp"):
        kmod.gelu_forward(a, b)
    expect = np.empty((4, 4), np.float32)
    kmod.gelu_forward(expect, x[0:4].copy())
    kmod.gelu_forward(x[4:8], x[0:4])  # the same allocation, apart: allowed
    np.testing.assert_array_equal(x[4:8], expect)
    y = x[0:4].copy()
    kmod.gelu_forward(y, y)  # in place, exactly the same memory: allowed
    np.testing.assert_array_equal(y, expect)
    p = f32(9)
    with pytest.raises(ValueError, match="m must not overlap v"):
        kmod.adamw_update(p[:4], f32(4), p[4:8], p[5:9], lr=1e-3, beta1=0.9, beta2=0.99,
                          eps=1e-8, weight_decay=0.0, step=1)


def test_row_kernels_in_place_or_apart(kmod):
    """layernorm and softmax may overwrite their input exactly, never part of it."""
    x = f32(5, 8)
    w, b = f32(8), f32(8)
    ln, sm = np.empty_like(x), np.empty_like(x)
    kmod.layernorm_forward(ln, None, None, x, w, b)
    kmod.softmax_forward(sm, x)
    for fn, expect in ((lambda y: kmod.layernorm_forward(y, None, None, y, w, b), ln),
                       (lambda y: kmod.softmax_forward(y, y), sm)):
        y = x.copy()
        fn(y)
        np.testing.assert_array_equal(y, expect)
    buf = f32(48)
    with pytest.raises(ValueError, match="out must not overlap inp"):
        kmod.layernorm_forward(buf[8:48].reshape(5, 8), None, None, buf[:40].reshape(5, 8), w, b)
    with pytest.raises(ValueError, match="out must not overlap inp"):
        kmod.softmax_forward(buf[1:41].reshape(5, 8), buf[:40].reshape(5, 8))
    stats = f32(13)
    with pytest.raises(ValueError, match="mean must not overlap inp"):
        kmod.layernorm_forward(ln, buf[:5], None, buf[:40].reshape(5, 8), w, b)
    with pytest.raises(ValueError, match="mean must not overlap rstd"):
        kmod.layernorm_forward(ln, stats[:5], stats[4:9], x, w, b)
    with pytest.raises(ValueError, match="dweight must not overlap dbias"):
        g = f32(12)
        kmod.layernorm_backward(np.empty_like(x), g[:8], g[4:12], f32(5, 8), x, w, f32(5),
                                f32(5))


def test_optimizer_hyperparameters_checked(kmod):
    p, g = f32(4), f32(4)
    m, v = np.zeros(4, np.float32), np.zeros(4, np.float32)
    for kw in (dict(lr=-1.0), dict(beta1=1.0), dict(eps=float("nan")), dict(step=0)):
        args = dict(lr=1e-3, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.0, step=1)
        args.update(kw)
        with pytest.raises(ValueError):
            kmod.adamw_update(p, g, m, v, **args)
    with pytest.raises(ValueError):
        kmod.scale_inplace(p, float("inf"))


def test_zero_size_inputs_are_fine(kmod):
    kmod.matmul_forward(np.empty((0, 5), np.float32), np.empty((0, 3), np.float32), f32(3, 5))
    kmod.gelu_forward(np.empty(0, np.float32), np.empty(0, np.float32))
    kmod.attention_forward(np.empty((2, 0, 4), np.float32), np.empty((2, 2, 0), np.float32),
                           np.empty((2, 0, 12), np.float32), 2)
    out = np.full((2, 3), 7.0, np.float32)
    kmod.gemm(out, np.empty((2, 0), np.float32), np.empty((0, 3), np.float32))
    assert np.all(out == 0.0)  # an empty sum is zero


# ---- backend and thread selection -------------------------------------------------------------

def test_set_backend_validates():
    with pytest.raises(ValueError, match="unknown backend"):
        pyllm.set_backend("gpu")
    with pytest.raises(TypeError):
        pyllm.set_backend(1)
    assert pyllm.get_backend() in pyllm.available_backends()


def test_set_backend_switches(backend):
    assert pyllm.get_backend() == backend


def test_threads_validated_and_settable(cmod):
    prev = pyllm.get_num_threads()
    try:
        pyllm.set_num_threads(1)
        assert pyllm.get_num_threads() == 1 and cmod.get_num_threads() == 1
        pyllm.set_num_threads(2)
        assert pyllm.get_num_threads() == (2 if cmod.has_openmp() else 1)
    finally:
        pyllm.set_num_threads(prev)
    for bad in (0, -3):
        with pytest.raises(ValueError):
            pyllm.set_num_threads(bad)
    with pytest.raises(TypeError):
        pyllm.set_num_threads("2")


def _run(code, **env):
    e = dict(os.environ)
    e.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e,
                          timeout=120)


def test_environment_variables():
    r = _run("import pyllm; print(pyllm.get_backend(), pyllm.get_num_threads())",
             PYLLM_BACKEND="numpy", PYLLM_NUM_THREADS="1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "numpy"
    r = _run("import pyllm", PYLLM_BACKEND="tpu")
    assert r.returncode != 0 and "unknown backend" in r.stderr


def test_thread_environment_honoured(cmod):
    if not cmod.has_openmp():
        pytest.skip("built without OpenMP")
    r = _run("import pyllm; print(pyllm.get_num_threads())", OMP_NUM_THREADS="3")
    assert r.stdout.strip() == "3", r.stderr
    r = _run("import pyllm; print(pyllm.get_num_threads())", OMP_NUM_THREADS="3",
             PYLLM_NUM_THREADS="1")
    assert r.stdout.strip() == "1", r.stderr


def test_explicit_c_when_unavailable_raises(monkeypatch):
    import pyllm.backend as be
    monkeypatch.setattr(be, "_c_backend", None)
    monkeypatch.setattr(be, "_c_error", "ImportError: simulated")
    prev = dict(be._state)
    try:
        with pytest.raises(BackendUnavailable, match="simulated"):
            be.set_backend("c")
        with pytest.warns(RuntimeWarning, match="simulated"):
            assert be.set_backend("auto") == "numpy"
    finally:
        be._state.update(prev)
