"""What the extension says about its own build: the fingerprint of the C sources it was built
from (it must equal the tree's, which catches a stale editable build), each build flag printed
once, and the SIMD switch (pyllm.set_simd / PYLLM_SIMD) that the C-vs-NumPy tests use to
check every instruction-set level the CPU offers."""
import hashlib
import os
import shutil
import subprocess
import sys

import pytest

import pyllm
from pyllm.backend import SIMD_LEVELS, backend_module

from conftest import need_c

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")


def fingerprint(csrc):
    """The documented fingerprint, written out again here: sha256 over the sorted *.c / *.h files
    of csrc, each as name NUL size NUL bytes."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(csrc)):
        if name.endswith(".c") or name.endswith(".h"):
            data = open(os.path.join(csrc, name), "rb").read()
            h.update(b"%s\0%d\0%s" % (name.encode(), len(data), data))
    return h.hexdigest()


def test_the_extension_was_built_from_the_sources_in_this_tree():
    need_c()
    built = backend_module("c").source_hash()
    assert len(built) == 64 and int(built, 16) >= 0
    assert built == fingerprint(CSRC), (
        "pyllm._ckernels was built from other C sources than csrc/ holds now (a stale build): "
        "rebuild it with `pip install -e .`")


def test_pyllm_info_names_a_stale_build(tmp_path):
    from pyllm._srchash import describe_sources, source_hash
    copy = tmp_path / "csrc"
    shutil.copytree(CSRC, copy)
    built = source_hash(str(copy))
    assert built == fingerprint(str(copy))
    assert "matches" in describe_sources(built, str(copy))
    with open(copy / "softmax.c", "a") as f:
        f.write("\n/* edited after the build */\n")
    msg = describe_sources(built, str(copy))
    assert "stale" in msg and "pip install -e ." in msg and built[:16] in msg
    os.remove(copy / "pyllm.h")      # not a source checkout: only the fingerprint
    assert describe_sources(built, str(copy)) == "sha256 %s" % built[:16]


def test_info_prints_each_build_flag_once():
    need_c()
    info = backend_module("c").build_info()
    flags = info.split("flags: ", 1)[1].split(";")[0].split()
    assert flags and len(flags) == len(set(flags)), info


def test_set_simd_forces_each_level_and_restores():
    need_c()
    offered = pyllm.available_simd()
    assert offered[0] == "portable" and set(offered) <= set(SIMD_LEVELS)
    assert offered == SIMD_LEVELS[:len(offered)]
    prev = pyllm.get_simd()
    assert prev == offered[-1]                      # auto picks the best level by default
    c = backend_module("c")
    try:
        for level in offered:
            assert pyllm.set_simd(level) == level and pyllm.get_simd() == level
            assert c.simd_level() == SIMD_LEVELS.index(level)
        assert pyllm.set_simd(" AUTO ") == offered[-1]
    finally:
        pyllm.set_simd(prev)


@pytest.mark.parametrize("bad, err, words", [
    ("avx9", ValueError, ["unknown SIMD level", "'avx9'", "'portable'"]),
    (1, TypeError, ["must be a str", "int"]),
])
def test_set_simd_bad_input(bad, err, words):
    need_c()
    prev = pyllm.get_simd()
    with pytest.raises(err) as e:
        pyllm.set_simd(bad)
    for w in words:
        assert w in str(e.value)
    assert pyllm.get_simd() == prev


def test_a_level_the_cpu_lacks_is_refused_by_name():
    need_c()
    missing = [lv for lv in SIMD_LEVELS if lv not in pyllm.available_simd()]
    if not missing:
        pytest.skip("this CPU offers every SIMD level pyllm has")
    with pytest.raises(ValueError, match="not available on this CPU"):
        pyllm.set_simd(missing[0])


@pytest.mark.parametrize("value, want", [("portable", "portable"), ("auto", None),
                                         ("neon", "PYLLM_SIMD: unknown SIMD level")])
def test_pyllm_simd_environment_variable(value, want):
    need_c()
    env = dict(os.environ, PYLLM_SIMD=value, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    r = subprocess.run([sys.executable, "-c", "import pyllm; print(pyllm.get_simd())"],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    if want and want.startswith("PYLLM_SIMD"):
        assert r.returncode != 0 and want in r.stderr and "'neon'" in r.stderr
    else:
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == (want or pyllm.available_simd()[-1])


def test_the_python_layer_and_the_header_agree_on_the_abi_version():
    need_c()
    import re
    header = open(os.path.join(CSRC, "pyllm.h")).read()
    (want,) = re.findall(r"#define PYLLM_ABI_VERSION (\d+)", header)
    c = backend_module("c")
    assert c.ABI_VERSION == int(want) == c.lib.pyllm_abi_version()
