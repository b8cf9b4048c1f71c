"""End-to-end training speed: pyllm's C backend vs its NumPy backend vs PyTorch eager (if present).

    python benchmarks/bench_train.py                 # configs a, b, c
    python benchmarks/bench_train.py --configs a b   # a subset
    python benchmarks/bench_train.py --quick         # CI: tiny shapes, few steps

One training step = forward + backward + gradient clipping + AdamW, on random tokens. Every
(config, implementation) run is its own subprocess (``python -m pyllm.bench --child train ...``),
so that its peak RSS is its own. PyTorch runs the same GPT-2 model (tied head, tanh-GELU, fused
causal attention) with torch.set_num_threads(threads).

The machine this was written for is shared and noisy: its speed drifts by 10-20% from one minute to
the next. So C and PyTorch run in --rounds alternating rounds (C, PyTorch, C, PyTorch, ...; the
NumPy backend, far behind, once), each row shows the median tokens/s over the timed steps of all
rounds (min-max of the steps), and each ratio is the median over the rounds of that round's ratio
of medians (min-max over the rounds), which compares runs made a few seconds apart. The measuring
code is pyllm.bench's (also `pyllm bench train`).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pyllm import bench  # noqa: E402

CONFIGS = bench.TRAIN_CONFIGS


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", default=["a", "b", "c"], choices=sorted(CONFIGS))
    ap.add_argument("--impls", nargs="+", default=["c", "numpy", "torch"],
                    choices=["c", "numpy", "torch"])
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default per config)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=None,
                    help="alternating rounds of C and PyTorch (default 3; 1 with --quick)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child-config", help=argparse.SUPPRESS)  # the pre-library child protocol
    ap.add_argument("--child-impl", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_config:
        return bench.train_child(args.child_config, args.child_impl, args.steps or 5,
                                 args.warmup, args.threads)
    if args.quick:
        args.configs, args.warmup = ["quick"], 1
        args.steps = args.steps or 3
    args.rounds = args.rounds or (1 if args.quick else 3)
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    if args.threads < 1 or (args.steps is not None and args.steps < 1) or args.warmup < 0:
        ap.error("--threads and --steps must be >= 1, --warmup >= 0")
    bench.bench_train(args.configs, args.impls, steps=args.steps, warmup=args.warmup,
                      rounds=args.rounds, threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
