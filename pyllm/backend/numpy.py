"""The NumPy backend: every kernel in plain NumPy. This is the readable specification.

Same names, same argument order and same results as the C backend (``pyllm/backend/c.py``), which
is tested against this file. Conventions (as in ``csrc/pyllm.h``):

- outputs first, then inputs; sizes are read from the arrays' shapes;
- ``*_backward`` functions ADD into the gradients they write (the caller zeroes them), except
  ``crossentropy_backward``, which starts the backward pass and overwrites ``dlogits``;
- a gradient argument may be ``None`` to skip it;
- float32 arrays (float64 is accepted too, for finite-difference tests), C-contiguous; token ids of
  any integer dtype, in range.

Dimension legend: B batch, T time, C channels, NH heads, hd = C // NH, V vocabulary, OC output
channels, N any number of leading rows.
"""
import numpy as np

from . import _check as chk

DT = chk.F32_F64
LN_EPS = 1e-5
GELU_K = np.sqrt(2.0 / np.pi)


# ---- embedding -------------------------------------------------------------------------------

def encoder_forward(out, idx, wte, wpe, pos0=0):
    """out (B,T,C) = wte[idx] (B,T,C) + wpe[pos0:pos0+T] (T,C)."""
    idx, B, T, C, V, maxT = chk.encoder_forward(out, idx, wte, wpe, pos0, DT)
    out[...] = wte[idx] + wpe[pos0:pos0 + T]


def encoder_backward(dwte, dwpe, dout, idx):
    """dwte (V,C) += dout scattered by idx; dwpe[:T] (T,C) += dout summed over B."""
    idx, B, T, C, V, maxT = chk.encoder_backward(dwte, dwpe, dout, idx, DT)
    np.add.at(dwte, idx.reshape(-1), dout.reshape(-1, C))
    dwpe[:T] += dout.sum(axis=0)


# ---- layernorm -------------------------------------------------------------------------------

def layernorm_forward(out, mean, rstd, inp, weight, bias):
    """out (N,C) = (inp - mean) * rstd * weight + bias; mean, rstd (N) saved if not None."""
    chk.layernorm_forward(out, mean, rstd, inp, weight, bias, DT)
    mu = inp.mean(axis=-1, keepdims=True)                          # (N,1)
    var = ((inp - mu) ** 2).mean(axis=-1, keepdims=True)           # (N,1) biased variance
    rs = 1.0 / np.sqrt(var + LN_EPS)                               # (N,1)
    out[...] = (inp - mu) * rs * weight + bias
    if mean is not None:
        mean[...] = mu[..., 0]
    if rstd is not None:
        rstd[...] = rs[..., 0]


def layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd):
    """Gradients of layernorm_forward; adds into dinp (N,C), dweight (C), dbias (C)."""
    N, C = chk.layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, DT)
    xhat = (inp - mean[..., None]) * rstd[..., None]               # (N,C)
    g = dout.reshape(N, C)
    if dbias is not None:
        dbias += g.sum(axis=0)
    if dweight is not None:
        dweight += (g * xhat.reshape(N, C)).sum(axis=0)
    if dinp is not None:
        dxhat = dout * weight                                      # (N,C)
        dinp += rstd[..., None] * (dxhat - dxhat.mean(-1, keepdims=True)
                                   - xhat * (dxhat * xhat).mean(-1, keepdims=True))


# ---- matmul ----------------------------------------------------------------------------------

def matmul_forward(out, inp, weight, bias=None, residual=None):
    """out (N,OC) = inp (N,C) @ weight (C,OC) + bias (OC) + residual (N,OC).

    ``residual`` fuses a GPT block's residual add: out = residual + (inp @ weight + bias).
    """
    N, C, OC = chk.matmul_forward(out, inp, weight, bias, DT, residual)
    y = inp.reshape(N, C) @ weight
    if bias is not None:
        y += bias
    if residual is not None:
        y += residual.reshape(N, OC)
    out.reshape(N, OC)[...] = y


