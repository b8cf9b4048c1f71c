"""Kernel tests: C, at every SIMD level the CPU has, against the NumPy specification run in
float64 (and the specification itself run in float32 against the same tolerances), NumPy backward
against finite differences (float64), same bits for any thread count, and the argument checks of
the boundary. Every comparison is tests/_close.py's assert_close: relative to each element, with a
floor only for what cancellation can cost (floor_terms); tests/test_close.py proves by mutation
that these checks catch a flushed tail, a 1e-4 scale, a 1e-3 error in one element and a NaN."""
import numpy as np
import pytest

import pyllm
from pyllm.backend import backend_module
from pyllm.backend import numpy as npk

from _close import assert_close
from conftest import need_c

# ---------------------------------------------------------------------------------------------
# One case builder per kernel: returns (kernel name, argument list, indices of the outputs); the
# tolerances are per kernel (TOL below). Outputs that the kernel overwrites start as NaN (so a
# skipped element shows); gradients that the kernel adds into start random (so "adds into" is
# checked too).


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def nan(*shape):
    return np.full(shape, np.nan, dtype=np.float32)


def case_encoder_forward(rng, B, T, C, V, pos0=0):
    maxT = T + pos0 + 2
    idx = rng.integers(0, V, size=(B, T))
    return "encoder_forward", [nan(B, T, C), idx, f32(rng, V, C), f32(rng, maxT, C), pos0], [0]


def case_encoder_backward(rng, B, T, C, V):
    idx = rng.integers(0, V, size=(B, T))
    return ("encoder_backward", [f32(rng, V, C), f32(rng, T + 3, C), f32(rng, B, T, C), idx],
            [0, 1])


def case_layernorm_forward(rng, N, C):
    x = f32(rng, N, C, scale=3.0) + 1.5
    return ("layernorm_forward", [nan(N, C), nan(N), nan(N), x, f32(rng, C), f32(rng, C)],
            [0, 1, 2])


def case_layernorm_backward(rng, N, C):
    x = f32(rng, N, C, scale=3.0) + 1.5
    mean, rstd = np.empty(N, np.float32), np.empty(N, np.float32)
    w = f32(rng, C)
    npk.layernorm_forward(np.empty_like(x), mean, rstd, x, w, f32(rng, C))
    return ("layernorm_backward", [f32(rng, N, C), f32(rng, C), f32(rng, C), f32(rng, N, C), x, w,
                                   mean, rstd], [0, 1, 2])


def case_matmul_forward(rng, N, C, OC, bias=True, residual=False):
    return ("matmul_forward", [nan(N, OC), f32(rng, N, C), f32(rng, C, OC),
                               f32(rng, OC) if bias else None,
                               f32(rng, N, OC) if residual else None], [0])


def case_matmul_backward(rng, N, C, OC):
    return ("matmul_backward", [f32(rng, N, C), f32(rng, C, OC), f32(rng, OC), f32(rng, N, OC),
                                f32(rng, N, C), f32(rng, C, OC)], [0, 1, 2])


def case_gemm(rng, M, N, K, ta, tb, acc):
    a = f32(rng, K, M) if ta else f32(rng, M, K)
    b = f32(rng, N, K) if tb else f32(rng, K, N)
    c = f32(rng, M, N) if acc else nan(M, N)
    return "gemm", [c, a, b, ta, tb, acc], [0]


def case_gelu_forward(rng, n):
    return "gelu_forward", [nan(n), f32(rng, n, scale=3.0)], [0]


def case_gelu_backward(rng, n, accumulate=True):
    # accumulate=False must overwrite dinp without reading it: it starts as NaN
    dinp = f32(rng, n) if accumulate else nan(n)
    args = [dinp, f32(rng, n, scale=3.0), f32(rng, n)] + [False] * (not accumulate)
    return "gelu_backward", args, [0]


def case_residual_forward(rng, n):
    return "residual_forward", [nan(n), f32(rng, n), f32(rng, n)], [0]


def case_residual_backward(rng, n):
    return "residual_backward", [f32(rng, n), f32(rng, n), f32(rng, n)], [0, 1]


def case_softmax_forward(rng, N, V):
    return "softmax_forward", [nan(N, V), f32(rng, N, V, scale=5.0)], [0]


def case_softmax_backward(rng, N, V):
    p = np.empty((N, V), np.float32)
    npk.softmax_forward(p, f32(rng, N, V, scale=3.0))
    return "softmax_backward", [f32(rng, N, V), f32(rng, N, V), p], [0]


def case_crossentropy_forward(rng, N, V):
    return ("crossentropy_forward", [nan(N), f32(rng, N, V, scale=4.0), rng.integers(0, V, N)],
            [0])


def case_crossentropy_backward(rng, N, V):
    return ("crossentropy_backward", [nan(N, V), f32(rng, N, V, scale=4.0),
                                      rng.integers(0, V, N), 1.0 / max(N, 1)], [0])


def case_attention_forward(rng, B, T, C, NH):
    return ("attention_forward", [nan(B, T, C), nan(B, NH, T), f32(rng, B, T, 3 * C), NH],
            [0, 1])


def case_attention_backward(rng, B, T, C, NH, accumulate=True):
    qkv = f32(rng, B, T, 3 * C)
    out, lse = np.empty((B, T, C), np.float32), np.empty((B, NH, T), np.float32)
    npk.attention_forward(out, lse, qkv, NH)
    dqkv = f32(rng, B, T, 3 * C) if accumulate else nan(B, T, 3 * C)  # NaN: must not be read
    return ("attention_backward", [dqkv, f32(rng, B, T, C), qkv, out, lse, NH]
            + [False] * (not accumulate), [0])


