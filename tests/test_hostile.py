"""Bad input never crashes or corrupts (issue 5).

Every public function and CLI command gets hostile input: wrong dtypes and ranks; non-contiguous,
misaligned and read-only arrays; zero-size dimensions; token ids out of range or negative; prompts
longer than the block size; configurations that do not fit; NaN and Inf; empty, binary and device
data files and directories without text; hand-edited tokenizer and checkpoint files; bad
command-line arguments. Each must raise a documented exception (TypeError, ValueError and its
subclasses CheckpointError / TensorFileError, FileNotFoundError and the other OSErrors,
FloatingPointError for non-finite logits, TrainingDiverged) whose message names the problem, or be
handled sensibly, which the test then checks.

How:

- whatever can reach the C kernels runs in a child Python process: the cases are ordinary
  functions in this module, registered with ``@child_case(group)``; one child per group and
  backend runs them all and reports one line per case, so a segfault or abort is a failing test
  (naming the case it happened in), not a dead test runner;
- a case registered with ``kernels=False`` (argument checks, file parsing: its code path reaches
  no kernel) runs once, in the NumPy child, with the id ``<group>-any-<case>``; that child records
  every kernel the cases call (through ``pyllm.backend.ops``), and such a case fails if it calls
  one, so the marking cannot go stale;
- the command line runs as ``python -m pyllm``; every bad invocation must exit non-zero with a
  one-line ``error:`` message on stderr, never a traceback;
- pure-Python checks (configs, files, tokenizers) run in-process.

Not repeated here: the kernel argument checks of test_boundary.py, the hand-edited tokenizer files
of test_tokenizer.py and the hostile safetensors files of test_tensorfile.py.
"""
import concurrent.futures
import functools
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import traceback
import warnings

import numpy as np
import pytest

import pyllm
import pyllm.train
from pyllm.backend import backend_module
from pyllm.checkpoint import CheckpointError, save_checkpoint
from pyllm.data import read_text
from pyllm.model import check_sampling, model_metadata
from pyllm.rng import RNG
from pyllm.tensorfile import load_safetensors, save_safetensors
from pyllm.tokenizer import CharTokenizer, load_tokenizer

try:
    from conftest import need_c
except ImportError:  # in a child process, which does not need it
    need_c = None

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
CHILD_TIMEOUT = 180
TINY = dict(vocab_size=13, block_size=8, n_layer=1, n_head=2, n_embd=8)


def f32(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def e32(*shape):
    return np.empty(shape, np.float32)


def z32(*shape):
    return np.zeros(shape, np.float32)


def tiny(seed=0, scale=None, **kw):
    """A small GPT; ``scale`` replaces the weights by normal(0, scale) so outputs vary."""
    m = pyllm.GPT(pyllm.GPTConfig(**dict(TINY, **kw)), seed=seed)
    if scale is not None:
        m.params[:] = np.random.default_rng(seed).standard_normal(m.params.size) * scale
    return m


def expect(exc, match, fn, *args, **kw):
    """Inside a case: ``fn(*args, **kw)`` must raise ``exc`` with ``match`` in its message."""
    try:
        fn(*args, **kw)
    except exc as e:
        assert match in str(e), "%s: %r lacks %r" % (exc.__name__, str(e), match)
        return e
    except Exception as e:
        raise AssertionError("expected %s(%r), got %s: %s" % (exc.__name__, match,
                                                              type(e).__name__, e)) from None
    raise AssertionError("expected %s(%r), nothing was raised" % (exc.__name__, match))


# ==== harness: cases that run in a child process ================================================

MARK = "@@hostile-case "
CHILD_CASES = {}  # group -> {name: (function(backend_name), exception or None, message part)}
KNOWN_GAPS = {}  # (group, name) -> why the case fails today (a bug in a file this issue leaves)
KERNEL_FREE = set()  # (group, name) of the cases that reach no kernel: run once, on NumPy
GROUP_SETUP = {}  # group -> function the child calls once before its cases (kernel calls uncounted)
ANY = "any"  # the id's backend part of a kernel-free case


def child_case(group, raises=None, match="", known_gap=None, kernels=True):
    """Register ``fn(be)`` to run in the child of ``group`` on backend ``be``. It must raise
    ``raises`` with ``match`` in the message; with ``raises=None`` it must return normally (its
    own assertions are the check). ``known_gap``: the reason it is expected to fail for now.
    ``kernels=False``: its code path reaches no kernel, so it runs once (in the NumPy child),
    and fails there if it calls a kernel after all."""
    def register(fn):
        CHILD_CASES.setdefault(group, {})[fn.__name__] = (fn, raises, match)
        if known_gap:
            KNOWN_GAPS[group, fn.__name__] = known_gap
        if not kernels:
            KERNEL_FREE.add((group, fn.__name__))
        return fn
    return register


def runs_on(group, name, be):
    """Whether the child of (group, be) runs case ``name``."""
    return be == "numpy" or (group, name) not in KERNEL_FREE


def case_params(group, backends):
    """(group, backend, case name) of every case of ``group`` for parametrize: once per backend,
    a kernel-free case once (backend ``"any"``, run by the NumPy child); known gaps are strict
    xfails."""
    params = []
    for be in backends:
        for name in CHILD_CASES[group]:
            free = (group, name) in KERNEL_FREE
            if free:
                assert "numpy" in backends, (group, name)
                if be != "numpy":
                    continue
            params.append(pytest.param(
                group, ANY if free else be, name,
                id="%s-%s-%s" % (group, ANY if free else be, name),
                marks=[pytest.mark.xfail(strict=True, reason=KNOWN_GAPS[group, name])]
                if (group, name) in KNOWN_GAPS else []))
    return params


class _KernelRecorder:
    """Stands in for the current backend module behind ``pyllm.backend.ops``: forwards every
    attribute to it and notes the names asked for (the kernels a case calls)."""

    def __init__(self, module_of):
        self.module_of, self.names = module_of, set()

    def __getattr__(self, name):
        self.names.add(name)
        return getattr(self.module_of(), name)


def _child_main(group, be):
    """Entry point of the child: run the cases of ``group`` for backend ``be``; one line each
    (name, exception MRO or None, message, the kernels it called through ``ops``)."""
    warnings.simplefilter("ignore")  # NumPy's "invalid value" warnings for NaN input
    pyllm.set_backend(be)
    if group in GROUP_SETUP:
        GROUP_SETUP[group]()
    import pyllm.backend as backend_pkg
    recorder = _KernelRecorder(backend_pkg._module)
    backend_pkg._module = lambda: recorder
    for name, (fn, _, _) in CHILD_CASES[group].items():
        if not runs_on(group, name, be):
            continue
        recorder.names = set()
        try:
            fn(be)
            res = [name, None, ""]
        except BaseException as exc:  # noqa: B036 (reported to the parent, which judges)
            msg = str(exc)
            if isinstance(exc, AssertionError) and not msg:  # a bare assert: show its line
                frame = traceback.extract_tb(exc.__traceback__)[-1]
                msg = "line %d: %s" % (frame.lineno, frame.line)
            res = [name, [c.__name__ for c in type(exc).__mro__], msg]
        print(MARK + json.dumps(res + [sorted(recorder.names)]), flush=True)


def _text(b):
    return b.decode("utf-8", "replace") if isinstance(b, bytes) else (b or "")


@functools.lru_cache(maxsize=None)
def _child_run(group, be):
    """Run the child of (group, be) once; returns ({name: (exception MRO or None, message)},
    returncode or "timeout", stderr)."""
    code = ("import sys; sys.path.insert(0, %r); import test_hostile; "
            "test_hostile._child_main(%r, %r)" % (TESTS_DIR, group, be))
    env = dict(os.environ)
    env.pop("PYLLM_BACKEND", None)
    try:
        r = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code],
                           capture_output=True, text=True, env=env, timeout=CHILD_TIMEOUT)
        out, err, rc = r.stdout, r.stderr, r.returncode
    except subprocess.TimeoutExpired as exc:
        out, err, rc = _text(exc.stdout), _text(exc.stderr), "timeout"
    results = {}
    for line in out.splitlines():
        if line.startswith(MARK):
            name, mro, msg, kernels = json.loads(line[len(MARK):])
            results[name] = (mro, msg, kernels)
    return results, rc, err


def _describe(rc):
    if rc == "timeout":
        return "hung for %d s" % CHILD_TIMEOUT
    if isinstance(rc, int) and rc < 0:
        return "killed by signal %d" % -rc
    return "exit code %s" % rc


def check_case(group, be, name):
    """Judge one case from its child's report (a kernel-free case, ``be == "any"``, from the
    NumPy child's, where it must have called no kernel)."""
    if be == "c":
        need_c()
    _, raises, match = CHILD_CASES[group][name]
    child_be = "numpy" if be == ANY else be
    results, rc, err = _child_run(group, child_be)
    if name not in results:
        pytest.fail("the %s child (backend %s) %s before case %s reported; stderr:\n%s"
                    % (group, child_be, _describe(rc), name, err[-3000:]))
    mro, msg, kernels = results[name]
    if be == ANY:
        assert not kernels, ("%s is registered with kernels=False but called %s: register it "
                             "with kernels=True so that it runs on every backend"
                             % (name, ", ".join(kernels)))
    if raises is None:
        assert mro is None, "%s raised %s: %s" % (name, mro[0], msg)
    else:
        assert mro is not None, "%s raised nothing, expected %s(%r)" % (name, raises.__name__,
                                                                       match)
        assert raises.__name__ in mro, "%s raised %s: %s; expected %s" % (
            name, mro[0], msg, raises.__name__)
        assert match in msg, "%s: message %r lacks %r" % (name, msg, match)


def check_child_exit(group, be):
    """The child as a whole ran to its end: no signal, no hang, nothing unreported."""
    if be == "c":
        need_c()
    results, rc, err = _child_run(group, be)
    assert rc == 0, "the %s child (backend %s) %s; stderr:\n%s" % (group, be, _describe(rc),
                                                                   err[-3000:])
    assert set(results) == {n for n in CHILD_CASES[group] if runs_on(group, n, be)}


