"""Linear attention (issue: attention as kernel smoothing): the FAVOR+ features are unbiased and
converge like m^-1/2 to softmax attention, the causal prefix sums equal the materialised masked
phi(Q) phi(K)^T computation, nothing leaks from the future, the guard holds, and the backward
kernels match finite differences in float64. All against independent NumPy formulas."""
import numpy as np
import pytest

from _close import assert_close
from pyllm.backend import numpy as K
from test_kernels import check_grads
from pyllm.linear_attention import (causal_linear_attention, feature_maps_backward,
                                    random_features)


def softmax_attention(q, k, v):
    """Exact causal softmax attention, float64: (N,T,d), (N,T,d), (N,T,hd) -> (N,T,hd)."""
    d = q.shape[-1]
    s = q @ k.transpose(0, 2, 1) / np.sqrt(d)
    T = q.shape[1]
    s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


def favor_formula(x, w):
    """Unstabilised FAVOR+ features, float64: m^-1/2 exp(u.w_i - |u|^2/2), u = x d^-1/4."""
    d = x.shape[-1]
    u = x * d ** -0.25
    return np.exp(u @ w.T - 0.5 * (u * u).sum(-1, keepdims=True)) / np.sqrt(w.shape[0])


def features(x, w=None):
    """(features, stabilisers c (N,T) or None) of x through the NumPy kernels."""
    out = np.empty(x.shape[:2] + ((w.shape[0],) if w is not None else (x.shape[2],)), x.dtype)
    if w is None:
        K.elu_features_forward(out, x)
        return out, None
    c = np.empty(x.shape[:2], x.dtype)
    K.favor_features_forward(out, x, w, c)
    return out, c


def masked_reference(qf, kf, v, kc=None):
    """The quadratic computation (float64): A = tril(qf (kf exp(kc))^T), out = A v / A 1, with
    the keys' stabilisers kc put back (one shift per row, so exp cannot overflow). Returns out and
    the L2 norms of the terms (A_ts / sum_s A_ts) v_s that each element of out sums (the scale of
    its rounding errors: tests/_close.py)."""
    T = qf.shape[1]
    qf, kf = qf.astype(np.float64), kf.astype(np.float64)
    if kc is not None:
        kc = kc.astype(np.float64)
        kf = kf * np.exp(kc - kc.max(axis=1, keepdims=True))[..., None]
    A = np.tril(np.ones((T, T))) * (qf @ kf.transpose(0, 2, 1))
    P, v = A / A.sum(-1, keepdims=True), v.astype(np.float64)
    return P @ v, np.sqrt((P * P) @ (v * v))


@pytest.mark.parametrize("orthogonal", [True, False])
def test_favor_estimator_is_unbiased(orthogonal):
    rng = np.random.default_rng(0)
    d, m = 8, 16
    q, k = rng.standard_normal((2, 1, 1, d)) * 0.4
    draws = (random_features(m, d, s, orthogonal, np.float64) for s in range(3000))
    est = np.array([(favor_formula(q, w) * favor_formula(k, w)).sum() for w in draws])
    want = np.exp((q * k).sum() / np.sqrt(d))
    se = est.std(ddof=1) / np.sqrt(len(est))
    assert abs(est.mean() - want) < 3 * se, (est.mean(), want, se)


def test_random_features_rows_orthogonal_in_blocks_with_chi_norms():
    w = random_features(20, 8, 1, True, np.float64)
    for blk in (w[:8], w[8:16]):
        g = blk @ blk.T
        assert np.allclose(g - np.diag(np.diag(g)), 0, atol=1e-10)
    norms = np.linalg.norm(random_features(4096, 8, 2, True, np.float64), axis=1)
    # chi with 8 degrees of freedom: E[norm^2] = 8
    assert abs((norms ** 2).mean() - 8) < 0.3
    with pytest.raises(ValueError, match="m >= 1"):
        random_features(0, 8, 0)


