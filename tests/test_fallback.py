"""Without its compiled extension pyllm still imports, warns once, runs on the NumPy backend and
says why, in words that fit the case: an installed pyllm whose extension was not built (no working C
compiler at install time), a source checkout run in place that was never built, or a compiled
module that is there but does not load.

The package is copied without its compiled extension and imported by a fresh interpreter that
cannot see any installed or editable pyllm. Installing the sdist with no compiler (``CC=false``) is
checked end to end in tests/test_packaging.py.
"""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ignore(_dir, names):
    return [n for n in names if n.endswith((".so", ".pyd", ".o")) or n in (
        "build", "dist", "__pycache__", ".git", ".pytest_cache", ".hypothesis") or
        n.endswith(".egg-info")]


def _isolated_python(code, pkg_parent, **env_extra):
    """Run ``code`` in ``python -S`` with ``pkg_parent`` first on the path and NumPy and cffi
    after it (no site-packages, so an installed or editable pyllm cannot leak in)."""
    import cffi
    import numpy
    deps = {os.path.dirname(os.path.dirname(m.__file__)) for m in (numpy, cffi)}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(pkg_parent)] + sorted(deps)))
    env.pop("PYLLM_BACKEND", None)
    env.update(env_extra)
    return subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                          env=env, timeout=120, cwd=str(pkg_parent))


def _copy_package(dest, checkout=False):
    """pyllm copied into ``dest`` without its compiled module; with ``checkout``, setup.py and csrc/
    beside it, as in a source checkout."""
    shutil.copytree(os.path.join(ROOT, "pyllm"), dest / "pyllm", ignore=_ignore)
    assert not list((dest / "pyllm").glob("_ckernels*"))
    if checkout:
        shutil.copy(os.path.join(ROOT, "setup.py"), dest / "setup.py")
        shutil.copytree(os.path.join(ROOT, "csrc"), dest / "csrc", ignore=_ignore)
    return dest / "pyllm"


SHOW = ("import warnings\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import pyllm\n"
        "assert pyllm.__file__.startswith(%r), pyllm.__file__\n"
        "print(pyllm.get_backend())\n"
        "print(pyllm.backend_reason())\n"
        "print(sum('C extension unavailable' in str(x.message) for x in w))\n"
        "print(*[x.message for x in w if 'C extension unavailable' in str(x.message)])\n")

# case (a): an installed pyllm (no setup.py or csrc/ beside it) whose extension was not built
NOT_BUILT = ("pyllm._ckernels was not built when pyllm was installed, as there was no working C "
             "compiler then; for the fast C kernels, install a C compiler (gcc or clang; the Xcode "
             "command line tools on macOS; the Microsoft C++ Build Tools on Windows) and reinstall "
             "pyllm: pip install --force-reinstall --no-cache-dir pyllm, or `pip install .` in its "
             "source directory")
WARNING = ("pyllm: C extension unavailable, so pyllm runs on its NumPy backend, which is much "
           "slower: ")


def test_installed_without_the_extension(tmp_path):
    """An installed pyllm with no compiled module (the build failed at install time): auto falls
    back to NumPy with one warning that says what happened and what to do -- not Python's
    'partially initialized module' import error, nor the source-checkout hint; an explicit
    PYLLM_BACKEND=numpy is 'requested explicitly' and warns nothing."""
    _copy_package(tmp_path)
    code = SHOW % str(tmp_path)
    r = _isolated_python(code, tmp_path)
    assert r.returncode == 0, r.stderr
    backend, reason, warned, message = r.stdout.splitlines()
    assert backend == "numpy" and warned == "1"
    assert reason == "auto: C extension unavailable (%s)" % NOT_BUILT
    assert message == WARNING + NOT_BUILT
    for stale in ("circular import", "partially initialized", "source checkout", "-e ."):
        assert stale not in message
    r = _isolated_python(code, tmp_path, PYLLM_BACKEND="numpy")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["numpy", "requested explicitly", "0", ""]