BACKENDS = ["numpy", "c"]


# ==== kernels: argument checks the C side relies on =============================================

K = "kernels"


def _k(be):
    return backend_module(be)


@child_case(K, TypeError, "must have dtype float32")
def byte_swapped_float32_input(be):
    _k(be).gelu_forward(e32(4, 8), f32(4, 8).astype(">f4"))


@child_case(K, TypeError, "must have dtype float32")
def complex_input(be):
    _k(be).gelu_forward(e32(4, 8), f32(4, 8).astype(np.complex64))


@child_case(K, TypeError, "must have dtype float32")
def object_array_input(be):
    _k(be).residual_forward(e32(3), np.array([1.0, None, 2.0]), f32(3))


@child_case(K, TypeError, "numpy.ndarray")
def token_ids_as_a_list(be):
    _k(be).encoder_forward(e32(1, 2, 4), [[0, 1]], f32(5, 4), f32(8, 4))


@child_case(K, ValueError, "outside the valid range")
def token_id_uint64_max(be):
    idx = np.array([[0, 2**64 - 1]], np.uint64)
    _k(be).encoder_forward(e32(1, 2, 4), idx, f32(5, 4), f32(8, 4))


@child_case(K, ValueError, "targets holds id -3")
def negative_target_in_int8(be):
    _k(be).crossentropy_forward(e32(2), f32(2, 5), np.array([1, -3], np.int8))


@child_case(K, TypeError, "n_head must be an int")
def n_head_as_float(be):
    _k(be).attention_forward(e32(1, 2, 4), e32(1, 2, 2), f32(1, 2, 12), 2.0)


@child_case(K, TypeError, "n_head must be an int")
def n_head_as_string(be):
    _k(be).attention_forward(e32(1, 2, 4), e32(1, 2, 2), f32(1, 2, 12), "2")


@child_case(K, TypeError, "pos0 must be an int")
def position_offset_infinite(be):
    _k(be).encoder_forward(e32(1, 1, 4), np.zeros((1, 1), np.int64), f32(5, 4), f32(8, 4),
                           float("inf"))


@child_case(K, TypeError, "pos must be an int")
def decode_position_nan(be):
    kc = np.zeros((1, 2, 4, 2), np.float32)
    _k(be).attention_decode(e32(1, 4), kc, kc.copy(), f32(1, 12), float("nan"), 2)


def _adamw(be, **kw):
    args = dict(lr=1e-3, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.0, step=1)
    args.update(kw)
    _k(be).adamw_update(f32(4), f32(4), np.zeros(4, np.float32), np.zeros(4, np.float32), **args)


@child_case(K, ValueError, "step must be an integer >= 1")
def adamw_step_infinite(be):
    _adamw(be, step=float("inf"))


@child_case(K, ValueError, "step must be an integer >= 1")
def adamw_step_nan(be):
    _adamw(be, step=float("nan"))


@child_case(K, ValueError, "step must be an integer >= 1")
def adamw_step_fractional(be):
    _adamw(be, step=2.5)


@child_case(K, TypeError, "step must be an int")
def adamw_step_string(be):
    _adamw(be, step="1")


@child_case(K, ValueError, "beta2 must be in [0, 1)")
def adamw_beta_nan(be):
    _adamw(be, beta2=float("nan"))


@child_case(K, ValueError, "scale must be finite")
def crossentropy_scale_nan(be):
    _k(be).crossentropy_backward(e32(2, 5), f32(2, 5), np.array([0, 1]), float("nan"))


# -- wrong rank

@child_case(K, ValueError, "qkv must have shape (B, T, 3*C)")
def attention_qkv_2d(be):
    _k(be).attention_forward(e32(2, 4), e32(1, 2, 2), f32(2, 12), 2)


@child_case(K, ValueError, "qkv must have shape (B, 3*C)")
def decode_qkv_3d(be):
    kc = np.zeros((1, 2, 4, 2), np.float32)
    _k(be).attention_decode(e32(1, 4), kc, kc.copy(), f32(1, 1, 12), 0, 2)


@child_case(K, ValueError, "kcache must have shape (B, NH, maxT, hd)")
def decode_cache_3d(be):
    kc = np.zeros((2, 4, 2), np.float32)
    _k(be).attention_decode(e32(1, 4), kc, kc.copy(), f32(1, 12), 0, 2)


@child_case(K, ValueError, "weight must have shape (C, OC)")
def matmul_weight_3d(be):
    _k(be).matmul_forward(e32(4, 6), f32(4, 3), f32(1, 3, 6))


@child_case(K, ValueError, "residual must have shape (4, 6)")
def matmul_residual_wrong_shape(be):
    _k(be).matmul_forward(e32(4, 6), f32(4, 3), f32(3, 6), None, f32(6, 4))


@child_case(K, TypeError, "residual")
def matmul_residual_float64(be):
    _k(be).matmul_forward(e32(4, 6), f32(4, 3), f32(3, 6), None, np.zeros((4, 6)))


@child_case(K, ValueError, "idx must have shape (B, T)")
def encoder_ids_1d(be):
    _k(be).encoder_forward(e32(1, 3, 4), np.zeros(3, np.int64), f32(5, 4), f32(8, 4))


@child_case(K, ValueError, "wte must be (V, C)")
def encoder_embedding_1d(be):
    _k(be).encoder_forward(e32(1, 3, 4), np.zeros((1, 3), np.int64), f32(20), f32(8, 4))


@child_case(K, ValueError, "dout must have shape (B, T, C)")
def encoder_backward_dout_2d(be):
    _k(be).encoder_backward(np.zeros((5, 4), np.float32), np.zeros((8, 4), np.float32),
                            f32(3, 4), np.zeros((1, 3), np.int64))


@child_case(K, ValueError, "weight must have shape (8,)")
def layernorm_weight_2d(be):
    _k(be).layernorm_forward(e32(4, 8), None, None, f32(4, 8), f32(1, 8), f32(8))


@child_case(K, ValueError, "targets must have shape (2,)")
def crossentropy_targets_2d(be):
    _k(be).crossentropy_forward(e32(2), f32(2, 5), np.zeros((2, 1), np.int64))


@child_case(K, ValueError, "a and b must be 2-D")
def gemm_vector(be):
    _k(be).gemm(e32(3, 3), f32(3), f32(3, 3))


# -- layout: non-contiguous, misaligned, read-only

@child_case(K, ValueError, "out must be C-contiguous")
def transposed_output(be):
    _k(be).matmul_forward(e32(6, 4).T, f32(4, 3), f32(3, 6))


@child_case(K, ValueError, "inp must be C-contiguous")
def broadcast_input(be):  # zero strides: one row seen four times
    _k(be).gelu_forward(e32(4, 8), np.broadcast_to(f32(8), (4, 8)))


@child_case(K, ValueError, "inp2 must be C-contiguous")
def reversed_input(be):
    _k(be).residual_forward(e32(8), f32(8), f32(8)[::-1])


def _misaligned(*shape, dtype=np.float32):
    """A C-contiguous array whose address is one byte past an item boundary."""
    n = int(np.prod(shape))
    itemsize = np.dtype(dtype).itemsize
    a = np.frombuffer(bytearray(n * itemsize + 1), dtype=dtype, offset=1, count=n).reshape(shape)
    assert a.flags.c_contiguous and not a.flags.aligned
    return a


@child_case(K, ValueError, "inp is not aligned")
def misaligned_float_input(be):
    x = _misaligned(4, 8)
    x[...] = f32(4, 8)
    _k(be).gelu_forward(e32(4, 8), x)


@child_case(K, ValueError, "out is not aligned")
def misaligned_float_output(be):
    _k(be).softmax_forward(_misaligned(4, 8), f32(4, 8))


@child_case(K)
def odd_id_layouts_are_copied_not_rejected(be):
    """Token ids are copied to int32 as needed: strided, read-only, misaligned, narrow ids give
    exactly the result of plain int64 ids."""
    k, wte, wpe = _k(be), f32(7, 4), f32(8, 4, seed=1)
    ids = np.array([[3, 0, 6, 2], [1, 1, 5, 4]])
    ref = e32(2, 4, 4)
    k.encoder_forward(ref, ids, wte, wpe)
    strided = np.zeros((2, 8), np.int64)
    strided[:, ::2] = ids
    read_only = ids.astype(np.int32)
    read_only.setflags(write=False)
    misaligned = _misaligned(2, 4, dtype=np.int32)
    misaligned[...] = ids
    for variant in (strided[:, ::2], read_only, misaligned, ids.astype(np.uint8),
                    np.asfortranarray(ids)):
        out = e32(2, 4, 4)
        k.encoder_forward(out, variant, wte, wpe)
        assert np.array_equal(out, ref)


@child_case(K, ValueError, "dwte is read-only")
def read_only_gradient_output(be):
    dwte = np.zeros((5, 4), np.float32)
    dwte.setflags(write=False)
    _k(be).encoder_backward(dwte, np.zeros((8, 4), np.float32), f32(1, 3, 4),
                            np.zeros((1, 3), np.int64))


@child_case(K, ValueError, "kcache is read-only")
def read_only_kv_cache(be):  # the decode step writes the new key into the cache
    kc = np.zeros((1, 2, 4, 2), np.float32)
    vc = kc.copy()
    kc.setflags(write=False)
    _k(be).attention_decode(e32(1, 4), kc, vc, f32(1, 12), 0, 2)


@child_case(K, ValueError, "dlogits is read-only")
def read_only_logits_in_place(be):
    logits = f32(2, 5)
    logits.setflags(write=False)
    _k(be).crossentropy_backward(logits, logits, np.array([0, 1]), 1.0)


@child_case(K, ValueError, "m is read-only")
def read_only_optimizer_moment(be):
    m = np.zeros(4, np.float32)
    m.setflags(write=False)
    _k(be).adamw_update(f32(4), f32(4), m, np.zeros(4, np.float32), 1e-3, 0.9, 0.99, 1e-8,
                        0.0, 1)


# -- zero-size dimensions: fine, and the results are what an empty sum gives