def test_favor_kernel_is_the_formula_up_to_the_stabiliser():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 7, 8))
    w = random_features(24, 8, 3, True, np.float64)
    ref = favor_formula(x, w)
    f, c = features(x, w)
    np.testing.assert_allclose(f * np.exp(c)[..., None], ref, rtol=1e-12)   # exactly exp(-c)
    assert np.allclose(f.max(-1), 24 ** -0.5)        # the largest feature of a row is m^-1/2
    f2 = np.empty_like(f)
    K.favor_features_forward(f2, x, w)               # queries: the same features, c not kept
    assert np.array_equal(f2, f)


def test_favor_converges_like_inverse_sqrt_m_and_orthogonal_does_no_worse():
    rng = np.random.default_rng(2)
    N, T, d = 4, 32, 16
    q, k = rng.standard_normal((2, N, T, d)) * 0.5
    v = rng.standard_normal((N, T, d))
    exact = softmax_attention(q, k, v)
    ms = [16, 32, 64, 128, 256, 512, 1024]
    err = {True: [], False: []}
    for orth in (True, False):
        for m in ms:
            e = [np.linalg.norm(causal_linear_attention(
                q, k, v, "favor", random_features(m, d, 100 * s + m, orth, np.float64)) - exact)
                / np.linalg.norm(exact) for s in range(6)]
            err[orth].append(np.mean(e))
    for orth in (True, False):
        slope = np.polyfit(np.log(ms), np.log(err[orth]), 1)[0]
        assert -0.7 <= slope <= -0.3, (orth, slope, err[orth])
    assert np.mean(err[True]) <= 1.05 * np.mean(err[False]), err


@pytest.mark.parametrize("kernel", ["favor", "linear"])
def test_causality_nothing_leaks_from_the_future(kernel):
    rng = np.random.default_rng(3)
    N, T, d = 2, 20, 8
    q, k, v = (rng.standard_normal((N, T, d)).astype(np.float32) for _ in range(3))
    w = random_features(32, d, 4) if kernel == "favor" else None
    base = causal_linear_attention(q, k, v, kernel, w)
    t = 9
    k2, v2, q2 = k.copy(), v.copy(), q.copy()
    k2[:, t + 1:] = rng.standard_normal(k2[:, t + 1:].shape) * 3
    v2[:, t + 1:] = rng.standard_normal(v2[:, t + 1:].shape) * 3
    q2[:, t + 1:] = rng.standard_normal(q2[:, t + 1:].shape) * 3
    out = causal_linear_attention(q2, k2, v2, kernel, w)
    assert np.array_equal(out[:, :t + 1], base[:, :t + 1])      # the past: the same bits
    assert np.abs(out[:, t + 1:] - base[:, t + 1:]).max() > 1e-3


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kernel", ["favor", "linear"])
def test_prefix_sums_equal_the_materialised_masked_product(dtype, kernel):
    rng = np.random.default_rng(4)
    N, T, d, hd = 3, 33, 8, 5
    q, k = (rng.standard_normal((N, T, d)).astype(dtype) for _ in range(2))
    v = rng.standard_normal((N, T, hd)).astype(dtype)
    w = random_features(40, d, 5, True, dtype) if kernel == "favor" else None
    (qf, _), (kf, kc) = features(q, w), features(k, w)
    if kernel == "favor":               # keys whose scales differ widely: the rescaling works
        kc = kc + np.linspace(-30, 30, T).astype(dtype)[(np.arange(T) * 7) % T]
    out = np.empty((N, T, hd), dtype)
    den = np.empty((N, T), dtype)
    K.linear_attention_forward(out, den, qf, kf, v, kc)
    # relative, with a floor of 16 ulps of the summed terms' L2 norm times sqrt(T) (measured at
    # most 1.4 over 36 seeds, in float64 and in float32)
    want, terms = masked_reference(qf, kf, v, kc)
    eps = np.finfo(dtype).eps
    assert_close(out, want, rtol=100 * eps, floor_ulps=16, eps=eps, k=T, scale=terms,
                 dtype=dtype)


