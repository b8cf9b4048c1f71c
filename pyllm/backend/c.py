"""The C backend: the same functions as ``pyllm/backend/numpy.py``, run by the kernels in ``csrc/``.

Each function checks its arguments (``_check``), hands the arrays to C with ``ffi.from_buffer``
(which keeps them alive for the call), calls the kernel and turns a non-zero status into an
exception. Only float32 is accepted here.
"""
import numpy as np

from . import _check as chk
from .. import _ckernels  # ImportError here means the extension was not built

ffi, lib = _ckernels.ffi, _ckernels.lib
# the C ABI (csrc/pyllm.h PYLLM_ABI_VERSION) these wrappers were written for: an extension built
# from other sources would be called with the wrong arguments, so it is refused at import
ABI_VERSION = 8
if lib.pyllm_abi_version() != ABI_VERSION:
    raise ImportError("the compiled pyllm._ckernels has C ABI version %d but this pyllm needs %d: "
                      "it was built from other C sources; rebuild it (pip install -e . in a "
                      "source checkout, or reinstall pyllm)" % (lib.pyllm_abi_version(),
                                                               ABI_VERSION))
DT = chk.F32
_STATUS = {lib.PYLLM_ERR_SIZE: "a size argument is out of range",
           lib.PYLLM_ERR_INDEX: "an index is out of range",
           lib.PYLLM_ERR_NULL: "a required array is missing"}


def _f(a):
    return ffi.NULL if a is None else ffi.from_buffer("float[]", a)


def _i(a):
    return ffi.from_buffer("int32_t[]", a)


def _ok(name, status):
    if status == lib.PYLLM_ERR_NOMEM:
        raise MemoryError("C kernel %s could not allocate its scratch buffers" % name)
    if status != lib.PYLLM_OK:
        raise RuntimeError("C kernel %s failed: %s (status %d)"
                           % (name, _STATUS.get(status, "unknown error"), status))


# ---- embedding -------------------------------------------------------------------------------

def encoder_forward(out, idx, wte, wpe, pos0=0):
    idx, B, T, C, V, maxT = chk.encoder_forward(out, idx, wte, wpe, pos0, DT)
    _ok("encoder_forward", lib.encoder_forward(_f(out), _i(idx), _f(wte), _f(wpe),
                                               B, T, C, V, maxT, int(pos0)))


def encoder_backward(dwte, dwpe, dout, idx):
    idx, B, T, C, V, maxT = chk.encoder_backward(dwte, dwpe, dout, idx, DT)
    _ok("encoder_backward", lib.encoder_backward(_f(dwte), _f(dwpe), _f(dout), _i(idx),
                                                 B, T, C, V, maxT))


# ---- layernorm -------------------------------------------------------------------------------

def layernorm_forward(out, mean, rstd, inp, weight, bias):
    N, C = chk.layernorm_forward(out, mean, rstd, inp, weight, bias, DT)
    _ok("layernorm_forward", lib.layernorm_forward(_f(out), _f(mean), _f(rstd), _f(inp),
                                                   _f(weight), _f(bias), N, C))


def layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd):
    N, C = chk.layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, DT)
    _ok("layernorm_backward", lib.layernorm_backward(_f(dinp), _f(dweight), _f(dbias), _f(dout),
                                                     _f(inp), _f(weight), _f(mean), _f(rstd),
                                                     N, C))


# ---- matmul ----------------------------------------------------------------------------------

def matmul_forward(out, inp, weight, bias=None, residual=None):
    N, C, OC = chk.matmul_forward(out, inp, weight, bias, DT, residual)
    _ok("matmul_forward", lib.matmul_forward(_f(out), _f(inp), _f(weight), _f(bias),
                                             _f(residual), N, C, OC))


def matmul_backward(dinp, dweight, dbias, dout, inp, weight):
    N, C, OC = chk.matmul_backward(dinp, dweight, dbias, dout, inp, weight, DT)
    _ok("matmul_backward", lib.matmul_backward(_f(dinp), _f(dweight), _f(dbias), _f(dout),
                                               _f(inp), _f(weight), N, C, OC))


def gemm(c, a, b, trans_a=False, trans_b=False, accumulate=False):
    M, N, K = chk.gemm(c, a, b, trans_a, trans_b, DT)
    _ok("gemm", lib.gemm(_f(c), _f(a), _f(b), M, N, K, int(bool(trans_a)), int(bool(trans_b)),
                         int(bool(accumulate))))


# ---- gelu, residual --------------------------------------------------------------------------

def gelu_forward(out, inp):
    n = chk.elementwise(("out",), (out,), ("inp",), (inp,), DT)
    _ok("gelu_forward", lib.gelu_forward(_f(out), _f(inp), n))


def gelu_backward(dinp, inp, dout, accumulate=True):
    n = chk.elementwise(("dinp",), (dinp,), ("inp", "dout"), (inp, dout), DT)
    _ok("gelu_backward", lib.gelu_backward(_f(dinp), _f(inp), _f(dout), n, int(bool(accumulate))))