class Guarded:
    """Float32 arrays that lie inside larger buffers filled with a sentinel: a kernel that writes
    outside the array it was given (before its start or past its end) changes the sentinel."""
    SENTINEL = np.float32(7.0)

    def __init__(self):
        self.buffers = []

    def __call__(self, *shape):
        n = int(np.prod(shape))
        buf = np.full(n + 64, self.SENTINEL, np.float32)
        self.buffers.append((buf, n))
        return buf[32:32 + n].reshape(shape)

    def assert_untouched(self):
        for i, (buf, n) in enumerate(self.buffers):
            outside = np.concatenate([buf[:32], buf[32 + n:]])
            assert np.all(outside == self.SENTINEL), "kernel wrote outside guarded array %d" % i


@child_case(K)
def zero_rows_everywhere(be):
    """Every kernel takes zero rows: it returns None (norm_squared: the empty sum 0.0), writes
    nothing outside its (empty) outputs and leaves its non-empty inputs as they were."""
    k, g, z = _k(be), Guarded(), np.empty((0, 8), np.float32)
    w, b, wte, wpe = f32(8), f32(8, seed=1), f32(5, 4), f32(8, 4)
    inputs = [w, b, wte, wpe]
    copies = [a.copy() for a in inputs]
    calls = [
        lambda: k.layernorm_forward(g(0, 8), g(0), g(0), z, w, b),
        lambda: k.softmax_forward(g(0, 8), z),
        lambda: k.softmax_backward(g(0, 8), z.copy(), z.copy()),
        lambda: k.crossentropy_forward(g(0), z, np.empty(0, np.int64)),
        lambda: k.crossentropy_backward(g(0, 8), z, np.empty(0, np.int64), 1.0),
        lambda: k.encoder_forward(g(0, 3, 4), np.empty((0, 3), np.int64), wte, wpe),
        lambda: k.attention_decode(g(0, 4), g(0, 2, 3, 2), g(0, 2, 3, 2),
                                   np.empty((0, 12), np.float32), 0, 2),
        lambda: k.residual_forward(g(0), e32(0), e32(0)),
        lambda: k.adamw_update(g(0), e32(0), g(0), g(0), 1e-3, 0.9, 0.99, 1e-8, 0.1, 1),
        lambda: k.scale_inplace(g(0), 2.0),
    ]
    for i, call in enumerate(calls):
        assert call() is None, "call %d returned a value" % i
    assert k.norm_squared(e32(0)) == 0.0
    g.assert_untouched()
    for a, c in zip(inputs, copies):
        assert np.array_equal(a, c), "an input changed"


@child_case(K)
def zero_rows_leave_accumulated_gradients_alone(be):
    """Backward kernels add into their gradients: with no rows there is nothing to add."""
    k = _k(be)
    dw, db, dg, dbl = (np.full(s, 3.0, np.float32) for s in ((8, 5), (5,), (8,), (8,)))
    k.matmul_backward(e32(0, 8), dw, db, e32(0, 5), e32(0, 8), f32(8, 5))
    k.layernorm_backward(e32(0, 8), dg, dbl, e32(0, 8), e32(0, 8), f32(8), e32(0), e32(0))
    dwte, dwpe = np.full((5, 4), 2.0, np.float32), np.full((8, 4), 2.0, np.float32)
    k.encoder_backward(dwte, dwpe, e32(2, 0, 4), np.empty((2, 0), np.int64))
    for g, v in ((dw, 3), (db, 3), (dg, 3), (dbl, 3), (dwte, 2), (dwpe, 2)):
        assert np.all(g == v)


@child_case(K)
def zero_inner_dimension_gives_the_bias(be):
    out = np.full((3, 5), 7.0, np.float32)
    bias = np.arange(5, dtype=np.float32)
    _k(be).matmul_forward(out, e32(3, 0), e32(0, 5), bias)
    assert np.array_equal(out, np.broadcast_to(bias, (3, 5)))


@child_case(K)
def zero_time_steps_in_attention(be):
    """Sequences of length 0 (B = 2): attention forward, backward (accumulating or not) and the
    probabilities run, return None and write nothing outside their empty outputs."""
    k, g = _k(be), Guarded()
    qkv, out, lse = e32(2, 0, 12), g(2, 0, 4), g(2, 2, 0)
    assert k.attention_forward(out, lse, qkv, 2) is None
    for acc in (True, False):
        assert k.attention_backward(g(2, 0, 12), e32(2, 0, 4), qkv, out, lse, 2,
                                    accumulate=acc) is None
    assert k.attention_probs(g(2, 2, 0, 0), qkv, lse, 2) is None
    g.assert_untouched()


# ==== kernels on NaN and Inf: no crash, and C puts NaN/Inf exactly where NumPy does ===========

A = "nan-agreement"


def hostile(*shape, seed=0):
    """Random float32 of `shape` with, in its first rows: all NaN, one NaN, +Inf, -Inf and a value
    whose square overflows; the remaining rows are finite."""
    x = f32(*shape, seed=seed)
    rows = x.reshape(-1, shape[-1])
    rows[0, :] = np.nan
    rows[1, 0] = np.nan
    rows[2, 1] = np.inf
    rows[3, 2] = -np.inf
    rows[4, 3] = 3e38
    return x


def agree(kernel, args, outputs):
    """Run `kernel` on copies of `args` in both backends; the arrays at positions `outputs` must
    have NaN and +-Inf in the same places and close finite values; NaN must have reached the
    output, and finite input rows must have stayed finite somewhere."""
    res = {}
    for be in ("numpy", "c"):
        a = [v.copy() if isinstance(v, np.ndarray) else v for v in args]
        got = getattr(backend_module(be), kernel)(*a)
        res[be] = [a[i] for i in outputs] + ([np.float64(got)] if got is not None else [])
    for i, (ref, c) in enumerate(zip(res["numpy"], res["c"])):
        where = "%s output %d" % (kernel, i)
        assert np.array_equal(np.isnan(ref), np.isnan(c)), where + ": NaN in different places"
        assert np.array_equal(np.isposinf(ref), np.isposinf(c)), where + ": +Inf differs"
        assert np.array_equal(np.isneginf(ref), np.isneginf(c)), where + ": -Inf differs"
        fin = np.isfinite(ref)
        np.testing.assert_allclose(c[fin], ref[fin], rtol=1e-4, atol=1e-4, err_msg=where)
    first = res["numpy"][0]
    assert np.isnan(first).any() and np.isfinite(first).any(), kernel


@child_case(A)
def gelu_with_nan(be):
    x = hostile(8, 16)
    agree("gelu_forward", [z32(8, 16), x], [0])
    agree("gelu_backward", [np.zeros((8, 16), np.float32), x, f32(8, 16)], [0])


@child_case(A)
def softmax_with_nan(be):
    x = hostile(8, 16)
    agree("softmax_forward", [z32(8, 16), x], [0])
    agree("softmax_backward", [z32(8, 16), f32(8, 16), hostile(8, 16, seed=1)], [0])


@child_case(A)
def crossentropy_with_nan(be):
    x, t = hostile(8, 16), np.arange(8) * 2
    agree("crossentropy_forward", [z32(8), x, t], [0])
    agree("crossentropy_backward", [z32(8, 16), x, t, 0.5], [0])


@child_case(A)
def layernorm_with_nan(be):
    x = hostile(8, 16)
    agree("layernorm_forward", [z32(8, 16), z32(8), z32(8), x, f32(16), f32(16)], [0, 1, 2])
    mean, rstd = x.mean(-1).astype(np.float32), f32(8) ** 2
    agree("layernorm_backward", [np.zeros((8, 16), np.float32), np.zeros(16, np.float32),
                                 np.zeros(16, np.float32), f32(8, 16), x, f32(16), mean, rstd],
          [0, 1, 2])


@child_case(A)
def matmul_with_nan(be):
    x = hostile(8, 16)
    agree("matmul_forward", [z32(8, 6), x, f32(16, 6), f32(6)], [0])
    agree("matmul_backward", [np.zeros((8, 16), np.float32), np.zeros((16, 6), np.float32),
                              np.zeros(6, np.float32), hostile(8, 6), f32(8, 16), f32(16, 6)],
          [0, 1, 2])
    agree("gemm", [z32(8, 8), x, f32(8, 16), False, True], [0])


@child_case(A)
def attention_with_nan(be):
    qkv = hostile(2, 9, 24)
    out, lse = z32(2, 9, 8), z32(2, 2, 9)
    backend_module("numpy").attention_forward(out, lse, qkv, 2)
    agree("attention_forward", [z32(2, 9, 8), z32(2, 2, 9), qkv, 2], [0, 1])
    agree("attention_backward", [np.zeros((2, 9, 24), np.float32), f32(2, 9, 8), qkv, out, lse,
                                 2], [0])
    kc = hostile(1, 2, 6, 4)
    agree("attention_decode", [z32(1, 8), kc, kc + 1, hostile(8, 24, seed=2)[5:6], 3, 2],
          [0, 1, 2])


@child_case(A)
def embedding_residual_optimizer_with_nan(be):
    wte = hostile(8, 4)
    agree("encoder_forward", [z32(2, 3, 4), np.array([[0, 1, 5], [2, 3, 7]]), wte, f32(8, 4)],
          [0])
    agree("residual_forward", [z32(8, 4), hostile(8, 4), f32(8, 4)], [0])
    g = hostile(8, 4).reshape(-1)
    agree("adamw_update", [f32(32), g, np.zeros(32, np.float32), np.zeros(32, np.float32), 1e-3,
                           0.9, 0.99, 1e-8, 0.1, 1], [0, 2, 3])
    n = {be: backend_module(be).norm_squared(g) for be in ("numpy", "c")}
    assert math.isnan(n["numpy"]) and math.isnan(n["c"])


@child_case(K, ValueError, "probs must have shape (1, 2, 4, 4), got (1, 2, 4, 3)")
def attention_probs_wrong_shape(be):
    _k(be).attention_probs(e32(1, 2, 4, 3), f32(1, 4, 12), e32(1, 2, 4), 2)


