"""The boundary: every bad-input class raises the documented exception, on both backends, before
anything reaches C; and backend / thread selection behaves as documented."""
import os
import re
import subprocess
import sys
import warnings

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
    out = np.full(3, 7.0, np.float32)
    # NumPy: "inp2 has dtype float64 but the other arrays are float32"; C: "inp2 must have dtype
    # float32, got float64" -- either way the message names the argument and its dtype
    with pytest.raises(TypeError, match="inp2 (has|must have) dtype .*float64"):
        kmod.residual_forward(out, np.ones(3, np.float32), np.ones(3))
    assert np.all(out == 7.0)


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


def gelu_reference(x):
    """GELU's tanh approximation (GPT-2's), in float64."""
    x = x.astype(np.float64)
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def test_read_only_output_raises(kmod):
    out = np.full(5, 7.0, np.float32)
    out.setflags(write=False)
    with pytest.raises(ValueError, match="out is read-only, but the kernel writes to it"):
        kmod.gelu_forward(out, f32(5))
    assert np.all(out == 7.0)  # refused before anything was written
    # read-only inputs are fine: the same result as a writable copy, the input left alone
    x = f32(5)
    x.setflags(write=False)
    got = np.empty(5, np.float32)
    kmod.gelu_forward(got, x)
    np.testing.assert_allclose(got, gelu_reference(x), rtol=1e-6, atol=1e-7)
    want = np.empty(5, np.float32)
    kmod.gelu_forward(want, x.copy())
    np.testing.assert_array_equal(got, want)
    assert np.array_equal(x, f32(5)) and not x.flags.writeable


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
    for kw, match in ((dict(lr=-1.0), "lr must be a finite number >= 0"),
                      (dict(beta1=1.0), "beta1 must be in [0, 1)"),
                      (dict(eps=float("nan")), "eps must be a finite number >= 0"),
                      (dict(step=0), "step must be an integer >= 1")):
        args = dict(lr=1e-3, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.0, step=1)
        args.update(kw)
        with pytest.raises(ValueError, match=re.escape(match)):
            kmod.adamw_update(p, g, m, v, **args)
    # refused before anything was written
    assert np.array_equal(p, f32(4)) and not m.any() and not v.any()
    with pytest.raises(ValueError, match="s must be finite, got inf"):
        kmod.scale_inplace(p, float("inf"))
    assert np.array_equal(p, f32(4))


def _inside(buf, *shape):
    """A view of ``shape`` (zero-size allowed) in the middle of the sentinel buffer ``buf``."""
    n = int(np.prod(shape))
    return buf[8:8 + n].reshape(shape)


def test_zero_size_inputs_are_fine(kmod):
    """Zero rows (matmul), zero elements (gelu), zero time steps (attention): each returns None,
    writes nothing next to its empty outputs (views into buffers of 7s) and leaves the weight
    alone; an empty sum (gemm with inner dimension 0) is zero."""
    bufs = [np.full(16, 7.0, np.float32) for _ in range(4)]
    w = f32(3, 5)
    assert kmod.matmul_forward(_inside(bufs[0], 0, 5), np.empty((0, 3), np.float32), w) is None
    assert kmod.gelu_forward(_inside(bufs[1], 0), np.empty(0, np.float32)) is None
    assert kmod.attention_forward(_inside(bufs[2], 2, 0, 4), _inside(bufs[3], 2, 2, 0),
                                  np.empty((2, 0, 12), np.float32), 2) is None
    assert all(np.all(b == 7.0) for b in bufs)
    assert np.array_equal(w, f32(3, 5))
    out = np.full((2, 3), 7.0, np.float32)
    kmod.gemm(out, np.empty((2, 0), np.float32), np.empty((0, 3), np.float32))
    assert np.all(out == 0.0)  # an empty sum is zero


# ---- backend and thread selection -------------------------------------------------------------

