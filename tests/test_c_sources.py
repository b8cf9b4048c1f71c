"""The C sources are plain C99: they compile warning-free under -std=c99 -Wall -Wextra -Wpedantic
-Werror with and without OpenMP, with every C compiler found here (gcc, clang)."""
import glob
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = sorted(glob.glob(os.path.join(ROOT, "csrc", "*.c")))
COMPILERS = [c for c in ("gcc", "clang") if shutil.which(c)]


@pytest.mark.skipif(not COMPILERS, reason="no C compiler on PATH")
@pytest.mark.parametrize("cc", COMPILERS)
@pytest.mark.parametrize("openmp", [False, True], ids=["no-openmp", "openmp"])
def test_strict_c99_compiles_cleanly(cc, openmp, tmp_path):
    flags = ["-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-O2", "-c",
             "-I", os.path.join(ROOT, "csrc")]
    if openmp:
        probe = subprocess.run([cc, "-fopenmp", "-x", "c", "-", "-o", str(tmp_path / "p")],
                               input="#include <omp.h>\nint main(void){return 0;}\n",
                               capture_output=True, text=True)
        if probe.returncode != 0:
            pytest.skip("%s has no working -fopenmp here" % cc)
        flags.append("-fopenmp")
    assert SOURCES
    for src in SOURCES:
        out = tmp_path / (os.path.basename(src) + ".o")
        r = subprocess.run([cc, *flags, src, "-o", str(out)], capture_output=True, text=True)
        assert r.returncode == 0, "%s %s:\n%s" % (cc, os.path.basename(src), r.stderr)