@child_case(K, ValueError, "lse must have shape (1, 2, 4), got (1, 4, 2)")
def attention_probs_lse_wrong_shape(be):
    _k(be).attention_probs(e32(1, 2, 4, 4), f32(1, 4, 12), e32(1, 4, 2), 2)


@child_case(K, ValueError, "probs")
def attention_probs_output_over_its_input(be):
    buf = f32(1, 2, 4, 4)
    _k(be).attention_probs(buf, buf.reshape(-1)[:24].reshape(1, 2, 12), e32(1, 2, 2), 2)


@child_case(K, ValueError, "w must have shape (m, 4) with m >= 1, got (5, 3)")
def favor_features_w_of_the_wrong_width(be):
    _k(be).favor_features_forward(e32(2, 3, 5), f32(2, 3, 4), f32(5, 3))


@child_case(K, ValueError, "v must have shape (2, 3, hd), got (2, 4, 4)")
def linear_attention_v_of_another_length(be):
    _k(be).linear_attention_forward(e32(2, 3, 4), e32(2, 3), f32(2, 3, 5), f32(2, 3, 5),
                                    f32(2, 4, 4))


@child_case(K, ValueError, "den must not overlap")
def linear_attention_den_over_its_input(be):
    qf = np.abs(f32(2, 3, 5))
    _k(be).linear_attention_forward(e32(2, 3, 4), qf.reshape(-1)[:6].reshape(2, 3), qf,
                                    np.abs(f32(2, 3, 5)), f32(2, 3, 4))


@child_case(K, ValueError, "dqf must not overlap")
def linear_attention_backward_gradient_over_its_input(be):
    qf, kf, v = np.abs(f32(2, 3, 5)), np.abs(f32(2, 3, 5)), f32(2, 3, 4)
    _k(be).linear_attention_backward(qf, None, None, f32(2, 3, 4), qf, kf, v, f32(2, 3, 4),
                                     np.ones((2, 3), np.float32))


@child_case(A)
def linear_attention_with_nan(be):
    x = hostile(2, 6, 4)
    agree("elu_features_forward", [z32(2, 6, 4), x], [0])
    w = f32(8, 4, seed=1)
    agree("favor_features_forward", [z32(2, 6, 8), x, w, z32(2, 6)], [0, 3])
    qf, kf = np.abs(f32(2, 6, 8)), np.abs(f32(2, 6, 8, seed=2))
    agree("linear_attention_forward", [z32(2, 6, 4), z32(2, 6), qf, kf, hostile(2, 6, 4)], [0])
    # NaN, +-Inf and 3e38 among the keys' stabilisers: the same places in both backends
    q8, k8, v8, kc = np.abs(f32(8, 6, 5)), np.abs(f32(8, 6, 5, seed=3)), f32(8, 6, 4), hostile(8, 6)
    agree("linear_attention_forward", [z32(8, 6, 4), z32(8, 6), q8, k8, v8, kc], [0, 1])
    agree("linear_attention_backward", [z32(8, 6, 5), z32(8, 6, 5), z32(8, 6, 4), f32(8, 6, 4),
                                        q8, k8, v8, np.abs(f32(8, 6, 4)),
                                        np.ones((8, 6), np.float32), kc], [0, 1, 2])
    # NaN/Inf in the query features: both backends keep them in den (the guard is a maximum)
    agree("linear_attention_forward", [z32(2, 6, 4), z32(2, 6), hostile(2, 6, 8), kf, f32(2, 6, 4)],
          [0, 1])


@child_case(A)
def q8_matmul_with_nan(be):
    from pyllm.quant import quantize_q8_0
    q, sc = quantize_q8_0(f32(8, 40, seed=4))
    agree("q8_matmul_forward", [z32(6, 8), hostile(6, 40), q, sc], [0])
    agree("q8_matmul_forward", [z32(6, 8), f32(6, 40), q, sc, f32(8), hostile(6, 8)], [0])


@child_case(K, ValueError, "scales must have shape (8, 2)")
def q8_matmul_scales_of_the_wrong_shape(be):
    from pyllm.quant import quantize_q8_0
    q, sc = quantize_q8_0(f32(8, 40, seed=4))
    _k(be).q8_matmul_forward(z32(6, 8), f32(6, 40), q, np.ones((8, 1), np.float32))


@child_case(K, ValueError, "weights must be a list of 6 + 16 * n_layer arrays")
def q8_decoder_with_a_short_weight_list(be):
    _k(be).Q8Decoder([f32(4, 4)] * 10, z32(1, 2, 1, 1, 4, 4), 1)


# ==== the model, the optimiser, backend settings =================================================

M = "model"


@child_case(M, TypeError, "idx must hold integer token ids", kernels=False)
def model_float_ids(be):
    tiny().forward(np.zeros((1, 3)))


@child_case(M, TypeError, "idx must hold integer token ids", kernels=False)
def model_bool_ids(be):
    tiny().forward(np.array([[True, False]]))


@child_case(M, TypeError, "idx must hold integer token ids", kernels=False)
def model_string_ids(be):
    tiny().forward([["a", "b"]])


@child_case(M, ValueError, "idx must have shape (B, T)", kernels=False)
def model_ids_rank_3(be):
    tiny().forward(np.zeros((1, 2, 3), np.int64))


@child_case(M, ValueError, "idx must have shape (B, T)", kernels=False)
def model_ids_scalar(be):
    tiny().forward(np.int64(3))


@child_case(M, ValueError, "must be non-empty", kernels=False)
def model_empty_batch(be):
    tiny().forward(np.zeros((0, 3), np.int64))


@child_case(M, ValueError, "idx holds token id -1, outside [0, 13)", kernels=False)
def model_negative_id(be):
    tiny().forward(np.array([[1, -1, 2]]))


@child_case(M, ValueError, "outside [0, 13)", kernels=False)
def model_uint64_max_id(be):
    tiny().forward(np.array([[1, 2**64 - 1]], np.uint64))


@child_case(M, ValueError, "targets holds token id 13", kernels=False)
def model_target_out_of_range(be):
    tiny().loss(np.array([[1, 2]]), np.array([[2, 13]]))


@child_case(M, ValueError, "prompt_idx holds token id 99", kernels=False)
def model_prompt_out_of_range(be):
    tiny().generate(np.array([[1, 99]]), 2)


@child_case(M, ValueError, "scale must be finite")
def model_loss_scale_nan(be):
    tiny().loss_and_grads(np.array([[1, 2]]), np.array([[2, 3]]), loss_scale=float("nan"))


@child_case(M)
def model_odd_id_layouts_give_the_same_logits(be):
    m = tiny(scale=0.3)
    ids = np.array([[3, 0, 12, 2], [1, 1, 5, 4]])
    ref = m.forward(ids)
    strided = np.zeros((2, 8), np.int64)
    strided[:, 1::2] = ids
    read_only = ids.copy()
    read_only.setflags(write=False)
    for variant in (strided[:, 1::2], read_only, np.asfortranarray(ids), ids.astype(np.uint8),
                    ids.tolist()):
        assert np.array_equal(m.forward(variant), ref)


@child_case(M)
def model_nan_or_inf_weights_give_nan_loss(be):
    ids, tgt = np.array([[1, 2, 3]]), np.array([[2, 3, 4]])
    for bad in (np.nan, np.inf, -np.inf):
        m = tiny()
        m.params[:] = bad
        assert math.isnan(m.loss(ids, tgt))
        loss, grads = m.loss_and_grads(ids, tgt)
        assert math.isnan(loss)
        assert math.isnan(pyllm.clip_grad_norm(grads, 1.0))


@child_case(M)
def model_nan_embedding_row(be):
    """Token 7's embedding is NaN: its logit is NaN at every position (the head is tied to wte),
    the other logits stay finite while 7 is not in the input, and all is NaN once it is."""
    m = tiny(scale=0.3)
    m.state_dict()["wte.weight"][7] = np.nan
    logits = m.forward(np.array([[1, 2, 3]]))
    assert np.isnan(logits[..., 7]).all() and np.isfinite(np.delete(logits, 7, axis=-1)).all()
    assert np.isnan(m.forward(np.array([[7, 1, 2]]))).all()


@child_case(M, FloatingPointError, "non-finite logits")
def model_generate_with_nan_weights(be):
    m = tiny()
    m.params[:] = np.nan
    m.generate(np.array([[1, 2]]), 3)


@child_case(M, FloatingPointError, "non-finite logits")
def model_generate_with_overflowing_weights(be):
    m = tiny()
    m.params[:] = 3e38  # finite, but the logits overflow
    m.generate(np.array([[1, 2]]), 3, use_cache=False)


@child_case(M)
def model_prompt_longer_than_block_size_is_cropped(be):
    """Generation conditions on the last block_size tokens: a prompt 3.5 blocks long gives the
    tokens its last block alone gives, with and without the KV cache, greedy or sampled."""
    m = tiny(scale=1.0)
    prompt = np.random.default_rng(3).integers(0, 13, (2, 28))
    for kw in (dict(temperature=0), dict(temperature=0.9, top_k=5, seed=7)):
        full = m.generate(prompt, 6, **kw)
        assert full.shape == (2, 34) and np.array_equal(full[:, :28], prompt)
        assert np.array_equal(m.generate(prompt, 6, use_cache=False, **kw), full)
        assert np.array_equal(m.generate(prompt[:, -8:], 6, **kw)[:, 8:], full[:, 28:])
        # and which 8 tokens are kept matters: the first block continues differently
        assert not np.array_equal(m.generate(prompt[:, :8], 6, **kw)[:, 8:], full[:, 28:])


@child_case(M)
def model_top_k_beyond_vocab_means_no_limit(be):
    m = tiny(scale=0.5)
    a = m.generate(np.array([[1, 2]]), 8, temperature=1.0, top_k=10**6, seed=3)
    assert np.array_equal(a, m.generate(np.array([[1, 2]]), 8, temperature=1.0, seed=3))


