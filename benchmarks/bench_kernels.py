"""Kernel benchmark: every kernel at GPT-training shapes, C against NumPy in one process.

    python benchmarks/bench_kernels.py            # full run, config (b) shapes
    python benchmarks/bench_kernels.py --scaling  # also every C kernel on 1 thread: the speed-up
    python benchmarks/bench_kernels.py --gemm     # GEMM GFLOP/s and % of peak at training shapes
    python benchmarks/bench_kernels.py --quick    # a smaller, faster pass (CI)

Prints, per kernel, the median time (and min-max) of each backend and the NumPy/C ratio (the
C backend's speed-up). OpenBLAS threads spin for a while after NumPy's BLAS calls and would slow
the OpenMP kernels that follow, so the script pauses between the two backends.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pyllm  # noqa: E402
from pyllm.backend import backend_module, c_unavailable_reason  # noqa: E402


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def cases(B, T, C, V, NH):
    """(label, kernel, args) at the shapes one training step of this config uses."""
    rng = np.random.default_rng(0)
    N = B * T
    x, w1, w4 = f32(rng, N, C), f32(rng, C, 3 * C, scale=0.02), f32(rng, C, 4 * C, scale=0.02)
    idx = rng.integers(0, V, (B, T))
    qkv = f32(rng, B, T, 3 * C)
    att, lse = np.empty((B, T, C), np.float32), np.empty((B, NH, T), np.float32)
    backend_module("numpy").attention_forward(att, lse, qkv, NH)
    mean, rstd = np.empty(N, np.float32), np.empty(N, np.float32)
    lnw = np.ones(C, np.float32)
    backend_module("numpy").layernorm_forward(np.empty_like(x), mean, rstd, x, lnw, lnw)
    logits = f32(rng, N, V)
    probs = np.empty_like(logits)
    backend_module("numpy").softmax_forward(probs, logits)
    nparams = 12 * C * C * 4  # roughly four blocks' worth of parameters
    h = f32(rng, N, 4 * C)
    wp, res = f32(rng, C, C, scale=0.02), f32(rng, N, C)
    return [
        ("encoder_forward", "encoder_forward",
         [np.empty((B, T, C), np.float32), idx, f32(rng, V, C), f32(rng, T, C)]),
        ("encoder_backward", "encoder_backward",
         [np.zeros((V, C), np.float32), np.zeros((T, C), np.float32), f32(rng, B, T, C), idx]),
        ("layernorm_forward", "layernorm_forward",
         [np.empty_like(x), mean.copy(), rstd.copy(), x, lnw, lnw]),
        ("layernorm_backward", "layernorm_backward",
         [np.zeros_like(x), np.zeros(C, np.float32), np.zeros(C, np.float32), x, x, lnw, mean,
          rstd]),
        ("matmul_forward qkv", "matmul_forward",
         [np.empty((N, 3 * C), np.float32), x, w1, np.zeros(3 * C, np.float32)]),
        ("matmul_backward qkv", "matmul_backward",
         [np.zeros_like(x), np.zeros_like(w1), np.zeros(3 * C, np.float32),
          f32(rng, N, 3 * C), x, w1]),
        ("matmul_forward fc", "matmul_forward",
         [np.empty((N, 4 * C), np.float32), x, w4, np.zeros(4 * C, np.float32)]),
        ("gemm lm-head (x @ wte^T)", "gemm",
         [np.empty((N, V), np.float32), x, f32(rng, V, C), False, True, False]),
        ("gelu_forward", "gelu_forward", [np.empty_like(h), h]),
        ("gelu_backward", "gelu_backward", [np.zeros_like(h), h, h]),
        ("residual_forward", "residual_forward", [np.empty_like(x), x, res]),
        ("matmul_forward proj", "matmul_forward", [np.empty_like(x), x, wp, wp[0]]),
        ("  + residual (fused)", "matmul_forward", [np.empty_like(x), x, wp, wp[0], res]),
        ("softmax_forward", "softmax_forward", [np.empty_like(logits), logits]),
        ("softmax_backward", "softmax_backward", [np.zeros_like(logits), logits, probs]),
        ("crossentropy_forward", "crossentropy_forward",
         [np.empty(N, np.float32), logits, idx.reshape(-1) % V]),
        ("crossentropy_backward", "crossentropy_backward",
         [np.empty_like(logits), logits, idx.reshape(-1) % V, 1.0 / N]),
        ("attention_forward", "attention_forward", [np.empty_like(att), lse.copy(), qkv, NH]),
        ("attention_backward", "attention_backward",
         [np.zeros_like(qkv), att, qkv, att, lse, NH]),
        ("adamw_update", "adamw_update",
         [f32(rng, nparams), f32(rng, nparams), np.zeros(nparams, np.float32),
          np.zeros(nparams, np.float32), 1e-3, 0.9, 0.95, 1e-8, 0.1, 1]),
    ]


def timeit(fn, args, repeat, min_time=0.05):
    fn(*args)  # warm-up (first touch of outputs)
    times = []
    for _ in range(repeat):
        n, t0 = 0, time.perf_counter()
        while True:
            fn(*args)
            n += 1
            dt = time.perf_counter() - t0
            if dt >= min_time or n >= 50:
                break
        times.append(dt / n)
    return np.median(times), min(times), max(times)


def residual_cost(mod, kargs, n):
    """The cost of the residual add as the model runs it: matmul_forward with ``residual`` minus
    the same product without, the median of n back-to-back pairs (pairs cancel slow drifts of
    the machine's speed)."""
    plain = kargs[:4]
    diffs = []
    for _ in range(n):
        t0 = time.perf_counter()
        mod.matmul_forward(*plain)
        t1 = time.perf_counter()
        mod.matmul_forward(*kargs)
        t2 = time.perf_counter()
        diffs.append((t2 - t1) - (t1 - t0))
    return float(np.median(diffs))


def gemm_table(repeat, peak, runs):
    """GFLOP/s of the three products of a C -> 4C dense layer, C vs NumPy's BLAS, at the
    training shapes (N rows = B*T in 512..8192, C in 128..768). The whole table is measured
    ``runs`` times (passes far apart in time see different noise on a shared machine); each
    figure is the median over the passes of each pass's median."""
    ck = backend_module("c")
    rng = np.random.default_rng(0)
    shapes = []
    for rows in (512, 2048, 8192):
        for C in (128, 384, 768):
            x, w, g = f32(rng, rows, C), f32(rng, C, 4 * C), f32(rng, rows, 4 * C)
            shapes += [  # label, M, N, K, a, b, trans_a, trans_b, numpy expression
                ("fwd", rows, 4 * C, C, x, w, False, False, lambda x=x, w=w: x @ w),
                ("dinp", rows, C, 4 * C, g, w, False, True, lambda g=g, w=w: g @ w.T),
                ("dw", C, 4 * C, rows, x, g, True, False, lambda x=x, g=g: x.T @ g)]
    res = [[] for _ in shapes]
    for r in range(runs):
        for i, (label, M, N, K, a, b, ta, tb, npf) in enumerate(shapes):
            c = np.empty((M, N), np.float32)
            fl = 2.0 * M * N * K
            time.sleep(0.5)  # OpenBLAS threads spin after NumPy's call: C goes first, after a
            tc = timeit(ck.gemm, (c, a, b, ta, tb), repeat)[0]  # pause
            tn = timeit(lambda *_: npf(), (), repeat)[0]
            res[i].append((fl / tc / 1e9, fl / tn / 1e9))
        print("pass %d of %d done" % (r + 1, runs), file=sys.stderr)
    print("%-5s %5s %5s %5s  %9s %9s %7s %7s   %s" % ("prod", "M", "N", "K", "c GF/s", "np GF/s",
                                                   "c/np", "% peak", "c/np of each pass"))
    ratios = []
    for (label, M, N, K, *_), r in zip(shapes, res):
        gc, gn = np.median([x[0] for x in r]), np.median([x[1] for x in r])
        ratio = np.median([x[0] / x[1] for x in r])
        ratios.append(ratio)
        print("%-5s %5d %5d %5d  %9.1f %9.1f %6.2fx %6.0f%%   %s"
              % (label, M, N, K, gc, gn, ratio, 100 * gc / peak,
                 " ".join("%.2f" % (x[0] / x[1]) for x in r)))
    print("shapes at >= 0.90x NumPy: %d of %d; lowest %.2fx; %% peak is of %.0f GFLOP/s (--peak)"
          % (sum(q >= 0.9 for q in ratios), len(ratios), min(ratios), peak))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, few repeats (CI)")
    ap.add_argument("--config", default="b", choices=["a", "b"],
                    help="a: B16 T128 C128 V256 NH4;  b: B8 T256 C384 V256 NH6 (default)")
    ap.add_argument("--repeat", type=int, default=5)
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
    if c_unavailable_reason():
        sys.exit("the C backend is unavailable (%s): nothing to compare" % c_unavailable_reason())
    if args.threads:
        pyllm.set_num_threads(args.threads)
    if args.gemm:
        print("pyllm %s GEMM benchmark, C threads=%d, GFLOP/s: median of %d passes of medians "
              "of %d" % (pyllm.__version__, pyllm.get_num_threads(), args.runs, args.repeat))
        return gemm_table(args.repeat, args.peak, args.runs)
    shape = {"a": (16, 128, 128, 256, 4), "b": (8, 256, 384, 256, 6)}[args.config]
    repeat = args.repeat
    if args.quick:
        shape, repeat = (4, 64, 64, 256, 4), 3
    B, T, C, V, NH = shape
    print("pyllm %s kernel benchmark: B=%d T=%d C=%d V=%d NH=%d, C threads=%d, medians of %d"
          % (pyllm.__version__, B, T, C, V, NH, pyllm.get_num_threads(), repeat))
    print("%-26s %22s %22s %8s%s" % ("kernel", "numpy ms (min-max)", "c ms (min-max)", "speedup",
                                     "  c 1-thread ms, scaling" if args.scaling else ""))
    nthreads = pyllm.get_num_threads()
    npk, ck = backend_module("numpy"), backend_module("c")
    ratios, rows = [], []
    all_cases = cases(B, T, C, V, NH)
    for label, name, kargs in all_cases:
        tn = timeit(getattr(npk, name), kargs, repeat)
        time.sleep(0.5)  # let OpenBLAS threads go idle before the OpenMP kernel
        tc = timeit(getattr(ck, name), kargs, repeat)
        ratios.append(tn[0] / tc[0])
        rows.append((label, tn, tc))
    one = {}
    if args.scaling:
        # a separate pass on one thread: switching the thread count between the timings of one
        # kernel slows the next multi-threaded call on this VM, so it is done once, here
        pyllm.set_num_threads(1)
        one = {label: timeit(getattr(ck, name), kargs, repeat) for label, name, kargs in all_cases}
        pyllm.set_num_threads(nthreads)
    for (label, tn, tc), r in zip(rows, ratios):
        extra = ""
        if args.scaling:
            extra = "  %8.3f %5.2fx" % (one[label][0] * 1e3, one[label][0] / tc[0])
        print("%-26s %7.3f (%6.3f-%6.3f) %7.3f (%6.3f-%6.3f) %7.1fx%s" % (
            label, tn[0] * 1e3, tn[1] * 1e3, tn[2] * 1e3, tc[0] * 1e3, tc[1] * 1e3, tc[2] * 1e3,
            r, extra))
    print("geometric-mean speed-up: %.1fx" % np.exp(np.mean(np.log(ratios))))
    args = {label: kargs for label, _, kargs in all_cases}
    extra_np = residual_cost(npk, args["  + residual (fused)"], repeat * 10)
    time.sleep(0.5)
    extra_c = residual_cost(ck, args["  + residual (fused)"], repeat * 10)
    print("residual add as the model runs it: NumPy %.3f ms (a separate pass), C %.3f ms (the "
          "fused product's extra time): %.1fx" % (extra_np * 1e3, extra_c * 1e3,
                                                 extra_np / max(extra_c, 1e-6)))


if __name__ == "__main__":
    main()