def residual_forward(out, inp1, inp2):
    n = chk.elementwise(("out",), (out,), ("inp1", "inp2"), (inp1, inp2), DT)
    _ok("residual_forward", lib.residual_forward(_f(out), _f(inp1), _f(inp2), n))


def residual_backward(dinp1, dinp2, dout):
    n = chk.elementwise(("dinp1", "dinp2"), (dinp1, dinp2), ("dout",), (dout,), DT,
                        optional_outs=True)
    _ok("residual_backward", lib.residual_backward(_f(dinp1), _f(dinp2), _f(dout), n))


# ---- softmax, cross-entropy ------------------------------------------------------------------

def softmax_forward(out, inp):
    N, V = chk.softmax_forward(out, inp, DT)
    _ok("softmax_forward", lib.softmax_forward(_f(out), _f(inp), N, V))


def softmax_backward(dinp, dout, out):
    N, V = chk.softmax_backward(dinp, dout, out, DT)
    _ok("softmax_backward", lib.softmax_backward(_f(dinp), _f(dout), _f(out), N, V))


def crossentropy_forward(losses, logits, targets):
    targets, N, V = chk.crossentropy_forward(losses, logits, targets, DT)
    _ok("crossentropy_forward", lib.crossentropy_forward(_f(losses), _f(logits), _i(targets),
                                                         N, V))


def crossentropy_backward(dlogits, logits, targets, scale):
    targets, N, V = chk.crossentropy_backward(dlogits, logits, targets, scale, DT)
    _ok("crossentropy_backward", lib.crossentropy_backward(_f(dlogits), _f(logits), _i(targets),
                                                           float(scale), N, V))


# ---- attention -------------------------------------------------------------------------------

def attention_forward(out, lse, qkv, n_head):
    B, T, C, NH = chk.attention_forward(out, lse, qkv, n_head, DT)
    _ok("attention_forward", lib.attention_forward(_f(out), _f(lse), _f(qkv), B, T, C, NH))


def attention_backward(dqkv, dout, qkv, out, lse, n_head, accumulate=True):
    B, T, C, NH = chk.attention_backward(dqkv, dout, qkv, out, lse, n_head, DT)
    _ok("attention_backward", lib.attention_backward(_f(dqkv), _f(dout), _f(qkv), _f(out),
                                                     _f(lse), B, T, C, NH, int(bool(accumulate))))


def attention_probs(probs, qkv, lse, n_head):
    B, T, C, NH = chk.attention_probs(probs, qkv, lse, n_head, DT)
    _ok("attention_probs", lib.attention_probs(_f(probs), _f(qkv), _f(lse), B, T, C, NH))


def attention_decode(out, kcache, vcache, qkv, pos, n_head):
    B, pos, maxT, C, NH = chk.attention_decode(out, kcache, vcache, qkv, pos, n_head, DT)
    _ok("attention_decode", lib.attention_decode(_f(out), _f(kcache), _f(vcache), _f(qkv),
                                                 B, pos, maxT, C, NH))


# ---- decoding --------------------------------------------------------------------------------

class _Decoder:
    """Sampling's one-token step in one C call: the arrays are checked and their pointers taken
    once, here; each step checks only tok and pos. Subclasses name the check, the C function,
    its scratch (floats per B C) and how to point at a weight."""

    def __init__(self, weights, cache, n_head):
        B, maxT, V, C, NH, L = self._check(weights, cache, n_head, DT)
        self.B, self.maxT, self.V, self.C, self.NH, self.L = B, maxT, V, C, NH, L
        self.weights, self.cache = list(weights), cache
        self.logits = np.zeros((B, V), dtype=np.float32)
        self._scratch = np.zeros(self._scratch_per_bc * B * C, dtype=np.float32)
        self._keep = [self._pointer(w) for w in self.weights]  # keeps the buffers alive
        self._wptrs = ffi.new(self._ptr_array, self._keep)
        self._args = (_f(self.logits), _f(cache), _f(self._scratch))

    def step(self, tok, pos):
        tok, pos = chk.decode_step(tok, pos, self.B, self.V, self.maxT)
        _ok(self._name, getattr(lib, self._name)(*self._args, _i(tok), self._wptrs, self.B, pos,
                                                 self.maxT, self.V, self.C, self.NH, self.L))
        return self.logits


class Decoder(_Decoder):
    """The NumPy backend's Decoder in one C call per step (``gpt_decode_step`` in decode.c)."""
    _check, _name = staticmethod(chk.decoder), "gpt_decode_step"
    _scratch_per_bc, _ptr_array, _pointer = 15, "float *[]", staticmethod(_f)


# ---- linear attention ------------------------------------------------------------------------

LINATT_DEN_MIN = 1e-30


def favor_features_forward(out, x, w, c=None):
    N, T, d, m = chk.favor_features_forward(out, x, w, c, DT)
    _ok("favor_features_forward", lib.favor_features_forward(_f(out), _f(c), _f(x), _f(w), N, T,
                                                             d, m))