def test_set_backend_validates():
    before = pyllm.get_backend()
    with pytest.raises(ValueError, match="unknown backend 'gpu'; choose one of 'auto', 'c', "
                                         "'numpy'"):
        pyllm.set_backend("gpu")
    with pytest.raises(TypeError, match="backend name must be a str, got int"):
        pyllm.set_backend(1)
    assert pyllm.get_backend() == before  # a refused name changes nothing


def test_set_backend_switches(backend):
    """The backend set is the one whose kernels run: ``ops`` hands out its functions, and a
    float64 model (which only the NumPy kernels take) runs or is refused accordingly."""
    from pyllm.backend import backend_module, ops
    assert pyllm.get_backend() == backend
    assert pyllm.backend_reason() == "requested explicitly"
    mod = backend_module(backend)
    for name in ("gelu_forward", "matmul_forward", "attention_forward", "adamw_update"):
        assert getattr(ops, name) is getattr(mod, name), name
    m = pyllm.GPT(pyllm.GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4),
                  seed=0, dtype=np.float64)
    if backend == "numpy":
        assert m.forward(np.array([[1, 2]])).dtype == np.float64
    else:
        with pytest.raises(TypeError, match="NumPy backend only"):
            m.forward(np.array([[1, 2]]))


@pytest.fixture
def saved_backend_state():
    """Restore the backend, its reason and the thread count after a test that changes them."""
    import pyllm.backend as be
    state, threads = dict(be._state), pyllm.get_num_threads()
    try:
        yield
    finally:
        be._state.update(state)
        pyllm.set_num_threads(threads)


def test_backend_reason_says_why(saved_backend_state):
    pyllm.set_backend("numpy")
    assert pyllm.backend_reason() == "requested explicitly"
    if "c" in pyllm.available_backends():
        assert pyllm.set_backend("auto") == "c"
        assert pyllm.backend_reason() == "auto: the C extension imported"
        pyllm.set_backend("c")
        assert pyllm.backend_reason() == "requested explicitly"
    else:  # (it warns only when switching away from C; tested below)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            assert pyllm.set_backend("auto") == "numpy"
        assert pyllm.backend_reason().startswith("auto: C extension unavailable (")


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
        with pytest.raises(ValueError, match=re.escape("number of threads must be in "
                                                       "[1, 2147483647], got %d" % bad)):
            pyllm.set_num_threads(bad)
    with pytest.raises(TypeError, match="number of threads must be an int, got str"):
        pyllm.set_num_threads("2")
    assert pyllm.get_num_threads() == prev == cmod.get_num_threads()  # refusals change nothing


def _run(code, **env):
    e = dict(os.environ)
    e.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e,
                          timeout=120)


SHOW = "import pyllm; print(pyllm.get_backend(), pyllm.get_num_threads(), pyllm.backend_reason())"


def test_environment_variables():
    r = _run(SHOW, PYLLM_BACKEND="numpy", PYLLM_NUM_THREADS="1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split(None, 2) == ["numpy", "1", "requested explicitly\n"]
    r = _run("import pyllm", PYLLM_BACKEND="tpu")
    assert r.returncode != 0 and "unknown backend 'tpu'" in r.stderr
    r = _run("import pyllm", PYLLM_NUM_THREADS="many")
    assert r.returncode != 0 and "PYLLM_NUM_THREADS must be a positive integer, got 'many'" \
        in r.stderr


def test_environment_auto_says_why(cmod):
    """PYLLM_BACKEND=auto (and unset) with the extension built: C, and the reason says so."""
    for env in (dict(PYLLM_BACKEND="auto"), dict(PYLLM_BACKEND="")):
        r = _run(SHOW, PYLLM_NUM_THREADS="1", **env)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split(None, 2) == ["c", "1", "auto: the C extension imported\n"], env


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
        assert be.get_backend() == prev["name"]  # refused: nothing changed
        with pytest.warns(RuntimeWarning, match="simulated"):
            assert be.set_backend("auto") == "numpy"
        assert be.backend_reason() == "auto: C extension unavailable (ImportError: simulated)"
        assert be.available_backends() == ("numpy",) and be.available_simd() == ()
    finally:
        be._state.update(prev)
