"""One comparison for floating-point results: each element relative to its own magnitude, with an
absolute floor tied to the size of what was summed to make it and to the arithmetic.

Why not ``|got - want| <= tol * (1 + |want|)`` (or ``np.allclose(..., atol=...)``): for elements
smaller than the tolerance that test passes *anything*. A softmax over 50,257 logits has most of
its probabilities below 1e-6; an all-zero output passed 95-99 % of them, and a kernel flushing every
probability below 1e-6 to zero passed entirely. Here a small element must be as *relatively*
accurate as a large one, unless float arithmetic genuinely cannot deliver that (cancellation), and
that -- only that -- is what the floor allows for.

The rule, elementwise over the finite elements::

    |got - want| <= rtol * |want| + floor
    floor = floor_ulps * eps * sqrt(k) * scale + tiny

    scale: by default max|want| over the element's row (``axis``, default the last; a tuple of
           axes, or None for the whole array); or given (``scale=``, broadcastable to want)
    tiny:  the smallest normal number (1.2e-38 in float32), below which nothing is relative

Why that is what float arithmetic can produce:

- ``rtol`` covers the errors that stay *relative* to the element: one rounding of the result
  (eps/2 = 6e-8 in float32), a few ulps from exp/tanh/sqrt, the relative error of a sum of positive
  terms (a softmax normaliser), the rounding of ``x - max(x)`` inside exp (about eps * |x - max|).
- The floor covers cancellation. An element that is a sum of k terms of mixed sign (a dot product,
  ``a + b``, ``x - mean``, ``p - 1``) carries the rounding errors of its *terms*, not of its value,
  and may have cancelled to nearly nothing. With terms of size t and random sign the j-th partial
  sum is about t * sqrt(j) and is rounded to half an ulp of that; the k roundings add like a random
  walk, to about eps/2 * t * k / sqrt(2) = 0.35 * eps * sqrt(k) * (t * sqrt(k)), where t * sqrt(k)
  is the L2 norm of the terms: a few ulps of the terms' norm, times sqrt(k), whatever the element's
  own size. Blocked and SIMD summation only lower the constant. The terms' norm is what ``scale``
  should be; when the caller does not know it, the largest element of the row stands in for it
  (a row of such sums has magnitude t * sqrt(k), its largest element ~3x that, and that element
  cannot have cancelled) -- good for long rows of similar sums, not for a row of one element.
  Measured on this project's GEMMs (k = 13 ... 1900, portable C, AVX2 and NumPy/BLAS, blocked and
  K-split sums) the worst element is 0.6 * eps * sqrt(k) * (terms' L2 norm).
- Results computed without cancellation (softmax, attention probabilities, exp) need no floor:
  pass floor_ulps=0 and every probability, however small, is held to rtol.

Besides the values it checks: the shapes are equal; ``got`` has ``dtype`` when one is given; NaN
exactly where the reference has NaN (and nowhere else); +-inf exactly where the reference has the
same infinity. On failure the message names the worst element: its index, got, want, the error and
the error allowed there (and how many times over), and how many elements failed. It returns the
worst ratio error / allowed (at most 1 when it passes), which is how the tolerances were measured.

``eps`` is the machine epsilon of the arithmetic (float32's 1.19e-7 unless given; pass
``np.finfo(np.float64).eps`` for float64 computations, which also makes ``tiny`` float64's).
"""
import numpy as np

EPS32 = float(np.finfo(np.float32).eps)


def row_scale(want, axis=-1):
    """max|want| over ``axis`` (the finite elements; None: the whole array), broadcast to want."""
    a = np.abs(np.asarray(want, dtype=np.float64))
    a = np.where(np.isfinite(a), a, 0.0)
    if a.ndim == 0 or a.size == 0:
        return a
    m = a.max(axis=axis, keepdims=True, initial=0.0)
    return np.broadcast_to(m, a.shape)


def _scale(want, axis, scale):
    if scale is None:
        return row_scale(want, axis)
    return np.broadcast_to(np.abs(np.asarray(scale, dtype=np.float64)), np.shape(want))


def tolerance(want, *, rtol, axis=-1, k=1, floor_ulps=4.0, eps=EPS32, scale=None):
    """The error allowed at each element of ``want`` (the formula in the module docstring)."""
    want = np.asarray(want, dtype=np.float64)
    tiny = float(np.finfo(np.float32 if eps >= EPS32 else np.float64).tiny)
    with np.errstate(invalid="ignore"):
        return (rtol * np.abs(want) + floor_ulps * eps * np.sqrt(max(k, 1))
                * _scale(want, axis, scale) + tiny)


def assert_close(got, want, *, rtol, what="", axis=-1, k=1, floor_ulps=4.0, eps=EPS32,
                 scale=None, dtype=None):
    """Assert ``|got - want| <= rtol * |want| + floor_ulps * eps * sqrt(k) * scale`` at every
    element, scale being ``scale`` or else max|want| over the element's row (``axis``); with equal
    shapes, NaN and infinities exactly where ``want`` has them, and ``got.dtype == dtype`` when
    ``dtype`` is given. The module docstring says why. ``what`` starts the failure message.

    Returns the worst ratio error / allowed error (at most 1 when it passes), for calibration."""
    label = (what + ": ") if what else ""
    got_a, want_a = np.asarray(got), np.asarray(want)
    if got_a.shape != want_a.shape:
        raise AssertionError("%sshape %s, want %s" % (label, got_a.shape, want_a.shape))
    if dtype is not None and got_a.dtype != np.dtype(dtype):
        raise AssertionError("%sdtype %s, want %s" % (label, got_a.dtype, np.dtype(dtype)))
    g = got_a.astype(np.float64)
    w = want_a.astype(np.float64)
    nan_g, nan_w = np.isnan(g), np.isnan(w)
    if not np.array_equal(nan_g, nan_w):
        where = np.argwhere(nan_g != nan_w)
        i = tuple(int(j) for j in where[0])
        raise AssertionError("%sNaN where the reference has none or vice versa, at %d positions "
                             "(first at %s: got %.9g, want %.9g)" % (label, len(where), i, g[i],
                                                                      w[i]))
    inf_g, inf_w = np.isinf(g), np.isinf(w)
    bad_inf = (inf_g | inf_w) & ~((g == w) & inf_w)
    if bad_inf.any():
        where = np.argwhere(bad_inf)
        i = tuple(int(j) for j in where[0])
        raise AssertionError("%sinfinity mismatch at %d positions (first at %s: got %.9g, want "
                             "%.9g)" % (label, len(where), i, g[i], w[i]))
    fin = np.isfinite(w)
    w0 = np.where(fin, w, 0.0)
    allowed = np.where(fin, tolerance(w0, rtol=rtol, axis=axis, k=k, floor_ulps=floor_ulps,
                                      eps=eps, scale=scale), 0.0)
    err = np.where(fin, np.abs(g - w0), 0.0)
    if err.size == 0:
        return 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(err > 0, err / allowed, 0.0)
    worst = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    r = float(ratio[worst])
    if r > 1.0:
        raise AssertionError(
            "%s%d of %d elements off; worst at %s: got %.9g, want %.9g, |err| %.3g > allowed "
            "%.3g (%.3g times; rtol %.3g, floor %.3g ulps x sqrt(k=%d) of %s %.3g)"
            % (label, int((err > allowed).sum()), err.size, tuple(int(j) for j in worst),
               g[worst], w[worst], err[worst], allowed[worst], r, rtol, floor_ulps, k,
               "the row max" if scale is None else "scale", _scale(w0, axis, scale)[worst]))
    return r
