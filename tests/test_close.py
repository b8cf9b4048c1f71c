"""The comparison helper of tests/_close.py, proven by mutation: real kernel outputs (the NumPy
specification run in float32, and the C kernels at the current SIMD level) pass the checks
test_kernels.py's test_c_matches_numpy makes (the same TOL and floor_terms as its check_outputs),
and every mutation of them that a broken kernel could produce fails them:

- a flushed tail: every value below 1e-6 set to zero (probabilities), or the smallest 90 % of each
  row set to zero (every kernel), or the whole output zero;
- every value scaled by (1 + 1e-4);
- one element off by a relative 1e-3 -- an element of median magnitude, not the largest;
- a NaN in one element.

Negative control: every value moved by 2 ulps still passes (the helper is not tighter than
float32)."""
import functools

import numpy as np
import pytest

import pyllm
from _close import EPS32, assert_close, row_scale
from pyllm.backend import backend_module, c_unavailable_reason
from pyllm.backend import numpy as npk
from test_kernels import (TOL, case_attention_forward, case_attention_probs,
                          case_crossentropy_backward, case_gemm, case_layernorm_forward,
                          case_matmul_backward, case_softmax_forward, float64_args, floor_terms,
                          run_kernel, spec_case)

# ---- the helper's own rules ------------------------------------------------------------------


def test_relative_to_each_element_with_a_floor_tied_to_the_row():
    want = np.array([[1.0, 1e-3, 1e-9], [1e-20, 2e-20, 0.0]])
    assert_close(want * (1 + 1e-6), want, rtol=2e-6)            # relative: every size passes
    floor = 4 * EPS32 * 1.0                                     # row 0: 4 ulps of its max, 1.0
    assert_close(want + [[0, 0, 0.9 * floor], [0, 0, 0]], want, rtol=0.0)
    with pytest.raises(AssertionError, match=r"1 of 6 elements off; worst at \(0, 2\)"):
        assert_close(want + [[0, 0, 1.1 * floor], [0, 0, 0]], want, rtol=0.0)
    # 1e-6 on an element of 1e-9 fails; the old 1e-5 * (1 + |want|) passed it
    with pytest.raises(AssertionError, match=r"worst at \(0, 2\)"):
        assert_close(want + [[0, 0, 1e-6], [0, 0, 0]], want, rtol=1e-5)
    # row 1's floor is 4 ulps of 2e-20 (1e-26), not of row 0's 1.0
    with pytest.raises(AssertionError, match=r"worst at \(1, 0\)"):
        assert_close(want + [[0, 0, 0], [1e-24, 0, 0]], want, rtol=1e-5)
    with pytest.raises(AssertionError, match=r"worst at \(1, 2\)"):
        assert_close(want + [[0, 0, 0], [0, 0, 1e-25]], want, rtol=1e-5)
    # no floor at all (floor_ulps=0) still leaves float32's smallest normal number, 1.2e-38
    assert_close(want + [[0, 0, 0], [0, 0, 1e-39]], want, rtol=1e-5, floor_ulps=0)
    with pytest.raises(AssertionError, match=r"worst at \(1, 2\)"):
        assert_close(want + [[0, 0, 0], [0, 0, 1e-37]], want, rtol=1e-5, floor_ulps=0)


def test_k_axis_scale_and_eps_widen_the_floor_as_documented():
    want = np.array([[100.0, 1.0], [1.0, 1.0]])
    bump = np.array([[0.0, 4 * EPS32 * 100 * 2.9], [0.0, 0.0]])  # 2.9 times row 0's k=1 floor
    with pytest.raises(AssertionError):
        assert_close(want + bump, want, rtol=0.0)
    assert_close(want + bump, want, rtol=0.0, k=9)              # sqrt(9) = 3
    bump = np.array([[0.0, 0.0], [0.0, 4 * EPS32 * 50]])        # 50 ulps of 1 in row 1
    with pytest.raises(AssertionError):
        assert_close(want + bump, want, rtol=0.0)
    assert_close(want + bump, want, rtol=0.0, axis=None)        # one row: 4 ulps of 100
    with pytest.raises(AssertionError):
        assert_close(want + bump, want, rtol=0.0, axis=0)       # column 1: 4 ulps of 1
    with pytest.raises(AssertionError):
        assert_close(want + bump, want, rtol=0.0, scale=1.0)
    assert_close(want + bump, want, rtol=0.0, scale=60.0)
    assert_close(want + 1e-10, want, rtol=0.0)
    with pytest.raises(AssertionError):                         # float64's eps: 2**29 times less
        assert_close(want + 1e-10, want, rtol=0.0, eps=np.finfo(np.float64).eps)
    r = assert_close(want, want + 0.5 * 4 * EPS32 * 100, rtol=0.0, axis=None)
    assert 0.49 < r < 0.51                                      # the worst ratio is returned


