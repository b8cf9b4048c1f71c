"""Argument checks shared by both backends.

Every kernel call passes through one of these functions before any work is done, so bad input
raises the same ``TypeError`` / ``ValueError`` on the NumPy and the C backend, with a message that
names the argument and what was expected, and nothing reaches C that could read or write out of
bounds. Each function returns the sizes the kernel needs.

Rules: float arrays are ``numpy.ndarray`` of one native-endian float dtype (float32 only for C; the
NumPy backend also takes float64, used by the finite-difference tests), C-contiguous, aligned,
writable when written; token ids are any integer dtype with every value in range (returned as
contiguous, aligned int32); integer scalars (positions, head counts) are ``int`` or NumPy integers;
sizes fit a C ``int``.
"""
import math

import numpy as np

INT_MAX = 2**31 - 1
F32 = (np.dtype(np.float32),)
F32_F64 = (np.dtype(np.float32), np.dtype(np.float64))


def _is_array(name, a):
    if not isinstance(a, np.ndarray):
        raise TypeError("%s must be a numpy.ndarray, got %s" % (name, type(a).__name__))


def farr(name, a, dtypes, shape=None, out=False, like=None, optional=False):
    """Check a float array argument; ``like`` is an array whose dtype it must share."""
    if type(a) is np.ndarray:  # the valid case in one test (a training step makes ~400 calls)
        f = a.flags
        if (f.c_contiguous and f.aligned and (not out or f.writeable) and a.dtype in dtypes
                and (like is None or a.dtype == like.dtype)
                and (shape is None or a.shape == tuple(shape))):
            return a
    # else find what is wrong (or accept an ndarray subclass that passes every test)
    if a is None:
        if optional:
            return None
        raise TypeError("%s must be a numpy.ndarray, got None" % name)
    _is_array(name, a)
    if a.dtype not in dtypes:
        raise TypeError("%s must have dtype %s, got %s"
                        % (name, " or ".join(str(d) for d in dtypes), a.dtype))
    if like is not None and a.dtype != like.dtype:
        raise TypeError("%s has dtype %s but the other arrays are %s" % (name, a.dtype, like.dtype))
    if not a.flags.c_contiguous:
        raise ValueError("%s must be C-contiguous (use numpy.ascontiguousarray)" % name)
    if not a.flags.aligned:
        # C reads it as float*: an address that is not a multiple of the item size is undefined
        raise ValueError("%s is not aligned to its item size (copy it with numpy.array)" % name)
    if out and not a.flags.writeable:
        raise ValueError("%s is read-only, but the kernel writes to it" % name)
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ValueError("%s must have shape %s, got %s" % (name, tuple(shape), tuple(a.shape)))
    return a


def ids(name, a, upper, shape=None, ignore=None):
    """Check token ids / targets: integers in [0, upper), or ``ignore`` where one is allowed.
    Returns a C-contiguous int32 array."""
    _is_array(name, a)
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise TypeError("%s must be an integer array of token ids, got dtype %s" % (name, a.dtype))
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ValueError("%s must have shape %s, got %s" % (name, tuple(shape), tuple(a.shape)))
    if a.size:
        lo, hi = int(a.min()), int(a.max())
        if ignore is not None and lo == ignore:
            kept = a[a != ignore]
            lo = int(kept.min()) if kept.size else 0
        if lo < 0 or hi >= upper:
            bad = lo if lo < 0 else hi
            raise ValueError("%s holds id %d, outside the valid range [0, %d)" % (name, bad, upper))
    return np.require(a, np.int32, ["C", "A"])  # a copy unless already contiguous aligned int32