@child_case(M, kernels=False)
def model_sampling_arguments_checked(be):
    m, p = tiny(), np.array([[1, 2]])
    for kw, exc, match in [
            (dict(temperature=float("nan")), ValueError, "temperature must be a finite number"),
            (dict(temperature=float("inf")), ValueError, "temperature must be a finite number"),
            (dict(temperature=-0.5), ValueError, "temperature must be a finite number"),
            (dict(temperature="hot"), ValueError, "temperature must be a finite number"),
            (dict(top_k=0), ValueError, "top_k must be None or an int >= 1"),
            (dict(top_k=True), ValueError, "top_k must be None or an int >= 1"),
            (dict(top_k=2.5), ValueError, "top_k must be None or an int >= 1"),
            (dict(top_p=0.0), ValueError, "top_p must be None or in (0, 1]"),
            (dict(top_p=1.5), ValueError, "top_p must be None or in (0, 1]"),
            (dict(top_p=float("nan")), ValueError, "top_p must be None or in (0, 1]"),
            (dict(max_new_tokens=-1), ValueError, "max_new_tokens must be >= 0"),
            (dict(max_new_tokens=2.5), TypeError, "max_new_tokens must be an int"),
            (dict(max_new_tokens=True), TypeError, "max_new_tokens must be an int")]:
        args = dict(dict(max_new_tokens=2), **kw)
        expect(exc, match, m.generate, p, **args)
        expect(exc, match, lambda: next(m.stream(p, **args)))


@child_case(M)
def model_float64_runs_on_numpy_only(be):
    m = pyllm.GPT(pyllm.GPTConfig(**TINY), seed=0, dtype=np.float64)
    if be == "c":
        expect(TypeError, "NumPy backend only", m.forward, np.array([[1, 2]]))
        expect(TypeError, "NumPy backend only", m.generate, np.array([[1, 2]]), 2)
    else:
        assert m.forward(np.array([[1, 2]])).dtype == np.float64


@child_case(M, kernels=False)
def model_load_state_dict_checked(be):
    m = tiny()
    sd = {k: v.copy() for k, v in m.state_dict().items()}
    before = m.params.copy()
    expect(TypeError, "must be a float array", m.load_state_dict,
           dict(sd, **{"wte.weight": sd["wte.weight"].astype(np.int64)}))
    expect(ValueError, "has shape", m.load_state_dict, dict(sd, **{"wpe.weight": sd["wte.weight"]}))
    expect(ValueError, "missing ['ln_f.bias']", m.load_state_dict,
           {k: v for k, v in sd.items() if k != "ln_f.bias"})
    expect(TypeError, "state dict must be a dict", m.load_state_dict, list(sd.items()))
    assert np.array_equal(m.params, before)


@child_case(M, kernels=False)
def model_adamw_rejects_bad_settings_without_touching_weights(be):
    """Bad settings are refused by name when the optimizer is made, or (assigned later) at the
    next step; a refused step leaves the weights, the moments and the step count as they were,
    though the gradients it was given would have moved every weight."""
    m = tiny(scale=0.1)
    m.grads.flat[:] = 1.0  # an accepted step would move every weight
    before = m.params.copy()
    for kw, match in [(dict(lr=float("nan")), "lr must be a finite number >= 0"),
                      (dict(lr=-1e-3), "lr must be a finite number >= 0"),
                      (dict(lr=True), "lr must be a finite number >= 0"),
                      (dict(eps=float("inf")), "eps must be a finite number >= 0"),
                      (dict(weight_decay=-0.1), "weight_decay must be a finite number >= 0"),
                      (dict(betas=(0.9,)), "betas must be a pair"),
                      (dict(betas=(0.9, 1.0)), "betas must lie in [0, 1)"),
                      (dict(betas=(float("nan"), 0.9)), "betas must lie in [0, 1)")]:
        expect(ValueError, match, pyllm.AdamW, m, **kw)
    opt = pyllm.AdamW(m, lr=1e-3)

    def nothing_moved(after):
        assert np.array_equal(m.params, before), "weights changed after " + after
        assert opt.t == 0, "step count %d after %s" % (opt.t, after)
        assert not opt.m.any() and not opt.v.any(), "moments changed after " + after

    nothing_moved("a refused AdamW(...)")
    for attr, bad, match in [("lr", float("nan"), "lr must be a finite number >= 0"),
                             ("eps", -1.0, "eps must be a finite number >= 0"),
                             ("weight_decay", float("inf"),
                              "weight_decay must be a finite number >= 0"),
                             ("betas", (0.9, 1.5), "betas must lie in [0, 1)")]:
        good = getattr(opt, attr)
        setattr(opt, attr, bad)  # assigned between steps: checked at the next step
        expect(ValueError, match, opt.step)
        nothing_moved("step() with %s=%r" % (attr, bad))
        setattr(opt, attr, good)
    grads = {k: np.ones_like(v) for k, v in m.state_dict().items()}
    expect(ValueError, "exactly the parameter names", opt.step,
           {k: v for k, v in grads.items() if k != "wte.weight"})
    expect(ValueError, "grads['ln_f.bias'] has shape (3,), expected (8,)", opt.step,
           dict(grads, **{"ln_f.bias": np.zeros(3)}))
    expect(TypeError, "grads must be a dict of arrays, got list", opt.step, [1, 2])
    nothing_moved("step() with unusable gradients")


@child_case(M, kernels=False)
def model_adamw_refused_gradients_leave_the_model_gradients_alone(be):
    m = tiny()
    m.grads.flat[:] = 1.0
    grads = {k: np.zeros_like(v) for k, v in m.state_dict().items()}
    grads["ln_f.bias"] = np.zeros(3)  # the last entry has the wrong shape
    expect(ValueError, "has shape", pyllm.AdamW(m).step, grads)
    assert np.all(m.grads.flat == 1.0), "%d of %d gradient values overwritten" % (
        np.sum(m.grads.flat != 1.0), m.grads.flat.size)


@child_case(M)
def model_clip_grad_norm_checked(be):
    m = tiny()
    _, grads = m.loss_and_grads(np.array([[1, 2, 3]]), np.array([[2, 3, 4]]))
    for bad in (0, -1.0, float("nan"), "1", None):
        expect(ValueError, "max_norm must be a number > 0", pyllm.clip_grad_norm, grads, bad)
    grads.flat[5] = np.nan
    before = grads.flat.copy()
    assert math.isnan(pyllm.clip_grad_norm(grads, 1e-6))
    assert np.array_equal(grads.flat, before, equal_nan=True)  # left unscaled, as documented


@child_case(M, kernels=False)
def model_thread_counts_checked(be):
    """Refused thread counts (too small, beyond a C int, not an int) leave the count as it was,
    in pyllm and in the C kernels."""
    before = pyllm.get_num_threads()
    c_before = backend_module("c").get_num_threads() if "c" in pyllm.available_backends() \
        else None
    for bad in (0, -4, 2**31):
        expect(ValueError, "number of threads must be in [1, 2147483647], got %d" % bad,
               pyllm.set_num_threads, bad)
    for bad, kind in (("2", "str"), (2.5, "float"), (True, "bool"), (None, "NoneType")):
        expect(TypeError, "number of threads must be an int, got " + kind,
               pyllm.set_num_threads, bad)
    assert pyllm.get_num_threads() == before >= 1
    if c_before is not None:
        assert backend_module("c").get_num_threads() == c_before


@pytest.mark.parametrize("kw, exc, match", [
    (dict(n_embd=10, n_head=3), ValueError, "n_embd (10) must be divisible by n_head (3)"),
    (dict(n_embd=8, n_head=16), ValueError, "must be divisible by n_head (16)"),
    (dict(n_embd=768, n_head=7), ValueError, "must be divisible by n_head (7)"),
    (dict(block_size=0), ValueError, "GPTConfig.block_size must be >= 1"),
    (dict(n_layer=-1), ValueError, "GPTConfig.n_layer must be >= 1"),
    (dict(vocab_size=2**31), ValueError, "unreasonably large"),
    (dict(block_size=2**20 + 1), ValueError, "unreasonably large"),
    (dict(n_head=True), TypeError, "GPTConfig.n_head must be an int"),
    (dict(n_embd=64.0), TypeError, "GPTConfig.n_embd must be an int"),
    (dict(vocab_size="65"), TypeError, "GPTConfig.vocab_size must be an int"),
    (dict(block_size=None), TypeError, "GPTConfig.block_size must be an int"),
])
def test_gpt_config_rejects(kw, exc, match):
    with pytest.raises(exc, match=None) as info:
        pyllm.GPTConfig(**dict(TINY, **kw))
    assert match in str(info.value)


def test_gpt_config_accepts_numpy_ints_and_rejects_non_dicts():
    cfg = pyllm.GPTConfig(**{k: np.int64(v) for k, v in TINY.items()})
    assert cfg == pyllm.GPTConfig(**TINY) and type(cfg.n_embd) is int
    with pytest.raises(ValueError, match="must be a JSON object"):
        pyllm.GPTConfig.from_dict([("vocab_size", 13)])
    with pytest.raises(TypeError, match="must be an int"):
        pyllm.GPTConfig.from_dict(dict(TINY, n_head="2"))


def test_gpt_rejects_bad_dtype_and_config():
    cfg = pyllm.GPTConfig(**TINY)
    for dt in (np.float16, np.int32):
        with pytest.raises(TypeError, match="dtype must be float32 or float64"):
            pyllm.GPT(cfg, dtype=dt)
    with pytest.raises(TypeError, match="config must be a GPTConfig"):
        pyllm.GPT(TINY)


# -- thread counts, sampling settings, gradients and state dicts of the wrong kind

def test_thread_count_beyond_a_c_int_is_a_value_error():
    need_c()
    prev = pyllm.get_num_threads()
    try:
        with pytest.raises(ValueError, match="number of threads"):
            pyllm.set_num_threads(2**31)
    finally:
        pyllm.set_num_threads(prev)


def test_numpy_float32_sampling_settings_are_accepted():
    check_sampling(10, np.float32(0.5), np.int64(5), np.float32(0.9))


def test_clip_grad_norm_of_non_arrays_is_a_type_error():
    with pytest.raises(TypeError):
        pyllm.clip_grad_norm({"w": [3.0, 4.0]}, 1.0)