def matmul_backward(dinp, dweight, dbias, dout, inp, weight):
    """dinp (N,C) += dout @ weight.T; dweight (C,OC) += inp.T @ dout; dbias (OC) += sum_N dout."""
    N, C, OC = chk.matmul_backward(dinp, dweight, dbias, dout, inp, weight, DT)
    g = dout.reshape(N, OC)
    if dinp is not None:
        dinp.reshape(N, C)[...] += g @ weight.T
    if dweight is not None:
        dweight += inp.reshape(N, C).T @ g
    if dbias is not None:
        dbias += g.sum(axis=0)


def gemm(c, a, b, trans_a=False, trans_b=False, accumulate=False):
    """c (M,N) = op(a) (M,K) @ op(b) (K,N), plus c itself when accumulate; op transposes."""
    chk.gemm(c, a, b, trans_a, trans_b, DT)
    y = (a.T if trans_a else a) @ (b.T if trans_b else b)
    if accumulate:
        c += y
    else:
        c[...] = y


# ---- gelu, residual --------------------------------------------------------------------------

def gelu_forward(out, inp):
    """out = 0.5 inp (1 + tanh(sqrt(2/pi) (inp + 0.044715 inp^3)))."""
    chk.elementwise(("out",), (out,), ("inp",), (inp,), DT)
    out[...] = 0.5 * inp * (1.0 + np.tanh(GELU_K * (inp + 0.044715 * inp ** 3)))


def gelu_backward(dinp, inp, dout, accumulate=True):
    """dinp += dout * d gelu / d inp; with ``accumulate=False`` dinp is overwritten (not read)."""
    chk.elementwise(("dinp",), (dinp,), ("inp", "dout"), (inp, dout), DT)
    th = np.tanh(GELU_K * (inp + 0.044715 * inp ** 3))
    grad = 0.5 * (1.0 + th) + 0.5 * inp * (1.0 - th * th) * GELU_K * (1.0 + 3 * 0.044715 * inp ** 2)
    if accumulate:
        dinp += grad * dout
    else:
        dinp[...] = grad * dout


def residual_forward(out, inp1, inp2):
    """out = inp1 + inp2."""
    chk.elementwise(("out",), (out,), ("inp1", "inp2"), (inp1, inp2), DT)
    np.add(inp1, inp2, out=out)


def residual_backward(dinp1, dinp2, dout):
    """dinp1 += dout; dinp2 += dout (either may be None)."""
    chk.elementwise(("dinp1", "dinp2"), (dinp1, dinp2), ("dout",), (dout,), DT,
                    optional_outs=True)
    if dinp1 is not None:
        dinp1 += dout
    if dinp2 is not None:
        dinp2 += dout


# ---- softmax, cross-entropy ------------------------------------------------------------------

def softmax_forward(out, inp):
    """out (N,V) = exp(inp - max) / sum(exp(inp - max)) over the last axis."""
    chk.softmax_forward(out, inp, DT)
    e = np.exp(inp - inp.max(axis=-1, keepdims=True))
    out[...] = e / e.sum(axis=-1, keepdims=True)


def softmax_backward(dinp, dout, out):
    """dinp (N,V) += out * (dout - sum(dout * out)) over the last axis."""
    chk.softmax_backward(dinp, dout, out, DT)
    dinp += out * (dout - (dout * out).sum(axis=-1, keepdims=True))


def _log_softmax(logits):
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


CE_IGNORE = chk.CE_IGNORE


def crossentropy_forward(losses, logits, targets):
    """losses (N) = logsumexp(logits (N,V)) - logits[target]; 0 where target is CE_IGNORE (-1)."""
    targets, N, V = chk.crossentropy_forward(losses, logits, targets, DT)
    t = targets.reshape(N)
    keep = t != CE_IGNORE
    logp = _log_softmax(logits.reshape(N, V))
    losses.reshape(N)[...] = np.where(keep, -logp[np.arange(N), np.where(keep, t, 0)], 0)


