"""Backend choice: ``"c"`` (the compiled kernels) or ``"numpy"`` (the readable specification).

The start value comes from ``PYLLM_BACKEND=auto|c|numpy`` (default ``auto``): ``auto`` uses C when
the extension imports and otherwise warns once, naming the reason, and uses NumPy; an explicit
``c`` that cannot be honoured raises :class:`BackendUnavailable`.

``ops`` is the object the rest of pyllm calls kernels through (``ops.layernorm_forward(...)``); it
forwards to whichever backend is current. Threads: ``PYLLM_NUM_THREADS``, else
``OMP_NUM_THREADS``, else the number of CPUs this process may use.

SIMD: the C kernels pick the best instruction set the CPU offers at run time; ``PYLLM_SIMD=
portable|avx2|auto`` or :func:`set_simd` forces one (the tests compare every level with NumPy).
"""
import os
import warnings

from . import numpy as _numpy_backend

BACKENDS = ("c", "numpy")


def _c_import_failure(exc, pkg):
    """Say, for a user, why the extension ``pyllm._ckernels`` in package directory ``pkg`` did not
    import (``exc``) and what to do. Three cases: a compiled module is there but does not load
    (the underlying error is named); none is there in a source checkout run in place (``setup.py``
    and ``csrc/pyllm.h`` beside the package: build it with ``pip install -e .``); none is there in
    an installed pyllm (it was not built at install time, for want of a working C compiler)."""
    import importlib.machinery
    import sys

    try:
        names = sorted(os.listdir(pkg))
    except OSError:
        names = []
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    loadable = [n for n in names if any(n == "_ckernels" + s for s in suffixes)]
    other = [n for n in names if n.startswith("_ckernels.") and n.endswith((".so", ".pyd"))
             and n not in loadable]  # e.g. _ckernels.cpython-310-x86_64-linux-gnu.so on 3.11
    parent = os.path.dirname(pkg)
    checkout = (os.path.isfile(os.path.join(parent, "setup.py"))
                and os.path.isfile(os.path.join(parent, "csrc", "pyllm.h")))
    rebuild = ("rebuild it with `pip install -e .` in %s" % parent if checkout else
               "reinstall pyllm to rebuild it: pip install --force-reinstall --no-cache-dir "
               "pyllm, or `pip install .` in its source directory")
    if loadable:
        return ("the compiled module %s is there but does not load (%s: %s); it may have been "
                "built for another Python or machine, or need a library missing here (such as "
                "libgomp, the OpenMP runtime); %s"
                % (os.path.join(pkg, loadable[0]), type(exc).__name__, exc, rebuild))
    if other:
        return ("the compiled module %s was built for another Python: this is Python %s, which "
                "loads only %s; %s" % (os.path.join(pkg, other[0]), sys.version.split()[0],
                                       " or ".join("_ckernels" + s for s in suffixes), rebuild))
    if checkout:
        return ("no compiled _ckernels module in %s: this is a source checkout run in place, and "
                "its C extension is not built; build it with `pip install -e .` in %s (it needs a "
                "working C compiler), or run from another directory to use the installed pyllm"
                % (pkg, parent))
    return ("pyllm._ckernels was not built when pyllm was installed, as there was no working C "
            "compiler then; for the fast C kernels, install a C compiler (gcc or clang; the "
            "Xcode command line tools on macOS; the Microsoft C++ Build Tools on Windows) and "
            "reinstall pyllm: pip install --force-reinstall --no-cache-dir pyllm, or "
            "`pip install .` in its source directory")


_c_backend = None
_c_error = None
try:
    from . import c as _c_backend
