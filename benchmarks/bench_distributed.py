"""Data-parallel training speed: 1 process x 2 threads against 2 MPI ranks x 1 thread.

    python benchmarks/bench_distributed.py                # configs a and b
    python benchmarks/bench_distributed.py --quick        # CI: tiny shapes, few steps

Both run the training step of ``pyllm.train`` on the same global batch (random tokens):
forward + backward of this process's rows, the gradient Allreduce (2 ranks only), global-norm
clipping and AdamW. The 2-rank run is ``mpirun -n 2`` (Open MPI: ``--bind-to none``, and
``--allow-run-as-root`` when run as root) with ``PYLLM_NUM_THREADS=1`` in each rank; the 1-process
run is a plain child with ``PYLLM_NUM_THREADS=2``. They alternate for ``--rounds`` rounds (the
machine is shared and noisy); each row shows the median tokens/s over the timed steps of all
rounds (min-max), the ratio is the median over rounds of that round's ratio of medians, and the
allreduce share is the median over the 2-rank steps of (allreduce time / step time) on rank 0.
Needs mpi4py and an ``mpirun`` (``pip install ".[mpi]"``).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

CONFIGS = {  # name: (vocab, n_layer, n_head, n_embd, block, global batch), as bench_train.py
    "a": (256, 4, 4, 128, 128, 16),
    "b": (256, 6, 6, 384, 256, 8),
    "quick": (256, 2, 2, 64, 64, 4),
}


def child(name, steps, warmup):
    """One rank (or the only process): time ``steps`` training steps after ``warmup``."""
    import pyllm
    from pyllm import distributed
    world = distributed.init() if os.environ.get("BENCH_MPI") == "1" else distributed.Solo()
    V, L, H, C, T, B = CONFIGS[name]
    lo, hi = distributed.split_rows(B, world)
    model = pyllm.GPT(pyllm.GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=H,
                                      n_embd=C), seed=0)
    world.bcast_(model.params)
    opt = pyllm.AdamW(model, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    r = np.random.default_rng(0)
    step_t, comm_t = [], []
    for i in range(warmup + steps):
        x, y = r.integers(0, V, (B, T)), r.integers(0, V, (B, T))
        t0 = time.perf_counter()
        loss, g = model.loss_and_grads(x[lo:hi], y[lo:hi], loss_scale=1.0 / world.size)
        t1 = time.perf_counter()
        world.allreduce_sum_(g.flat)
        t2 = time.perf_counter()
        pyllm.clip_grad_norm(g, 1.0)
        opt.step(g)
        t3 = time.perf_counter()
        if i >= warmup:
            step_t.append(t3 - t0)
            comm_t.append(t2 - t1)
    if world.is_root:
        print(json.dumps({"step": step_t, "comm": comm_t, "threads": pyllm.get_num_threads(),
                          "ranks": world.size, "bytes": int(g.flat.nbytes)}))


def mpirun_cmd(n):
    exe = shutil.which("mpirun") or shutil.which("mpiexec")
    if exe is None:
        raise SystemExit("no mpirun / mpiexec on PATH: pip install \".[mpi]\"")
    cmd = [exe, "-n", str(n)]
    if "Open MPI" in subprocess.run([exe, "--version"], capture_output=True, text=True).stdout:
        cmd[1:1] = ["--oversubscribe", "--bind-to", "none"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd[1:1] = ["--allow-run-as-root"]
    return cmd


def run(name, ranks, steps, warmup):
    threads = 2 // ranks
    env = dict(os.environ, PYLLM_NUM_THREADS=str(threads), BENCH_MPI="1" if ranks > 1 else "0",
               OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    env.pop("OMP_NUM_THREADS", None)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, str(steps), str(warmup)]
    if ranks > 1:
        cmd = mpirun_cmd(ranks) + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if out.returncode != 0:
        raise SystemExit("benchmark child failed:\n" + out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", default=["a", "b"], choices=sorted(CONFIGS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]), int(args.child[2]))
        return 0
    if args.quick:
        args.configs, args.rounds, args.steps = ["quick"], 1, 3
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        print("mpi4py is not installed: pip install \".[mpi]\"")
        return 1
    print("%-6s %-16s %14s %26s %10s" % ("config", "layout", "tokens/s", "(min-max)",
                                         "allreduce"))
    for name in args.configs:
        V, L, H, C, T, B = CONFIGS[name]
        steps = args.steps or (10 if name == "b" else 20)
        rows = {1: [], 2: []}
        ratios = []
        for _ in range(args.rounds):
            one, two = run(name, 1, steps, 2), run(name, 2, steps, 2)
            rows[1].append(one)
            rows[2].append(two)
            ratios.append(np.median(one["step"]) / np.median(two["step"]))
        for ranks, label in ((1, "1 rank x 2 thr"), (2, "2 ranks x 1 thr")):
            tps = np.array([B * T / t for r in rows[ranks] for t in r["step"]])
            share = "-" if ranks == 1 else "%.1f%%" % (100 * np.median(
                [c / s for r in rows[2] for c, s in zip(r["comm"], r["step"])]))
            print("%-6s %-16s %14s %26s %10s" % (
                name, label, format(int(np.median(tps)), ","),
                "(%s-%s)" % (format(int(tps.min()), ","), format(int(tps.max()), ",")), share))
        print("%-6s 2 ranks / 1 rank: %.2fx (rounds %.2f-%.2f); gradient slab %.1f MB per "
              "allreduce" % (name, float(np.median(ratios)), min(ratios), max(ratios),
                             rows[2][0]["bytes"] / 1e6))
    return 0


if __name__ == "__main__":
    sys.exit(main())
