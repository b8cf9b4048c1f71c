"""The test harness itself: under PYLLM_REQUIRE_ORACLES=1 (as in CI) a test that skips for want of
an oracle library fails, other skips stay skips; hypothesis runs derandomized with no database."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

PROBE = '''
import pytest
def test_importorskip():
    pytest.importorskip("ml_dtypes_is_not_a_module")
@pytest.mark.skipif(True, reason="regex not installed")
def test_skipif():
    pass
def test_other_skip():
    pytest.skip("no browser here")
def test_pass():
    pass
'''


def run_probe(tmp_path, require):
    (tmp_path / "test_probe.py").write_text(PROBE)
    (tmp_path / "conftest.py").write_text(open(os.path.join(HERE, "conftest.py")).read())
    env = dict(os.environ, PYLLM_REQUIRE_ORACLES="1" if require else "0")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider",
                        str(tmp_path)], capture_output=True, text=True, env=env, cwd=str(tmp_path))
    return r.stdout.splitlines()[-1], r.stdout


def test_missing_oracle_fails_only_when_required(tmp_path):
    summary, out = run_probe(tmp_path, require=True)
    # a skip in the call fails; a skipif marker skips in setup, which pytest reports as an error
    assert summary.startswith("1 failed, 1 passed, 1 skipped, 1 error"), out
    assert "FAILED test_probe.py::test_importorskip" in out and "ml_dtypes" in out
    assert "ERROR test_probe.py::test_skipif" in out and "pip install -e '.[test]'" in out
    summary, out = run_probe(tmp_path, require=False)
    assert "1 passed, 3 skipped" in summary, out


def test_hypothesis_is_derandomized_without_a_database():
    from hypothesis import settings
    assert settings.default.derandomize is True and settings.default.database is None
