"""The README's commands run as written: every ```bash block marked ``<!-- runnable -->`` is run
with bash -e in a fresh directory, ``pyllm`` being this tree's CLI. Also: every relative link of
the README and docs/ points at a file that exists."""
import os
import re
import stat
import subprocess
import sys

import pytest

from conftest import need_c

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARK = "<!-- runnable -->"


def runnable_blocks(text):
    """The bodies of the ```bash fences that directly follow a runnable marker."""
    return re.findall(re.escape(MARK) + r"\s*\n```bash\n(.*?)\n```", text, re.S)


def test_the_marker_finds_the_tour():
    blocks = runnable_blocks(open(os.path.join(ROOT, "README.md"), encoding="utf-8").read())
    assert len(blocks) >= 1 and "pyllm train" in blocks[0]
    assert runnable_blocks("x\n<!-- runnable -->\n```bash\necho hi\n```\n```bash\nno\n```") == \
        ["echo hi"]


@pytest.mark.slow
def test_readme_runnable_blocks_run(tmp_path):
    need_c()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    shim = bindir / "pyllm"
    shim.write_text('#!/bin/sh\nexec "%s" -m pyllm "$@"\n' % sys.executable)
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PATH="%s%s%s" % (bindir, os.pathsep, os.environ.get("PATH", "")),
               PYTHONPATH=os.pathsep.join([ROOT] + [p for p in os.environ.get(
                   "PYTHONPATH", "").split(os.pathsep) if p]))
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    for i, block in enumerate(runnable_blocks(text)):
        work = tmp_path / ("block%d" % i)
        work.mkdir()
        r = subprocess.run(["bash", "-e", "-c", block], cwd=str(work), env=env,
                           capture_output=True, text=True, timeout=240)
        assert r.returncode == 0, "README block %d failed:\n%s\n%s" % (i, block,
                                                                        r.stderr[-3000:])
    assert (tmp_path / "block0" / "run1" / "heads.html").exists()
    assert (tmp_path / "block0" / "run1-hf" / "config.json").exists()
    assert (tmp_path / "block0" / "run1" / "model.html").exists()


def test_relative_links_resolve():
    pages = [os.path.join(ROOT, "README.md")] + [
        os.path.join(ROOT, "docs", f) for f in os.listdir(os.path.join(ROOT, "docs"))
        if f.endswith(".md")]
    missing = []
    for page in pages:
        text = open(page, encoding="utf-8").read()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            if not os.path.exists(os.path.join(os.path.dirname(page), target)):
                missing.append("%s -> %s" % (os.path.relpath(page, ROOT), target))
    assert not missing, missing
