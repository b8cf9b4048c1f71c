"""Installing with no working C compiler still succeeds, warns, and runs on the NumPy backend.

The source tree is copied (without build products), installed with ``CC=false`` into a temporary
target directory (no network: ``--no-build-isolation`` uses this interpreter's setuptools and
cffi), and a fresh interpreter with that directory first on ``sys.path`` must import pyllm, warn,
report the NumPy backend, and compute a kernel correctly.
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