except ImportError as exc:  # extension not built, or built for another Python or machine
    _c_error = _c_import_failure(exc, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot be used on this installation."""


_state = {"name": None, "reason": "", "threads": None}


def _cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def c_unavailable_reason():
    """Why the C backend cannot be used, or ``None`` when it can."""
    return None if _c_backend is not None else _c_error


def available_backends():
    """The backend names usable here, best first."""
    return ("c", "numpy") if _c_backend is not None else ("numpy",)


def get_backend():
    """The name of the backend in use: ``"c"`` or ``"numpy"``."""
    return _state["name"]


def backend_reason():
    """A sentence saying why the current backend was chosen."""
    return _state["reason"]


def set_backend(name):
    """Switch the backend: ``"c"``, ``"numpy"`` or ``"auto"`` (C when available)."""
    if not isinstance(name, str):
        raise TypeError("backend name must be a str, got %s" % type(name).__name__)
    name = name.strip().lower()
    if name not in BACKENDS + ("auto",):
        raise ValueError("unknown backend %r; choose one of 'auto', 'c', 'numpy'" % name)
    if name == "c" and _c_backend is None:
        raise BackendUnavailable("the C backend was requested but the extension pyllm._ckernels "
                                 "cannot be imported (%s); or use the NumPy backend "
                                 "(set_backend('numpy'), PYLLM_BACKEND=numpy)" % _c_error)
    if name == "auto":
        if _c_backend is not None:
            _state.update(name="c", reason="auto: the C extension imported")
        else:
            if _state["name"] is None or _state["name"] == "c":
                warnings.warn("pyllm: C extension unavailable, so pyllm runs on its NumPy "
                              "backend, which is much slower: %s" % _c_error, RuntimeWarning,
                              stacklevel=2)
            _state.update(name="numpy", reason="auto: C extension unavailable (%s)" % _c_error)
    else:
        _state.update(name=name, reason="requested explicitly")
    return _state["name"]


def get_num_threads():
    """Threads the C kernels use (1 on the NumPy backend's side of things is NumPy's own choice)."""
    return _state["threads"]


def set_num_threads(n):
    """Set the number of OpenMP threads the C kernels use (an int >= 1)."""
    if isinstance(n, bool) or not isinstance(n, int) and not hasattr(n, "__index__"):
        raise TypeError("number of threads must be an int, got %s" % type(n).__name__)
    n = int(n)
    if n < 1 or n > 2**31 - 1:
        raise ValueError("number of threads must be in [1, 2147483647], got %d" % n)
    if _c_backend is not None:
        _c_backend.set_num_threads(n)
        n = _c_backend.get_num_threads()  # 1 when built without OpenMP
    _state["threads"] = n


def _default_threads():
    for var in ("PYLLM_NUM_THREADS", "OMP_NUM_THREADS"):
        val = os.environ.get(var, "").split(",")[0].strip()
        if val:
            try:
                n = int(val)
            except ValueError:
                raise ValueError("%s must be a positive integer, got %r" % (var, val)) from None
            if n < 1:
                raise ValueError("%s must be a positive integer, got %r" % (var, val))
            return n
    return _cpu_count()


# The C kernels' instruction-set levels, by the number csrc/matmul.c's pyllm_set_simd_level takes.
SIMD_LEVELS = ("portable", "avx2")
_SIMD_HELP = {"portable": "portable C (any CPU)", "avx2": "AVX2+FMA micro-kernels (x86-64)"}


def available_simd():
    """The SIMD levels the C kernels can run at on this CPU, lowest first (``()`` without C)."""
    if _c_backend is None:
        return ()
    current = _c_backend.simd_level()
    best = _c_backend.set_simd_level(len(SIMD_LEVELS) - 1)
    _c_backend.set_simd_level(current)
    return SIMD_LEVELS[:best + 1]


def get_simd():
    """The SIMD level the C kernels use now: ``"portable"`` or ``"avx2"`` (``None`` without C)."""
    return None if _c_backend is None else SIMD_LEVELS[_c_backend.simd_level()]


def set_simd(level):
    """Force the C kernels' instruction set: ``"portable"``, ``"avx2"``, or ``"auto"`` (the best
    this CPU offers, the default). Results agree across levels to rounding (each level is tested
    against the NumPy specification); a given level gives the same bits for any thread count.
    Returns the level now in use. Raises ValueError for a level this CPU or build lacks."""
    if not isinstance(level, str):
        raise TypeError("SIMD level must be a str, got %s" % type(level).__name__)
    name = level.strip().lower()
    if name not in SIMD_LEVELS + ("auto",):
        raise ValueError("unknown SIMD level %r; choose one of 'auto', %s"
                         % (level, ", ".join(repr(v) for v in SIMD_LEVELS)))
    if _c_backend is None:
        raise BackendUnavailable("SIMD levels belong to the C kernels, which are unavailable "
                                 "here (%s)" % _c_error)
    offered = available_simd()
    if name == "auto":
        name = offered[-1]
    elif name not in offered:
        raise ValueError("SIMD level %r is not available on this CPU or build (available: %s); "
                         "use 'auto' for the best one" % (name, ", ".join(offered)))
    _c_backend.set_simd_level(SIMD_LEVELS.index(name))
    return name


def _module():
    return _c_backend if _state["name"] == "c" else _numpy_backend


class _Ops:
    """Forwards ``ops.<kernel>`` to the current backend module."""

    def __getattr__(self, name):
        return getattr(_module(), name)

    def __dir__(self):
        return [n for n in dir(_numpy_backend) if n.endswith(("_forward", "_backward", "_update"))
                or n in ("gemm", "attention_decode", "norm_squared", "scale_inplace")]


ops = _Ops()


def hooked_decoder(weights, cache, n_head, attn_hook):
    """A decoder like ``ops.Decoder`` that runs layer by layer through the current backend's
    kernels and hands each layer's attention output to ``attn_hook.forward(layer, att)`` before
    its projection (the NumPy backend's Decoder with ``kernels=ops``): sampling under
    ``pyllm.explore.ablate``."""
    return numpy_decoder(weights, cache, n_head, attn_hook)


def numpy_decoder(weights, cache, n_head, attn_hook=None, attention=None):
    """The NumPy backend's Decoder running through the current backend's kernels: with an
    ``attention`` object (a favor or linear model's running state) in place of the KV cache,
    and with an ``attn_hook``; see :class:`pyllm.backend.numpy.Decoder`."""
    return _numpy_backend.Decoder(weights, cache, n_head, kernels=ops, attn_hook=attn_hook,
                                  attention=attention)


def backend_module(name):
    """The module implementing backend ``name`` (for tests and benchmarks)."""
    if name == "numpy":
        return _numpy_backend
    if name == "c":
        if _c_backend is None:
            raise BackendUnavailable("C backend unavailable: %s" % _c_error)
        return _c_backend
    raise ValueError("unknown backend %r" % (name,))


set_backend(os.environ.get("PYLLM_BACKEND", "auto") or "auto")
set_num_threads(_default_threads())
if _c_backend is not None and os.environ.get("PYLLM_SIMD", "").strip():
    try:
        set_simd(os.environ["PYLLM_SIMD"])
    except ValueError as exc:
        raise ValueError("PYLLM_SIMD: %s" % exc) from None