def test_source_checkout_without_the_extension(tmp_path):
    """A source checkout run in place and never built (setup.py and csrc/pyllm.h beside the
    package): the hint to build it with `pip install -e .` names the directories."""
    pkg = _copy_package(tmp_path, checkout=True)
    r = _isolated_python(SHOW % str(tmp_path), tmp_path)
    assert r.returncode == 0, r.stderr
    backend, reason, warned, message = r.stdout.splitlines()
    assert backend == "numpy" and warned == "1"
    hint = ("no compiled _ckernels module in %s: this is a source checkout run in place, and its C "
            "extension is not built; build it with `pip install -e .` in %s (it needs a working C "
            "compiler), or run from another directory to use the installed pyllm" % (pkg, tmp_path))
    assert reason == "auto: C extension unavailable (%s)" % hint
    assert message == WARNING + hint


def test_compiled_module_that_does_not_load(tmp_path):
    """A compiled module is there but cannot be loaded (here: not a shared library at all): the
    message names the file and the loader's own error, and says how to rebuild it."""
    from importlib.machinery import EXTENSION_SUFFIXES
    pkg = _copy_package(tmp_path)
    bad = pkg / ("_ckernels" + EXTENSION_SUFFIXES[0])
    bad.write_bytes(b"not a shared library\n")
    r = _isolated_python(SHOW % str(tmp_path), tmp_path)
    assert r.returncode == 0, r.stderr
    backend, reason, warned, message = r.stdout.splitlines()
    assert backend == "numpy" and warned == "1"
    assert message.startswith(WARNING + "the compiled module %s is there but does not load "
                              "(ImportError: " % bad), message
    assert message.endswith("; reinstall pyllm to rebuild it: pip install --force-reinstall "
                            "--no-cache-dir pyllm, or `pip install .` in its source directory")
    assert "was not built when pyllm was installed" not in message
    assert reason == "auto: C extension unavailable (%s)" % message[len(WARNING):]


@pytest.mark.parametrize("checkout", [False, True], ids=["installed", "checkout"])
def test_import_failure_messages(tmp_path, checkout):
    """pyllm.backend._c_import_failure's cases, by what the package directory holds."""
    from importlib.machinery import EXTENSION_SUFFIXES
    from pyllm.backend import _c_import_failure
    pkg = tmp_path / "pyllm"
    pkg.mkdir()
    if checkout:
        (tmp_path / "csrc").mkdir()
        (tmp_path / "setup.py").write_text("")
        (tmp_path / "csrc" / "pyllm.h").write_text("")
    rebuild = ("rebuild it with `pip install -e .` in %s" % tmp_path if checkout else
               "reinstall pyllm to rebuild it: pip install --force-reinstall --no-cache-dir "
               "pyllm, or `pip install .` in its source directory")
    circular = ImportError("cannot import name '_ckernels' from partially initialized module "
                           "'pyllm' (most likely due to a circular import)")
    (pkg / "_ckernels.c").write_text("")  # cffi's generated source is no compiled module
    msg = _c_import_failure(circular, str(pkg))
    if checkout:
        assert msg.startswith("no compiled _ckernels module in %s: this is a source checkout" % pkg)
        assert "`pip install -e .` in %s" % tmp_path in msg
    else:
        assert msg == NOT_BUILT
    assert "circular" not in msg
    other = pkg / "_ckernels.cpython-39-x86_64-linux-gnu.so"  # built for Python 3.9
    other.write_text("")
    msg = _c_import_failure(circular, str(pkg))
    if other.name[len("_ckernels"):] not in EXTENSION_SUFFIXES:
        assert msg.startswith("the compiled module %s was built for another Python: this is "
                              "Python %s, which loads only _ckernels"
                              % (other, sys.version.split()[0]))
        assert msg.endswith("; " + rebuild), msg
    mine = pkg / ("_ckernels" + EXTENSION_SUFFIXES[0])
    mine.write_text("")
    msg = _c_import_failure(ImportError("libgomp.so.1: cannot open shared object file"), str(pkg))
    assert msg == ("the compiled module %s is there but does not load (ImportError: libgomp.so.1: "
                   "cannot open shared object file); it may have been built for another Python or "
                   "machine, or need a library missing here (such as libgomp, the OpenMP runtime); "
                   "%s" % (mine, rebuild))