def test_rejected_state_dict_leaves_the_model_unchanged():
    m, other = tiny(seed=0), tiny(seed=1)
    before = m.params.copy()
    sd = {k: v.copy() for k, v in other.state_dict().items()}
    sd["ln_f.bias"] = np.zeros(3, np.float32)  # the last entry has the wrong shape
    with pytest.raises(ValueError, match="ln_f.bias has shape"):
        m.load_state_dict(sd)
    assert np.array_equal(m.params, before)


# ==== model files and GPT-2 downloads edited by hand ============================================

def _model_file(path, config_json):
    m = tiny()
    meta = dict(model_metadata(m.config), config=config_json)
    save_safetensors(path, {k: v.copy() for k, v in m.state_dict().items()}, meta)
    return path


@pytest.mark.parametrize("config, match", [
    (json.dumps(dict(TINY, n_head=3)), "must be divisible by n_head (3)"),
    (json.dumps(dict(TINY, n_layer=0)), "n_layer must be >= 1"),
    (json.dumps(dict(TINY, n_head=True)), "n_head must be an int"),
    (json.dumps(dict(TINY, n_embd=8.5)), "n_embd must be an int"),
    (json.dumps(dict(TINY, dropout=0.1)), "unknown keys ['dropout']"),
    (json.dumps([1, 2]), "must be a JSON object"),
    ('{"vocab_size": 13,', "invalid model config"),
])
def test_model_file_with_edited_config(tmp_path, config, match):
    path = _model_file(tmp_path / "m.safetensors", config)
    with pytest.raises(CheckpointError) as info:
        pyllm.load(path)
    assert match in str(info.value) and str(path) in str(info.value)


def test_model_path_that_is_no_model(tmp_path):
    (tmp_path / "notes.txt").write_text("a text file, not a model\n" * 10)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        pyllm.load(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="is a directory without checkpoint.safetensors"):
        pyllm.load(tmp_path / "empty")
    with pytest.raises(TypeError):
        pyllm.load(None)


def _hf_dir(tmp_path, **config):
    d = tmp_path / "hf"
    d.mkdir(exist_ok=True)
    m = tiny(seed=4)
    save_safetensors(d / "model.safetensors", {k: v.copy() for k, v in m.state_dict().items()},
                     {"format": "pt"})
    cfg = dict(n_embd=8, n_head=2, n_layer=1, n_positions=8, vocab_size=13,
               layer_norm_epsilon=1e-5)
    cfg.update(config)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("n_head, match", [
    (True, "n_head must be an integer, got True"),
    (1.5, "n_head must be an integer, got 1.5"),
    ("2", "n_head must be an integer, got '2'"),
    (0, "GPTConfig.n_head must be >= 1"),
    (3, "n_embd (8) must be divisible by n_head (3)"),
])
def test_gpt2_config_with_bad_head_count(tmp_path, n_head, match):
    """A config.json n_head that is not a usable int is an error, never silently 1 or truncated."""
    d = _hf_dir(tmp_path, n_head=n_head)
    with pytest.raises(CheckpointError) as info:
        pyllm.load_gpt2(d)
    assert match in str(info.value)


def test_gpt2_head_count_argument_checked(tmp_path):
    d = _hf_dir(tmp_path)
    assert pyllm.load_gpt2(d).config.n_head == 2
    for bad in (True, 2.0, "2"):
        with pytest.raises(TypeError, match="n_head must be an int"):
            pyllm.load_gpt2(d, n_head=bad)
    with pytest.raises(ValueError, match="n_head must be >= 1"):
        pyllm.load_gpt2(d, n_head=0)


# ==== training checkpoints edited by hand, and resuming ==========================================

# ==== the head explorer (pyllm.explore) ==========================================================

E = "explore"


def _explore():
    from pyllm import explore
    return explore


@child_case(E, ValueError, "idx holds token id 13, outside [0, 13)", kernels=False)
def explore_maps_id_out_of_range(be):
    _explore().attention_maps(tiny(), [1, 13])


@child_case(E, ValueError, "more than block_size", kernels=False)
def explore_maps_longer_than_the_block(be):
    _explore().attention_maps(tiny(), np.zeros(9, np.int64))


@child_case(E, MemoryError, "over the limit", kernels=False)
def explore_maps_that_do_not_fit(be):
    # 64 x 2 layers x 2 heads x 4096^2 float32: 16 GiB
    _explore().attention_maps(tiny(block_size=4096), np.zeros((64, 4096), np.uint8))


@child_case(E, ValueError, "head 2 of head (0, 2) is out of range", kernels=False)
def explore_ablate_head_out_of_range(be):
    with _explore().ablate(tiny(), [(0, 2)]):
        pass


@child_case(E, ValueError, "mode must be one of", kernels=False)
def explore_ablate_unknown_mode(be):
    with _explore().ablate(tiny(), [(0, 1)], mode="noise"):
        pass


@child_case(E, ValueError, "seq_len must be in [2, block_size // 2 = 4]", kernels=False)
def explore_scores_sequence_too_long(be):
    _explore().head_scores(tiny(), seq_len=5)


@child_case(E)
def explore_nan_weights_give_nan_maps_not_a_crash(be):
    m = tiny()
    m.params[:] = np.nan
    maps = _explore().attention_maps(m, [1, 2, 3])
    assert maps.shape == (1, 2, 3, 3) and np.isnan(maps[0, 0, 1, :2]).all()


@child_case(E)
def explore_ablation_survives_an_error_inside(be):
    m = tiny(scale=0.3)
    before = m.forward([[1, 2, 3]])
    try:
        with _explore().ablate(m, [(0, 0)]):
            m.forward([[1, 99]])
    except ValueError:
        pass
    assert m._attn_hook is None and np.array_equal(m.forward([[1, 2, 3]]), before)


R = "resume"
_RUN_SETTINGS = dict(n_layer=1, n_head=2, n_embd=8, block_size=8, batch_size=2, steps=2,
                     eval_interval=2, eval_iters=1, warmup=0, lr=1e-3, min_lr=1e-4)


@functools.lru_cache(maxsize=None)
def _base_run():
    """(directory of a finished 2-step run, its data file); made once per child process."""
    root = tempfile.mkdtemp(prefix="pyllm-hostile-")
    data = os.path.join(root, "text.txt")
    with open(data, "w", encoding="utf-8") as f:
        f.write("\n".join("line %d: the cat sat on the mat." % i for i in range(60)))
    out = os.path.join(root, "run")
    pyllm.train.train(pyllm.train.TrainConfig(data=data, out=out, **_RUN_SETTINGS),
                      log=lambda s: None, progress=False)
    return out, data


GROUP_SETUP[R] = _base_run  # its training is set-up, not a kernel call of the cases


def _edited_run(edit_state=None, edit_tensors=None):
    """A copy of the base run with its checkpoint's state / tensors edited."""
    src, _ = _base_run()
    dst = tempfile.mkdtemp(prefix="run-", dir=os.path.dirname(src))
    shutil.rmtree(dst)
    shutil.copytree(src, dst)
    ck = os.path.join(dst, "checkpoint.safetensors")
    tensors, meta = load_safetensors(ck)
    state = json.loads(meta["state"])
    if edit_state:
        state = edit_state(state)
    if edit_tensors:
        edit_tensors(tensors)
    save_safetensors(ck, tensors, dict(meta, state=json.dumps(state)))
    return dst


def _resume(out, steps=4):
    return pyllm.train.train(pyllm.train.TrainConfig(out=out, steps=steps), resume=True,
                             log=lambda s: None, progress=False)


def _without(key):
    def edit(state):
        del state[key]
        return state
    return edit


@child_case(R, CheckpointError, "has no training settings", kernels=False)
def resume_without_settings(be):
    _resume(_edited_run(_without("train")))


@child_case(R, CheckpointError, "invalid RNG state", kernels=False)
def resume_without_rng_state(be):
    _resume(_edited_run(_without("rng")))


@child_case(R, CheckpointError, "invalid RNG state", kernels=False)
def resume_with_odd_rng_increment(be):
    _resume(_edited_run(lambda s: dict(s, rng=dict(s["rng"], inc=2))))


@child_case(R, CheckpointError, "state has no integer step >= 0", kernels=False)
def resume_from_negative_step(be):
    _resume(_edited_run(lambda s: dict(s, step=-3)))


@child_case(R, CheckpointError, "state has no integer step >= 0", kernels=False)
def resume_from_step_as_string(be):
    _resume(_edited_run(lambda s: dict(s, step="2")))


@child_case(R, CheckpointError, "optimizer step count is negative", kernels=False)
def resume_with_negative_optimizer_count(be):
    _resume(_edited_run(lambda s: dict(s, optim_t=-1)))


@child_case(R, CheckpointError, "the training settings say block_size=999 but the model has 8",
            kernels=False)
def resume_with_settings_that_disagree_with_the_model(be):
    _resume(_edited_run(lambda s: dict(s, train=dict(s["train"], block_size=999))))


@child_case(R, CheckpointError, "invalid training settings", kernels=False)
def resume_with_unknown_setting(be):
    _resume(_edited_run(lambda s: dict(s, train=dict(s["train"], dropout=0.1))))


@child_case(R, CheckpointError, "invalid training settings: lr must be a finite number",
            kernels=False)
def resume_with_nan_learning_rate(be):
    _resume(_edited_run(lambda s: dict(s, train=dict(s["train"], lr=float("nan")))))


@child_case(R, CheckpointError, "optimizer moments are not finite", kernels=False)
def resume_with_nan_optimizer_moments(be):
    _resume(_edited_run(edit_tensors=lambda t: t["optim.m"].__setitem__(3, np.nan)))


@child_case(R, CheckpointError, "second moment is negative", kernels=False)
def resume_with_negative_second_moment(be):
    _resume(_edited_run(edit_tensors=lambda t: t["optim.v"].__setitem__(0, -1.0)))


@child_case(R, CheckpointError, "not the tokenizer this run was trained with", kernels=False)
def resume_with_another_tokenizer(be):
    out = _edited_run()
    CharTokenizer("abc").save(os.path.join(out, "tokenizer.txt"))
    _resume(out)


