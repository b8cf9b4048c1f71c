"""The C sources are plain C99: they compile warning-free under -std=c99 -Wall -Wextra -Wpedantic
-Werror with and without OpenMP, under gcc and clang (``.ci/install-compilers.sh`` installs clang in
CI where it can; a compiler that is missing here is skipped, and the run's summary names the
compilers used). Also: that install script never fails and installs clang only when it should."""
import glob
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = sorted(glob.glob(os.path.join(ROOT, "csrc", "*.c")))
INSTALL_SCRIPT = os.path.join(ROOT, ".ci", "install-compilers.sh")


def _version(cc):
    r = subprocess.run([cc, "--version"], capture_output=True, text=True)
    return (r.stdout.splitlines() or ["?"])[0].strip()


@pytest.mark.parametrize("cc", ["gcc", "clang"])
@pytest.mark.parametrize("openmp", [False, True], ids=["no-openmp", "openmp"])
def test_strict_c99_compiles_cleanly(cc, openmp, tmp_path, request):
    used = request.config.__dict__.setdefault("_pyllm_c_compilers", {})
    if shutil.which(cc) is None:
        used.setdefault(cc, "not found (skipped)")
        pytest.skip("%s not on PATH (.ci/install-compilers.sh installs clang)" % cc)
    flags = ["-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-O2", "-c",
             "-I", os.path.join(ROOT, "csrc")]
    if openmp:
        probe = subprocess.run([cc, "-fopenmp", "-x", "c", "-", "-o", str(tmp_path / "p")],
                               input="#include <omp.h>\nint main(void){return 0;}\n",
                               capture_output=True, text=True)
        if probe.returncode != 0:
            used[cc + " -fopenmp"] = "no working -fopenmp (skipped)"
            pytest.skip("%s has no working -fopenmp here" % cc)
        flags.append("-fopenmp")
    assert SOURCES
    for src in SOURCES:
        out = tmp_path / (os.path.basename(src) + ".o")
        r = subprocess.run([cc, *flags, src, "-o", str(out)], capture_output=True, text=True)
        assert r.returncode == 0, "%s %s:\n%s" % (cc, os.path.basename(src), r.stderr)
    used[cc] = _version(cc)


# ---- .ci/install-compilers.sh, against a fake PATH ---------------------------------------------

APT_STUB = """#!{bash}
echo "$*" >> {log}
case "$APT_MODE" in
  ok) case "$*" in *install*) {ln} -sf {cc} {bin}/clang;; esac; exit 0;;
  needs-update) case "$*" in
      *update*) : > {log}.updated; exit 0;;
      *) if [ -e {log}.updated ]; then {ln} -sf {cc} {bin}/clang; exit 0; fi; exit 100;;
    esac;;
  *) exit 100;;
esac
"""


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("case", ["present", "ok", "needs-update", "fail", "not-root", "no-apt"])
def test_install_compilers_script(case, tmp_path):
    """Only a missing clang, as root with apt-get, leads to `apt-get install ... clang` (after
    `apt-get update` when the first try fails); every path exits 0 and lists the compilers."""
    bash, ln = shutil.which("bash"), shutil.which("ln") or "/bin/ln"
    fake_cc = tmp_path / "clang-bin"  # what "installing" puts on PATH: a fake with a version line
    fake_cc.write_text("#!%s\necho 'fake clang version 99'\n" % bash)
    fake_cc.chmod(0o755)
    b = tmp_path / "bin"
    b.mkdir()
    (b / "bash").symlink_to(bash)
    log = tmp_path / "apt.log"
    if case != "no-apt":
        (b / "apt-get").write_text(APT_STUB.format(bash=bash, log=log, ln=ln, cc=fake_cc, bin=b))
        (b / "apt-get").chmod(0o755)
    (b / "id").write_text("#!%s\necho %d\n" % (bash, 1000 if case == "not-root" else 0))
    (b / "id").chmod(0o755)
    if case == "present":
        (b / "clang").symlink_to(fake_cc)
    env = {"PATH": str(b), "APT_MODE": case, "INSTALL_TIMEOUT": "20"}
    r = subprocess.run([bash, INSTALL_SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    calls = log.read_text().splitlines() if log.exists() else []
    install = "-q -y -o Dpkg::Use-Pty=0 install --no-install-recommends clang"
    update = "-q -y -o Dpkg::Use-Pty=0 update"
    want_calls = {"present": [], "ok": [install], "needs-update": [install, update, install],
                  "fail": [install, update], "not-root": [], "no-apt": []}[case]
    assert calls == want_calls, r.stdout
    found = case in ("present", "ok", "needs-update")
    assert ("clang: fake clang version 99" in r.stdout) == found, r.stdout
    assert ("clang: not found" in r.stdout) == (not found), r.stdout
    assert "gcc: not found" in r.stdout  # the fake PATH has no gcc: listed all the same
