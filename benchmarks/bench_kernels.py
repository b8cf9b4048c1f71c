"""Kernel benchmark: every kernel at GPT-training shapes, C against NumPy in one process.

    python benchmarks/bench_kernels.py            # full run, config (b) shapes
    python benchmarks/bench_kernels.py --scaling  # also every C kernel on 1 thread: the speed-up
    python benchmarks/bench_kernels.py --gemm     # GEMM GFLOP/s and % of peak at training shapes
    python benchmarks/bench_kernels.py --quick    # a smaller, faster pass (CI)

Prints, per kernel, the median time (and min-max) of each backend and the NumPy/C ratio (the
C backend's speed-up). The backends alternate in --rounds passes over all kernels, with a pause
between passes (OpenBLAS threads spin for a while after NumPy's BLAS calls and would slow the
OpenMP kernels that follow). The measuring code is pyllm.bench's (also `pyllm bench kernels`).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pyllm  # noqa: E402
from pyllm import bench  # noqa: E402
from pyllm.backend import c_unavailable_reason  # noqa: E402

# names other scripts import from here (bench_attention.py: timeit)
f32, timeit, residual_cost, cases = bench.f32, bench.timeit, bench.residual_cost, bench.kernel_cases


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, few repeats (CI)")
    ap.add_argument("--config", default="b", choices=["a", "b"],
                    help="a: B16 T128 C128 V256 NH4;  b: B8 T256 C384 V256 NH6 (default)")
    ap.add_argument("--repeat", type=int, default=3, help="timings per kernel per round")
    ap.add_argument("--rounds", type=int, default=2,
                    help="alternating passes (NumPy, C, C on 1 thread) over all kernels")
    ap.add_argument("--threads", type=int, default=None, help="C threads (default: all)")
    ap.add_argument("--scaling", action="store_true",
                    help="also time the C kernels on 1 thread and print the 1-to-N speed-up")
    ap.add_argument("--gemm", action="store_true",
                    help="instead: GFLOP/s of the dense layer's three products at every "
                         "training shape (rows 512..8192, C 128..768), C vs NumPy")
    ap.add_argument("--runs", type=int, default=3, help="passes over the --gemm table")
    ap.add_argument("--peak", type=float, default=225.0,
                    help="the machine's fp32 FMA peak in GFLOP/s for --gemm (default: 225, the "
                         "project machine's two cores when boosting)")
    args = ap.parse_args(argv)
    if args.repeat < 1 or args.rounds < 1:
        ap.error("--repeat and --rounds must be >= 1")
    if c_unavailable_reason():
        sys.exit("the C backend is unavailable (%s): nothing to compare" % c_unavailable_reason())
    if args.threads:
        pyllm.set_num_threads(args.threads)
    if args.gemm:
        print("pyllm %s GEMM benchmark, C threads=%d, GFLOP/s: median of %d passes of medians "
              "of %d" % (pyllm.__version__, pyllm.get_num_threads(), args.runs, args.repeat))
        return bench.gemm_table(args.repeat, args.peak, args.runs)
    if args.quick:
        bench.bench_kernels("quick", repeat=2, rounds=2, scaling=args.scaling, min_time=0.01,
                            pause=0.2)
    else:
        bench.bench_kernels(args.config, repeat=args.repeat, rounds=args.rounds,
                            scaling=args.scaling)


if __name__ == "__main__":
    main()