def case_attention_decode(rng, B, pos, C, NH, maxT=None):
    maxT = maxT or pos + 3
    hd = C // NH
    return ("attention_decode", [nan(B, C), f32(rng, B, NH, maxT, hd), f32(rng, B, NH, maxT, hd),
                                 f32(rng, B, 3 * C), pos, NH], [0, 1, 2])


def case_attention_probs(rng, B, T, C, NH):
    qkv = f32(rng, B, T, 3 * C)
    out, lse = np.empty((B, T, C), np.float32), np.empty((B, NH, T), np.float32)
    npk.attention_forward(out, lse, qkv, NH)
    return ("attention_probs", [nan(B, NH, T, T), qkv, lse, NH], [0])


def case_adamw_update(rng, n, step=3, wd=0.1):
    v = np.abs(f32(rng, n)) * 0.01
    return ("adamw_update", [f32(rng, n), f32(rng, n), f32(rng, n, scale=0.1), v, 1e-3, 0.9, 0.95,
                             1e-8, wd, step], [0, 2, 3])


CASES = [
    # (builder, sizes): 1, primes, sizes that are multiples of no block size, T = 1, a large case
    *[(case_encoder_forward, s) for s in [(1, 1, 1, 1), (2, 7, 13, 5), (3, 17, 64, 97),
                                          (1, 1, 8, 3, 4), (4, 64, 128, 65)]],
    *[(case_encoder_backward, s) for s in [(1, 1, 1, 1), (2, 7, 13, 5), (3, 17, 33, 4),
                                           (4, 64, 128, 65)]],
    *[(case_layernorm_forward, s) for s in [(1, 1), (1, 7), (13, 31), (17, 64), (512, 768)]],
    *[(case_layernorm_backward, s) for s in [(1, 1), (1, 7), (13, 31), (17, 97), (512, 768)]],
    *[(case_matmul_forward, s) for s in [(1, 1, 1), (1, 5, 3), (7, 13, 17), (33, 64, 97),
                                         (6, 16, 16), (2, 3, 5, False), (300, 384, 1536)]],
    # with the fused residual: decode rows, one row block, several K slices, no bias
    *[(case_matmul_forward, s) for s in [(1, 5, 3, True, True), (3, 384, 1152, True, True),
                                         (7, 13, 17, False, True), (100, 900, 256, True, True),
                                         (200, 1000, 64, True, True)]],
    *[(case_matmul_backward, s) for s in [(1, 1, 1), (7, 13, 17), (33, 64, 97), (257, 129, 65),
                                          (300, 384, 1536)]],
    # weight gradients with a K-split (a small dweight, 4 or more K slices; odd: 5 -> 6)
    *[(case_matmul_backward, s) for s in [(1500, 100, 300), (1900, 257, 40), (1600, 700, 96)]],
    *[(case_gemm, (130, 70, 1700, True, False, acc)) for acc in (False, True)],
    *[(case_gemm, (M, N, K, ta, tb, acc)) for (M, N, K) in [(1, 1, 1), (5, 7, 3), (37, 19, 129)]
      for ta in (False, True) for tb in (False, True) for acc in (False, True)],
    (case_gemm, (64, 1000, 128, False, True, False)),
    *[(case_gelu_forward, (n,)) for n in (1, 7, 16385, 100003)],
    *[(case_gelu_backward, (n,)) for n in (1, 7, 16385, 100003)],
    *[(case_gelu_backward, (n, False)) for n in (1, 7, 100003)],  # overwrite, not add
    *[(case_residual_forward, (n,)) for n in (1, 7, 100003)],
    *[(case_residual_backward, (n,)) for n in (1, 7, 100003)],
    *[(case_softmax_forward, s) for s in [(1, 1), (3, 7), (17, 65), (64, 50257)]],
    *[(case_softmax_backward, s) for s in [(1, 1), (3, 7), (17, 65), (64, 5000)]],
    *[(case_crossentropy_forward, s) for s in [(1, 1), (3, 7), (17, 65), (64, 50257)]],
    *[(case_crossentropy_backward, s) for s in [(1, 1), (3, 7), (17, 65), (64, 50257)]],
    *[(case_attention_forward, s) for s in [(1, 1, 4, 1), (2, 7, 12, 3), (1, 17, 16, 2),
                                            (2, 64, 64, 4), (1, 129, 24, 3), (1, 300, 64, 2),
                                            (2, 67, 64, 2), (1, 130, 128, 2)]],
    *[(case_attention_backward, s) for s in [(1, 1, 4, 1), (2, 7, 12, 3), (1, 17, 16, 2),
                                             (2, 64, 64, 4), (1, 129, 24, 3), (1, 260, 64, 2),
                                             (2, 67, 64, 2), (1, 130, 128, 2),
                                             (1, 9, 600, 2)]],  # head size 300: the plain path
    # overwriting dqkv: every (row, column) of it written, from the tiled and the plain path
    *[(case_attention_backward, s + (False,)) for s in [(1, 1, 4, 1), (2, 7, 12, 3),
                                                        (2, 64, 64, 4), (1, 129, 24, 3),
                                                        (1, 260, 64, 2), (2, 67, 64, 2),
                                                        (1, 130, 128, 2), (1, 9, 600, 2)]],
    *[(case_attention_decode, s) for s in [(1, 0, 4, 1), (2, 6, 12, 3), (1, 200, 64, 4),
                                           (3, 130, 48, 2, 140)]],
    *[(case_attention_probs, s) for s in [(1, 1, 4, 1), (2, 7, 12, 3), (1, 130, 64, 4),
                                          (1, 9, 600, 2)]],
    *[(case_adamw_update, s) for s in [(1,), (7,), (100003,), (1000, 1), (1000, 50, 0.0)]],
]


def _copy(args):
    return [a.copy() if isinstance(a, np.ndarray) else a for a in args]


def run_kernel(mod, name, args):
    """Run kernel `name` of backend module `mod` on copies of args; returns the copies."""
    args = _copy(args)
    getattr(mod, name)(*args)
    return args


