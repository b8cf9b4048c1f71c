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


def feature_maps(qf, kf, kc, q, k, kernel="favor", w=None, backend=None):
    """Write the query and key features qf, kf (N, T, m) of q, k (N, T, d), and for favor the
    keys' stabilisers kc (N, T), which :func:`causal_linear_attention`'s prefix sums need; for
    ``kernel="linear"`` (elu + 1, m = d) kc is not written (pass None to the sums)."""
    K = _kernels(q.dtype, backend)
    if kernel == "favor":
        if w is None:
            raise ValueError("kernel='favor' needs w=random_features(m, d, rng)")
        K.favor_features_forward(qf, q, w)
        K.favor_features_forward(kf, k, w, kc)
    elif kernel == "linear":
        K.elu_features_forward(qf, q)
        K.elu_features_forward(kf, k)
    else:
        raise ValueError("kernel must be 'favor' or 'linear', got %r" % (kernel,))


def causal_linear_attention(q, k, v, kernel="favor", w=None):
    """Causal attention of q, k (N, T, d) over v (N, T, hd) through feature maps and prefix sums.

    ``kernel="favor"`` needs ``w`` (m, d) from :func:`random_features`; ``kernel="linear"`` uses
    elu(x) + 1. Returns out (N, T, hd) in the dtype of q (all arrays share it)."""
    if kernel not in ("favor", "linear"):
        raise ValueError("kernel must be 'favor' or 'linear', got %r" % (kernel,))
    m = w.shape[0] if kernel == "favor" and w is not None else q.shape[2]
    qf = np.empty(q.shape[:2] + (m,), dtype=q.dtype)
    kf = np.empty(k.shape[:2] + (m,), dtype=q.dtype)
    kc = np.empty(k.shape[:2], dtype=q.dtype) if kernel == "favor" else None
    feature_maps(qf, kf, kc, q, k, kernel, w)
    out = np.empty(v.shape, dtype=q.dtype)
    den = np.empty(q.shape[:2], dtype=q.dtype)
    _kernels(q.dtype, None).linear_attention_forward(out, den, qf, kf, v, kc)
    return out


# ---- the attention layer of a GPT with attention="favor" or "linear" ---------------------------

FEATURE_STREAM = 0x46415652  # "FAVR": the seed stream of the random features, apart from weights


def _split_heads(dst, qkv, j, NH):
    """dst (B,NH,T,hd) = part j (0 q, 1 k, 2 v) of qkv (B,T,3C), heads first."""
    B, T = qkv.shape[:2]
    np.copyto(dst, qkv.reshape(B, T, 3, NH, -1)[:, :, j].transpose(0, 2, 1, 3))


def _merge_heads(dst, x):
    """dst (B,T,NH*hd) = x (B,NH,T,hd) with the heads side by side again."""
    B, NH, T, hd = x.shape
    np.copyto(dst.reshape(B, T, NH, hd), x.transpose(0, 2, 1, 3))