def test_inputs_times_ten_stay_finite_positive_and_convex():
    """q, k, v x 10 in float32: no overflow, no NaN, every row's weights sum to more than the
    guard (the running maximum keeps early keys from underflowing when a later key is large;
    with one maximum over the whole sequence, 11 of these 32 rows fell to the guard), and every
    output is a convex combination of the values it may see."""
    rng = np.random.default_rng(5)
    N, T, d = 2, 16, 16
    q, k, v = (rng.standard_normal((N, T, d)).astype(np.float32) * 10 for _ in range(3))
    w = random_features(64, d, 6)
    (qf, _), (kf, kc) = features(q, w), features(k, w)
    assert np.all(qf >= 0) and np.all(kf >= 0) and np.all(np.isfinite(kc))
    out, den = np.empty((N, T, d), np.float32), np.empty((N, T), np.float32)
    K.linear_attention_forward(out, den, qf, kf, v, kc)
    assert np.all(np.isfinite(out)) and np.all(den > K.LINATT_DEN_MIN)
    # the selected backend (C when built) too. Kept as it was: on these x10 inputs the outputs
    # are ~25, so atol 1e-4 is 4e-6 of their scale -- tighter than a floor tied to the row
    # maximum that holds across seeds (up to 128 ulps of it over 60 seeds)
    np.testing.assert_allclose(causal_linear_attention(q, k, v, "favor", w), out, rtol=1e-4,
                               atol=1e-4)
    slack = 16 * np.finfo(np.float32).eps * np.abs(v).max()    # rounding: measured 0.6 ulp
    for n in range(N):
        for t in range(T):
            lo, hi = v[n, :t + 1].min(0), v[n, :t + 1].max(0)
            assert np.all(out[n, t] >= lo - slack) and np.all(out[n, t] <= hi + slack)


def test_denominator_guard_never_divides_by_zero():
    N, T, m, hd = 1, 4, 3, 2
    qf = np.zeros((N, T, m), np.float32)
    kf = np.ones((N, T, m), np.float32)
    v = np.ones((N, T, hd), np.float32)
    out = np.empty((N, T, hd), np.float32)
    den = np.empty((N, T), np.float32)
    K.linear_attention_forward(out, den, qf, kf, v)
    assert np.all(out == 0) and np.all(den == np.float32(K.LINATT_DEN_MIN))
    dq, dk, dv = np.zeros_like(qf), np.zeros_like(kf), np.zeros_like(v)
    K.linear_attention_backward(dq, dk, dv, np.ones_like(out), qf, kf, v, out, den)
    assert all(np.all(np.isfinite(g)) for g in (dq, dk, dv))


def _fd_check(loss, analytic, x, rng):
    """test_kernels.check_grads at 25 points: relative 1e-6, with a floor of 64 eps64 |loss| /
    step (the differences' rounding; measured at most 4.4 of those here)."""
    check_grads(loss, {"x": analytic}, {"x": x}, rng, floor_ulps=64, max_points=25)


@pytest.mark.parametrize("scaled", [False, True])
def test_linear_attention_backward_matches_finite_differences(scaled):
    """With and without key stabilisers kc (spread so that the running maximum grows and the
    sums are rescaled going both ways)."""
    rng = np.random.default_rng(6)
    N, T, m, hd = 2, 9, 5, 4
    qf, kf = (np.exp(rng.standard_normal((N, T, m))) for _ in range(2))
    v = rng.standard_normal((N, T, hd))
    R = rng.standard_normal((N, T, hd))
    kc = rng.uniform(-3, 3, (N, T)) if scaled else None

    def loss():
        out, den = np.empty((N, T, hd)), np.empty((N, T))
        K.linear_attention_forward(out, den, qf, kf, v, kc)
        return float((out * R).sum())
    out, den = np.empty((N, T, hd)), np.empty((N, T))
    K.linear_attention_forward(out, den, qf, kf, v, kc)
    dq, dk, dv = np.zeros_like(qf), np.zeros_like(kf), np.zeros_like(v)
    K.linear_attention_backward(dq, dk, dv, R, qf, kf, v, out, den, kc)
    for x, g in ((qf, dq), (kf, dk), (v, dv)):
        _fd_check(loss, g, x, rng)
    # None skips a gradient; the others are unchanged
    dq2 = np.zeros_like(qf)
    K.linear_attention_backward(dq2, None, None, R, qf, kf, v, out, den, kc)
    np.testing.assert_allclose(dq2, dq, rtol=1e-12)