# Tolerances per kernel: (rtol, floor_ulps) of tests/_close.py's assert_close against the NumPy
# specification run in float64; the floor is floor_ulps * eps32 * sqrt(k) * scale with (k, scale)
# from floor_terms below. Calibrated on CASES (12 seeds) and 400 random property-test shapes, on
# the portable C, AVX2 and the NumPy specification run in float32: the comment gives the largest
# relative error left over by the floor ("rel", where the floor is 0) or the largest floor needed
# ("ulps", in ulps * sqrt(k) of the scale), then the worst error / allowed ratio -- at most 0.13,
# so every tolerance is ~8x or more what float32 produces here. Correctly rounded results get
# no floor and rtol 1e-6; softmax and attention probabilities get no floor (they do not cancel:
# every probability, however small, is relatively accurate, off by about eps * |x - max x|).
TOL = {
    "encoder_forward": (1e-6, 0),           # rel 6.0e-8 (one rounding), ratio 0.06
    "encoder_backward": (5e-6, 4),          # ulps 0.28, ratio 0.10
    "layernorm_forward": (5e-6, 4),         # ulps 0.31, ratio 0.08
    "layernorm_backward": (2e-5, 4),        # ulps 0.41, ratio 0.11
    "matmul_forward": (2e-5, 8),            # ulps 0.60, ratio 0.08
    "matmul_backward": (2e-5, 8),           # ulps 0.59, ratio 0.08
    "gemm": (2e-5, 8),                      # ulps 0.57, ratio 0.08
    "gelu_forward": (1e-5, 8),              # ratio 0.02
    "gelu_backward": (1e-5, 8),             # ulps 0.77, ratio 0.11
    "residual_forward": (1e-6, 0),          # rel 6.0e-8 (one rounding), ratio 0.06
    "residual_backward": (1e-6, 0),         # rel 6.0e-8 (one rounding), ratio 0.06
    "softmax_forward": (3e-5, 0),           # rel 2.3e-6, ratio 0.08
    "softmax_backward": (1e-5, 4),          # ulps 0.08, ratio 0.05
    "crossentropy_forward": (2e-6, 4),      # ulps 0.07, ratio 0.05
    "crossentropy_backward": (4e-5, 16),    # rel 4.0e-6, ulps 1.2 (the target), ratio 0.11
    "attention_forward": (3e-5, 16),        # ulps 1.5, ratio 0.13
    "attention_backward": (3e-5, 8),        # ulps 0.71, ratio 0.10
    "attention_decode": (1e-5, 8),          # ulps 0.73, ratio 0.11
    "attention_probs": (2e-5, 0),           # rel 1.7e-6, ratio 0.08
    "adamw_update": (1e-5, 16),             # ulps 1.5, ratio 0.10
}


def _squares(args):
    """args with every float array squared (float64)."""
    return [a * a if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a for a in args]


def _heads(x, NH):
    """(B, T, C) -> (B, NH, T, hd)."""
    B, T, C = x.shape
    return x.reshape(B, T, NH, C // NH).transpose(0, 2, 1, 3)


def _merge(x):
    """(B, NH, T, hd) -> (B, T, C)."""
    B, NH, T, hd = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, NH * hd)


def _probs(qkv, lse, NH):
    B, T, C3 = qkv.shape
    p = np.empty((B, NH, T, T))
    npk.attention_probs(p, qkv, lse, NH)
    return p


