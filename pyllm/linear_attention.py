"""Attention as kernel smoothing: the random features of FAVOR+ and a causal linear-attention
path built on the backend's kernels.

Softmax attention is Nadaraya-Watson smoothing, out_t = sum_s K(q_t, k_s) v_s / sum_s K(q_t, k_s)
over s <= t, with K(q, k) = exp(q . k / sqrt(d)). FAVOR+ (Choromanski et al. 2021, "Rethinking
attention with Performers") estimates K(q, k) by phi(q) . phi(k) with m positive random
features, phi(x) = m^-1/2 exp(w_i . x - |x|^2 / 2) on x scaled by d^-1/4, and the causal sums
become running sums (``ops.linear_attention_forward``): cost linear in T. The deterministic
feature map elu(x) + 1 (Katharopoulos et al. 2020) goes through the same sums.

The kernels (``favor_features_forward``, ``elu_features_forward``, ``linear_attention_forward``
and their backwards) are in both backends: ``csrc/linear_attention.c`` and its specification in
``pyllm/backend/numpy.py``. float32 goes through the selected backend, float64 (for
finite-difference checks) through the NumPy one.
"""
import numpy as np

from .backend import numpy as _spec
from .backend import ops


def random_features(m, d, rng, orthogonal=True, dtype=np.float32):
    """The (m, d) projection matrix w of FAVOR+.

    ``orthogonal=True``: blocks of d rows from the QR decomposition of Gaussian matrices (rows
    within a block are orthogonal), each row rescaled to the norm of a d-dimensional standard
    Gaussian vector (chi-distributed), so every row is marginally N(0, I) and the estimator stays
    unbiased while its variance drops. ``orthogonal=False``: independent N(0, I) rows.
    ``rng`` is a ``numpy.random.Generator`` (or a seed)."""
    m, d = int(m), int(d)
    if m < 1 or d < 1:
        raise ValueError("random_features needs m >= 1 and d >= 1, got m=%d, d=%d" % (m, d))
    rng = np.random.default_rng(rng)
    if not orthogonal:
        return np.ascontiguousarray(rng.standard_normal((m, d)), dtype=dtype)
    blocks = []
    for _ in range(-(-m // d)):
        q, r = np.linalg.qr(rng.standard_normal((d, d)))
        q = q * np.sign(np.diag(r))          # a Haar-distributed orthogonal matrix
        blocks.append(q.T)                   # rows orthonormal
    w = np.concatenate(blocks)[:m]
    norms = np.linalg.norm(rng.standard_normal((m, d)), axis=1)
    return np.ascontiguousarray(w * norms[:, None], dtype=dtype)


def _kernels(dtype, backend):
    if backend is not None:
        return backend
    return ops if dtype == np.float32 else _spec


def feature_maps_backward(dq, dk, dqf, dkf, qf, kf, q, k, kernel="favor", w=None, backend=None):
    """Add the gradients w.r.t. q and k (into dq, dk) of the query and key features qf, kf that
    :func:`causal_linear_attention`'s feature maps made, given dqf, dkf. ``backend`` is a backend
    module (default: the selected one for float32, NumPy for float64)."""
    K = _kernels(q.dtype, backend)
    if kernel == "favor":
        K.favor_features_backward(dq, dqf, qf, q, w)
        K.favor_features_backward(dk, dkf, kf, k, w)
    elif kernel == "linear":
        K.elu_features_backward(dq, dqf, q)
        K.elu_features_backward(dk, dkf, k)
    else:
        raise ValueError("kernel must be 'favor' or 'linear', got %r" % (kernel,))


def causal_linear_attention(q, k, v, kernel="favor", w=None):
    """Causal attention of q, k (N, T, d) over v (N, T, hd) through feature maps and prefix sums.

    ``kernel="favor"`` needs ``w`` (m, d) from :func:`random_features`; ``kernel="linear"`` uses
    elu(x) + 1. Returns out (N, T, hd) in the dtype of q (all arrays share it)."""
    k_ = _kernels(q.dtype, None)
    if kernel == "favor":
        if w is None:
            raise ValueError("kernel='favor' needs w=random_features(m, d, rng)")
        m = w.shape[0]
        qf = np.empty(q.shape[:2] + (m,), dtype=q.dtype)
        kf = np.empty(k.shape[:2] + (m,), dtype=q.dtype)
        k_.favor_features_forward(qf, q, w, True)
        k_.favor_features_forward(kf, k, w, False)
    elif kernel == "linear":
        qf, kf = np.empty_like(q), np.empty_like(k)
        k_.elu_features_forward(qf, q)
        k_.elu_features_forward(kf, k)
    else:
        raise ValueError("kernel must be 'favor' or 'linear', got %r" % (kernel,))
    out = np.empty(v.shape, dtype=q.dtype)
    den = np.empty(q.shape[:2], dtype=q.dtype)
    k_.linear_attention_forward(out, den, qf, kf, v)
    return out
