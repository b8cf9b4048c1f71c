"""A LoRA finetuning step against a full finetuning step: time and peak memory.

    python benchmarks/bench_lora.py            # GPT-2 124M's shape, batch 2 x 256 tokens
    python benchmarks/bench_lora.py --quick    # a small model (CI)

Each way runs in a fresh process: a model of the shape (GPT-2's initialisation), then --steps
training steps (forward, backward, clipping, AdamW) of ``pyllm.LoRA(model, rank=8, alpha=16)``
over the four targets, or of the whole model. It prints the median step time and the process's
peak resident memory (VmHWM), and their ratios, LoRA over full.
"""
import argparse
import json
import os
import sys

from bench_load import run_child  # noqa: E402  (benchmarks/ is sys.path[0] when run)

CHILD = r"""
import json, sys, time
import numpy as np
import pyllm
shape, mode, B, T, steps = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), \
    int(sys.argv[4]), int(sys.argv[5])
model = pyllm.GPT(pyllm.GPTConfig(**shape), seed=0)
trained = pyllm.LoRA(model, rank=8, alpha=16) if mode == "lora" else model
opt = pyllm.AdamW(trained, lr=1e-4)
idx = np.random.default_rng(0).integers(0, shape["vocab_size"], (B, T + 1))
times = []
for _ in range(steps):
    t0 = time.perf_counter()
    _, g = trained.loss_and_grads(idx[:, :-1], idx[:, 1:])
    pyllm.clip_grad_norm(g, 1.0)
    opt.step(g)
    times.append(time.perf_counter() - t0)
with open("/proc/self/status") as f:
    peak = next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024
print(json.dumps({"step_s": float(np.median(times[1:] or times)), "peak_mb": peak,
                  "trained": int(trained.params.size)}))
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if not os.path.exists("/proc/self/status"):
        print("needs Linux's /proc to measure peak memory")
        return 1
    shape = (dict(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=64) if args.quick
             else dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768))
    if args.quick:
        args.steps, args.batch, args.tokens = 3, 2, 32
    print("LoRA rank 8 (the four targets) vs full finetuning: %s, batch %d x %d tokens, median "
          "of %d steps" % (shape, args.batch, args.tokens, args.steps))
    res = {}
    for mode in ("full", "lora"):
        r = res[mode] = run_child(CHILD, json.dumps(shape), mode, args.batch, args.tokens,
                                  args.steps)
        print("%-5s step %7.3f s | peak memory %8.1f MB | trained numbers %s"
              % (mode, r["step_s"], r["peak_mb"], format(r["trained"], ",")))
    print("lora / full: step time %.2f (target <= 0.7), peak memory %.2f (target <= 0.6)"
          % (res["lora"]["step_s"] / res["full"]["step_s"],
             res["lora"]["peak_mb"] / res["full"]["peak_mb"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
