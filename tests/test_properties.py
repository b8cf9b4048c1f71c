"""Property-based tests (hypothesis): the C kernels agree with the NumPy specification (run in
float64) on randomly drawn shapes, including the awkward ones -- sizes of 1, primes, sizes just off
the tile and block edges of the C code (MR 6, NR 16, attention blocks of 64, flat blocks of 16384)
-- and on random data, at every SIMD level the CPU has. The fixed shapes of test_kernels.py stay as
regression cases; here hypothesis searches for a shape that breaks the agreement and shrinks it to
the smallest."""
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import pyllm  # noqa: E402
from conftest import need_c  # noqa: E402
from pyllm.backend import backend_module  # noqa: E402
from test_kernels import (case_adamw_update, case_attention_backward,  # noqa: E402
                          case_attention_decode, case_attention_forward,
                          case_crossentropy_backward, case_crossentropy_forward,
                          case_encoder_backward, case_encoder_forward, case_gelu_backward,
                          case_gelu_forward, case_gemm, case_layernorm_backward,
                          case_layernorm_forward, case_matmul_backward, case_matmul_forward,
                          case_residual_forward, case_softmax_backward, case_softmax_forward,
                          check_outputs, run_kernel, spec_case)

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

# sizes near the C code's tile and block edges, plus small and prime ones
EDGE = [1, 2, 5, 6, 7, 15, 16, 17, 31, 33, 63, 64, 65, 97, 127, 129]
small = st.one_of(st.sampled_from(EDGE), st.integers(1, 130))
rows = st.one_of(st.sampled_from([1, 2, 3, 4, 5, 6, 7, 13, 145, 289]), st.integers(1, 300))


def agree(builder, *sizes, seed=0):
    """Run builder's case on C, at every SIMD level this CPU has, and on NumPy in float64; every
    output must agree within test_kernels.py's tolerances (tests/_close.py's assert_close)."""
    need_c()
    name, args, outs, want = spec_case(builder, sizes, seed)
    prev = pyllm.get_simd()
    try:
        for level in pyllm.available_simd():
            pyllm.set_simd(level)
            got = run_kernel(backend_module("c"), name, args)
            check_outputs(name, args, outs, got, want, "%s%s seed %d [%s]" % (name, sizes, seed,
                                                                            level))
    finally:
        pyllm.set_simd(prev)


@SETTINGS
@given(N=rows, C=small, OC=small, bias=st.booleans(), seed=st.integers(0, 2**16))
def test_matmul_forward(N, C, OC, bias, seed):
    agree(case_matmul_forward, N, C, OC, bias, seed=seed)


@SETTINGS
@given(N=rows, C=small, OC=small, seed=st.integers(0, 2**16))
def test_matmul_backward(N, C, OC, seed):
    agree(case_matmul_backward, N, C, OC, seed=seed)


@SETTINGS
@given(M=rows, N=small, K=rows, ta=st.booleans(), tb=st.booleans(), acc=st.booleans(),
       seed=st.integers(0, 2**16))
def test_gemm(M, N, K, ta, tb, acc, seed):
    agree(case_gemm, M, N, K, ta, tb, acc, seed=seed)


@SETTINGS
@given(N=rows, C=small, seed=st.integers(0, 2**16))
def test_layernorm(N, C, seed):
    agree(case_layernorm_forward, N, C, seed=seed)
    agree(case_layernorm_backward, N, C, seed=seed)


@SETTINGS
@given(n=st.one_of(st.sampled_from([1, 7, 8, 9, 16383, 16384, 16385, 32769]),
                   st.integers(1, 40000)), seed=st.integers(0, 2**16))
def test_elementwise(n, seed):
    for builder in (case_gelu_forward, case_gelu_backward, case_residual_forward,
                    case_adamw_update):
        agree(builder, n, seed=seed)


@SETTINGS
@given(N=rows, V=st.one_of(st.sampled_from([1, 2, 7, 8, 9, 65, 256, 257]), st.integers(1, 600)),
       seed=st.integers(0, 2**16))
def test_softmax_and_crossentropy(N, V, seed):
    for builder in (case_softmax_forward, case_softmax_backward, case_crossentropy_forward,
                    case_crossentropy_backward):
        agree(builder, N, V, seed=seed)


@SETTINGS
@given(B=st.integers(1, 3), T=st.one_of(st.sampled_from([1, 2, 63, 64, 65, 129]),
                                        st.integers(1, 140)),
       NH=st.integers(1, 4), hd=st.sampled_from([1, 2, 3, 8, 15, 16, 17, 32, 64, 65]),
       seed=st.integers(0, 2**16))
def test_attention(B, T, NH, hd, seed):
    agree(case_attention_forward, B, T, NH * hd, NH, seed=seed)
    agree(case_attention_backward, B, T, NH * hd, NH, seed=seed)


@SETTINGS
@given(B=st.integers(1, 3), pos=st.integers(0, 150), NH=st.integers(1, 4),
       hd=st.sampled_from([1, 4, 16, 17, 64]), extra=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_attention_decode(B, pos, NH, hd, extra, seed):
    agree(case_attention_decode, B, pos, NH * hd, NH, pos + extra, seed=seed)


@SETTINGS
@given(B=st.integers(1, 4), T=st.integers(1, 40), C=small, V=st.integers(1, 70),
       seed=st.integers(0, 2**16))
def test_embedding(B, T, C, V, seed):
    agree(case_encoder_forward, B, T, C, V, seed=seed)
    agree(case_encoder_backward, B, T, C, V, seed=seed)
