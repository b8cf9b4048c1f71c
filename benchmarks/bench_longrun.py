"""Long-run memory: thousands of training steps and tens of thousands of sampled tokens, RSS flat.

    python benchmarks/bench_longrun.py                      # 3000 steps, 20,000 tokens (minutes)
    python benchmarks/bench_longrun.py --steps 10000 --tokens 100000
    python benchmarks/bench_longrun.py --quick              # CI smoke run: tiny model, seconds

Phase 1 trains through ``pyllm.train.train`` (the real loop: batches, AdamW, clipping, the log
file, and an evaluation, a checkpoint and a loss curve every ``--eval-every`` steps) on the
default corpus with the char tokenizer. Phase 2 samples with ``GPT.generate`` from the trained
model: prompts of varying length, batch 1 or 2, several sampling settings, with the KV cache;
every call runs past block_size, so the prefill, the cached one-token decode and the
recompute-on-the-last-block_size-tokens path all run, and the activation buffers are re-sized
between calls.

The process's resident set (VmRSS) and its peak (VmHWM) are read from /proc/self/status at every
evaluation and every 5% of the tokens (elsewhere only the peak, from getrusage), with the number
of live Python objects. The verdict compares the end of each phase with its first sample at or
after 10% of the steps / tokens (warm-up): it passes when the RSS and the peak each grew by less
than ``--max-growth-mib`` MiB and less than ``--max-growth-pct`` %. Exit status 0 on PASS, 1 on
FAIL.
"""
import argparse
import gc
import os
import re
import resource
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402

import pyllm  # noqa: E402
from pyllm.train import TrainConfig, train  # noqa: E402

MODEL = dict(n_layer=4, n_head=4, n_embd=64, block_size=64, batch_size=8)
QUICK = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4)


