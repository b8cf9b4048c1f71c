"""Int8 inference: GPT weights in Q8_0 (symmetric int8, one float scale per 32 inputs).

Sampling one token reads every weight once, so decoding is bound by memory bandwidth; Q8_0 reads
a little over a quarter of float32's bytes. ``quantize(model)`` turns a trained :class:`GPT`
into a :class:`QuantizedGPT` for inference only: ``forward``, ``generate`` and ``stream`` with
GPT's own sampling code, ``save`` and ``pyllm.load``.

Layout (as llama.cpp's Q8_0 blocks): a matrix W (OC, C), with out = inp @ W^T so that each
output's C inputs are consecutive, is stored as int8 q (OC, C) and scales (OC, ceil(C / 32)),
scale = max |w| / 127 over each block of 32 consecutive inputs (the last block may be shorter),
q = round(w / scale) (half to even) in [-127, 127]; an all-zero block has scale 0 and q 0, never
NaN. Every matrix is quantized: the four of each block (stored transposed from GPT-2's (in, out)
layout), the token embedding -- which is also the LM head -- and the position embedding (rows
dequantized on lookup). LayerNorm parameters and biases stay float32.

The matrix products run through ``ops.q8_matmul_forward`` (C: the int8 weights widened in
registers; NumPy: the specification) for up to ``Q8_MATVEC_ROWS`` rows, as in sampling; longer
inputs (a prompt's prefill) dequantize one matrix at a time and use the float32 GEMM.
"""
import json
import math

import numpy as np

from .backend import numpy as _spec
from .backend import ops
from .backend._check import Q8_BLOCK, Q8_DECODER_LAYER
from .model import GPT

