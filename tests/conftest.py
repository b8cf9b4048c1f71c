"""Shared fixtures: run tests on every backend; PYLLM_REQUIRE_C=1 turns a missing C backend into a
failure instead of a skip, and PYLLM_REQUIRE_ORACLES=1 does the same for a test that skips because
one of the independent libraries it checks against (ORACLES, the `test` extra) is missing (CI sets
both; on a user's machine such skips stay skips). Hypothesis runs derandomized, with no example
database, so a run is repeatable and writes no .hypothesis/ directory into the tree."""
import os

# OpenMP threads that spin while they wait make a 2-core machine crawl when tests run child
# processes side by side; passive waiting changes no result (set before libgomp is loaded).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import pyllm  # noqa: E402
from pyllm.backend import backend_module, c_unavailable_reason

REQUIRE_C = os.environ.get("PYLLM_REQUIRE_C") == "1"
REQUIRE_ORACLES = os.environ.get("PYLLM_REQUIRE_ORACLES") == "1"
# The independent implementations the tests compare against, installed by the `test` extra
# (setup.py), and mpi4py (the `mpi` extra) for tests/test_distributed.py: a test that skips for
# want of one fails under PYLLM_REQUIRE_ORACLES=1.
ORACLES = ("safetensors", "regex", "hypothesis", "ml_dtypes", "mpi4py")

try:
    import hypothesis.configuration
    from hypothesis import settings as _hyp_settings
except ImportError:
    pass
else:
    import tempfile
    # its other files (e.g. constants/) go to a temporary directory, not .hypothesis/ in the tree
    hypothesis.configuration.set_hypothesis_home_dir(
        os.path.join(tempfile.gettempdir(), "pyllm-tests-hypothesis"))
    _hyp_settings.register_profile("pyllm", derandomize=True, database=None)
    _hyp_settings.load_profile("pyllm")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under PYLLM_REQUIRE_ORACLES=1, a skip whose reason names a missing oracle is a failure."""
    outcome = yield
    rep = outcome.get_result()
    if not (REQUIRE_ORACLES and rep.skipped):
        return
    reason = str(rep.longrepr[-1] if isinstance(rep.longrepr, tuple) else rep.longrepr)
    missing = [m for m in ORACLES if m in reason]
    if missing:
        rep.outcome = "failed"
        rep.longrepr = ("PYLLM_REQUIRE_ORACLES=1: this test skipped for want of the oracle %s "
                        "(%s); install the test extra: pip install -e '.[test]'"
                        % (", ".join(missing), reason))


def need_c():
    """Skip (or fail, under PYLLM_REQUIRE_C=1) when the C backend is missing."""
    reason = c_unavailable_reason()
    if reason is not None:
        msg = "C backend unavailable: %s" % reason
        if REQUIRE_C:
            pytest.fail(msg + " (PYLLM_REQUIRE_C=1)")
        pytest.skip(msg)


@pytest.fixture(params=["numpy", "c"])
def backend(request):
    """Make `request.param` the current backend for the test, restoring the previous one after."""
    name = request.param
    if name == "c":
        need_c()
    prev = pyllm.get_backend()
    pyllm.set_backend(name)
    yield name
    pyllm.set_backend(prev)


@pytest.fixture(params=["numpy", "c"])
def kmod(request):
    """A backend's kernel module (pyllm.backend.numpy or pyllm.backend.c)."""
    if request.param == "c":
        need_c()
    return backend_module(request.param)


@pytest.fixture(params=pyllm.backend.SIMD_LEVELS)
def simd(request):
    """Run the test once per SIMD level of the C kernels (portable C, AVX2+FMA, ...), forced with
    pyllm.set_simd and restored afterwards. A level this CPU lacks is skipped; without the C
    backend the test skips (or fails under PYLLM_REQUIRE_C=1)."""
    need_c()
    if request.param not in pyllm.available_simd():
        pytest.skip("SIMD level %s is not available on this CPU" % request.param)
    prev = pyllm.get_simd()
    pyllm.set_simd(request.param)
    try:
        yield request.param
    finally:
        pyllm.set_simd(prev)


@pytest.fixture
def cmod():
    need_c()
    return backend_module("c")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def pytest_terminal_summary(terminalreporter, config):
    """Name the C compilers that tests/test_c_sources.py compiled the sources with."""
    used = config.__dict__.get("_pyllm_c_compilers")
    if used:
        terminalreporter.write_line("strict C99 compile: " + "; ".join(
            "%s: %s" % kv for kv in sorted(used.items())))