class KernelAttention:
    """Causal multi-head attention through a feature map and prefix sums, for a GPT whose
    ``config.attention`` is ``"favor"`` or ``"linear"`` (the model owns one as ``model._kattn``).

    Per layer it maps the heads' q, k (B*NH, T, hd) to features qf, kf (B*NH, T, m) and runs
    ``ops.linear_attention_forward``; what backward needs (qf, kf, the keys' stabilisers kc, the
    output and its denominators) is kept per layer, q, k, v are cut from the layer's qkv again
    when needed.
    ``features[i]`` is layer i's FAVOR+ projection w (m, hd) (heads share it, as in the
    Performer's reference code); it is model state, saved with the weights, and not trained.
    """

    def __init__(self, config, dtype):
        self.kind = config.attention
        if self.kind not in ("favor", "linear"):
            raise ValueError("KernelAttention is for attention='favor' or 'linear', got %r"
                             % (self.kind,))
        self.NH, self.hd = config.n_head, config.n_embd // config.n_head
        self.m = config.n_features if self.kind == "favor" else self.hd
        self.dtype = np.dtype(dtype)
        n = config.n_layer if self.kind == "favor" else 0
        self.features = [np.zeros((self.m, self.hd), dtype=self.dtype) for _ in range(n)]

    def feature_names(self):
        """The file names of the feature matrices: ``h.<i>.attn.features``."""
        return ["h.%d.attn.features" % i for i in range(len(self.features))]

    def draw(self, seed, index=0):
        """Draw every layer's features afresh: a function of (seed, index) alone, so a resumed
        run redraws exactly what an uninterrupted one did (index: the draw's step)."""
        rng = np.random.default_rng([int(seed), FEATURE_STREAM, int(index)])
        for w in self.features:
            w[...] = random_features(self.m, self.hd, rng, dtype=self.dtype)

    def buffers(self, B, T):
        """One layer's activations kept for backward: the features, the keys' stabilisers (favor),
        the output and its denominators."""
        N, m, hd, dt = B * self.NH, self.m, self.hd, self.dtype
        e = lambda *s: np.zeros(s, dtype=dt)  # noqa: E731
        return {"qf": e(N, T, m), "kf": e(N, T, m), "out": e(N, T, hd), "den": e(N, T),
                "kc": e(N, T) if self.kind == "favor" else None}

    def scratch(self, B, T):
        """Scratch for forward and backward, shared by the layers."""
        N, m, hd, dt = B * self.NH, self.m, self.hd, self.dtype
        e = lambda *s: np.zeros(s, dtype=dt)  # noqa: E731
        return {"q": e(B, self.NH, T, hd), "k": e(B, self.NH, T, hd), "v": e(B, self.NH, T, hd),
                "dq": e(N, T, hd), "dk": e(N, T, hd), "dv": e(N, T, hd),
                "dout": e(B, self.NH, T, hd),
                "dqf": e(N, T, m), "dkf": e(N, T, m)}

    def _qkv(self, sc, qkv):
        """q, k, v (B*NH, T, hd) cut from qkv (B,T,3C) into the scratch."""
        B, T = qkv.shape[:2]
        out = []
        for j, name in enumerate(("q", "k", "v")):
            _split_heads(sc[name], qkv, j, self.NH)
            out.append(sc[name].reshape(B * self.NH, T, self.hd))
        return out

    def forward(self, i, atty, qkv, buf, sc):
        """Layer i: atty (B,T,C) from qkv (B,T,3C); fills buf (this layer's :meth:`buffers`)."""
        q, k, v = self._qkv(sc, qkv)
        feature_maps(buf["qf"], buf["kf"], buf["kc"], q, k, self.kind,
                     self.features[i] if self.features else None, backend=ops)
        ops.linear_attention_forward(buf["out"], buf["den"], buf["qf"], buf["kf"], v, buf["kc"])
        B, T = qkv.shape[:2]
        _merge_heads(atty, buf["out"].reshape(B, self.NH, T, self.hd))

    def backward(self, i, d_qkv, d_atty, qkv, buf, sc):
        """Layer i: d_qkv (B,T,3C) written (not added) from d_atty (B,T,C)."""
        B, T = qkv.shape[:2]
        q, k, v = self._qkv(sc, qkv)
        N = B * self.NH
        np.copyto(sc["dout"], d_atty.reshape(B, T, self.NH, self.hd).transpose(0, 2, 1, 3))
        dout = sc["dout"].reshape(N, T, self.hd)
        for name in ("dq", "dk", "dv", "dqf", "dkf"):
            sc[name].fill(0)
        ops.linear_attention_backward(sc["dqf"], sc["dkf"], sc["dv"], dout, buf["qf"],
                                      buf["kf"], v, buf["out"], buf["den"], buf["kc"])
        feature_maps_backward(sc["dq"], sc["dk"], sc["dqf"], sc["dkf"], buf["qf"], buf["kf"],
                              q, k, self.kind, self.features[i] if self.features else None,
                              backend=ops)
        d = d_qkv.reshape(B, T, 3, self.NH, self.hd)
        for j, name in enumerate(("dq", "dk", "dv")):
            np.copyto(d[:, :, j], sc[name].reshape(B, self.NH, T, self.hd).transpose(0, 2, 1, 3))

    def probs(self, dst, buf, b):
        """The normalised causal weights of sequence b of the last forward: dst (NH,T,T),
        dst[h, t, s] = qf_t . kf_s exp(kc_s - M_t) / den_t for s <= t (M_t the running maximum
        of the keys' stabilisers kc; 1 for linear), 0 above the diagonal."""
        NH = self.NH
        qf, kf, den = (buf[n][b * NH:(b + 1) * NH].astype(np.float64) for n in ("qf", "kf", "den"))
        w = qf @ kf.transpose(0, 2, 1)                                      # (NH,T,T)
        if buf["kc"] is not None:
            kc = buf["kc"][b * NH:(b + 1) * NH].astype(np.float64)
            M = np.maximum.accumulate(kc, axis=1)
            w *= np.exp(np.minimum(kc[:, None, :] - M[:, :, None], 0))
        dst[...] = np.tril(w) / den[..., None]

    def running_state(self, B):
        """A :class:`RunningState` for sampling B sequences one token at a time."""
        return RunningState(self, B)