@pytest.mark.parametrize("kernel", ["favor", "linear"])
def test_feature_backward_through_normalised_attention_matches_finite_differences(kernel):
    """The stabiliser cancels in the normalised attention, so FD of the whole path checks the
    feature map's backward (which treats it as a constant)."""
    rng = np.random.default_rng(7)
    N, T, d, hd = 2, 7, 6, 3
    q, k = rng.standard_normal((2, N, T, d))
    v = rng.standard_normal((N, T, hd))
    R = rng.standard_normal((N, T, hd))
    w = random_features(10, d, 8, True, np.float64) if kernel == "favor" else None

    def loss():
        return float((causal_linear_attention(q, k, v, kernel, w) * R).sum())
    (qf, _), (kf, kc) = features(q, w), features(k, w)
    out, den = np.empty((N, T, hd)), np.empty((N, T))
    K.linear_attention_forward(out, den, qf, kf, v, kc)
    dqf, dkf = np.zeros_like(qf), np.zeros_like(kf)
    K.linear_attention_backward(dqf, dkf, None, R, qf, kf, v, out, den, kc)
    dq, dk = np.zeros_like(q), np.zeros_like(k)
    feature_maps_backward(dq, dk, dqf, dkf, qf, kf, q, k, kernel, w, backend=K)
    for x, g in ((q, dq), (k, dk)):
        _fd_check(loss, g, x, rng)


def test_bad_arguments_are_refused_by_name():
    x = np.zeros((2, 3, 4), np.float32)
    w = np.zeros((5, 4), np.float32)
    with pytest.raises(ValueError, match="w must have shape"):
        K.favor_features_forward(np.empty((2, 3, 5), np.float32), x, np.zeros((5, 3), np.float32))
    with pytest.raises(ValueError, match="out"):
        K.favor_features_forward(np.empty((2, 3, 4), np.float32), x, w)
    with pytest.raises(ValueError, match="c "):
        K.favor_features_forward(np.empty((2, 3, 5), np.float32), x, w, np.empty((2, 4), np.float32))
    with pytest.raises(ValueError, match="kc"):
        K.linear_attention_forward(np.empty((2, 3, 4), np.float32), np.empty((2, 3), np.float32),
                                   x, x, x, np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="v must have shape"):
        K.linear_attention_forward(np.empty((2, 3, 4), np.float32), np.empty((2, 3), np.float32),
                                   x, x, np.zeros((2, 4, 4), np.float32))
    with pytest.raises(TypeError):
        K.linear_attention_forward(np.empty((2, 3, 4), np.float32), np.empty((2, 3), np.float32),
                                   x, x.astype(np.float64), x)
    with pytest.raises(ValueError, match="kernel must be"):
        causal_linear_attention(x, x, x, "cosine")


# ---- the C kernels against the NumPy specification --------------------------------------------

def _c():
    from conftest import need_c
    need_c()
    from pyllm.backend import c
    return c


def _case(rng, N=3, T=37, d=16, m=24, hd=8):
    q, k = (rng.standard_normal((N, T, d)).astype(np.float32) for _ in range(2))
    v = rng.standard_normal((N, T, hd)).astype(np.float32)
    w = random_features(m, d, rng)
    return q, k, v, w