Q8_FORMAT = "pyllm-q8_0"
Q8_FORMAT_VERSION = 1
Q8_MATVEC_ROWS = 16  # up to this many rows through the int8 kernel, more through dequant + GEMM
_MATRICES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def quantize_q8_0(w):
    """Quantize a float matrix w (OC, C) along its rows: returns q (OC, C) int8 and scales
    (OC, ceil(C / 32)) float32 with w ~= scales[:, i // 32] * q[:, i]."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    if w.ndim != 2 or w.size == 0:
        raise ValueError("quantize_q8_0 needs a non-empty 2-D matrix, got shape %s" % (w.shape,))
    if not np.all(np.isfinite(w)):
        raise ValueError("cannot quantize a matrix with NaN or Inf entries")
    OC, C = w.shape
    nb = -(-C // Q8_BLOCK)
    blocks = np.pad(w, ((0, 0), (0, nb * Q8_BLOCK - C))).reshape(OC, nb, Q8_BLOCK)
    scales = (np.abs(blocks).max(axis=-1) / np.float32(127)).astype(np.float32)
    inv = np.divide(1, scales, out=np.zeros_like(scales), where=scales > 0)
    q = np.clip(np.rint(blocks * inv[..., None]), -127, 127).astype(np.int8)
    return np.ascontiguousarray(q.reshape(OC, nb * Q8_BLOCK)[:, :C]), np.ascontiguousarray(scales)


def dequantize_q8_0(q, scales):
    """The float32 matrix (OC, C) that q (OC, C) int8 and scales (OC, ceil(C / 32)) stand for."""
    return _spec.q8_rows(q, np.asarray(scales, dtype=np.float32), slice(None))


class Q8Matrix:
    """One Q8_0 matrix W (OC, C): ``q`` int8 (OC, C) and ``scales`` float32 (OC, nb)."""

    def __init__(self, q, scales):
        self.q, self.scales = q, scales

    @classmethod
    def from_float(cls, w):
        return cls(*quantize_q8_0(w))

    @property
    def shape(self):
        return self.q.shape

    @property
    def nbytes(self):
        return self.q.nbytes + self.scales.nbytes

    def rows(self, idx):
        """Rows idx of W, dequantized (an embedding lookup): (..., C) float32."""
        return _spec.q8_rows(self.q, self.scales, np.asarray(idx))

    def matmul(self, out, inp, bias=None, residual=None):
        """out (N, OC) = inp (N, C) @ W^T + bias + residual."""
        if inp.size // inp.shape[-1] <= Q8_MATVEC_ROWS:
            ops.q8_matmul_forward(out, inp, self.q, self.scales, bias, residual)
        else:            # many rows (prefill): one dequantized matrix through the float GEMM
            w = np.empty(self.q.shape, dtype=np.float32)
            ops.q8_dequantize(w, self.q, self.scales)
            N, OC = inp.size // inp.shape[-1], w.shape[0]
            y = out.reshape(N, OC)
            if residual is not None:
                y[...] = residual.reshape(N, OC)
            ops.gemm(y, inp.reshape(N, -1), w, trans_b=True, accumulate=residual is not None)
            if bias is not None:
                y += bias
        return out


class QuantizedGPT:
    """A GPT whose matrices are Q8_0 (see the module docstring), for inference only.

    Build one with :func:`quantize`; it has the :class:`GPT`'s ``config``, ``forward(idx)``,
    ``generate(...)`` and ``stream(...)`` (the same sampling code and arguments, with a KV
    cache), ``save(path)``, and ``nbytes``, the bytes of its weights.
    """

    def __init__(self, config, matrices, vectors):
        self.config = config
        self.dtype = np.dtype(np.float32)
        self.m = matrices          # name -> Q8Matrix: "wte", "wpe", "h.<i>.<attn.c_attn ...>"
        self.v = vectors           # name -> float32 (biases, LayerNorm): GPT-2 names
        self._kattn = None         # softmax attention only (what GPT._prefill asks)
        self._acts = None

    @property
    def nbytes(self):
        """Bytes of the weights: int8 values, their scales and the float32 vectors."""
        return (sum(m.nbytes for m in self.m.values())
                + sum(v.nbytes for v in self.v.values()))

    @property
    def num_params(self):
        """Number of parameters (as the float model counts them)."""
        return int(sum(math.prod(m.shape) for m in self.m.values())
                   + sum(v.size for v in self.v.values()))

    def __repr__(self):
        c = self.config
        return ("QuantizedGPT(q8_0; vocab_size=%d, block_size=%d, n_layer=%d, n_head=%d, "
                "n_embd=%d; %.2fM params in %.1f MB)" % (c.vocab_size, c.block_size, c.n_layer,
                                                         c.n_head, c.n_embd,
                                                         self.num_params / 1e6, self.nbytes / 1e6))

    # borrowed from GPT: argument checks and the whole sampling loop (KV cache, temperature,
    # top-k, top-p, seed, the window past block_size)
    _check_idx = GPT._check_idx
    _new_cache = GPT._new_cache
    _prefill = GPT._prefill
    stream = GPT.stream
    generate = GPT.generate

    def _check_backend(self):
        pass

    def _forward(self, idx):
        """idx (B,T) int32 -> {"logits": (B,T,V), "layers": [{"qkv": (B,T,3C)}, ...]}."""
        B, T = idx.shape
        cfg, V, M = self.config, self.v, self.m
        C, NH = cfg.n_embd, cfg.n_head
        e = lambda *s: np.empty(s, dtype=np.float32)  # noqa: E731
        x = np.ascontiguousarray(M["wte"].rows(idx) + M["wpe"].rows(np.arange(T)), np.float32)
        h, x2, att, lse = e(B, T, C), e(B, T, C), e(B, T, C), e(B, NH, T)
        fc, fcg = e(B, T, 4 * C), e(B, T, 4 * C)
        layers = []
        for i in range(cfg.n_layer):
            p = "h.%d." % i
            qkv = e(B, T, 3 * C)
            ops.layernorm_forward(h, None, None, x, V[p + "ln_1.weight"], V[p + "ln_1.bias"])
            M[p + "attn.c_attn"].matmul(qkv, h, V[p + "attn.c_attn.bias"])
            ops.attention_forward(att, lse, qkv, NH)
            M[p + "attn.c_proj"].matmul(x2, att, V[p + "attn.c_proj.bias"], residual=x)
            ops.layernorm_forward(h, None, None, x2, V[p + "ln_2.weight"], V[p + "ln_2.bias"])
            M[p + "mlp.c_fc"].matmul(fc, h, V[p + "mlp.c_fc.bias"])
            ops.gelu_forward(fcg, fc)
            M[p + "mlp.c_proj"].matmul(x, fcg, V[p + "mlp.c_proj.bias"], residual=x2)
            layers.append({"qkv": qkv})
        ops.layernorm_forward(h, None, None, x, V["ln_f.weight"], V["ln_f.bias"])
        logits = M["wte"].matmul(e(B, T, cfg.vocab_size), h)
        return {"logits": logits, "layers": layers}

    def forward(self, idx):
        """Logits (B, T, vocab_size) float32 for token ids idx (B, T) (or (T,))."""
        return self._forward(self._check_idx(idx))["logits"]

    __call__ = forward

    def decoder_weights(self):
        """The arrays of the one-token decoder, in its order: wte and wpe (q8, scale each), then
        per layer ln_1 (weight, bias), c_attn and attn.c_proj (q8, scale, bias each), ln_2,
        mlp.c_fc and mlp.c_proj, then ln_f (``Q8_DECODER_LAYER`` in pyllm/backend/_check.py)."""
        M, V = self.m, self.v
        out = [M["wte"].q, M["wte"].scales, M["wpe"].q, M["wpe"].scales]
        for i in range(self.config.n_layer):
            p = "h.%d." % i
            for name, kind, _ in Q8_DECODER_LAYER:
                if kind == "f":
                    out.append(V[p + name])
                else:
                    m = M[p + name.rsplit(".", 1)[0]]
                    out.append(m.q if kind == "q" else m.scales)
        return out + [V["ln_f.weight"], V["ln_f.bias"]]

    def _decoder(self, B):
        cache = self._new_cache(B)
        return cache, ops.Q8Decoder(self.decoder_weights(), cache, self.config.n_head)

    def save(self, path):
        """Write the model as one safetensors file (atomically); see docs/FORMATS.md."""
        from .tensorfile import save_safetensors
        tensors = dict(self.v)
        for name, m in self.m.items():
            tensors[name + ".q8"] = m.q
            tensors[name + ".scale"] = m.scales
        meta = {"format": Q8_FORMAT, "format_version": str(Q8_FORMAT_VERSION),
                "config": json.dumps(self.config.to_dict(), sort_keys=True),
                "block": str(Q8_BLOCK)}
        save_safetensors(path, tensors, meta)


def quantize(model, kind="q8_0"):
    """A :class:`QuantizedGPT` from a float :class:`GPT` (``kind``: only ``"q8_0"``)."""
    if kind != "q8_0":
        raise ValueError("unknown quantization %r; pyllm has 'q8_0'" % (kind,))
    if not isinstance(model, GPT):
        raise TypeError("quantize needs a pyllm.GPT, got %s" % type(model).__name__)
    if model.config.attention != "softmax":
        raise ValueError("q8_0 quantization supports softmax attention; this model has "
                         "attention=%r" % model.config.attention)
    if not all(np.all(np.isfinite(w)) for w in model.state_dict().values()):
        raise ValueError("the model has NaN or Inf weights; they cannot be quantized")
    sd = model.state_dict()
    matrices = {"wte": Q8Matrix.from_float(sd["wte.weight"]),
                "wpe": Q8Matrix.from_float(sd["wpe.weight"])}
    vectors = {}
    for i in range(model.config.n_layer):
        for name in _MATRICES:
            key = "h.%d.%s" % (i, name)
            matrices[key] = Q8Matrix.from_float(sd[key + ".weight"].T)
    for name, arr in sd.items():
        if arr.ndim == 1:
            vectors[name] = np.array(arr, dtype=np.float32)
    return QuantizedGPT(model.config, matrices, vectors)


def matrix_shapes(cfg):
    """(name, (OC, C)) of every Q8_0 matrix of a model with config ``cfg``."""
    C, V = cfg.n_embd, cfg.vocab_size
    shapes = [("wte", (V, C)), ("wpe", (cfg.block_size, C))]
    for i in range(cfg.n_layer):
        p = "h.%d." % i
        shapes += [(p + "attn.c_attn", (3 * C, C)), (p + "attn.c_proj", (C, C)),
                   (p + "mlp.c_fc", (4 * C, C)), (p + "mlp.c_proj", (C, 4 * C))]
    return shapes


def from_tensors(cfg, tensors, path, check_values=True):
    """A QuantizedGPT from a Q8_0 file's tensors, every shape and dtype checked first, and
    every value unless ``check_values`` is False (a memory-mapped file, whose pages would all
    be read) (``CheckpointError`` naming the file and the tensor)."""
    from .checkpoint import CheckpointError
    from .model import param_shapes
    need = 2 * len(matrix_shapes(cfg))
    if need > len(tensors):
        raise CheckpointError("%s holds %d tensors, fewer than the %d a %d-layer int8 model "
                              "needs" % (path, len(tensors), need, cfg.n_layer))

    def get(name, shape, dtype):
        arr = tensors.get(name)
        if arr is None:
            raise CheckpointError("%s lacks tensor %r" % (path, name))
        if tuple(arr.shape) != tuple(shape):
            raise CheckpointError("%s: tensor %r has shape %s, expected %s"
                                  % (path, name, tuple(arr.shape), tuple(shape)))
        if arr.dtype != dtype:
            raise CheckpointError("%s: tensor %r has dtype %s, expected %s"
                                  % (path, name, arr.dtype, np.dtype(dtype)))
        if check_values and dtype == np.float32 and not np.all(np.isfinite(arr)):
            raise CheckpointError("%s: tensor %r is not finite (NaN or Inf)" % (path, name))
        return np.ascontiguousarray(arr)

    matrices = {}
    for name, (OC, C) in matrix_shapes(cfg):
        q = get(name + ".q8", (OC, C), np.int8)
        s = get(name + ".scale", (OC, -(-C // Q8_BLOCK)), np.float32)
        if check_values and (np.any(s < 0) or np.any(q == -128)):
            raise CheckpointError("%s: %r is not Q8_0 (a negative scale or a -128)"
                                  % (path, name))
        matrices[name] = Q8Matrix(q, s)
    vectors = {name: get(name, shape, np.float32)
               for name, shape in param_shapes(cfg) if len(shape) == 1}
    return QuantizedGPT(cfg, matrices, vectors)