def favor_features_backward(dx, dout, out, x, w):
    N, T, d, m = chk.favor_features_backward(dx, dout, out, x, w, DT)
    _ok("favor_features_backward", lib.favor_features_backward(_f(dx), _f(dout), _f(out), _f(x),
                                                               _f(w), N, T, d, m))


def elu_features_forward(out, x):
    n = chk.elementwise(("out",), (out,), ("x",), (x,), DT)
    _ok("elu_features_forward", lib.elu_features_forward(_f(out), _f(x), n))


def elu_features_backward(dx, dout, x):
    n = chk.elementwise(("dx",), (dx,), ("x", "dout"), (x, dout), DT)
    _ok("elu_features_backward", lib.elu_features_backward(_f(dx), _f(dout), _f(x), n))


def linear_attention_forward(out, den, qf, kf, v, kc=None):
    N, T, m, hd = chk.linear_attention_forward(out, den, qf, kf, v, kc, DT)
    _ok("linear_attention_forward", lib.linear_attention_forward(_f(out), _f(den), _f(qf), _f(kf),
                                                                 _f(v), _f(kc), N, T, m, hd))


def linear_attention_backward(dqf, dkf, dv, dout, qf, kf, v, out, den, kc=None):
    N, T, m, hd = chk.linear_attention_backward(dqf, dkf, dv, dout, qf, kf, v, out, den, kc, DT)
    _ok("linear_attention_backward", lib.linear_attention_backward(
        _f(dqf), _f(dkf), _f(dv), _f(dout), _f(qf), _f(kf), _f(v), _f(out), _f(den), _f(kc),
        N, T, m, hd))


# ---- Q8_0 weights -----------------------------------------------------------------------------

def q8_matmul_forward(out, inp, q, scales, bias=None, residual=None):
    N, C, OC = chk.q8_matmul_forward(out, inp, q, scales, bias, residual, DT)
    _ok("q8_matmul_forward", lib.q8_matmul_forward(
        _f(out), _f(inp), ffi.from_buffer("int8_t[]", q), _f(scales), _f(bias), _f(residual),
        N, C, OC))


def q8_dequantize(w, q, scales):
    OC, C = chk.q8_dequantize(w, q, scales, DT)
    _ok("q8_dequantize", lib.q8_dequantize(_f(w), ffi.from_buffer("int8_t[]", q), _f(scales),
                                           OC, C))


class Q8Decoder(_Decoder):
    """The NumPy backend's Q8Decoder in one C call per step (``q8_decode_step`` in quant.c)."""
    _check, _name = staticmethod(chk.q8_decoder), "q8_decode_step"
    _scratch_per_bc, _ptr_array = 16, "void *[]"

    @staticmethod
    def _pointer(w):
        return ffi.from_buffer("int8_t[]" if w.dtype == np.int8 else "float[]", w)


# ---- optimizer -------------------------------------------------------------------------------

def adamw_update(params, grads, m, v, lr, beta1, beta2, eps, weight_decay, step):
    n = chk.adamw_update(params, grads, m, v, lr, beta1, beta2, eps, weight_decay, step, DT)
    _ok("adamw_update", lib.adamw_update(_f(params), _f(grads), _f(m), _f(v), n, float(lr),
                                         float(beta1), float(beta2), float(eps),
                                         float(weight_decay), int(step)))


def norm_squared(x):
    chk.farr("x", x, DT)
    out = ffi.new("double *")
    _ok("norm_squared", lib.norm_squared(out, _f(x), x.size))
    return float(out[0])


def scale_inplace(x, s):
    chk.farr("x", x, DT, out=True)
    if not np.isfinite(s):
        raise ValueError("s must be finite, got %r" % (s,))
    _ok("scale_inplace", lib.scale_inplace(_f(x), float(s), x.size))


# ---- runtime ---------------------------------------------------------------------------------

def build_info():
    """The compiler, flags and OpenMP status the extension was built with."""
    return ffi.string(lib.pyllm_build_info()).decode()


def source_hash():
    """The fingerprint of the csrc/ files the extension was built from (pyllm._srchash)."""
    return ffi.string(lib.pyllm_source_hash()).decode()


def has_openmp():
    return bool(lib.pyllm_has_openmp())


def get_num_threads():
    return int(lib.pyllm_get_num_threads())


def set_num_threads(n):
    _ok("pyllm_set_num_threads", lib.pyllm_set_num_threads(int(n)))


def simd_level():
    """The SIMD level in use: 0 portable C, 1 AVX2+FMA (see pyllm.backend.SIMD_LEVELS)."""
    return int(lib.pyllm_simd_level())


def set_simd_level(level):
    """Ask for SIMD level ``level`` (an int); returns the level granted (lower when the CPU
    lacks it)."""
    return int(lib.pyllm_set_simd_level(int(level)))