@child_case(R, ValueError, "cannot be encoded with the run's tokenizer", kernels=False)
def resume_after_the_text_changed(be):
    data = os.path.join(os.path.dirname(_base_run()[1]), "other.txt")
    with open(data, "w", encoding="utf-8") as f:
        f.write("NEW CHARACTERS: XYZ\n" * 50)
    _resume(_edited_run(lambda s: dict(s, train=dict(s["train"], data=data))))


@child_case(R)
def resume_with_a_garbled_log(be):
    """log.jsonl lines that the trainer did not write are dropped, not a crash."""
    out = _edited_run()
    log = os.path.join(out, "log.jsonl")
    with open(log, "a", encoding="utf-8") as f:
        f.write('[1, 2]\n5\n"text"\n{"step": "x", "loss": 1}\n{"step": true}\n'
                '{"step": 0, "loss": "NaN?"}\n{"no": "step"}\n{"torn": \n')
    res = _resume(out)
    assert res["step"] == 4
    with open(log, encoding="utf-8") as f:
        entries = [json.loads(line) for line in f]  # every line is JSON again
    assert all(isinstance(e, dict) and type(e["step"]) is int for e in entries)
    assert [e["step"] for e in entries if isinstance(e.get("loss"), float)] == [0, 1, 2, 3]
    assert os.path.getsize(os.path.join(out, "loss.svg")) > 0


@child_case(R)
def non_finite_gradient_stops_and_keeps_the_checkpoint(be):
    """A finite loss with a NaN gradient would turn every weight into NaN at the update: the run
    stops with TrainingDiverged and the last good checkpoint stays as it was."""
    out = _edited_run()
    ck = os.path.join(out, "checkpoint.safetensors")
    with open(ck, "rb") as f:
        before = f.read()
    original = pyllm.GPT.loss_and_grads

    def nan_gradient(self, *a, **kw):
        loss, grads = original(self, *a, **kw)
        grads.flat[0] = np.nan
        return loss, grads
    pyllm.GPT.loss_and_grads = nan_gradient
    try:
        expect(pyllm.train.TrainingDiverged, "gradient norm became nan", _resume, out)
    finally:
        pyllm.GPT.loss_and_grads = original
    with open(ck, "rb") as f:
        assert f.read() == before


def test_train_settings_refused_before_any_work(tmp_path):
    from pyllm.train import TrainConfig, train
    with pytest.raises(ValueError, match="more than pyllm can train"):
        TrainConfig(n_layer=10**9).resolved()
    with pytest.raises(ValueError, match="more than pyllm can train"):
        TrainConfig(n_embd=2**20, n_head=1).resolved()
    with pytest.raises(ValueError, match="block_size must be at most"):
        TrainConfig(block_size=2**21).resolved()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError, match="exists and is not a directory"):
        train(TrainConfig(out=str(tmp_path / "afile")), log=lambda s: None, progress=False)


def test_text_too_short_for_the_block_is_refused_before_the_model_is_built(tmp_path,
                                                                          monkeypatch):
    from pyllm import train as train_mod
    (tmp_path / "t.txt").write_text("abcdefghij" * 30)
    built = []
    monkeypatch.setattr(train_mod, "GPT", lambda *a, **k: built.append(a))
    # 270 training tokens but only 30 validation tokens: evaluation would fail after training
    cfg = train_mod.TrainConfig(data=str(tmp_path / "t.txt"), out=str(tmp_path / "o"),
                                block_size=64, steps=1)
    with pytest.raises(ValueError, match="270 training and 30 validation tokens, too few for "
                                         "block_size 64"):
        train_mod.train(cfg, log=lambda s: None, progress=False)
    assert built == []


# ==== data files and directories =================================================================

D = "data"


@child_case(D, ValueError, "not a regular file")
def data_from_a_device(be):  # /dev/zero never ends: it used to be read until memory ran out
    read_text("/dev/zero")


@child_case(D, ValueError, "not a regular file")
def tokenizer_from_a_device(be):
    load_tokenizer("/dev/zero")


@child_case(D)
def data_from_a_named_pipe(be):
    """A pipe given by name (``--data <(zcat corpus.gz)``) is read to its end."""
    d = tempfile.mkdtemp()
    fifo = os.path.join(d, "pipe")
    os.mkfifo(fifo)

    def writer():
        with open(fifo, "w", encoding="utf-8") as f:
            f.write("text through a pipe\n")
    t = threading.Thread(target=writer, daemon=True)
    t.start()
    assert read_text(fifo) == "text through a pipe\n"
    t.join()


@child_case(D)
def directory_with_a_pipe_and_a_dangling_link(be):
    """In a directory, a named pipe (which would block on open) and a dangling link are skipped
    with a warning; the readable text is returned."""
    d = tempfile.mkdtemp()
    os.mkfifo(os.path.join(d, "a_pipe.txt"))
    os.symlink(os.path.join(d, "nowhere"), os.path.join(d, "b_dangling.txt"))
    with open(os.path.join(d, "c.txt"), "w", encoding="utf-8") as f:
        f.write("good text")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert read_text(d) == "good text"
    msgs = sorted(str(x.message) for x in w)
    assert len(msgs) == 2, msgs
    assert "a_pipe.txt: not a regular file" in msgs[0]
    assert "b_dangling.txt: cannot be read" in msgs[1]


@pytest.mark.parametrize("content, match", [
    (b"", "the file is empty"),
    (b"\xef\xbb\xbf", "the file is empty"),  # only a byte-order mark
    (b"abc\x00def", "binary file (contains NUL bytes)"),
    (b"\xff\xfe t\x00e\x00x\x00t\x00", "binary file"),  # UTF-16
    (b"caf\xe9", "not UTF-8 text"),
])
def test_unusable_data_file(tmp_path, content, match):
    p = tmp_path / "data.txt"
    p.write_bytes(content)
    with pytest.raises(ValueError) as info:
        read_text(p)
    assert match in str(info.value) and str(p) in str(info.value)


def test_directory_without_text(tmp_path):
    (tmp_path / ".hidden.txt").write_text("hidden files are not read")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "picture.png").write_bytes(b"\x89PNG")
    with pytest.raises(ValueError, match="no text files found in"):
        read_text(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        read_text(tmp_path / "missing")


# ==== tokenizer files edited by hand (beyond tests/test_tokenizer.py) ============================

CHAR_FILE = "pyllm-tokenizer 1 char\nchars 3\n97\n98\n99\n"


@pytest.mark.parametrize("content, match", [
    ("pyllm-tokenizer 1 char\nchars 99999999999\n97\n98\n99\n", "unexpected end of file"),
    ("pyllm-tokenizer 1 char\nchars 3\n97\n\u0663\n99\n", "expected a non-negative integer"),
    ("pyllm-tokenizer 1 char\nchars 3\n97\n+98\n99\n", "expected a non-negative integer"),
    ("pyllm-tokenizer 1 char\nchars\t3\n97\n98\n99\n", "expected 'chars' line"),
    ("pyllm-tokenizer 1 char\nchars 3\n97 \n98\n99\n", "expected 1 integers, got 2"),
    ("pyllm-tokenizer 1 char\nchars 3\n97\n\n98\n99\n", "expected a non-negative integer"),
    ("pyllm-tokenizer 1 char\nchars 3\n97\n98\n99\n\n", "unexpected extra data"),
    ("pyllm-tokenizer 1 char\nchars 3\n97\n98\n99\n" + "x" * 10**5, "unexpected extra data"),
    ("\x00" * 64, "not a pyllm tokenizer file"),
])
def test_edited_char_tokenizer_file(tmp_path, content, match):
    p = tmp_path / "tok.txt"
    p.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError) as info:
        load_tokenizer(p)
    assert match in str(info.value) and str(p) in str(info.value)


@pytest.mark.parametrize("raw", [CHAR_FILE.replace("\n", "\r\n").encode(),  # saved on Windows
                                 b"\xef\xbb\xbf" + CHAR_FILE.encode()])  # with a byte-order mark
def test_tokenizer_file_from_an_editor_loads(tmp_path, raw):
    p = tmp_path / "tok.txt"
    p.write_bytes(raw)
    assert load_tokenizer(p) == CharTokenizer("abc")


def test_tokenizer_file_that_is_not_a_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "missing.txt")
    with pytest.raises(IsADirectoryError):
        load_tokenizer(tmp_path)


def test_bpe_special_token_that_is_no_text(tmp_path):
    """A special token written as a lone-surrogate JSON escape cannot be UTF-8: an error."""
    tok = pyllm.BPETokenizer.train("aaabdaaabac", 260)
    p = tmp_path / "bpe.txt"
    tok.save(p)
    text = p.read_text(encoding="utf-8").replace('"<|endoftext|>"', '"\\ud800"')
    p.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match="not encodable as UTF-8"):
        load_tokenizer(p)


# ==== the command line ===========================================================================

SMALL_RUN = ["--steps", "1", "--n-layer", "1", "--n-embd", "8", "--n-head", "2", "--block-size",
             "8", "--batch-size", "2", "--eval-iters", "1", "--sample-tokens", "0", "--quiet"]
