"""Shared fixtures: run tests on every backend; PYLLM_REQUIRE_C=1 turns a missing C backend into a
failure instead of a skip (CI sets it)."""
import os

import numpy as np
import pytest

import pyllm
from pyllm.backend import backend_module, c_unavailable_reason

REQUIRE_C = os.environ.get("PYLLM_REQUIRE_C") == "1"


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


@pytest.fixture
def cmod():
    need_c()
    return backend_module("c")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