def _run_all(be, q, k, v, w):
    """Every linear-attention kernel of backend module `be`, in the dtype of q, k, v, w."""
    N, T, d = q.shape
    m, hd, dt = w.shape[0], v.shape[2], q.dtype
    qf, kf = np.empty((N, T, m), dt), np.empty((N, T, m), dt)
    kc = np.empty((N, T), dt)
    be.favor_features_forward(qf, q, w)
    be.favor_features_forward(kf, k * np.linspace(0.5, 3, T, dtype=np.float32)[:, None], w, kc)
    eq, ek = np.empty_like(q), np.empty_like(k)
    be.elu_features_forward(eq, q)
    be.elu_features_forward(ek, k)
    out, den = np.empty((N, T, hd), dt), np.empty((N, T), dt)
    be.linear_attention_forward(out, den, qf, kf, v, kc)
    dout = np.asarray(np.random.default_rng(1).standard_normal(out.shape), np.float32).astype(dt)
    dqf, dkf, dv = np.zeros_like(qf), np.zeros_like(kf), np.zeros_like(v)
    be.linear_attention_backward(dqf, dkf, dv, dout, qf, kf, v, out, den, kc)
    out0, den0 = np.empty_like(out), np.empty_like(den)              # without kc
    be.linear_attention_forward(out0, den0, qf, kf, v)
    dq0 = np.zeros_like(qf)
    be.linear_attention_backward(dq0, None, None, dout, qf, kf, v, out0, den0)
    dq, dk = np.full_like(q, 0.5), np.zeros_like(k)            # backwards add into dx
    be.favor_features_backward(dq, dqf, qf, q, w)
    be.elu_features_backward(dk, np.ascontiguousarray(dkf[..., :d]), k)
    return dict(qf=qf, kf=kf, kc=kc, eq=eq, out=out, den=den, dqf=dqf, dkf=dkf, dv=dv, dq=dq,
                dk=dk, out0=out0, dq0=dq0)


# (rtol, floor in ulps of the largest |value| of the sequence) per output, ~10x the worst of
# 20 seeds on NumPy float32, portable C and AVX2 against the specification in float64. The floor
# is over a whole sequence (the last two axes of a 3-d output): a gradient row can be zero in
# exact arithmetic (dqf at t = 0) while its float32 terms are not.
LINATT_TOL = dict(qf=(2e-5, 100), kf=(4e-5, 200), kc=(2e-5, 50), eq=(2e-6, 8), out=(6e-5, 150),
                  den=(2e-5, 100), dqf=(3e-5, 200), dkf=(3e-5, 150), dv=(6e-5, 150),
                  dq=(1e-4, 100), dk=(1.5e-4, 150), out0=(3e-5, 50), dq0=(3e-5, 250))


def test_c_kernels_match_the_numpy_specification():
    """The C kernels at every SIMD level, and the NumPy ones in float32, against the NumPy
    specification run in float64."""
    import pyllm
    C = _c()
    q, k, v, w = _case(np.random.default_rng(9))
    want = _run_all(K, *(x.astype(np.float64) for x in (q, k, v, w)))
    got = {"numpy-float32": _run_all(K, q, k, v, w)}
    prev = pyllm.get_simd()
    try:
        for level in pyllm.available_simd():
            pyllm.set_simd(level)
            got["c-" + level] = _run_all(C, q, k, v, w)
    finally:
        pyllm.set_simd(prev)
    for impl, res in got.items():
        for key, b in res.items():
            rtol, floor_ulps = LINATT_TOL[key]
            assert_close(b, want[key], rtol=rtol, floor_ulps=floor_ulps, dtype=np.float32,
                         axis=(-2, -1) if b.ndim == 3 else -1, what="%s %s" % (impl, key))


def test_c_kernels_same_bits_for_any_thread_count():
    C = _c()
    import pyllm
    rng = np.random.default_rng(10)
    q, k, v, w = _case(rng, N=7, T=29)
    outs = []
    old = pyllm.get_num_threads()
    try:
        for n in (1, 2, 3):
            pyllm.set_num_threads(n)
            pyllm.set_backend("c")
            out = causal_linear_attention(q, k, v, "favor", w)
            qf = np.empty(q.shape[:2] + (w.shape[0],), np.float32)
            C.favor_features_forward(qf, q, w)
            dq = np.zeros_like(q)
            C.favor_features_backward(dq, qf, qf, q, w)
            outs.append((out, dq))
    finally:
        pyllm.set_num_threads(old)
        pyllm.set_backend("auto")
    for o, g in outs[1:]:
        assert np.array_equal(o, outs[0][0]) and np.array_equal(g, outs[0][1])


def test_c_path_refuses_float64_and_bad_shapes_before_c():
    C = _c()
    x = np.zeros((2, 3, 4), np.float64)
    with pytest.raises(TypeError, match="dtype"):
        C.elu_features_forward(np.empty_like(x), x)
    x = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match="kf"):
        C.linear_attention_forward(np.empty((2, 3, 4), np.float32), np.empty((2, 3), np.float32),
                                   x, np.zeros((2, 3, 5), np.float32), x)
