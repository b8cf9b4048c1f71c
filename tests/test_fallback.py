"""Installing with no working C compiler still succeeds, warns, and runs on the NumPy backend.

The source tree is copied (without build products), installed with ``CC=false`` into a temporary
target directory (no network: ``--no-build-isolation`` uses this interpreter's setuptools and
cffi), and a fresh interpreter with that directory first on ``sys.path`` must import pyllm, warn,
report the NumPy backend and the reason, and compute a kernel correctly. A quicker test runs the
package copied without its compiled extension, as a source checkout that was never built.
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


@pytest.mark.slow
def test_install_without_compiler_falls_back_to_numpy(tmp_path):
    src, target = tmp_path / "src", tmp_path / "site"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    shutil.copytree(os.path.join(ROOT, "pyllm"), src / "pyllm", ignore=_ignore)
    shutil.copytree(os.path.join(ROOT, "csrc"), src / "csrc", ignore=_ignore)
    env = dict(os.environ, CC="false", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PYLLM_BACKEND", None)
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps",
                        "--target", str(target), str(src)],
                       capture_output=True, text=True, env=env, timeout=600, cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert not list(target.glob("pyllm/_ckernels*")), "a C extension was built with CC=false"
    code = ("import warnings, numpy as np\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    import pyllm\n"
            "assert any('C extension unavailable' in str(x.message) for x in w), w\n"
            "assert pyllm.get_backend() == 'numpy', pyllm.get_backend()\n"
            "r = pyllm.backend_reason()\n"
            "assert r.startswith('auto: C extension unavailable (') and 'Error: ' in r, r\n"
            "assert pyllm.available_backends() == ('numpy',)\n"
            "assert pyllm.__file__.startswith(%r), pyllm.__file__\n"
            "from pyllm.backend import ops\n"
            "out = np.empty((1, 3), np.float32)\n"
            "ops.softmax_forward(out, np.zeros((1, 3), np.float32))\n"
            "assert np.allclose(out, 1 / 3)\n"
            "try:\n"
            "    pyllm.set_backend('c')\n"
            "except pyllm.BackendUnavailable:\n"
            "    print('fallback ok')\n" % str(target))
    # -S: no site-packages processing, so an editable install of pyllm cannot leak in; numpy and
    # cffi are put on the path by hand
    import cffi
    import numpy
    deps = {os.path.dirname(os.path.dirname(m.__file__)) for m in (numpy, cffi)}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target)] + sorted(deps)))
    env.pop("PYLLM_BACKEND", None)
    r = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env,
                       timeout=120, cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "fallback ok" in r.stdout


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


def test_backend_reason_without_the_extension(tmp_path):
    """pyllm copied without its compiled module (a checkout never built): auto falls back to
    NumPy with a warning, and backend_reason() names why -- the import error and the directory
    with no _ckernels module; an explicit PYLLM_BACKEND=numpy is 'requested explicitly'."""
    shutil.copytree(os.path.join(ROOT, "pyllm"), tmp_path / "pyllm", ignore=_ignore)
    assert not list((tmp_path / "pyllm").glob("_ckernels*"))
    code = ("import warnings\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    import pyllm\n"
            "assert pyllm.__file__.startswith(%r), pyllm.__file__\n"
            "print(pyllm.get_backend())\n"
            "print(pyllm.backend_reason())\n"
            "print(sum('C extension unavailable' in str(x.message) for x in w))\n"
            % str(tmp_path))
    r = _isolated_python(code, tmp_path)
    assert r.returncode == 0, r.stderr
    backend, reason, warned = r.stdout.splitlines()
    assert backend == "numpy" and warned == "1"
    assert reason.startswith("auto: C extension unavailable (") and "Error: " in reason
    assert "no compiled _ckernels module in %s" % (tmp_path / "pyllm") in reason
    r = _isolated_python(code, tmp_path, PYLLM_BACKEND="numpy")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["numpy", "requested explicitly", "0"]