def test_shapes_dtypes_nan_and_inf():
    want = np.array([1.0, np.nan, np.inf, -np.inf])
    assert_close(want.astype(np.float32), want, rtol=1e-6, dtype=np.float32)
    with pytest.raises(AssertionError, match="dtype float64, want float32"):
        assert_close(want, want, rtol=1e-6, dtype=np.float32)
    with pytest.raises(AssertionError, match=r"shape \(3,\), want \(4,\)"):
        assert_close(want[:3], want, rtol=1e-6)
    with pytest.raises(AssertionError, match=r"NaN where the reference has none or vice versa, "
                                             r"at 1 positions \(first at \(0,\)"):
        assert_close([np.nan, np.nan, np.inf, -np.inf], want, rtol=1e-6)
    with pytest.raises(AssertionError, match=r"NaN .*first at \(1,\): got 0, want nan"):
        assert_close([1.0, 0.0, np.inf, -np.inf], want, rtol=1e-6)     # NaN must stay NaN
    with pytest.raises(AssertionError, match="infinity mismatch"):
        assert_close([1.0, np.nan, -np.inf, -np.inf], want, rtol=1e-6)
    with pytest.raises(AssertionError, match="infinity mismatch"):
        assert_close([1.0, np.nan, 3e38, -np.inf], want, rtol=1e-6)
    with pytest.raises(AssertionError, match="infinity mismatch"):
        assert_close([np.inf, np.nan, np.inf, -np.inf], want, rtol=1e-6)
    # the finite elements of a row with infinities still get a floor from the finite ones
    assert_close([1.0 + 2 * EPS32, np.nan, np.inf, -np.inf], want, rtol=0.0)
    assert_close(np.zeros((0, 3)), np.zeros((0, 3)), rtol=1e-6)


def test_failure_message_names_the_worst_element():
    want = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    got = want.copy()
    got[0, 1] *= 1 + 1e-4
    got[1, 2] *= 1 + 1e-3
    with pytest.raises(AssertionError) as e:
        assert_close(got, want, rtol=1e-5, what="probe")
    msg = str(e.value)
    assert msg.startswith("probe: 2 of 6 elements off; worst at (1, 2): got 6.006")
    assert "want 6," in msg and "rtol 1e-05" in msg and "row max 6" in msg


def test_row_scale():
    w = np.array([[1.0, -3.0, np.inf], [np.nan, 0.5, 0.25]])
    np.testing.assert_array_equal(row_scale(w), [[3, 3, 3], [0.5, 0.5, 0.5]])
    np.testing.assert_array_equal(row_scale(w, axis=None), np.full((2, 3), 3.0))


# ---- mutation: real kernel outputs, the checks test_c_matches_numpy makes ---------------------

# (builder, sizes, index of the output to mutate): probabilities over GPT-2's vocabulary, the
# GEMM with the largest K (the loosest floor), a K-split weight gradient, layernorm, attention
KERNELS = {
    "softmax_forward(64, 50257)": (case_softmax_forward, (64, 50257), 0),
    "crossentropy_backward(64, 50257)": (case_crossentropy_backward, (64, 50257), 0),
    "attention_probs(1, 130, 64, 4)": (case_attention_probs, (1, 130, 64, 4), 0),
    "gemm(130, 70, 1700, ta)": (case_gemm, (130, 70, 1700, True, False, False), 0),
    "matmul_backward(1600, 700, 96) dweight": (case_matmul_backward, (1600, 700, 96), 1),
    "layernorm_forward(512, 768)": (case_layernorm_forward, (512, 768), 0),
    "attention_forward(1, 300, 64, 2)": (case_attention_forward, (1, 300, 64, 2), 0),
}
# outputs over a 50,257-token vocabulary: most of them below 1e-6
TINY_TAILS = ("softmax_forward", "crossentropy_backward")


