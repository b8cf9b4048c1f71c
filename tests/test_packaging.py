"""Packaging, checked rather than assumed: what a user gets from the sdist and the wheel.

One module fixture copies the source tree (without its build products), plants build leftovers in
the copy (a stale ``build/``, ``pyllm/_ckernels.c``, a fake compiled module, an object file,
``__pycache__``), and runs ``python -m build --no-isolation`` on it: an sdist, then a wheel built
from that sdist, so the wheel proves the sdist holds what a build needs. (Without the ``build``
package -- .ci/run installs it -- the same two steps run through setuptools' PEP 517 hook and
``pip wheel``.) No network: everything builds with this interpreter's setuptools and cffi, and the
virtual environments import NumPy, cffi and the build tools from where this interpreter has them.

Then:

* the sdist holds the C sources and headers, the cffi builder, the viewer's files, the docs, the
  tests with their helpers and the benchmarks, and none of the leftovers; the wheel holds the
  package and its compiled module, and no tests, C sources, ``_ckernels.c`` or object files;
* the wheel installed into a fresh venv and imported from outside the source tree runs the C
  backend, built from exactly this tree's C sources (``source_hash``), and ``pyllm info`` passes
  its self-test;
* the sdist installed into another fresh venv with the compiler hidden (``CC=false``, which
  setuptools' unix compiler uses for compiling and linking) still installs, with the build
  failure reported as a warning, and imports on the NumPy backend with a warning that says the
  extension was not built at install time and how to get it.
"""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from importlib.machinery import EXTENSION_SUFFIXES

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.slow

# never copied: version control, caches, the tree's own build products (leftovers are planted)
_SKIP_DIRS = {".git", ".pytest_cache", ".hypothesis", "build", "dist", "runs", "out",
              "__pycache__"}
_LEFTOVERS = ["build/lib/pyllm/stale.py", "dist/pyllm-0.0.0.tar.gz", "pyllm/_ckernels.c",
              "pyllm/_ckernels" + EXTENSION_SUFFIXES[0], "csrc/matmul.o",
              "tests/__pycache__/conftest.cpython-311.pyc",
              "pyllm/__pycache__/model.cpython-311.pyc",
              "pyllm.egg-info/SOURCES.txt"]


def _ignore(_dir, names):
    return [n for n in names if n in _SKIP_DIRS or n.startswith(".venv") or
            n.endswith((".so", ".pyd", ".o", ".pyc", ".egg-info"))]


def _env(**extra):
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1",
               PIP_NO_CACHE_DIR="1", PYTHONDONTWRITEBYTECODE="1", PYTHONNOUSERSITE="1")
    for var in ("PYLLM_BACKEND", "PYLLM_SIMD", "PYTHONPATH", "PYTHONHOME", "PIP_TARGET",
                "PIP_PREFIX", "PIP_USER"):
        env.pop(var, None)
    env.update(extra)
    return env


def _run(cmd, cwd, timeout=300, **env_extra):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=str(cwd),
                       env=_env(**env_extra), timeout=timeout)
    assert r.returncode == 0, "%s failed (%d):\n%s\n%s" % (cmd, r.returncode, r.stdout[-6000:],
                                                           r.stderr[-6000:])
    return r