def memory_mib():
    """(current RSS, peak RSS) of this process in MiB; current is None where unknown."""
    try:
        vals = {}
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, kb = line.split()[:2]
                    vals[key] = int(kb) / 1024.0
        return vals["VmRSS:"], vals["VmHWM:"]
    except (OSError, KeyError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = peak / 2**20 if sys.platform == "darwin" else peak / 1024.0  # bytes / KiB
        return None, peak


class Recorder:
    """Rows of (phase, position, RSS, peak, Python objects, seconds), printed as they come."""

    def __init__(self):
        self.rows, self.t0 = [], time.time()

    def sample(self, phase, pos):
        rss, peak = memory_mib()
        r = dict(phase=phase, pos=pos, rss=rss, peak=peak, objs=len(gc.get_objects()),
                 t=time.time() - self.t0)
        self.rows.append(r)
        print("%-6s %9s %10s %10.1f %10s %8.1f" % (
            phase, format(pos, ","), "-" if rss is None else "%.1f" % rss, peak,
            format(r["objs"], ","), r["t"]), flush=True)


def run_training(args, rec, out):
    sizes = QUICK if args.quick else MODEL
    cfg = TrainConfig(data=args.data, tokenizer="char", preset="tiny", out=out, steps=args.steps,
                      lr=1e-3, min_lr=1e-4, warmup=min(100, args.steps // 10),
                      eval_interval=args.eval_every, eval_iters=args.eval_iters, seed=args.seed,
                      **sizes)
    step_line = re.compile(r"^step (\d+): ")

    def log(line):
        m = step_line.match(line)
        if m:  # an evaluation, a checkpoint and the loss curve just happened after `step` steps
            rec.sample("train", int(m.group(1)))
        elif args.verbose:
            print("  " + line, flush=True)

    t0 = time.time()
    res = train(cfg, log=log, progress=False)
    dt = time.time() - t0
    print("# trained %s steps in %.1f s (%.1f steps/s); final train loss %.4f, val loss %.4f"
          % (format(res["step"], ","), dt, res["step"] / dt, res["loss"], res["val_loss"]),
          flush=True)
    return res


def run_sampling(args, rec, model):
    V, bs = model.config.vocab_size, model.config.block_size
    r = np.random.default_rng(args.seed)
    every = max(1, args.tokens // 20)
    done, next_mark, call = 0, every, 0
    settings = [(0.8, 40, None), (1.0, None, 0.9), (0.0, None, None), (1.2, 10, 0.95)]
    t0 = time.time()
    while done < args.tokens:
        B = 2 if call % 4 == 3 else 1
        plen = int(r.integers(1, max(2, bs // 4)))
        new = bs + bs // 4  # past block_size: prefill, cached decode, then recompute
        temperature, top_k, top_p = settings[call % len(settings)]
        out = model.generate(r.integers(0, V, (B, plen)), max_new_tokens=new,
                             temperature=temperature, top_k=top_k, top_p=top_p, seed=call)
        assert out.shape == (B, plen + new)
        done += B * new
        call += 1
        if done >= next_mark or done >= args.tokens:
            rec.sample("sample", done)
            next_mark = (done // every + 1) * every
    dt = time.time() - t0
    print("# sampled %s tokens in %d calls, %.1f s (%.0f tokens/s)"
          % (format(done, ","), call, dt, done / dt), flush=True)


def verdict(rec, phase, total, args):
    """(ok, text): the end of `phase` against its first sample at or after 10% of `total`."""
    rows = [x for x in rec.rows if x["phase"] == phase]
    warm = [x for x in rows if x["pos"] >= 0.1 * total]
    if len(warm) < 2:
        return False, "%s: too few samples after warm-up (%d)" % (phase, len(warm))
    base, end = warm[0], rows[-1]
    ok, parts = True, []
    for key, name in (("rss", "RSS"), ("peak", "peak RSS")):
        if base[key] is None or end[key] is None:
            continue
        g = end[key] - base[key]
        pct = 100.0 * g / base[key]
        ok &= g < args.max_growth_mib and pct < args.max_growth_pct
        parts.append("%s %.1f -> %.1f MiB (%+.1f MiB, %+.2f%%)"
                     % (name, base[key], end[key], g, pct))
    if end["rss"] is not None:  # where the RSS settled: within 0.1 MiB of its end value since
        since = len(rows)
        while since > 0 and abs(rows[since - 1]["rss"] - end["rss"]) <= 0.1:
            since -= 1
        parts.append("RSS within 0.1 MiB of its end value since %s %s" % (
            "step" if phase == "train" else "token", format(rows[since]["pos"], ",")))
    parts.append("Python objects %s -> %s" % (format(base["objs"], ","),
                                              format(end["objs"], ",")))
    return ok, "%s, %s %s to %s: %s" % (
        phase, "step" if phase == "train" else "token", format(base["pos"], ","),
        format(end["pos"], ","), "; ".join(parts))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=None, help="training steps (default 3000)")
    ap.add_argument("--tokens", type=int, default=None, help="sampled tokens (default 20000)")
    ap.add_argument("--quick", action="store_true", help="tiny model, 120 steps, 1200 tokens")
    ap.add_argument("--backend", default="c", choices=["c", "numpy", "auto"])
    ap.add_argument("--threads", type=int, default=None, help="default: pyllm's own default")
    ap.add_argument("--data", default=None, help="text file or directory (default: the default "
                    "corpus, from the Python standard library)")
    ap.add_argument("--eval-every", type=int, default=None, help="default: steps / 20")
    ap.add_argument("--eval-iters", type=int, default=None)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--out", default=None, help="keep the training directory here (default: a "
                    "temporary directory, removed at the end)")
    ap.add_argument("--max-growth-mib", type=float, default=8.0)
    ap.add_argument("--max-growth-pct", type=float, default=2.0)
    ap.add_argument("--verbose", action="store_true", help="show the training log lines")
    args = ap.parse_args(argv)
    args.steps = args.steps or (120 if args.quick else 3000)
    args.tokens = args.tokens or (1200 if args.quick else 20000)
    args.eval_every = args.eval_every or max(1, args.steps // 20)
    args.eval_iters = args.eval_iters or (2 if args.quick else 5)
    pyllm.set_backend(args.backend)
    if args.threads:
        pyllm.set_num_threads(args.threads)
    sizes = QUICK if args.quick else MODEL
    print("pyllm %s long-run memory benchmark: backend %s, %d thread(s); L%d H%d C%d block %d "
          "batch %d; %s steps, %s tokens" % (
              pyllm.__version__, pyllm.get_backend(), pyllm.get_num_threads(), sizes["n_layer"],
              sizes["n_head"], sizes["n_embd"], sizes["block_size"], sizes["batch_size"],
              format(args.steps, ","), format(args.tokens, ",")))
    print("%-6s %9s %10s %10s %10s %8s" % ("phase", "step/tok", "RSS MiB", "peak MiB",
                                           "Py objs", "time s"))
    rec = Recorder()
    out = args.out or tempfile.mkdtemp(prefix="pyllm-longrun-")
    try:
        rec.sample("start", 0)
        res = run_training(args, rec, out)
        run_sampling(args, rec, res["model"])
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    results = [verdict(rec, "train", args.steps, args),
               verdict(rec, "sample", args.tokens, args)]
    ok = all(good for good, _ in results)
    for good, text in results:
        print("%s %s" % ("flat" if good else "GREW", text))
    print("verdict: %s (growth after warm-up must stay below both %g MiB and %g%%)"
          % ("PASS" if ok else "FAIL", args.max_growth_mib, args.max_growth_pct))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