@functools.lru_cache(maxsize=None)
def _outputs(key):
    """(name, args, want, {implementation: outputs}) of KERNELS[key]: the float64 specification
    and the kernel's float32 outputs from NumPy and, when built, C at the current SIMD level."""
    builder, sizes, _ = KERNELS[key]
    name, args, outs, want = spec_case(builder, sizes, seed=7)
    gots = {"numpy-float32": run_kernel(npk, name, args)}
    if c_unavailable_reason() is None:
        gots["c-" + pyllm.get_simd()] = run_kernel(backend_module("c"), name, args)
    return name, args, want, gots


def _median_element(x):
    """Index of the nonzero element of median magnitude."""
    flat = np.abs(x.reshape(-1))
    nz = np.flatnonzero(flat)
    mid = len(nz) // 2
    return np.unravel_index(nz[np.argpartition(flat[nz], mid)[mid]], x.shape)


def _flush_row_tail(x, fraction=0.9):
    """The smallest `fraction` (by magnitude) of every row set to zero."""
    rows = x.reshape(-1, x.shape[-1]).copy()
    n = int(fraction * rows.shape[1])
    if n:
        idx = np.argpartition(np.abs(rows), n - 1, axis=1)[:, :n]
        np.put_along_axis(rows, idx, 0.0, axis=1)
    return rows.reshape(x.shape)


def _one_element(x, factor):
    y = x.copy()
    y[_median_element(x)] *= factor
    return y


def _nan_at_median(x):
    y = x.copy()
    y[_median_element(x)] = np.nan
    return y


MUTATIONS = {
    "flush_below_1e-6": lambda x: np.where(np.abs(x) < 1e-6, 0, x),
    "flush_smallest_90pct_of_each_row": _flush_row_tail,
    "all_zero": np.zeros_like,
    "scale_all_by_1+1e-4": lambda x: x * np.float32(1 + 1e-4),
    "one_median_element_off_by_1e-3": lambda x: _one_element(x, np.float32(1 + 1e-3)),
    "nan_in_one_element": _nan_at_median,
}
MUTANTS = [(k, m) for k in KERNELS for m in MUTATIONS
           if m != "flush_below_1e-6" or KERNELS[k][0].__name__[5:] in TINY_TAILS]


@functools.lru_cache(maxsize=None)
def _floor(key):
    """floor_terms of the mutated output: (k, scale), computed once per kernel."""
    name, args, want, _ = _outputs(key)
    return floor_terms(name, float64_args(args), KERNELS[key][2], want)


def _check(key, got_out):
    """test_kernels.check_outputs on the one output, with its floor computed once."""
    name, args, want, _ = _outputs(key)
    rtol, floor_ulps = TOL[name]
    k, scale = _floor(key)
    assert_close(got_out, want[KERNELS[key][2]], rtol=rtol, floor_ulps=floor_ulps, k=k,
                 scale=scale, dtype=np.float32, what=key)


@pytest.mark.parametrize("key", KERNELS)
def test_real_outputs_pass_and_so_do_two_ulps_more(key):
    """The unmutated outputs pass (so a failure below is the mutation's), and so does every
    value moved by two ulps away from zero (the checks are not tighter than float32)."""
    for impl, got in _outputs(key)[3].items():
        x = got[KERNELS[key][2]]
        _check(key, x)
        away = np.where(x < 0, -np.inf, np.inf).astype(np.float32)
        _check(key, np.nextafter(np.nextafter(x, away), away))


@pytest.mark.parametrize("key,mutation", MUTANTS, ids=["%s-%s" % km for km in MUTANTS])
def test_mutated_outputs_fail(key, mutation):
    for impl, got in _outputs(key)[3].items():
        x = got[KERNELS[key][2]]
        bad = MUTATIONS[mutation](x).astype(np.float32)
        changed = ~((bad == x) | (np.isnan(bad) & np.isnan(x)))
        assert changed.any(), "%s leaves %s unchanged" % (mutation, key)
        with pytest.raises(AssertionError):
            _check(key, bad)


def test_the_old_rule_passed_a_flushed_softmax_tail():
    """Why: the old |got - want| <= 1e-6 * (1 + |want|) of the softmax case passed the output with
    every probability below 1e-6 zeroed, and an all-zero output on most elements."""
    name, args, want, gots = _outputs("softmax_forward(64, 50257)")
    w = want[0]
    flushed = MUTATIONS["flush_below_1e-6"](gots["numpy-float32"][0])
    assert (flushed == 0).mean() > 0.9                          # most of the vocabulary
    assert (np.abs(flushed - w) / (1 + np.abs(w))).max() <= 1e-6
    assert (np.abs(0 - w) / (1 + np.abs(w)) <= 1e-6).mean() > 0.95