def crossentropy_backward(dlogits, logits, targets, scale):
    """dlogits (N,V) = (softmax(logits) - onehot(targets)) * scale (overwrites; may be logits);
    rows whose target is CE_IGNORE (-1) are 0."""
    targets, N, V = chk.crossentropy_backward(dlogits, logits, targets, scale, DT)
    t = targets.reshape(N)
    keep = t != CE_IGNORE
    p = np.exp(_log_softmax(logits.reshape(N, V)))
    p[np.arange(N)[keep], t[keep]] -= 1.0
    p[~keep] = 0.0
    dlogits.reshape(N, V)[...] = p * scale


# ---- attention -------------------------------------------------------------------------------

def _split_heads(qkv, NH):
    B, T, C3 = qkv.shape
    C = C3 // 3
    q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]
    return [x.reshape(B, T, NH, C // NH).transpose(0, 2, 1, 3) for x in (q, k, v)]  # (B,NH,T,hd)


def attention_forward(out, lse, qkv, n_head):
    """Causal self-attention: out (B,T,C) from qkv (B,T,3C); lse (B,NH,T) saved for backward."""
    B, T, C, NH = chk.attention_forward(out, lse, qkv, n_head, DT)
    if B * T == 0:
        return
    q, k, v = _split_heads(qkv, NH)                                # (B,NH,T,hd)
    scale = 1.0 / np.sqrt(C // NH)
    s = (q @ k.transpose(0, 1, 3, 2)) * scale                      # (B,NH,T,T)
    s = np.where(np.tril(np.ones((T, T), dtype=bool)), s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    e = np.exp(s - m)
    l = e.sum(axis=-1, keepdims=True)
    y = (e / l) @ v                                                # (B,NH,T,hd)
    out[...] = y.transpose(0, 2, 1, 3).reshape(B, T, C)
    lse[...] = (m + np.log(l))[..., 0]


def attention_backward(dqkv, dout, qkv, out, lse, n_head, accumulate=True):
    """Gradient of attention_forward, recomputing the probabilities from lse; adds into dqkv,
    or overwrites it (without reading it) when ``accumulate=False``."""
    B, T, C, NH = chk.attention_backward(dqkv, dout, qkv, out, lse, n_head, DT)
    if B * T == 0:
        return
    if not accumulate:
        dqkv[...] = 0.0
    hd = C // NH
    q, k, v = _split_heads(qkv, NH)                                # (B,NH,T,hd)
    g = dout.reshape(B, T, NH, hd).transpose(0, 2, 1, 3)           # (B,NH,T,hd)
    o = out.reshape(B, T, NH, hd).transpose(0, 2, 1, 3)
    scale = 1.0 / np.sqrt(hd)
    s = (q @ k.transpose(0, 1, 3, 2)) * scale
    causal = np.tril(np.ones((T, T), dtype=bool))
    p = np.where(causal, np.exp(s - lse[..., None]), 0.0)          # (B,NH,T,T)
    dv = p.transpose(0, 1, 3, 2) @ g
    dp = g @ v.transpose(0, 1, 3, 2)
    D = (g * o).sum(axis=-1, keepdims=True)                        # (B,NH,T,1)
    ds = p * (dp - D) * scale
    dq = ds @ k
    dk = ds.transpose(0, 1, 3, 2) @ q
    merge = lambda x: x.transpose(0, 2, 1, 3).reshape(B, T, C)     # noqa: E731
    dqkv[..., :C] += merge(dq)
    dqkv[..., C:2 * C] += merge(dk)
    dqkv[..., 2 * C:] += merge(dv)


def attention_probs(probs, qkv, lse, n_head):
    """The attention probabilities of attention_forward: probs (B,NH,T,T) from qkv (B,T,3C) and
    the lse (B,NH,T) that the forward saved. Row t is exp(scale q_t . k_s - lse_t) over the
    sources s <= t (it sums to 1); the upper triangle is 0."""
    B, T, C, NH = chk.attention_probs(probs, qkv, lse, n_head, DT)
    q, k, _ = _split_heads(qkv, NH)                                # (B,NH,T,hd)
    s = (q @ k.transpose(0, 1, 3, 2)) * (1.0 / np.sqrt(C // NH))   # (B,NH,T,T)
    causal = np.tril(np.ones((T, T), dtype=bool))
    probs[...] = np.where(causal, np.exp(np.where(causal, s, 0.0) - lse[..., None]), 0.0)


def attention_decode(out, kcache, vcache, qkv, pos, n_head):
    """One decode step: store the new token's k, v (from qkv (B,3C)) at pos in the caches
    (B,NH,maxT,hd) and write out (B,C), its attention over positions 0..pos."""
    B, pos, maxT, C, NH = chk.attention_decode(out, kcache, vcache, qkv, pos, n_head, DT)
    hd = C // NH
    q = qkv[:, :C].reshape(B, NH, 1, hd)
    kcache[:, :, pos] = qkv[:, C:2 * C].reshape(B, NH, hd)
    vcache[:, :, pos] = qkv[:, 2 * C:].reshape(B, NH, hd)
    k, v = kcache[:, :, :pos + 1], vcache[:, :, :pos + 1]         # (B,NH,pos+1,hd)
    s = (q @ k.transpose(0, 1, 3, 2)) / np.sqrt(hd)                # (B,NH,1,pos+1)
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    out[...] = ((e / e.sum(axis=-1, keepdims=True)) @ v).reshape(B, C)


# ---- decoding --------------------------------------------------------------------------------

class Decoder:
    """Sampling's forward pass: one new token per sequence through a KV cache.

    ``weights`` lists the model's arrays in ``decoder_weight_names(n_layer)`` order (wte, wpe,
    12 per layer, ln_f); ``cache`` (L,2,B,NH,block_size,hd) holds each layer's k (0) and v (1) for
    the positions seen so far. ``step(tok, pos)`` runs tokens tok (B,) at position pos through
    every layer -- the training forward restricted to one position -- stores their k, v in the
    cache and returns the logits (B,V) in a buffer that the next step overwrites.

    ``kernels`` runs the steps through another kernel set with these names (``pyllm.backend.ops``
    for the current backend; default: this module); ``attn_hook`` (see ``GPT._attn_hook``) gets
    each layer's attention output (B,C) before its projection. ``attention`` replaces the KV
    cache (then ``cache`` is None): an object with ``B`` and ``decode(layer, att, qkv, pos)``
    writing att (B,C) from qkv (B,3C), e.g. a favor or linear model's
    :class:`pyllm.linear_attention.RunningState`.
    """

    def __init__(self, weights, cache, n_head, kernels=None, attn_hook=None, attention=None):
        B, maxT, V, C, NH, L = chk.decoder(weights, cache, n_head, DT,
                                           None if attention is None else attention.B)
        self.attention = attention
        self.B, self.maxT, self.V, self.C, self.NH, self.L = B, maxT, V, C, NH, L
        self.weights, self.cache = list(weights), cache
        self.k = kernels if kernels is not None else _Kernels
        self.attn_hook = attn_hook
        e = lambda *s: np.zeros(s, dtype=weights[0].dtype)  # noqa: E731
        self.x, self.x2, self.h, self.att = e(B, 1, C), e(B, C), e(B, C), e(B, C)
        self.qkv, self.fc, self.fcg, self.logits = e(B, 3 * C), e(B, 4 * C), e(B, 4 * C), e(B, V)

    def step(self, tok, pos):
        tok, pos = chk.decode_step(tok, pos, self.B, self.V, self.maxT)
        W, C, h, x2, k = self.weights, self.C, self.h, self.x2, self.k
        k.encoder_forward(self.x, tok[:, None], W[0], W[1], pos)
        x = self.x.reshape(-1, C)                                        # (B,C)
        for i in range(self.L):
            w = W[2 + 12 * i:14 + 12 * i]
            k.layernorm_forward(h, None, None, x, w[0], w[1])
            k.matmul_forward(self.qkv, h, w[2], w[3])                    # (B,3C)
            if self.attention is not None:
                self.attention.decode(i, self.att, self.qkv, pos)
            else:
                k.attention_decode(self.att, self.cache[i, 0], self.cache[i, 1], self.qkv, pos,
                                   self.NH)
            if self.attn_hook is not None:
                self.attn_hook.forward(i, self.att)
            k.matmul_forward(x2, self.att, w[4], w[5], residual=x)      # x2 = x + proj
            k.layernorm_forward(h, None, None, x2, w[6], w[7])
            k.matmul_forward(self.fc, h, w[8], w[9])                     # (B,4C)
            k.gelu_forward(self.fcg, self.fc)
            k.matmul_forward(x, self.fcg, w[10], w[11], residual=x2)    # x = x2 + proj
        k.layernorm_forward(h, None, None, x, W[-2], W[-1])
        k.gemm(self.logits, h, W[0], trans_b=True)                       # (B,V) = h @ wte^T
        return self.logits


class _Kernels:
    """This module's kernels under their names, the default kernel set of :class:`Decoder`."""
    encoder_forward = staticmethod(encoder_forward)
    layernorm_forward = staticmethod(layernorm_forward)
    matmul_forward = staticmethod(matmul_forward)
    attention_decode = staticmethod(attention_decode)
    gelu_forward = staticmethod(gelu_forward)
    gemm = staticmethod(gemm)


# ---- linear attention: feature maps and causal prefix sums ------------------------------------
# Attention as kernel smoothing: out_t = sum_s K(q_t, k_s) v_s / sum_s K(q_t, k_s), s <= t.
# With K(q, k) ~ phi(q) . phi(k) the sums become running (prefix) sums over s, so the cost is
# linear in T. Arrays are per head: N = B * NH rows of T positions; m features, hd head size.

LINATT_DEN_MIN = 1e-30    # the denominator guard: phi(q_t) . sum phi(k_s) is never below this


def favor_features_forward(out, x, w, c=None):
    """FAVOR+ positive random features (Performer): out (N,T,m) from x (N,T,d), w (m,d).

    With u = x * d**-0.25 and a_i = u . w_i - |u|^2 / 2: out = m**-0.5 * exp(a_i - c), where
    the stabiliser c = max_i a_i of each position keeps every exponent <= 0 and the largest
    feature at m**-0.5 (E[phi(q) . phi(k)] = exp(q . k / sqrt(d)) for the unstabilised
    features, over Gaussian w). c (N,T), when given, receives the stabilisers: key features
    need them (pass them as ``kc`` to :func:`linear_attention_forward`, which puts the keys back
    on one scale causally); for queries they cancel in the normalised attention.
    """
    N, T, d, m = chk.favor_features_forward(out, x, w, c, DT)
    if N * T == 0:
        return
    u = x * x.dtype.type(d ** -0.25)
    a = u @ w.T - 0.5 * (u * u).sum(axis=-1, keepdims=True)          # (N,T,m)
    cmax = a.max(axis=-1, keepdims=True)
    out[...] = np.exp(a - cmax) * x.dtype.type(m ** -0.5)
    if c is not None:
        c[...] = cmax[..., 0]


def favor_features_backward(dx, dout, out, x, w):
    """dx (N,T,d) += d**-0.25 * (g @ w - u * sum_i g_i), g = dout * out.

    d out_i / d u = out_i * (w_i - u); the stabiliser counts as a constant (the attention does
    not depend on it)."""
    N, T, d, m = chk.favor_features_backward(dx, dout, out, x, w, DT)
    if N * T == 0:
        return
    s = x.dtype.type(d ** -0.25)
    g = dout * out                                                     # (N,T,m)
    dx += s * (g @ w - (x * s) * g.sum(axis=-1, keepdims=True))


def elu_features_forward(out, x):
    """out = elu(x) + 1, element-wise (Katharopoulos et al. 2020): x + 1 for x > 0, else exp(x)."""
    chk.elementwise(("out",), (out,), ("x",), (x,), DT)
    out[...] = np.where(x > 0, x + 1, np.exp(np.minimum(x, 0)))


def elu_features_backward(dx, dout, x):
    """dx += dout * (1 for x > 0, else exp(x)), element-wise."""
    chk.elementwise(("dx",), (dx,), ("x", "dout"), (x, dout), DT)
    dx += dout * np.where(x > 0, 1, np.exp(np.minimum(x, 0))).astype(x.dtype)


def _key_scales(kc, N, T, dtype):
    """The running maximum M_t = max_{s<=t} kc_s (N,T), the factors exp(M_{t-1} - M_t) that
    bring the sums from M_{t-1} to M_t (1 at t = 0), and the key weights exp(kc_t - M_t)."""
    if kc is None:
        one = np.ones((N, T), dtype=dtype)
        return None, one, one
    M = np.maximum.accumulate(kc, axis=1)
    prev = np.concatenate([M[:, :1], M[:, :-1]], axis=1)
    return M, np.exp(prev - M), np.exp(kc - M)


def linear_attention_forward(out, den, qf, kf, v, kc=None):
    """Causal linear attention: out (N,T,hd), den (N,T) from qf, kf (N,T,m), v (N,T,hd).

    The keys' features are kf_s * exp(kc_s) (kc (N,T) from :func:`favor_features_forward`; None:
    0). With M_t = max_{s<=t} kc_s, the sums are kept on the scale of exp(M_t):
    S_t = sum_{s<=t} exp(kc_s - M_t) kf_s v_s^T (m,hd), z_t likewise (m), updated by rescaling
    S_{t-1}, z_{t-1} by exp(M_{t-1} - M_t) <= 1 -- no weight underflows because a later key is
    large, and nothing depends on positions after t. den_t = max(qf_t . z_t, LINATT_DEN_MIN),
    out_t = qf_t^T S_t / den_t. Only the running S and z are kept (O(m hd) per row), never a
    (T, m, hd) tensor."""
    N, T, m, hd = chk.linear_attention_forward(out, den, qf, kf, v, kc, DT)
    _, grow, wk = _key_scales(kc, N, T, qf.dtype)
    S = np.zeros((N, m, hd), dtype=qf.dtype)
    z = np.zeros((N, m), dtype=qf.dtype)
    for t in range(T):
        _linatt_add(S, z, kf[:, t] * wk[:, t, None], v[:, t], grow[:, t])
        out[:, t], den[:, t] = _linatt_read(qf[:, t], S, z)


def _linatt_add(S, z, k, v, grow):
    """One position into the running sums: S (N,m,hd), z (N,m) rescaled by grow (N), then the
    (already weighted) key features k (N,m) with their values v (N,hd) added."""
    S *= grow[:, None, None]
    z *= grow[:, None]
    S += k[:, :, None] * v[:, None, :]
    z += k


def _linatt_read(q, S, z):
    """The output (N,hd) and denominator (N) of query features q (N,m) against the sums."""
    den = np.maximum(np.einsum("nm,nm->n", q, z), LINATT_DEN_MIN).astype(q.dtype)
    return np.einsum("nm,nmh->nh", q, S) / den[:, None], den


def linear_attention_backward(dqf, dkf, dv, dout, qf, kf, v, out, den, kc=None):
    """Gradients of :func:`linear_attention_forward` (added into dqf, dkf, dv; None skips).

    With g_t = dout_t / den_t and e_t = -(dout_t . out_t) / den_t (zero where the guard held):
    dqf_t = S_t g_t + e_t z_t                (S, z rebuilt by running the sums forwards again)
    dkf_s = w_s (R_s v_s + r_s), dv_s = R_s^T (w_s kf_s), with w_s = exp(kc_s - M_s),
    R_s = sum_{t>=s} exp(M_s - M_t) qf_t g_t^T and r_s = sum_{t>=s} exp(M_s - M_t) e_t qf_t
    (running the sums backwards, scaled down by exp(M_s - M_{s+1}) <= 1 at each step). kc is a
    stabiliser: the attention does not depend on it, and it gets no gradient."""
    N, T, m, hd = chk.linear_attention_backward(dqf, dkf, dv, dout, qf, kf, v, out, den, kc,
                                                DT)
    _, grow, wk = _key_scales(kc, N, T, qf.dtype)
    g = dout / den[..., None]                                          # (N,T,hd)
    e = -(dout * out).sum(axis=-1) / den                               # (N,T)
    e = np.where(den > LINATT_DEN_MIN, e, 0).astype(qf.dtype)
    if dqf is not None:
        S = np.zeros((N, m, hd), dtype=qf.dtype)
        z = np.zeros((N, m), dtype=qf.dtype)
        for t in range(T):
            _linatt_add(S, z, kf[:, t] * wk[:, t, None], v[:, t], grow[:, t])
            dqf[:, t] += np.einsum("nmh,nh->nm", S, g[:, t]) + e[:, t, None] * z
    if dkf is None and dv is None:
        return
    R = np.zeros((N, m, hd), dtype=qf.dtype)
    r = np.zeros((N, m), dtype=qf.dtype)
    for s in reversed(range(T)):
        if s + 1 < T:
            R *= grow[:, s + 1, None, None]
            r *= grow[:, s + 1, None]
        R += qf[:, s, :, None] * g[:, s, None, :]
        r += e[:, s, None] * qf[:, s]
        if dkf is not None:
            dkf[:, s] += wk[:, s, None] * (np.einsum("nmh,nh->nm", R, v[:, s]) + r)
        if dv is not None:
            dv[:, s] += np.einsum("nmh,nm->nh", R, kf[:, s] * wk[:, s, None])


# ---- Q8_0 weights -----------------------------------------------------------------------------
# A weight matrix W (OC, C) -- out = inp @ W^T, so each output's C inputs are consecutive -- is
# stored as int8 q (OC, C) and one float scale per block of 32 consecutive inputs, scales
# (OC, ceil(C / 32)): W[o, i] = scales[o, i // 32] * q[o, i] (the last block may be shorter).

Q8_BLOCK = chk.Q8_BLOCK


def q8_matmul_forward(out, inp, q, scales, bias=None, residual=None):
    """out (N,OC) = inp (N,C) @ W^T + bias + residual with W given in Q8_0 (q, scales).

    Per output o: the sum over blocks k of scales[o, k] * (inp[block k] . q[o, block k]), the
    block dot products in float32 (the weights widened exactly, never rounded again)."""
    N, C, OC = chk.q8_matmul_forward(out, inp, q, scales, bias, residual, DT)
    nb = scales.shape[1]
    x = inp.reshape(N, C)
    pad = nb * Q8_BLOCK - C
    xq = np.pad(x, ((0, 0), (0, pad))).reshape(N, nb, Q8_BLOCK)
    wq = np.pad(q, ((0, 0), (0, pad))).astype(x.dtype).reshape(OC, nb, Q8_BLOCK)
    blocks = np.einsum("nki,oki->nok", xq, wq)                         # (N,OC,nb)
    y = (blocks * scales[None]).sum(axis=-1, dtype=x.dtype)
    if bias is not None:
        y += bias
    if residual is not None:
        y += residual.reshape(N, OC)
    out.reshape(N, OC)[...] = y


def q8_dequantize(w, q, scales):
    """w (OC,C) = q (OC,C) * scales (OC, ceil(C/32)) repeated over each block of 32 inputs."""
    chk.q8_dequantize(w, q, scales, DT)
    w[...] = q8_rows(q, scales, slice(None))


def q8_rows(q, scales, rows):
    """Rows ``rows`` of the Q8_0 matrix (q, scales), dequantized: (..., C), each weight
    scale * q (one product, exact in the scales' dtype)."""
    C = q.shape[1]
    return q[rows].astype(scales.dtype) * np.repeat(scales[rows], Q8_BLOCK, axis=-1)[..., :C]


class Q8Decoder:
    """:class:`Decoder` for a Q8_0 model (``pyllm.quant``): the same step, every matrix product
    through :func:`q8_matmul_forward` and the embeddings' rows dequantized. ``weights``: 6 + 16 L
    arrays in ``pyllm.quant.decoder_weights`` order; ``cache`` (L,2,B,NH,block_size,hd)."""

    def __init__(self, weights, cache, n_head):
        B, maxT, V, C, NH, L = chk.q8_decoder(weights, cache, n_head, DT)
        self.B, self.maxT, self.V, self.C, self.NH, self.L = B, maxT, V, C, NH, L
        self.weights, self.cache = list(weights), cache
        e = lambda *s: np.zeros(s, dtype=cache.dtype)  # noqa: E731
        self.x, self.x2, self.h, self.att = e(B, C), e(B, C), e(B, C), e(B, C)
        self.qkv, self.fc, self.fcg, self.logits = e(B, 3 * C), e(B, 4 * C), e(B, 4 * C), e(B, V)

    def step(self, tok, pos):
        tok, pos = chk.decode_step(tok, pos, self.B, self.V, self.maxT)
        W, h, x, x2 = self.weights, self.h, self.x, self.x2
        x[...] = q8_rows(W[0], W[1], tok) + q8_rows(W[2], W[3], pos)
        for i in range(self.L):
            w = W[4 + 16 * i:20 + 16 * i]
            layernorm_forward(h, None, None, x, w[0], w[1])
            q8_matmul_forward(self.qkv, h, w[2], w[3], w[4])                 # (B,3C)
            attention_decode(self.att, self.cache[i, 0], self.cache[i, 1], self.qkv, pos,
                             self.NH)
            q8_matmul_forward(x2, self.att, w[5], w[6], w[7], residual=x)     # x2 = x + proj
            layernorm_forward(h, None, None, x2, w[8], w[9])
            q8_matmul_forward(self.fc, h, w[10], w[11], w[12])                # (B,4C)
            gelu_forward(self.fcg, self.fc)
            q8_matmul_forward(x, self.fcg, w[13], w[14], w[15], residual=x2)  # x = x2 + proj
        layernorm_forward(h, None, None, x, W[-2], W[-1])
        q8_matmul_forward(self.logits, h, W[0], W[1])                         # (B,V) tied head
        return self.logits


# ---- optimizer -------------------------------------------------------------------------------

def adamw_update(params, grads, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """One AdamW step in place on params, m, v (all the same shape as grads)."""
    chk.adamw_update(params, grads, m, v, lr, beta1, beta2, eps, weight_decay, step, DT)
    dt = params.dtype.type
    m *= dt(beta1)
    m += dt(1 - beta1) * grads
    v *= dt(beta2)
    v += dt(1 - beta2) * grads * grads
    mhat = m / dt(1 - beta1 ** step)
    vhat = v / dt(1 - beta2 ** step)
    params -= dt(lr) * (mhat / (np.sqrt(vhat) + dt(eps)) + dt(weight_decay) * params)


def norm_squared(x):
    """Sum of squares of x, accumulated in float64; returns a Python float."""
    chk.farr("x", x, DT)
    x64 = x.reshape(-1).astype(np.float64)
    return float(x64 @ x64)


def scale_inplace(x, s):
    """x *= s."""
    chk.farr("x", x, DT, out=True)
    if not np.isfinite(s):
        raise ValueError("s must be finite, got %r" % (s,))
    x *= x.dtype.type(s)