def integer(name, v):
    """An integer scalar argument (``int`` or a NumPy integer, not ``bool``) as a Python int."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError("%s must be an int, got %r" % (name, v))
    return int(v)


def size(name, n, lo=0):
    if n < lo or n > INT_MAX:
        raise ValueError("%s = %d is out of range [%d, %d]" % (name, n, lo, INT_MAX))
    return int(n)


def _owner(a):
    """The ndarray whose own allocation holds a's data, or None if that is not known (memory of
    another object: a bytes buffer, an mmap, ...)."""
    while a.base is not None:
        a = a.base
        if not isinstance(a, np.ndarray):
            return None
    return a if a.flags.owndata else None


def _overlaps(a, a_owner, b):
    """Whether b may share memory with a, whose _owner is a_owner: two different NumPy
    allocations never do; else the address ranges are compared."""
    b_owner = _owner(b)
    if a_owner is not None and b_owner is not None and a_owner is not b_owner:
        return False
    return np.may_share_memory(a, b)


def no_alias(out_name, out_array, /, **inputs):
    """Refuse an output that overlaps an input: the kernel would read what it already wrote."""
    if out_array is None:
        return
    out_owner = _owner(out_array)
    for name, a in inputs.items():
        if a is not None and _overlaps(out_array, out_owner, a):
            raise ValueError("%s must not overlap %s" % (out_name, name))


def rows(name, a):
    """(N, C) view sizes of an array shaped (..., C) with at least one axis."""
    if a.ndim < 1:
        raise ValueError("%s must have at least one axis, got a 0-d array" % name)
    C = a.shape[-1]
    N = math.prod(a.shape[:-1])  # exact (Python ints), then range-checked
    return size(name + " rows", N), size(name + " last axis", C)


# ---------------------------------------------------------------------------------------------
# one check per kernel (same names as the kernels)

def encoder_forward(out, idx, wte, wpe, pos0, dt):
    farr("wte", wte, dt)
    farr("wpe", wpe, dt, like=wte)
    if wte.ndim != 2 or wpe.ndim != 2 or wte.shape[1] != wpe.shape[1]:
        raise ValueError("wte must be (V, C) and wpe (block_size, C), got %s and %s"
                         % (wte.shape, wpe.shape))
    V, C = wte.shape
    maxT = wpe.shape[0]
    _is_array("idx", idx)
    if idx.ndim != 2:
        raise ValueError("idx must have shape (B, T), got %s" % (idx.shape,))
    B, T = idx.shape
    pos0 = integer("pos0", pos0)
    if pos0 < 0 or pos0 + T > maxT:
        raise ValueError("positions %d..%d exceed the block size %d (wpe has %d rows)"
                         % (pos0, pos0 + T - 1, maxT, maxT))
    idx = ids("idx", idx, V)
    farr("out", out, dt, shape=(B, T, C), out=True, like=wte)
    no_alias("out", out, wte=wte, wpe=wpe)
    return idx, size("B", B), size("T", T), size("C", C, 1), size("V", V, 1), size("maxT", maxT)


def encoder_backward(dwte, dwpe, dout, idx, dt):
    farr("dout", dout, dt)
    if dout.ndim != 3:
        raise ValueError("dout must have shape (B, T, C), got %s" % (dout.shape,))
    B, T, C = dout.shape
    farr("dwte", dwte, dt, out=True, like=dout)
    farr("dwpe", dwpe, dt, out=True, like=dout)
    if dwte.ndim != 2 or dwte.shape[1] != C or dwpe.ndim != 2 or dwpe.shape[1] != C:
        raise ValueError("dwte must be (V, %d) and dwpe (block_size, %d), got %s and %s"
                         % (C, C, dwte.shape, dwpe.shape))
    if dwpe.shape[0] < T:
        raise ValueError("dwpe has %d rows, fewer than T = %d" % (dwpe.shape[0], T))
    idx = ids("idx", idx, dwte.shape[0], shape=(B, T))
    no_alias("dwte", dwte, dout=dout, dwpe=dwpe)
    no_alias("dwpe", dwpe, dout=dout)
    return (idx, size("B", B), size("T", T), size("C", C, 1), size("V", dwte.shape[0], 1),
            size("maxT", dwpe.shape[0]))


def layernorm_forward(out, mean, rstd, inp, weight, bias, dt):
    farr("inp", inp, dt)
    N, C = rows("inp", inp)
    if C < 1:
        raise ValueError("inp's last axis must not be empty")
    farr("weight", weight, dt, shape=(C,), like=inp)
    farr("bias", bias, dt, shape=(C,), like=inp)
    farr("out", out, dt, shape=inp.shape, out=True, like=inp)
    farr("mean", mean, dt, shape=inp.shape[:-1], out=True, like=inp, optional=True)
    farr("rstd", rstd, dt, shape=inp.shape[:-1], out=True, like=inp, optional=True)
    _same_or_apart("out", out, "inp", inp)  # row by row: in place is fine
    no_alias("out", out, weight=weight, bias=bias, mean=mean, rstd=rstd)
    no_alias("mean", mean, inp=inp, weight=weight, bias=bias, rstd=rstd)
    no_alias("rstd", rstd, inp=inp, weight=weight, bias=bias)
    return N, C


def layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, dt):
    farr("inp", inp, dt)
    N, C = rows("inp", inp)
    if C < 1:
        raise ValueError("inp's last axis must not be empty")
    farr("dout", dout, dt, shape=inp.shape, like=inp)
    farr("weight", weight, dt, shape=(C,), like=inp)
    farr("mean", mean, dt, shape=inp.shape[:-1], like=inp)
    farr("rstd", rstd, dt, shape=inp.shape[:-1], like=inp)
    farr("dinp", dinp, dt, shape=inp.shape, out=True, like=inp, optional=True)
    farr("dweight", dweight, dt, shape=(C,), out=True, like=inp, optional=True)
    farr("dbias", dbias, dt, shape=(C,), out=True, like=inp, optional=True)
    for name, g in (("dinp", dinp), ("dweight", dweight), ("dbias", dbias)):
        no_alias(name, g, dout=dout, inp=inp, weight=weight, mean=mean, rstd=rstd)
    no_alias("dinp", dinp, dweight=dweight, dbias=dbias)
    no_alias("dweight", dweight, dbias=dbias)
    return N, C


def matmul_forward(out, inp, weight, bias, dt, residual=None):
    farr("inp", inp, dt)
    farr("weight", weight, dt, like=inp)
    if weight.ndim != 2:
        raise ValueError("weight must have shape (C, OC), got %s" % (weight.shape,))
    N, C = rows("inp", inp)
    if weight.shape[0] != C:
        raise ValueError("inp's last axis (%d) must equal weight.shape[0] (%d)"
                         % (C, weight.shape[0]))
    OC = size("OC", weight.shape[1])
    farr("bias", bias, dt, shape=(OC,), like=inp, optional=True)
    farr("out", out, dt, shape=inp.shape[:-1] + (OC,), out=True, like=inp)
    farr("residual", residual, dt, shape=out.shape, like=inp, optional=True)
    no_alias("out", out, inp=inp, weight=weight, bias=bias, residual=residual)
    return N, C, OC


def matmul_backward(dinp, dweight, dbias, dout, inp, weight, dt):
    farr("inp", inp, dt)
    farr("weight", weight, dt, like=inp)
    if weight.ndim != 2:
        raise ValueError("weight must have shape (C, OC), got %s" % (weight.shape,))
    N, C = rows("inp", inp)
    if weight.shape[0] != C:
        raise ValueError("inp's last axis (%d) must equal weight.shape[0] (%d)"
                         % (C, weight.shape[0]))
    OC = size("OC", weight.shape[1])
    farr("dout", dout, dt, shape=inp.shape[:-1] + (OC,), like=inp)
    farr("dinp", dinp, dt, shape=inp.shape, out=True, like=inp, optional=True)
    farr("dweight", dweight, dt, shape=weight.shape, out=True, like=inp, optional=True)
    farr("dbias", dbias, dt, shape=(OC,), out=True, like=inp, optional=True)
    for name, g in (("dinp", dinp), ("dweight", dweight), ("dbias", dbias)):
        no_alias(name, g, dout=dout, inp=inp, weight=weight)
    no_alias("dinp", dinp, dweight=dweight, dbias=dbias)
    no_alias("dweight", dweight, dbias=dbias)
    return N, C, OC


def gemm(c, a, b, trans_a, trans_b, dt):
    farr("a", a, dt)
    farr("b", b, dt, like=a)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError("a and b must be 2-D, got shapes %s and %s" % (a.shape, b.shape))
    M, K = (a.shape[1], a.shape[0]) if trans_a else a.shape
    Kb, N = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if K != Kb:
        raise ValueError("inner dimensions differ: op(a) is (%d, %d), op(b) is (%d, %d)"
                         % (M, K, Kb, N))
    farr("c", c, dt, shape=(M, N), out=True, like=a)
    no_alias("c", c, a=a, b=b)
    return size("M", M), size("N", N), size("K", K)


def elementwise(out_names, outs, in_names, ins, dt, optional_outs=False):
    """Same-shape arrays; returns the element count. An output may be the very memory of another
    argument (in place: each element is read before it is written) but must not overlap part of
    one, where the kernel would read elements it has already overwritten."""
    ref = None
    for name, a in zip(in_names, ins):
        farr(name, a, dt, like=ref)
        if ref is None:
            ref = a
        elif a.shape != ref.shape:
            raise ValueError("%s must have shape %s, got %s" % (name, ref.shape, a.shape))
    for name, a in zip(out_names, outs):
        farr(name, a, dt, shape=ref.shape, out=True, like=ref, optional=optional_outs)
    others = list(zip(out_names, outs)) + list(zip(in_names, ins))
    for i, (name, a) in enumerate(zip(out_names, outs)):
        for other, b in others[i + 1:]:
            _same_or_apart(name, a, other, b)
    return int(ref.size)


def _same_or_apart(name, a, other, b):
    """a and b (same shape, C-contiguous) are one memory or do not overlap."""
    if a is None or b is None or a is b:
        return
    if _overlaps(a, _owner(a), b) and a.ctypes.data != b.ctypes.data:
        raise ValueError("%s must not overlap %s (unless it is the same memory)" % (name, other))


def softmax_forward(out, inp, dt):
    farr("inp", inp, dt)
    N, V = rows("inp", inp)
    if V < 1:
        raise ValueError("softmax needs a non-empty last axis")
    farr("out", out, dt, shape=inp.shape, out=True, like=inp)
    _same_or_apart("out", out, "inp", inp)  # row by row: in place is fine
    return N, V


def softmax_backward(dinp, dout, out, dt):
    farr("out", out, dt)
    N, V = rows("out", out)
    if V < 1:
        raise ValueError("softmax needs a non-empty last axis")
    farr("dout", dout, dt, shape=out.shape, like=out)
    farr("dinp", dinp, dt, shape=out.shape, out=True, like=out)
    no_alias("dinp", dinp, dout=dout, out=out)
    return N, V


CE_IGNORE = -1   # a cross-entropy target that does not count: loss 0, gradient row 0


def crossentropy(logits, targets, dt):
    farr("logits", logits, dt)
    N, V = rows("logits", logits)
    if V < 1:
        raise ValueError("logits need a non-empty last axis")
    targets = ids("targets", targets, V, shape=logits.shape[:-1], ignore=CE_IGNORE)
    return targets, N, V


def crossentropy_forward(losses, logits, targets, dt):
    targets, N, V = crossentropy(logits, targets, dt)
    farr("losses", losses, dt, shape=logits.shape[:-1], out=True, like=logits)
    no_alias("losses", losses, logits=logits)
    return targets, N, V


def crossentropy_backward(dlogits, logits, targets, scale, dt):
    targets, N, V = crossentropy(logits, targets, dt)
    farr("dlogits", dlogits, dt, shape=logits.shape, out=True, like=logits)
    if dlogits is not logits:
        no_alias("dlogits", dlogits, logits=logits)  # exactly the same array is allowed
    if not np.isfinite(scale):
        raise ValueError("scale must be finite, got %r" % (scale,))
    return targets, N, V


def _heads(C, n_head):
    n_head = integer("n_head", n_head)
    if n_head < 1 or C % n_head:
        raise ValueError("n_head (%d) must be >= 1 and divide the channel count C (%d)"
                         % (n_head, C))
    return n_head


def attention_forward(out, lse, qkv, n_head, dt):
    farr("qkv", qkv, dt)
    if qkv.ndim != 3 or qkv.shape[2] % 3:
        raise ValueError("qkv must have shape (B, T, 3*C), got %s" % (qkv.shape,))
    B, T, C3 = qkv.shape
    C = C3 // 3
    NH = _heads(C, n_head)
    farr("out", out, dt, shape=(B, T, C), out=True, like=qkv)
    farr("lse", lse, dt, shape=(B, NH, T), out=True, like=qkv)
    no_alias("out", out, qkv=qkv, lse=lse)
    no_alias("lse", lse, qkv=qkv)
    return size("B", B), size("T", T), size("C", C, 1), NH


def attention_backward(dqkv, dout, qkv, out, lse, n_head, dt):
    farr("qkv", qkv, dt)
    if qkv.ndim != 3 or qkv.shape[2] % 3:
        raise ValueError("qkv must have shape (B, T, 3*C), got %s" % (qkv.shape,))
    B, T, C3 = qkv.shape
    C = C3 // 3
    NH = _heads(C, n_head)
    farr("dout", dout, dt, shape=(B, T, C), like=qkv)
    farr("out", out, dt, shape=(B, T, C), like=qkv)
    farr("lse", lse, dt, shape=(B, NH, T), like=qkv)
    farr("dqkv", dqkv, dt, shape=qkv.shape, out=True, like=qkv)
    no_alias("dqkv", dqkv, dout=dout, qkv=qkv, out=out, lse=lse)
    return size("B", B), size("T", T), size("C", C, 1), NH


def attention_probs(probs, qkv, lse, n_head, dt):
    farr("qkv", qkv, dt)
    if qkv.ndim != 3 or qkv.shape[2] % 3:
        raise ValueError("qkv must have shape (B, T, 3*C), got %s" % (qkv.shape,))
    B, T, C3 = qkv.shape
    C = C3 // 3
    NH = _heads(C, n_head)
    farr("lse", lse, dt, shape=(B, NH, T), like=qkv)
    farr("probs", probs, dt, shape=(B, NH, T, T), out=True, like=qkv)
    no_alias("probs", probs, qkv=qkv, lse=lse)
    return size("B", B), size("T", T), size("C", C, 1), NH


def attention_decode(out, kcache, vcache, qkv, pos, n_head, dt):
    farr("qkv", qkv, dt)
    if qkv.ndim != 2 or qkv.shape[1] % 3:
        raise ValueError("qkv must have shape (B, 3*C), got %s" % (qkv.shape,))
    B, C3 = qkv.shape
    C = C3 // 3
    NH = _heads(C, n_head)
    farr("kcache", kcache, dt, out=True, like=qkv)
    if kcache.ndim != 4 or kcache.shape[:2] != (B, NH) or kcache.shape[3] != C // NH:
        raise ValueError("kcache must have shape (B, NH, maxT, hd) = (%d, %d, maxT, %d), got %s"
                         % (B, NH, C // NH, kcache.shape))
    farr("vcache", vcache, dt, shape=kcache.shape, out=True, like=qkv)
    maxT = kcache.shape[2]
    pos = _position(pos, maxT)
    farr("out", out, dt, shape=(B, C), out=True, like=qkv)
    no_alias("out", out, qkv=qkv, kcache=kcache, vcache=vcache)
    no_alias("kcache", kcache, qkv=qkv, vcache=vcache)
    no_alias("vcache", vcache, qkv=qkv)
    return size("B", B), pos, size("maxT", maxT), size("C", C, 1), NH


# one layer's weights as a Decoder takes them (GPT-2 order), with their shapes in units of C
DECODER_LAYER = (("ln_1.weight", (1,)), ("ln_1.bias", (1,)), ("attn.c_attn.weight", (1, 3)),
                 ("attn.c_attn.bias", (3,)), ("attn.c_proj.weight", (1, 1)),
                 ("attn.c_proj.bias", (1,)), ("ln_2.weight", (1,)), ("ln_2.bias", (1,)),
                 ("mlp.c_fc.weight", (1, 4)), ("mlp.c_fc.bias", (4,)),
                 ("mlp.c_proj.weight", (4, 1)), ("mlp.c_proj.bias", (1,)))


def decoder_weight_names(n_layer):
    """The order of the ``weights`` list a Decoder takes (GPT-2 state-dict names)."""
    names = ["wte.weight", "wpe.weight"]
    for i in range(n_layer):
        names += ["h.%d.%s" % (i, n) for n, _ in DECODER_LAYER]
    return names + ["ln_f.weight", "ln_f.bias"]


def _position(pos, maxT):
    """A position in a KV cache of maxT positions, as a Python int."""
    pos = integer("pos", pos)
    if pos < 0 or pos >= maxT:
        raise ValueError("pos = %d is outside the cache's %d positions" % (pos, maxT))
    return pos


def decoder(weights, cache, n_head, dt, B=None):
    """A Decoder's weights (list in decoder_weight_names order) and KV cache (L,2,B,NH,maxT,hd);
    or, with ``cache=None`` (attention with its own state), the batch size ``B``."""
    if not isinstance(weights, (list, tuple)) or len(weights) < 16 or (len(weights) - 4) % 12:
        raise ValueError("weights must be a list of 4 + 12 * n_layer arrays, in "
                         "decoder_weight_names order")
    L = (len(weights) - 4) // 12
    names = decoder_weight_names(L)
    wte = farr(names[0], weights[0], dt)
    if wte.ndim != 2:
        raise ValueError("wte.weight must be (V, C), got %s" % (wte.shape,))
    V, C = wte.shape
    NH = _heads(C, n_head)
    farr(names[1], weights[1], dt, like=wte)
    if weights[1].ndim != 2 or weights[1].shape[1] != C:
        raise ValueError("wpe.weight must be (block_size, %d), got %s" % (C, weights[1].shape))
    maxT = weights[1].shape[0]
    layer = [tuple(k * C for k in units) for _, units in DECODER_LAYER]
    shapes = layer * L + [(C,), (C,)]
    for name, w, shape in zip(names[2:], weights[2:], shapes):
        farr(name, w, dt, shape=shape, like=wte)
    if cache is None:
        if isinstance(B, bool) or not isinstance(B, int):
            raise ValueError("a Decoder without a cache needs the batch size B")
        return size("B", B, 1), size("maxT", maxT, 1), size("V", V, 1), size("C", C, 1), NH, L
    farr("cache", cache, dt, out=True, like=wte)
    if cache.ndim != 6 or cache.shape[:2] != (L, 2) or cache.shape[3:] != (NH, maxT, C // NH):
        raise ValueError("cache must have shape (n_layer, 2, B, n_head, block_size, head size) = "
                         "(%d, 2, B, %d, %d, %d), got %s" % (L, NH, maxT, C // NH, cache.shape))
    B = cache.shape[2]
    for name, w in zip(names, weights):
        no_alias("cache", cache, **{name: w})
    return size("B", B, 1), size("maxT", maxT, 1), size("V", V, 1), size("C", C, 1), NH, L


def decode_step(tok, pos, B, V, maxT):
    """One Decoder step: tok (B,) ids < V, 0 <= pos < maxT. Returns tok as int32 and pos."""
    return ids("tok", tok, V, shape=(B,)), _position(pos, maxT)


def adamw_update(params, grads, m, v, lr, beta1, beta2, eps, weight_decay, step, dt):
    n = elementwise(("params", "m", "v"), (params, m, v), ("grads",), (grads,), dt)
    for name, a in (("params", params), ("m", m), ("v", v)):
        no_alias(name, a, grads=grads)
    no_alias("params", params, m=m, v=v)
    no_alias("m", m, v=v)
    for name, x in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay)):
        if not (np.isfinite(x) and x >= 0):
            raise ValueError("%s must be a finite number >= 0, got %r" % (name, x))
    for name, x in (("beta1", beta1), ("beta2", beta2)):
        if not (0.0 <= x < 1.0):
            raise ValueError("%s must be in [0, 1), got %r" % (name, x))
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, float, np.integer,
                                                                  np.floating)):
        raise TypeError("step must be an int, got %r" % (step,))
    if not (math.isfinite(step) and int(step) == step and 1 <= step <= INT_MAX):
        raise ValueError("step must be an integer >= 1, got %r" % (step,))
    return n


# ---- linear attention (feature maps and causal prefix sums) -----------------------------------

def _ntd(name, a, dt, like=None, shape=None, out=False):
    farr(name, a, dt, like=like, shape=shape, out=out)
    if a.ndim != 3:
        raise ValueError("%s must have shape (N, T, D), got %s" % (name, a.shape))
    return a.shape


def _favor_inputs(x, w, dt):
    N, T, d = _ntd("x", x, dt)
    farr("w", w, dt, like=x)
    if w.ndim != 2 or w.shape[1] != d or w.shape[0] < 1:
        raise ValueError("w must have shape (m, %d) with m >= 1, got %s" % (d, w.shape))
    return N, T, d, w.shape[0]


def favor_features_forward(out, x, w, c, dt):
    N, T, d, m = _favor_inputs(x, w, dt)
    _ntd("out", out, dt, like=x, shape=(N, T, m), out=True)
    no_alias("out", out, x=x, w=w)
    if c is not None:
        farr("c", c, dt, like=x, shape=(N, T), out=True)
        no_alias("c", c, out=out, x=x, w=w)
    return size("N", N), size("T", T), size("d", d, 1), size("m", m, 1)


def favor_features_backward(dx, dout, out, x, w, dt):
    N, T, d, m = _favor_inputs(x, w, dt)
    _ntd("out", out, dt, like=x, shape=(N, T, m))
    _ntd("dout", dout, dt, like=x, shape=(N, T, m))
    _ntd("dx", dx, dt, like=x, shape=(N, T, d), out=True)
    no_alias("dx", dx, dout=dout, out=out, x=x, w=w)
    return N, T, d, m


def _linear_attention_inputs(qf, kf, v, kc, dt):
    N, T, m = _ntd("qf", qf, dt)
    _ntd("kf", kf, dt, like=qf, shape=(N, T, m))
    hd = _ntd("v", v, dt, like=qf)[2]
    if v.shape[:2] != (N, T):
        raise ValueError("v must have shape (%d, %d, hd), got %s" % (N, T, v.shape))
    if kc is not None:
        farr("kc", kc, dt, like=qf, shape=(N, T))
    return N, T, m, hd


def linear_attention_forward(out, den, qf, kf, v, kc, dt):
    N, T, m, hd = _linear_attention_inputs(qf, kf, v, kc, dt)
    _ntd("out", out, dt, like=qf, shape=(N, T, hd), out=True)
    farr("den", den, dt, like=qf, shape=(N, T), out=True)
    no_alias("out", out, qf=qf, kf=kf, v=v, den=den, kc=kc)
    no_alias("den", den, qf=qf, kf=kf, v=v, kc=kc)
    return size("N", N), size("T", T), size("m", m, 1), size("hd", hd, 1)


def linear_attention_backward(dqf, dkf, dv, dout, qf, kf, v, out, den, kc, dt):
    N, T, m, hd = _linear_attention_inputs(qf, kf, v, kc, dt)
    for name, a in (("dout", dout), ("out", out)):
        _ntd(name, a, dt, like=qf, shape=(N, T, hd))
    farr("den", den, dt, like=qf, shape=(N, T))
    ins = dict(dout=dout, qf=qf, kf=kf, v=v, out=out, den=den, kc=kc)
    for name, a, shape in (("dqf", dqf, (N, T, m)), ("dkf", dkf, (N, T, m)),
                           ("dv", dv, (N, T, hd))):
        if a is not None:
            _ntd(name, a, dt, like=qf, shape=shape, out=True)
            no_alias(name, a, **ins)
    return size("N", N), size("T", T), size("m", m, 1), size("hd", hd, 1)


# ---- Q8_0 weights ------------------------------------------------------------------------------

Q8_BLOCK = 32


def i8arr(name, a, shape=None):
    """Check an int8 array argument (Q8_0 weights)."""
    if not isinstance(a, np.ndarray) or a.dtype != np.int8:
        raise TypeError("%s must be an int8 numpy.ndarray, got %s"
                        % (name, getattr(a, "dtype", type(a).__name__)))
    if not (a.flags.c_contiguous and a.flags.aligned):
        raise ValueError("%s must be C-contiguous and aligned" % name)
    if shape is not None and a.shape != tuple(shape):
        raise ValueError("%s must have shape %s, got %s" % (name, tuple(shape), a.shape))
    return a


def q8_dequantize(w, q, scales, dt):
    """w (OC,C) float out from q (OC,C) int8 and scales (OC, ceil(C/32))."""
    i8arr("q", q)
    if q.ndim != 2 or q.size == 0:
        raise ValueError("q must be a non-empty (OC, C) matrix, got shape %s" % (q.shape,))
    OC, C = q.shape
    farr("scales", scales, dt, shape=(OC, -(-C // Q8_BLOCK)))
    farr("w", w, dt, shape=(OC, C), out=True, like=scales)
    no_alias("w", w, q=q, scales=scales)
    return size("OC", OC, 1), size("C", C, 1)


# the 16 per-layer entries of a Q8_0 decoder's weights: name, kind ("f" float / "q" int8 / "s"
# scales), and the shape in units of C (the scales' second axis: blocks of the input size)
Q8_DECODER_LAYER = (("ln_1.weight", "f", (1,)), ("ln_1.bias", "f", (1,)),
                    ("attn.c_attn.q8", "q", (3, 1)), ("attn.c_attn.scale", "s", (3, 1)),
                    ("attn.c_attn.bias", "f", (3,)),
                    ("attn.c_proj.q8", "q", (1, 1)), ("attn.c_proj.scale", "s", (1, 1)),
                    ("attn.c_proj.bias", "f", (1,)),
                    ("ln_2.weight", "f", (1,)), ("ln_2.bias", "f", (1,)),
                    ("mlp.c_fc.q8", "q", (4, 1)), ("mlp.c_fc.scale", "s", (4, 1)),
                    ("mlp.c_fc.bias", "f", (4,)),
                    ("mlp.c_proj.q8", "q", (1, 4)), ("mlp.c_proj.scale", "s", (1, 4)),
                    ("mlp.c_proj.bias", "f", (1,)))


def q8_decoder(weights, cache, n_head, dt):
    """A Q8_0 decoder's weights (6 + 16 L arrays, pyllm.quant.decoder_weights order) and its KV
    cache (L,2,B,NH,maxT,hd). Returns B, maxT, V, C, NH, L."""
    if not isinstance(weights, (list, tuple)) or len(weights) < 22 or (len(weights) - 6) % 16:
        raise ValueError("weights must be a list of 6 + 16 * n_layer arrays, in "
                         "pyllm.quant.decoder_weights order")
    L = (len(weights) - 6) // 16
    wte_q = i8arr("wte.q8", weights[0])
    if wte_q.ndim != 2:
        raise ValueError("wte.q8 must be (V, C), got %s" % (wte_q.shape,))
    V, C = wte_q.shape
    nb = lambda n: -(-n // Q8_BLOCK)  # noqa: E731
    farr("wte.scale", weights[1], dt, shape=(V, nb(C)))
    i8arr("wpe.q8", weights[2])
    if weights[2].ndim != 2 or weights[2].shape[1] != C:
        raise ValueError("wpe.q8 must be (block_size, %d), got %s" % (C, weights[2].shape))
    maxT = weights[2].shape[0]
    farr("wpe.scale", weights[3], dt, shape=(maxT, nb(C)))
    NH = _heads(C, n_head)
    for i in range(L):
        for j, (name, kind, units) in enumerate(Q8_DECODER_LAYER):
            w, label = weights[4 + 16 * i + j], "h.%d.%s" % (i, name)
            if kind == "f":
                farr(label, w, dt, shape=(units[0] * C,))
            elif kind == "q":
                i8arr(label, w, (units[0] * C, units[1] * C))
            else:
                farr(label, w, dt, shape=(units[0] * C, nb(units[1] * C)))
    farr("ln_f.weight", weights[-2], dt, shape=(C,))
    farr("ln_f.bias", weights[-1], dt, shape=(C,))
    farr("cache", cache, dt, out=True)
    if cache.ndim != 6 or cache.shape[:2] != (L, 2) or cache.shape[3:] != (NH, maxT, C // NH):
        raise ValueError("cache must have shape (n_layer, 2, B, n_head, block_size, head size) = "
                         "(%d, 2, B, %d, %d, %d), got %s" % (L, NH, maxT, C // NH, cache.shape))
    for k, w in enumerate(weights):
        no_alias("cache", cache, **{"weights[%d]" % k: w})
    return size("B", cache.shape[2], 1), size("maxT", maxT, 1), size("V", V, 1), \
        size("C", C, 1), NH, L


def q8_matmul_forward(out, inp, q, scales, bias, residual, dt):
    """out (N,OC) from inp (N,C), q (OC,C) int8, scales (OC, ceil(C/32)), bias (OC), residual."""
    farr("inp", inp, dt)
    N, C = rows("inp", inp)
    i8arr("q", q)
    if q.ndim != 2 or q.shape[1] != C:
        raise ValueError("q must have shape (OC, %d), got %s" % (C, q.shape))
    OC = size("OC", q.shape[0], 1)
    nb = -(-C // Q8_BLOCK)
    farr("scales", scales, dt, shape=(OC, nb), like=inp)
    farr("bias", bias, dt, shape=(OC,), like=inp, optional=True)
    farr("out", out, dt, shape=inp.shape[:-1] + (OC,), out=True, like=inp)
    farr("residual", residual, dt, shape=out.shape, like=inp, optional=True)
    no_alias("out", out, inp=inp, q=q, scales=scales, bias=bias)
    return size("N", N), size("C", C, 1), OC