def floor_terms(name, a, out, want):
    """(k, scale) of the floor of output number `out` of kernel `name`: the error allowed beyond
    rtol is floor_ulps * eps32 * sqrt(k) * scale, elementwise. `a` are the float64 arguments and
    `want` the float64 results.

    scale is the size of the terms that rounding touches on the way to each element -- not the
    element itself, which may have cancelled -- and k how many of them are summed:
    - kernels linear in each argument (GEMMs, embedding and bias gradients): the L2 norm of the
      K terms, sqrt(spec(squared arguments)), the random-walk size of K roundings;
    - attention: the same norms of the probability-weighted terms, taken from the probabilities;
    - layernorm, GELU, AdamW, cross-entropy: the magnitudes of the terms of their formulas;
    - correctly rounded results (a sum of two float32 numbers) and results without cancellation
      (softmax and attention probabilities) need none: floor_ulps 0 in TOL.
    """
    if name in ("matmul_forward", "matmul_backward", "gemm", "encoder_backward"):
        scale = np.sqrt(run_kernel(npk, name, _squares(a))[out])
        if name == "matmul_forward":                       # inp (N,C) @ weight (C,OC)
            k = a[1].shape[-1] + 2
        elif name == "matmul_backward":                    # dinp: over OC; dweight, dbias: N
            k = (a[3].shape[-1] if out == 0 else int(np.prod(a[3].shape[:-1]))) + 1
        elif name == "gemm":
            k = a[1].shape[0 if a[3] else 1] + 1
        else:                                              # a token's occurrences; dwpe: B
            idx = np.asarray(a[3])
            k = 1 + (int(np.bincount(idx.reshape(-1)).max(initial=0)) if out == 0
                     else idx.shape[0])
        return k, scale
    if name == "attention_forward":
        qkv, NH = a[2], a[3]
        q, kk, v = [_heads(x, NH) for x in np.split(qkv, 3, axis=-1)]
        hd, T = q.shape[-1], q.shape[-2]
        if out == 0:                                       # sum over s of p_ts v_s
            p = _probs(qkv, want[1], NH)
            return T, _merge(np.sqrt((p * p) @ (v * v)))
        s2 = np.sqrt((q * q) @ (kk * kk).transpose(0, 1, 3, 2)) / np.sqrt(hd)   # q.k terms
        s2 = np.where(np.tril(np.ones((T, T), bool)), s2, 0.0).max(-1)
        return hd, s2 + np.abs(want[1])
    if name == "attention_backward":
        d0, dout, qkv, o, lse, NH = a[:6]
        acc = a[6] if len(a) > 6 else True
        q, kk, v = [_heads(x, NH) for x in np.split(qkv, 3, axis=-1)]
        g, o = _heads(dout, NH), _heads(o, NH)
        hd, T = q.shape[-1], q.shape[-2]
        p = _probs(qkv, lse, NH)
        # ds = p * (g.v - g.o) / sqrt(hd): both dot products with their terms' norms
        vt = v.transpose(0, 1, 3, 2)
        w = p * (np.abs(g @ vt) + np.sqrt((g * g) @ (vt * vt))
                 + np.abs((g * o).sum(-1, keepdims=True))
                 + np.sqrt((g * g * o * o).sum(-1, keepdims=True)))
        w2 = w * w / hd
        dq, dk = w2 @ (kk * kk), w2.transpose(0, 1, 3, 2) @ (q * q)
        dv = (p * p).transpose(0, 1, 3, 2) @ (g * g)
        terms = np.concatenate([_merge(dq), _merge(dk), _merge(dv)], axis=-1)
        return T + hd, np.sqrt(terms + (d0 * d0 if acc else 0.0))
    if name == "attention_decode":
        if out != 0:                                       # the caches: copies
            return 1, np.abs(want[out])
        qkv, pos, NH = a[3], a[4], a[5]
        kc, vc = want[1][:, :, :pos + 1], want[2][:, :, :pos + 1]      # (B,NH,pos+1,hd)
        B, C = qkv.shape[0], qkv.shape[1] // 3
        q = qkv[:, :C].reshape(B, NH, 1, C // NH)
        s = q @ kc.transpose(0, 1, 3, 2) / np.sqrt(C // NH)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        return pos + 1, np.sqrt((p * p) @ (vc * vc)).reshape(B, C)
    if name == "layernorm_forward":
        x, w, b = a[3], a[4], a[5]
        C = x.shape[-1]
        mean, rstd = want[1][:, None], want[2][:, None]
        rms = np.sqrt((x * x).mean(-1, keepdims=True))
        if out == 0:                      # (x - mean) * rstd * w + b, mean off by ~eps * rms
            return C, np.abs(w) * (np.abs(x - mean) + rms) * rstd + np.abs(b)
        return C, (rms / np.sqrt(C) if out == 1 else rstd)[:, 0]
    if name == "layernorm_backward":
        d0, dw0, db0, dout, x, w, mean, rstd = a
        N, C = x.shape
        rstd = rstd[:, None]
        xhat = (x - mean[:, None]) * rstd
        dxhat = dout * w
        if out == 0:
            rms = lambda y: np.sqrt((y * y).mean(-1, keepdims=True))   # noqa: E731
            return C, np.abs(d0) + rstd * (np.abs(dxhat) + rms(dxhat)
                                           + np.abs(xhat) * rms(dxhat * xhat))
        if out == 1:
            return N + 1, np.sqrt(dw0 * dw0 + (dout * dout * (xhat * xhat + 1.0)).sum(0))
        return N + 1, np.sqrt(db0 * db0 + (dout * dout).sum(0))
    if name == "softmax_backward":                         # d0 + p * (dout - sum(dout * p))
        d0, dout, p = a
        return p.shape[-1], np.abs(d0) + p * (np.abs(dout)
                                              + np.abs(dout * p).sum(-1, keepdims=True))
    if name == "gelu_forward":                             # 0.5 x (1 + tanh(...))
        return 1, np.abs(a[1])
    if name == "gelu_backward":
        d0, x, dout = a[:3]
        acc = a[3] if len(a) > 3 else True
        grad = 0.5 + 0.5 * np.abs(x) * npk.GELU_K * (1 + 3 * 0.044715 * x * x)
        return 1, (np.abs(d0) if acc else 0.0) + np.abs(dout) * grad
    if name == "adamw_update":
        p, g, m, v, lr, b1, b2, eps, wd, t = a
        if out == 2:                                       # b1 m + (1 - b1) g
            return 1, b1 * np.abs(m) + (1 - b1) * np.abs(g)
        if out == 3:                                       # no cancellation
            return 1, np.abs(want[3])
        # the update m^ / (sqrt(v^) + eps), with m at the size of its terms (m may cancel); the
        # bias corrections 1 - b**t cancel too: an ulp of b (float32) is t b**t / (1 - b**t) ulps
        m_terms = b1 * np.abs(m) + (1 - b1) * np.abs(g)
        upd = m_terms / (1 - b1 ** t) / (np.sqrt(want[3] / (1 - b2 ** t)) + eps)
        amp = 1 + t * b1 ** t / (1 - b1 ** t) + 0.5 * t * b2 ** t / (1 - b2 ** t)
        return 1, np.abs(p) + lr * (upd * amp + wd * np.abs(p))
    if name == "crossentropy_forward":                     # logsumexp - logit[target]; the log
        logits, t = a[1], np.asarray(a[2])                 # of a rounded sum is off by ~eps
        xt = np.where(t >= 0, logits[np.arange(len(t)), np.maximum(t, 0)], 0.0)
        return 1, np.where(t >= 0, np.abs(want[0] + xt) + np.abs(xt) + 1, 0.0)
    if name == "crossentropy_backward":                    # (p - 1) * scale at the target only,
        logits, t, s = a[1], np.asarray(a[2]), a[3]        # p off by ~eps * |x - max x|
        scale = np.zeros(logits.shape)
        rows = np.flatnonzero(t >= 0)
        pt = np.abs(want[0][rows, t[rows]] / s + 1) if s else 0.0
        z = logits[rows] - logits[rows].max(-1, keepdims=True)
        lse = np.log(np.exp(z).sum(-1))                    # log of the normaliser, >= 0
        scale[rows, t[rows]] = abs(s) * (1 + pt * (np.abs(z[np.arange(len(rows)), t[rows]]) + lse))
        return 1, scale
    return 1, np.abs(want[out])                            # no cancellation: floor_ulps 0


def float64_args(args):
    """args with every float32 array as float64: the specification's arguments."""
    return [a.astype(np.float64) if isinstance(a, np.ndarray) and a.dtype == np.float32 else a
            for a in args]


def check_outputs(name, args, outs, got, want, what):
    """Every output of kernel `name` (float32, `got`) against the float64 specification (`want`),
    with the kernel's TOL and the floor of floor_terms."""
    rtol, floor_ulps = TOL[name]
    a64 = float64_args(args)
    for i in outs:
        k, scale = floor_terms(name, a64, i, want)
        assert_close(got[i], want[i], rtol=rtol, floor_ulps=floor_ulps, k=k, scale=scale,
                     dtype=np.float32, what="%s output %d" % (what, i))


def spec_case(builder, sizes, seed):
    """Build a case and run the specification in float64: (name, args, outs, want)."""
    name, args, outs = builder(np.random.default_rng(seed), *sizes)
    return name, args, outs, run_kernel(npk, name, float64_args(args))


def _case_id(case):
    builder, sizes = case
    return "%s%s" % (builder.__name__[5:], sizes)


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_c_matches_numpy(case, simd, cmod):
    """The C kernels, at every SIMD level this CPU has, against the float64 specification."""
    name, args, outs, want = spec_case(*case, seed=7)
    got = run_kernel(cmod, name, args)
    check_outputs(name, args, outs, got, want, "%s [%s]" % (_case_id(case), simd))


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_numpy_float32_within_the_same_tolerance(case):
    """The specification itself, run in float32, meets the tolerances the C kernels are held to:
    they are what float32 arithmetic allows, not what one implementation happens to round to."""
    name, args, outs, want = spec_case(*case, seed=7)
    check_outputs(name, args, outs, run_kernel(npk, name, args), want, _case_id(case))


@pytest.fixture(params=["numpy"] + ["c-" + level for level in pyllm.backend.SIMD_LEVELS])
def kimpl(request):
    """A backend's kernel module, the C one once per SIMD level (forced with pyllm.set_simd and
    restored after; a level this CPU lacks is skipped): conftest's kmod crossed with its simd,
    without running the NumPy case once per level."""
    if request.param == "numpy":
        yield npk
        return
    need_c()
    level = request.param[2:]
    if level not in pyllm.available_simd():
        pytest.skip("SIMD level %s is not available on this CPU" % level)
    prev = pyllm.get_simd()
    pyllm.set_simd(level)
    try:
        yield backend_module("c")
    finally:
        pyllm.set_simd(prev)


def test_norm_squared_and_scale(kimpl, rng):
    x = f32(rng, 100003)
    want = float((x.astype(np.float64) ** 2).sum())
    assert abs(kimpl.norm_squared(x) - want) <= 1e-12 * want
    y = x.copy()
    kimpl.scale_inplace(y, 0.5)
    np.testing.assert_array_equal(y, x * np.float32(0.5))


def test_crossentropy_backward_in_place(kimpl, rng):
    logits = f32(rng, 9, 31)
    t = rng.integers(0, 31, 9)
    args = [nan(9, 31), logits, t, 0.25]
    want = run_kernel(npk, "crossentropy_backward", float64_args(args))
    kimpl.crossentropy_backward(logits, logits, t, 0.25)  # dlogits is logits
    check_outputs("crossentropy_backward", args, [0], [logits], want, "in place")


# ---------------------------------------------------------------------------------------------
# hand-computed values (independent of both backends)

def test_hand_computed_values(kimpl):
    kmod = kimpl
    # layernorm of [1, 2, 3]: mean 2, var 2/3
    out, m, r = np.empty((1, 3), np.float32), np.empty(1, np.float32), np.empty(1, np.float32)
    kmod.layernorm_forward(out, m, r, np.array([[1, 2, 3]], np.float32),
                           np.ones(3, np.float32), np.zeros(3, np.float32))
    s = 1 / np.sqrt(2 / 3 + 1e-5)
    np.testing.assert_allclose(out[0], [-s, 0, s], rtol=1e-6)
    np.testing.assert_allclose([m[0], r[0]], [2.0, s], rtol=1e-6)
    # GELU(1) with the tanh approximation
    y = np.empty(1, np.float32)
    kmod.gelu_forward(y, np.ones(1, np.float32))
    assert abs(y[0] - 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * 1.044715))) < 1e-6
    # cross-entropy of uniform logits is log(V)
    loss = np.empty(2, np.float32)
    kmod.crossentropy_forward(loss, np.zeros((2, 10), np.float32), np.array([3, 9]))
    np.testing.assert_allclose(loss, np.log(10), rtol=1e-6)
    # softmax is stable for huge logits
    p = np.empty((1, 3), np.float32)
    kmod.softmax_forward(p, np.array([[1000, 1000, -1000]], np.float32))
    assert_close(p[0], [0.5, 0.5, 0.0], rtol=1e-6, floor_ulps=0, what="softmax of huge logits")
    # attention over one key returns that key's value
    qkv = np.arange(6, dtype=np.float32).reshape(1, 1, 6)
    o, lse = np.empty((1, 1, 2), np.float32), np.empty((1, 1, 1), np.float32)
    kmod.attention_forward(o, lse, qkv, 1)
    np.testing.assert_allclose(o[0, 0], [4, 5])
    np.testing.assert_allclose(lse[0, 0, 0], (0 * 2 + 1 * 3) / np.sqrt(2), rtol=1e-6)
    # first AdamW step moves each parameter by ~lr * sign(grad) (plus decay)
    p = np.array([1.0, -2.0], np.float32)
    kmod.adamw_update(p, np.array([0.3, -5.0], np.float32), np.zeros(2, np.float32),
                      np.zeros(2, np.float32), 0.1, 0.9, 0.999, 1e-8, 0.5, 1)
    np.testing.assert_allclose(p, [1 - 0.1 * (1 + 0.5), -2 + 0.1 * (1 + 0.5 * 2)], rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# finite differences: every NumPy backward against central differences in float64

def numeric_grad(f, x, eps=1e-6, max_points=40, rng=None):
    """Central-difference gradient of scalar f() w.r.t. array x at up to max_points coordinates."""
    flat = x.reshape(-1)
    pts = np.arange(flat.size)
    if flat.size > max_points:
        pts = (rng or np.random.default_rng(0)).choice(flat.size, max_points, replace=False)
    return {int(i): central_difference(f, flat, i, eps) for i in pts}


def central_difference(f, flat, i, eps):
    """(f(x + eps e_i) - f(x - eps e_i)) / 2 eps, perturbing the flat array in place and
    restoring it."""
    old = flat[i]
    flat[i] = old + eps
    fp = f()
    flat[i] = old - eps
    fm = f()
    flat[i] = old
    return (fp - fm) / (2 * eps)


def f64(rng, *shape, scale=1.0):
    return rng.standard_normal(shape) * scale


FD_STEP = 1e-6


def check_grads(loss, grads, inputs, rng, rtol=1e-6, floor_ulps=16, max_points=40):
    """Analytic gradients against central differences (float64, step FD_STEP) at up to max_points
    points per input: relative to each gradient element, with a floor of what the differences can
    resolve -- a difference quotient of two losses each rounded to a few ulps of |loss| is off by
    about eps64 * |loss| / step (measured at most 1.5 of those here; floor_ulps=16 of them).
    Truncation (step**2 times the third derivative) stays far below rtol."""
    scale = abs(loss()) / FD_STEP
    for name, x in inputs.items():
        num = numeric_grad(loss, x, eps=FD_STEP, max_points=max_points, rng=rng)
        pts = np.array(sorted(num))
        assert_close(grads[name].reshape(-1)[pts], np.array([num[i] for i in pts]), rtol=rtol,
                     floor_ulps=floor_ulps, eps=np.finfo(np.float64).eps, scale=scale,
                     what="d loss / d %s at %s" % (name, list(pts)[:8]))


def assert_fd_close(params, ana, picks, loss, step=FD_STEP, rtol=1e-5, floor_ulps=16, what=""):
    """Central differences of ``loss()`` over the elements ``picks`` of the flat float64 array
    ``params`` (perturbed in place and restored) against the analytic gradient ``ana`` (flat):
    relative ``rtol``, with a floor of floor_ulps * eps64 * |loss| / step -- what the difference
    of two losses, each rounded to a few ulps of |loss|, can resolve."""
    num = [central_difference(loss, params, i, step) for i in picks]
    picks = np.asarray(picks)
    assert_close(np.asarray(ana)[picks], np.array(num), rtol=rtol, floor_ulps=floor_ulps,
                 eps=np.finfo(np.float64).eps, scale=abs(loss()) / step,
                 what="%sgradient at %s" % (what and what + " ", list(picks[:8])))


def test_fd_layernorm(rng):
    N, C = 5, 7
    x, w, b, G = f64(rng, N, C, scale=2.0), f64(rng, C), f64(rng, C), f64(rng, N, C)
    out, mean, rstd = np.empty((N, C)), np.empty(N), np.empty(N)

    def loss():
        npk.layernorm_forward(out, mean, rstd, x, w, b)
        return float((out * G).sum())

    loss()
    dx, dw, db = np.zeros_like(x), np.zeros_like(w), np.zeros_like(b)
    npk.layernorm_backward(dx, dw, db, G, x, w, mean, rstd)
    check_grads(loss, {"x": dx, "w": dw, "b": db}, {"x": x, "w": w, "b": b}, rng)


def test_fd_matmul(rng):
    N, C, OC = 4, 6, 5
    x, w, b, G = f64(rng, N, C), f64(rng, C, OC), f64(rng, OC), f64(rng, N, OC)
    out = np.empty((N, OC))

    def loss():
        npk.matmul_forward(out, x, w, b)
        return float((out * G).sum())

    dx, dw, db = np.zeros_like(x), np.zeros_like(w), np.zeros_like(b)
    npk.matmul_backward(dx, dw, db, G, x, w)
    check_grads(loss, {"x": dx, "w": dw, "b": db}, {"x": x, "w": w, "b": b}, rng)


def test_fd_gelu(rng):
    x, G = f64(rng, 30, scale=3.0), f64(rng, 30)
    out = np.empty(30)

    def loss():
        npk.gelu_forward(out, x)
        return float((out * G).sum())

    dx = np.zeros_like(x)
    npk.gelu_backward(dx, x, G)
    check_grads(loss, {"x": dx}, {"x": x}, rng)


def test_fd_residual(rng):
    a, b, G = f64(rng, 9), f64(rng, 9), f64(rng, 9)
    out = np.empty(9)

    def loss():
        npk.residual_forward(out, a, b)
        return float((out * G).sum())

    da, db = np.zeros(9), np.zeros(9)
    npk.residual_backward(da, db, G)
    check_grads(loss, {"a": da, "b": db}, {"a": a, "b": b}, rng)


def test_fd_softmax(rng):
    x, G = f64(rng, 4, 9, scale=2.0), f64(rng, 4, 9)
    out = np.empty((4, 9))

    def loss():
        npk.softmax_forward(out, x)
        return float((out * G).sum())

    loss()
    dx = np.zeros_like(x)
    npk.softmax_backward(dx, G, out)
    check_grads(loss, {"x": dx}, {"x": x}, rng)


def test_fd_crossentropy(rng):
    N, V = 6, 11
    x, t = f64(rng, N, V, scale=2.0), rng.integers(0, V, N)
    losses = np.empty(N)
    scale = 0.3

    def loss():  # sum of per-row losses, times scale
        npk.crossentropy_forward(losses, x, t)
        return float(losses.sum() * scale)

    dx = np.empty_like(x)
    npk.crossentropy_backward(dx, x, t, scale)
    check_grads(loss, {"x": dx}, {"x": x}, rng)


def test_fd_attention(rng):
    B, T, C, NH = 2, 5, 6, 2
    qkv, G = f64(rng, B, T, 3 * C), f64(rng, B, T, C)
    out, lse = np.empty((B, T, C)), np.empty((B, NH, T))

    def loss():
        npk.attention_forward(out, lse, qkv, NH)
        return float((out * G).sum())

    loss()
    d = np.zeros_like(qkv)
    npk.attention_backward(d, G, qkv, out, lse, NH)
    check_grads(loss, {"qkv": d}, {"qkv": qkv}, rng)


def test_fd_encoder(rng):
    B, T, C, V = 2, 3, 4, 5
    idx = np.array([[0, 3, 3], [4, 0, 1]])
    wte, wpe, G = f64(rng, V, C), f64(rng, T + 1, C), f64(rng, B, T, C)
    out = np.empty((B, T, C))

    def loss():
        npk.encoder_forward(out, idx, wte, wpe)
        return float((out * G).sum())

    dwte, dwpe = np.zeros_like(wte), np.zeros_like(wpe)
    npk.encoder_backward(dwte, dwpe, G, idx)
    check_grads(loss, {"wte": dwte, "wpe": dwpe}, {"wte": wte, "wpe": wpe}, rng)


def test_decode_matches_full_attention(kimpl, rng):
    """Feeding tokens one at a time through the cache gives the full causal attention."""
    B, T, C, NH = 2, 9, 12, 3
    qkv = f32(rng, B, T, 3 * C)
    out, lse = np.empty((B, T, C), np.float32), np.empty((B, NH, T), np.float32)
    kimpl.attention_forward(out, lse, qkv, NH)
    kc = np.zeros((B, NH, T, C // NH), np.float32)
    vc = np.zeros_like(kc)
    step = np.empty((B, C), np.float32)
    for t in range(T):
        kimpl.attention_decode(step, kc, vc, np.ascontiguousarray(qkv[:, t]), t, NH)
        # two float32 results, each within TOL of the exact one: twice the tolerance
        assert_close(step, out[:, t], rtol=2 * TOL["attention_decode"][0], floor_ulps=8, k=t + 1,
                     what="decode step %d" % t)


# ---------------------------------------------------------------------------------------------
# determinism: the same bits with 1 and 2 threads

THREAD_CASES = [(case_matmul_forward, (300, 129, 250)), (case_matmul_backward, (700, 96, 130)),
                (case_gemm, (97, 250, 300, True, False, True)),
                (case_matmul_forward, (1, 384, 1152)), (case_gemm, (2, 256, 384, False, True, False)),
                (case_gemm, (400, 256, 300, False, True, True)),  # row split, 3 row blocks
                (case_gemm, (100, 256, 900, True, False, True)),  # column split, 3 K slices
                (case_matmul_backward, (1500, 100, 300)),  # K-split in halves, 4 K slices
                (case_gemm, (260, 90, 1900, True, False, False)),  # K-split, 2 row blocks
                (case_matmul_backward, (1600, 700, 96)),  # K-split, 5 row blocks
                (case_gemm, (300, 1600, 200, False, False, True)),  # column split, 3 row blocks
                (case_matmul_forward, (300, 200, 1600, True, True)),  # the same + residual
                (case_matmul_forward, (100, 900, 256, True, True)),  # + residual, column split
                (case_matmul_forward, (200, 1000, 64, True, True)),  # + residual, row split
                (case_matmul_forward, (2, 900, 300, True, True)),    # + residual, few rows
                (case_encoder_backward, (4, 64, 96, 7)), (case_layernorm_forward, (333, 97)),
                (case_layernorm_backward, (333, 97)), (case_gelu_forward, (100003,)),
                (case_gelu_backward, (100003,)), (case_softmax_forward, (64, 999)),
                (case_softmax_backward, (64, 999)), (case_crossentropy_forward, (64, 999)),
                (case_crossentropy_backward, (64, 999)), (case_attention_forward, (2, 150, 64, 4)),
                (case_attention_backward, (2, 150, 64, 4)),
                (case_attention_backward, (2, 150, 64, 4, False)),
                (case_attention_decode, (3, 40, 64, 4)), (case_attention_probs, (2, 150, 64, 4)),
                (case_adamw_update, (100003,)), (case_residual_forward, (100003,))]


@pytest.mark.parametrize("case", THREAD_CASES, ids=[_case_id(c) for c in THREAD_CASES])
def test_same_bits_any_thread_count(case, cmod):
    builder, sizes = case
    name, args, outs = builder(np.random.default_rng(3), *sizes)
    prev = pyllm.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            pyllm.set_num_threads(n)
            results.append(run_kernel(cmod, name, args))
    finally:
        pyllm.set_num_threads(prev)
    for i in outs:
        for r in results[1:]:
            assert np.array_equal(results[0][i], r[i], equal_nan=True), "%s output %d" % (name, i)


@pytest.mark.parametrize("M,N,K,trans_b", [(1, 1152, 384, False), (3, 200, 130, False),
                                           (1, 256, 384, True), (4, 77, 1000, True)])
def test_few_rows_same_bits_as_in_a_big_product(cmod, rng, M, N, K, trans_b):
    """A decode-sized product (M <= 4 rows, its own code path) gives each row the same bits as
    that row inside a large product, so cached and uncached generation agree exactly."""
    a = f32(rng, 64, K)
    b = f32(rng, N, K) if trans_b else f32(rng, K, N)
    big = np.zeros((64, N), np.float32)
    cmod.gemm(big, a, b, trans_b=trans_b)
    few = np.zeros((M, N), np.float32)
    cmod.gemm(few, np.ascontiguousarray(a[10:10 + M]), b, trans_b=trans_b)
    assert np.array_equal(few, big[10:10 + M])


@pytest.mark.parametrize("N,C,OC", [(1, 384, 384), (3, 1536, 384), (100, 900, 256),
                                     (300, 500, 1600), (200, 1000, 64), (2048, 512, 128),
                                     (50, 7, 3)])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_residual_same_bits_as_separate_add(cmod, rng, N, C, OC, threads):
    """matmul_forward's residual is the residual_forward of a GPT block fused into the product:
    it must give exactly the bits of the product followed by a separate add, in every path of
    the GEMM (few rows, one row block, several row blocks, several K slices)."""
    inp, w, bias, res = f32(rng, N, C), f32(rng, C, OC, scale=0.05), f32(rng, OC), f32(rng, N, OC)
    prev = pyllm.get_num_threads()
    try:
        pyllm.set_num_threads(threads)
        fused, plain, want = nan(N, OC), nan(N, OC), nan(N, OC)
        cmod.matmul_forward(fused, inp, w, bias, residual=res)
        cmod.matmul_forward(plain, inp, w, bias)
        cmod.residual_forward(want, res, plain)
    finally:
        pyllm.set_num_threads(prev)
    assert np.array_equal(fused, want)
    assert not np.array_equal(fused, plain)      # the residual was really added


@pytest.mark.parametrize("N,C,OC", [(2048, 512, 128), (2048, 128, 512), (700, 3, 96),
                                     (1000, 64, 1600), (5, 16, 16), (600, 200, 70),
                                     (1900, 257, 40)])
@pytest.mark.parametrize("threads", [1, 2])
def test_dbias_same_bits_with_or_without_dweight(cmod, rng, N, C, OC, threads):
    """dbias comes from the weight gradient's GEMM (its packed panels of dout) when dweight is
    asked for, else from a pass of its own: both must sum in the same order, on every GEMM path
    (row split, column split, few rows, several K slices, K-split in halves)."""
    dout, inp, w = f32(rng, N, OC), f32(rng, N, C), f32(rng, C, OC)
    prev = pyllm.get_num_threads()
    try:
        pyllm.set_num_threads(threads)
        db1 = f32(rng, OC)
        db2 = db1.copy()
        cmod.matmul_backward(None, np.zeros((C, OC), np.float32), db1, dout, inp, w)
        cmod.matmul_backward(None, None, db2, dout, inp, w)
    finally:
        pyllm.set_num_threads(prev)
    assert np.array_equal(db1, db2)


@pytest.mark.parametrize("N,C", [(2048, 128), (300, 97), (513, 768), (64, 64)])
@pytest.mark.parametrize("threads", [1, 2])
def test_layernorm_param_grads_same_bits_with_or_without_dinp(cmod, rng, N, C, threads):
    """layernorm_backward sums the parameter gradients in the pass over the rows that forms
    dinp; without dinp the sums must be the same, bit for bit."""
    x, w, dout = f32(rng, N, C, scale=3.0), f32(rng, C), f32(rng, N, C)
    mean, rstd = np.empty(N, np.float32), np.empty(N, np.float32)
    cmod.layernorm_forward(np.empty_like(x), mean, rstd, x, w, f32(rng, C))
    prev = pyllm.get_num_threads()
    try:
        pyllm.set_num_threads(threads)
        got = []
        for dinp in (np.zeros_like(x), None):
            dw, db = np.ones(C, np.float32), np.ones(C, np.float32)
            cmod.layernorm_backward(dinp, dw, db, dout, x, w, mean, rstd)
            got.append((dw, db))
    finally:
        pyllm.set_num_threads(prev)
    assert np.array_equal(got[0][0], got[1][0]) and np.array_equal(got[0][1], got[1][1])


def test_norm_squared_same_bits_any_thread_count(cmod, rng):
    x = f32(rng, 1000003)
    prev = pyllm.get_num_threads()
    try:
        vals = []
        for n in (1, 2, 3):
            pyllm.set_num_threads(n)
            vals.append(cmod.norm_squared(x))
    finally:
        pyllm.set_num_threads(prev)
    assert vals[0] == vals[1] == vals[2]


def test_crossentropy_ignores_target_minus_one(kimpl):
    """Target -1: loss 0 and a zero gradient row; the other rows exactly as without it."""
    r = np.random.default_rng(0)
    x = r.standard_normal((5, 7)).astype(np.float32)
    t = np.array([3, -1, 0, -1, 6])
    losses, d = np.empty(5, np.float32), np.empty((5, 7), np.float32)
    kimpl.crossentropy_forward(losses, x, t)
    kimpl.crossentropy_backward(d, x, t, 0.5)
    z = x.astype(np.float64)
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    keep = [0, 2, 4]
    p = np.exp(z[keep] - lse[keep, None])
    p[np.arange(3), t[keep]] -= 1
    rtol, floor_ulps = TOL["crossentropy_forward"]
    assert_close(losses[keep], lse[keep] - z[keep, t[keep]], rtol=rtol, floor_ulps=floor_ulps,
                 what="losses")
    rtol, floor_ulps = TOL["crossentropy_backward"]
    assert_close(d[keep], 0.5 * p, rtol=rtol, floor_ulps=floor_ulps, what="gradient rows")
    assert losses[1] == 0 and losses[3] == 0 and np.all(d[[1, 3]] == 0)