TEXT = "".join("line %d: the cat sat on the mat, café au lait.\n" % i for i in range(80))


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace of files for the CLI cases (made with NumPy alone, no kernels)."""
    w = tmp_path_factory.mktemp("cli")
    (w / "text.txt").write_text(TEXT, encoding="utf-8")
    (w / "empty.txt").write_bytes(b"")
    (w / "binary.txt").write_bytes(b"\x00\x01\x02 binary")
    (w / "afile").write_text("not a directory")
    (w / "no_text").mkdir()
    (w / "no_text" / "image.png").write_bytes(b"\x89PNG")
    (w / "empty_dir").mkdir()
    tok = CharTokenizer.train(TEXT)
    m = pyllm.GPT(pyllm.GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2,
                                  n_embd=8), seed=1)
    m.params[:] = np.random.default_rng(1).standard_normal(m.params.size) * 0.5
    for name in ("ckpt", "overflow", "no_settings"):
        (w / name).mkdir()
        tok.save(w / name / "tokenizer.txt")
    m.save(w / "ckpt" / "checkpoint.safetensors")
    CharTokenizer(tok.chars[:10]).save(w / "small_tokenizer.txt")
    big = pyllm.GPT(m.config, seed=None)
    big.params[:] = 3e38  # finite weights whose logits overflow
    big.save(w / "overflow" / "checkpoint.safetensors")
    save_checkpoint(w / "no_settings", m, pyllm.AdamW(m), {"step": 1, "rng": RNG(0).get_state()})
    return w


# name: (arguments, message part expected on the error line); {w} is the workspace. One case per
# code path (each run costs an interpreter start); test_cli.py has a few more.
CLI_ERRORS = {
    # train: arguments
    "steps_negative": (["train", "--steps", "-5"], "steps must be an integer >= 1, got -5"),
    "steps_not_a_number": (["train", "--steps", "abc"], "argument --steps: invalid int value"),
    "unknown_preset": (["train", "--preset", "huge"], "argument --preset: invalid choice"),
    "unknown_backend": (["train", "--backend", "gpu"], "argument --backend: invalid choice"),
    "threads_zero": (["train", "--threads", "0"], "--threads: must be an integer from 1"),
    "threads_beyond_c_int": (["train", "--threads", "99999999999"],
                             "--threads: must be an integer from 1"),
    "absurd_model": (["train", "--n-layer", "1000000000"], "more than pyllm can train"),
    "block_longer_than_text": (["train", "--block-size", "100000"],
                               "too few for block_size 100000"),
    # train: files
    "data_missing": (["train", "--data", "{w}/missing.txt"], "no such file or directory"),
    "data_empty": (["train", "--data", "{w}/empty.txt"], "the file is empty"),
    "data_directory_without_text": (["train", "--data", "{w}/no_text"], "no text files found"),
    "data_device": (["train", "--data", "/dev/zero"], "not a regular file"),
    "out_is_a_file": (["train", "--out", "{w}/afile"], "exists and is not a directory"),
    "resume_model_without_settings": (["train", "--resume", "--out", "{w}/no_settings"],
                                      "has no training settings"),
    # sample
    "ckpt_is_text": (["sample", "--ckpt", "{w}/text.txt"], "not a safetensors file"),
    "gpt2_directory_without_model": (["sample", "--gpt2", "{w}/empty_dir"],
                                     "has no model.safetensors"),
    "max_new_tokens_negative": (["sample", "--ckpt", "{w}/ckpt", "--max-new-tokens", "-1"],
                                "max_new_tokens must be >= 0"),
    "temperature_nan": (["sample", "--ckpt", "{w}/ckpt", "--temperature", "nan"],
                        "temperature must be a finite number"),
    "empty_prompt": (["sample", "--ckpt", "{w}/ckpt", "--prompt", ""],
                     "the prompt encodes to no tokens"),
    "prompt_not_utf8": (["sample", "--ckpt", "{w}/ckpt", "--prompt", b"the \xff"],
                        "cannot be encoded: unknown character"),
    "tokenizer_missing": (["sample", "--ckpt", "{w}/ckpt/checkpoint.safetensors",
                           "--tokenizer-file", "{w}/missing.txt"], "no tokenizer found"),
    "tokenizer_binary": (["sample", "--ckpt", "{w}/ckpt", "--tokenizer-file", "{w}/binary.txt"],
                         "not a pyllm tokenizer file"),
    "tokenizer_device": (["sample", "--ckpt", "{w}/ckpt", "--tokenizer-file", "/dev/zero"],
                         "not a regular file"),
    "tokenizer_of_another_model": (["sample", "--ckpt", "{w}/ckpt", "--tokenizer-file",
                                    "{w}/small_tokenizer.txt"],
                                   "the tokenizer (10 ids) does not match the model"),
    "weights_that_overflow": (["sample", "--ckpt", "{w}/overflow", "--prompt", "the"],
                              "non-finite logits"),
    # info
    "info_threads_zero": (["info", "--threads", "0"], "--threads: must be an integer from 1"),
    # heads, neighbors
    "heads_layer_out_of_range": (["heads", "--ckpt", "{w}/ckpt", "--ablate", "0.1,1.0"],
                                 "layer 1 of head (1, 0) is out of range"),
    "heads_badly_written": (["heads", "--ckpt", "{w}/ckpt", "--ablate", "0:1"],
                            "a head is written LAYER.HEAD"),
    "heads_unknown_mode": (["heads", "--ckpt", "{w}/ckpt", "--ablate-mode", "noise"],
                           "argument --ablate-mode: invalid choice"),
    "heads_out_is_a_directory": (["heads", "--ckpt", "{w}/ckpt", "--out", "{w}/empty_dir"],
                                 "is a directory"),
    "heads_text_not_encodable": (["heads", "--ckpt", "{w}/ckpt", "--text", "\u4e2d\u6587"],
                                 "the text cannot be encoded"),
    "heads_seq_len_too_long": (["heads", "--ckpt", "{w}/ckpt", "--seq-len", "5"],
                               "seq_len must be in [2, block_size // 2 = 4]"),
    "neighbors_word_not_in_vocab": (["neighbors", "--ckpt", "{w}/ckpt", "\u4e2d"],
                                    "not in the vocabulary"),
    "neighbors_two_tokens": (["neighbors", "--ckpt", "{w}/ckpt", "ca"], "not one token"),
    "neighbors_no_word": (["neighbors", "--ckpt", "{w}/ckpt"], "give either a WORD or --id"),
}

# name: (arguments, extra environment); each must succeed
CLI_OK = {
    "long_prompt": (["sample", "--ckpt", "{w}/ckpt", "--prompt", TEXT[:40], "--max-new-tokens",
                     "12", "--temperature", "0"], {}),
    "last_block_of_the_prompt": (["sample", "--ckpt", "{w}/ckpt", "--prompt", TEXT[32:40],
                                  "--max-new-tokens", "12", "--temperature", "0"], {}),
    "ascii_terminal": (["sample", "--ckpt", "{w}/ckpt", "--prompt", "café", "--max-new-tokens",
                        "3"], {"PYTHONIOENCODING": "ascii"}),
}

def _run_cli(name, args, env_extra, w):
    argv = [a.replace("{w}", str(w)) if isinstance(a, str) else a for a in args]
    if argv and argv[0] == "train":  # small and short, should a check ever let it through
        argv = (argv[:1] + ["--data", os.path.join(str(w), "text.txt"),
                            "--out", os.path.join(str(w), "out-" + name)] + SMALL_RUN + argv[1:])
    env = dict(os.environ)
    env.pop("PYLLM_BACKEND", None)
    env.setdefault("PYTHONIOENCODING", "utf-8")
    env.update(env_extra)
    try:
        return subprocess.run([sys.executable, "-m", "pyllm"] + argv, capture_output=True,
                              env=env, timeout=120, cwd=str(w))
    except subprocess.TimeoutExpired as exc:
        return exc


@pytest.fixture(scope="module")
def cli_runs(ws):
    """Every CLI case, run concurrently (each is mostly interpreter start-up)."""
    jobs = {name: (args, {}) for name, (args, _) in CLI_ERRORS.items()}
    jobs.update(CLI_OK)
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(_run_cli, name, args, env, ws)
                   for name, (args, env) in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


def _assert_error_line(r, needle):
    assert not isinstance(r, subprocess.TimeoutExpired), "the command hung"
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode in (1, 2), "exit code %s (negative: a signal); stderr:\n%s" % (
        r.returncode, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    errors = [ln for ln in lines if "error:" in ln]
    assert len(errors) == 1 and lines[-1] == errors[0], "not one final error line:\n" + err
    assert needle in errors[0], "%r not in %r" % (needle, errors[0])


@pytest.mark.parametrize("name", list(CLI_ERRORS))
def test_cli_bad_input_is_one_error_line(cli_runs, name):
    r = cli_runs[name]
    _assert_error_line(r, CLI_ERRORS[name][1])
    if name.startswith(("max_new_tokens", "temperature", "tokenizer_of")):
        assert r.stdout == b""  # refused before printing anything


def test_cli_error_after_output_started_ends_the_line(cli_runs):
    r = cli_runs["weights_that_overflow"]
    assert r.stdout == b"the\n"  # the prompt, then a newline so the error starts a line


def test_cli_prompt_longer_than_block_size(cli_runs):
    """Sampling conditions on the last block_size (8) characters of a 40-character prompt: the
    continuation is the one those 8 characters alone get."""
    outs = {k: cli_runs[k] for k in ("long_prompt", "last_block_of_the_prompt")}
    for k, r in outs.items():
        assert r.returncode == 0, (k, r.stderr.decode())
    texts = {k: r.stdout.decode("utf-8") for k, r in outs.items()}
    new = texts["long_prompt"][40:]
    assert texts["long_prompt"].startswith(TEXT[:40]) and len(new) == 13  # 12 chars + newline
    assert texts["last_block_of_the_prompt"] == TEXT[32:40] + new


def test_cli_output_the_terminal_cannot_show_is_replaced(cli_runs):
    r = cli_runs["ascii_terminal"]
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.startswith(b"caf?") and r.stdout.endswith(b"\n")


# ==== running the child-process groups ===========================================================

# The backends each group's child runs on: the NaN/Inf agreement compares C with NumPy inside one
# child; the data loader has no kernels (it runs in a child so that a hang on a pipe or device is
# a timeout, not a stall).
GROUP_BACKENDS = {K: BACKENDS, A: ["c"], M: BACKENDS, E: BACKENDS, R: BACKENDS, D: ["numpy"]}


@pytest.mark.parametrize("group, be, name", [p for group, backends in GROUP_BACKENDS.items()
                                             for p in case_params(group, backends)])
def test_child_case(group, be, name):
    check_case(group, be, name)


@pytest.mark.parametrize("group, be", [(group, be) for group, backends in GROUP_BACKENDS.items()
                                       for be in backends])
def test_child_exits_cleanly(group, be):
    check_child_exit(group, be)