class RunningState:
    """Sampling's attention for favor and linear heads: per layer the running sums
    S = sum_s phi(k_s) v_s^T (B*NH,m,hd) and z = sum_s phi(k_s) (B*NH,m) replace the KV cache, so
    each new token costs O(m hd) per head whatever its position. As in the prefix-sum kernels,
    FAVOR+ sums are kept on the scale of the largest key stabiliser so far, M: when a new key
    raises it, S and z are rescaled by exp(M_old - M_new), which changes no normalised output.

    Use: :meth:`prefill` after a full forward over the prompt, then :meth:`decode` per layer
    and token (it is the ``attention`` of the NumPy backend's ``Decoder``)."""

    def __init__(self, ka, B):
        self.ka, self.B = ka, int(B)
        N, m, hd, dt = self.B * ka.NH, ka.m, ka.hd, ka.dtype
        self.S, self.z, self.M = [], [], []
        self.q, self.k = np.zeros((N, 1, hd), dtype=dt), np.zeros((N, 1, hd), dtype=dt)
        self.qf, self.kf = np.zeros((N, 1, m), dtype=dt), np.zeros((N, 1, m), dtype=dt)
        self.kc = np.zeros((N, 1), dtype=dt) if ka.kind == "favor" else None

    def _layer(self, i):
        ka = self.ka
        while len(self.S) <= i:
            N = self.B * ka.NH
            self.S.append(np.zeros((N, ka.m, ka.hd), dtype=ka.dtype))
            self.z.append(np.zeros((N, ka.m), dtype=ka.dtype))
            self.M.append(np.full(N, -np.inf, dtype=ka.dtype))
        return self.S[i], self.z[i]

    def prefill(self, i, qkv, buf):
        """Layer i's sums over the prompt of a full forward: its qkv (B,T,3C) and buffers."""
        S, z = self._layer(i)
        ka, B, T = self.ka, qkv.shape[0], qkv.shape[1]
        v = np.empty((B, ka.NH, T, ka.hd), dtype=ka.dtype)
        _split_heads(v, qkv, 2, ka.NH)
        kf = buf["kf"]
        if buf["kc"] is not None:        # on the scale of the prompt's largest stabiliser
            self.M[i] = buf["kc"].max(axis=1)
            kf = kf * np.exp(buf["kc"] - self.M[i][:, None])[..., None]
        S[...] = np.einsum("ntm,nth->nmh", kf, v.reshape(B * ka.NH, T, ka.hd))
        z[...] = kf.sum(axis=1)

    def decode(self, i, att, qkv, pos):
        """Layer i, one token per sequence: att (B,C) from qkv (B,3C); updates S, z."""
        ka, S, z = self.ka, *self._layer(i)
        B, NH, hd = self.B, ka.NH, ka.hd
        x = qkv.reshape(B, 3, NH, hd)
        self.q[:, 0] = x[:, 0].reshape(B * NH, hd)
        self.k[:, 0] = x[:, 1].reshape(B * NH, hd)
        v = x[:, 2].reshape(B * NH, hd)
        feature_maps(self.qf, self.kf, self.kc, self.q, self.k, ka.kind,
                     ka.features[i] if ka.features else None, backend=ops)
        kf, grow = self.kf[:, 0], np.ones(B * NH, dtype=ka.dtype)
        if self.kc is not None:
            c = self.kc[:, 0]
            M = np.maximum(self.M[i], c)
            grow = np.exp(np.where(np.isfinite(self.M[i]), self.M[i] - M, 0))  # 1 when unchanged
            kf = kf * np.exp(c - M)[:, None]
            self.M[i] = M
        _spec._linatt_add(S, z, kf, v, grow.astype(ka.dtype))           # the kernels' own step
        out, _ = _spec._linatt_read(self.qf[:, 0], S, z)
        att[...] = out.reshape(B, NH * hd)