def _tree_files(top, sub, pattern=".*"):
    """Paths (relative to ``top``, with /) of the files under ``top/sub`` whose name matches."""
    out = set()
    for d, dirs, files in os.walk(os.path.join(top, sub)):
        dirs[:] = [x for x in dirs if x not in _SKIP_DIRS]
        for f in files:
            if re.fullmatch(pattern, f):
                out.add(os.path.relpath(os.path.join(d, f), top).replace(os.sep, "/"))
    return out


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """(source copy, sdist path, wheel path, work dir): one sdist, one wheel built from it."""
    work = tmp_path_factory.mktemp("packaging")
    src, out = work / "src", work / "dist"
    shutil.copytree(ROOT, src, ignore=_ignore)
    for rel in _LEFTOVERS:
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        # a stale SOURCES.txt (setuptools reads it back) names leftovers too
        path.write_text("\n".join(_LEFTOVERS) + "\n" if rel.endswith("SOURCES.txt") else
                        "stale build leftover\n")
    have_build = subprocess.run([sys.executable, "-m", "build", "--version"], cwd=str(work),
                                capture_output=True).returncode == 0
    if have_build:  # sdist, then the wheel from the sdist
        _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, src], work)
    else:
        _run([sys.executable, "-c", "import sys; from setuptools import build_meta as b; "
              "b.build_sdist(sys.argv[1])", out], src)
        sdists = list(out.glob("*.tar.gz"))
        assert len(sdists) == 1, sdists
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
              "--wheel-dir", out, sdists[0]], work)
    sdists, wheels = list(out.glob("pyllm-*.tar.gz")), list(out.glob("pyllm-*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, os.listdir(out)
    return src, sdists[0], wheels[0], work


def test_sdist_has_what_a_build_and_the_tests_need_and_no_leftovers(dists):
    src, sdist, _, _ = dists
    with tarfile.open(sdist) as tf:
        members = [m.name for m in tf.getmembers() if m.isfile()]
    top = members[0].split("/")[0]
    assert all(n.startswith(top + "/") for n in members)
    names = {n[len(top) + 1:] for n in members}
    want = {"setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "PKG-INFO",
            "pyllm/_build.py", "pyllm/_srchash.py"}
    want |= _tree_files(src, "csrc", r".*\.[ch]")
    want |= _tree_files(src, "pyllm", r".*\.py")
    want |= _tree_files(src, "pyllm/viewer")
    want |= _tree_files(src, "pyllm/webmodel")
    want |= _tree_files(src, "docs")
    want |= _tree_files(src, "tests", r".*\.py")  # test_*.py, conftest.py and the _*.py helpers
    want |= _tree_files(src, "benchmarks", r".*\.py")
    want |= {f for f in ("LICENSE", "LICENSE.txt", "LICENSE.md", "COPYING")
             if os.path.isfile(src / f)}
    assert not want - names, "missing from the sdist: %s" % sorted(want - names)
    assert {"tests/conftest.py", "csrc/pyllm.h", "pyllm/viewer/viewer.html"} <= names
    assert any(re.fullmatch(r"tests/_\w+\.py", n) for n in names)  # the helpers
    bad = sorted(n for n in names if n.startswith(("build/", "dist/")) or "__pycache__" in n
                 or n.endswith((".so", ".pyd", ".o", ".pyc")) or n == "pyllm/_ckernels.c"
                 or (".egg-info/" in n and not n.startswith("pyllm.egg-info/")))
    assert not bad, "build leftovers in the sdist: %s" % bad
    # the C sources are exactly the tree's: the fingerprint baked into a build matches the tree
    assert {n for n in names if n.startswith("csrc/")} == _tree_files(src, "csrc", r".*\.[ch]")


def test_wheel_has_the_package_and_its_compiled_module_only(dists):
    src, _, wheel, _ = dists
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    tops = {n.split("/")[0] for n in names}
    assert tops == {"pyllm", next(t for t in tops if t.endswith(".dist-info"))}, tops
    compiled = [n for n in names if n.startswith("pyllm/_ckernels")]
    assert len(compiled) == 1 and any(compiled[0] == "pyllm/_ckernels" + s
                                      for s in EXTENSION_SUFFIXES), compiled
    want = (_tree_files(src, "pyllm", r".*\.py")
            | _tree_files(src, "pyllm/viewer", r".*\.(html|css|js)")
            | _tree_files(src, "pyllm/webmodel", r".*\.(html|js)"))
    assert not want - names, "missing from the wheel: %s" % sorted(want - names)
    bad = sorted(n for n in names if n.endswith((".c", ".h", ".o", ".pyc")) or "__pycache__" in n
                 or n.startswith(("tests/", "csrc/", "benchmarks/", "docs/", "build/")))
    assert not bad, "in the wheel: %s" % bad


def _venv(path):
    """A fresh venv that imports NumPy, cffi, setuptools, wheel and pip from where this
    interpreter has them, through a .pth file that names their directories: not
    ``--system-site-packages``, whose .pth files would bring in an editable pyllm (setuptools'
    editable finder serves ``pyllm._ckernels`` from the source tree to any pyllm)."""
    _run([sys.executable, "-m", "venv", "--without-pip", path], path.parent)
    python = path / ("Scripts" if os.name == "nt" else "bin") / "python"
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                path).stdout.strip()
    deps = {os.path.dirname(importlib.util.find_spec(m).submodule_search_locations[0])
            for m in ("cffi", "numpy", "pip", "pycparser", "setuptools", "wheel")}  # not imported
    with open(os.path.join(site, "_pyllm_test_deps.pth"), "w") as f:
        f.write("\n".join(sorted(deps)) + "\n")
    return python


_IMPORT = """
import json, os, warnings
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    import pyllm
from pyllm import backend
pkg = os.path.dirname(pyllm.__file__)
info = {"file": pyllm.__file__, "backend": pyllm.get_backend(),
        "reason": pyllm.backend_reason(), "available": list(pyllm.available_backends()),
        "warnings": [str(x.message) for x in w if "C extension" in str(x.message)],
        "compiled": sorted(f for f in os.listdir(pkg) if f.startswith("_ckernels"))}
if info["backend"] == "c":
    info["hash"] = backend.backend_module("c").source_hash()
else:
    import numpy as np
    out = np.empty((1, 3), np.float32)
    backend.ops.softmax_forward(out, np.zeros((1, 3), np.float32))
    info["softmax_ok"] = bool(np.allclose(out, 1 / 3))
    try:
        pyllm.set_backend("c")
    except pyllm.BackendUnavailable as exc:
        info["explicit_c"] = str(exc)
print(json.dumps(info))
"""


def _import_outside(python, cwd):
    """Import pyllm with ``python`` in ``cwd`` (outside the source tree); the facts as a dict."""
    r = _run([python, "-c", _IMPORT], cwd, timeout=120)
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_wheel_from_the_sdist_installs_and_runs_the_c_backend(dists):
    src, _, wheel, work = dists
    python = _venv(work / "venv-c")
    _run([python, "-m", "pip", "install", "--no-deps", wheel], work)
    elsewhere = work / "elsewhere-c"
    elsewhere.mkdir()
    info = _import_outside(python, elsewhere)
    assert info["file"].startswith(str(work / "venv-c")), info["file"]
    assert info["backend"] == "c" and info["warnings"] == [], info
    spec = importlib.util.spec_from_file_location("_pyllm_srchash", src / "pyllm" / "_srchash.py")
    srchash = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(srchash)
    assert info["hash"] == srchash.source_hash(str(src / "csrc"))  # built from this tree's C
    r = _run([python.parent / "pyllm", "info"], elsewhere, timeout=120)  # the console script
    assert "C sources: " in r.stdout and "self-test: ok" in r.stdout, r.stdout


@pytest.mark.skipif(os.name == "nt", reason="CC hides only a unix compiler")
def test_sdist_without_a_compiler_installs_and_falls_back_to_numpy(dists):
    _, sdist, _, work = dists
    python = _venv(work / "venv-nocc")
    r = _run([python, "-m", "pip", "install", "-v", "--no-deps", "--no-build-isolation", sdist],
             work, CC="false")
    log = r.stdout + r.stderr
    assert "the pyllm C extension" in log and "could not be built" in log, log[-6000:]
    elsewhere = work / "elsewhere-nocc"
    elsewhere.mkdir()
    info = _import_outside(python, elsewhere)
    assert info["file"].startswith(str(work / "venv-nocc")), info["file"]
    assert info["compiled"] == [], "a C extension was built with CC=false: %s" % info["compiled"]
    assert info["backend"] == "numpy" and info["available"] == ["numpy"], info
    assert info["softmax_ok"] and "explicit_c" in info, info
    assert len(info["warnings"]) == 1, info["warnings"]
    msg = info["warnings"][0]
    assert msg.startswith("pyllm: C extension unavailable, so pyllm runs on its NumPy backend, "
                          "which is much slower: pyllm._ckernels was not built when pyllm was "
                          "installed, as there was no working C compiler then; "), msg
    assert "install a C compiler" in msg, msg
    assert "pip install --force-reinstall --no-cache-dir pyllm" in msg, msg
    for stale in ("circular import", "partially initialized", "source checkout", "-e ."):
        assert stale not in msg, msg
    assert info["reason"].startswith("auto: C extension unavailable (pyllm._ckernels was not "
                                     "built when pyllm was installed"), info["reason"]
