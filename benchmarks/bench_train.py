"""End-to-end training speed: pyllm's C backend vs its NumPy backend vs PyTorch eager (if present).

    python benchmarks/bench_train.py                 # configs a, b, c
    python benchmarks/bench_train.py --configs a b   # a subset
    python benchmarks/bench_train.py --quick         # CI: tiny shapes, few steps

One training step = forward + backward + gradient clipping + AdamW, on random tokens. Every
(config, implementation) run is its own subprocess, so that its peak RSS is its own. PyTorch runs
the same GPT-2 model (tied head, tanh-GELU, fused causal attention) with
torch.set_num_threads(threads).

The machine this was written for is shared and noisy: its speed drifts by 10-20% from one minute to
the next. So C and PyTorch run in --rounds alternating rounds (C, PyTorch, C, PyTorch, ...; the
NumPy backend, far behind, once), each row shows the median tokens/s over the timed steps of all
rounds (min-max of the steps), and each ratio is the median over the rounds of that round's ratio
of medians (min-max over the rounds), which compares runs made a few seconds apart.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

CONFIGS = {  # name: (vocab, n_layer, n_head, n_embd, block, batch)
    "a": (256, 4, 4, 128, 128, 16),
    "b": (256, 6, 6, 384, 256, 8),
    "c": (50257, 12, 12, 768, 64, 4),
    "quick": (256, 2, 2, 64, 64, 4),
}


def _batches(V, T, B, n, seed=0):
    r = np.random.default_rng(seed)
    return [(r.integers(0, V, (B, T)), r.integers(0, V, (B, T))) for _ in range(n)]


def run_pyllm(cfg, backend, steps, warmup, threads):
    import pyllm
    pyllm.set_backend(backend)
    pyllm.set_num_threads(threads)
    V, L, H, C, T, B = cfg
    model = pyllm.GPT(pyllm.GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=H,
                                      n_embd=C), seed=0)
    opt = pyllm.AdamW(model, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    times = []
    for i, (x, y) in enumerate(_batches(V, T, B, warmup + steps)):
        t0 = time.perf_counter()
        loss, g = model.loss_and_grads(x, y)
        pyllm.clip_grad_norm(g, 1.0)
        opt.step(g)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times, loss


def run_torch(cfg, steps, warmup, threads):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    V, L, H, C, T, B = cfg

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def forward(self, x):
            b, t, c = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = [z.view(b, t, H, c // H).transpose(1, 2) for z in (q, k, v)]
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
            self.h = nn.ModuleList([Block() for _ in range(L)])
            self.ln_f = nn.LayerNorm(C)

        def forward(self, idx, tgt):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
            for blk in self.h:
                x = blk(x)
            logits = self.ln_f(x) @ self.wte.weight.T
            return F.cross_entropy(logits.view(-1, V), tgt.view(-1))

    model = GPT()
    with torch.no_grad():  # GPT-2 initialisation, as pyllm's
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.dim() >= 2:
                p.normal_(0.0, 0.02)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}], lr=1e-4,
                            betas=(0.9, 0.95))
    times = []
    for i, (x, y) in enumerate(_batches(V, T, B, warmup + steps)):
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        t0 = time.perf_counter()
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times, float(loss)


def child(args):
    cfg = CONFIGS[args.child_config]
    if args.child_impl == "torch":
        times, loss = run_torch(cfg, args.steps, args.warmup, args.threads)
    else:
        times, loss = run_pyllm(cfg, args.child_impl, args.steps, args.warmup, args.threads)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # MiB (Linux: KiB)
    print(json.dumps({"times": times, "loss": loss, "rss_mib": rss}))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", default=["a", "b", "c"], choices=sorted(CONFIGS))
    ap.add_argument("--impls", nargs="+", default=["c", "numpy", "torch"])
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default per config)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=None,
                    help="alternating rounds of C and PyTorch (default 3; 1 with --quick)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child-config", help=argparse.SUPPRESS)
    ap.add_argument("--child-impl", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_config:
        args.steps = args.steps or 5
        return child(args)
    if args.quick:
        args.configs, args.warmup = ["quick"], 1
    args.rounds = args.rounds or (1 if args.quick else 3)
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
    import pyllm
    print("pyllm %s training benchmark, %d threads, %d round(s): tokens/s median (min-max) of the "
          "timed steps, peak RSS" % (pyllm.__version__, args.threads, args.rounds))
    print("%-6s %-7s %26s %10s %10s" % ("config", "impl", "tokens/s", "RSS MiB", "loss"))
    for name in args.configs:
        bench_config(name, args, have_torch)
    return 0


def run_child(name, impl, steps, args):
    """One subprocess run: {"times": [...], "loss": float, "rss_mib": float}, or an error string."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child-config", name,
           "--child-impl", impl, "--steps", str(steps), "--warmup", str(args.warmup),
           "--threads", str(args.threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               OPENBLAS_NUM_THREADS=str(args.threads))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        return r.stderr.strip()[-500:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def bench_config(name, args, have_torch):
    V, L, H, C, T, B = CONFIGS[name]
    steps = args.steps or (3 if args.quick else {"a": 60, "b": 8, "c": 4}.get(name, 5))
    impls = [i for i in args.impls if i != "torch" or have_torch]
    if "torch" in args.impls and not have_torch:
        print("%-6s %-7s %26s" % (name, "torch", "skipped (torch not importable)"))
    runs = {impl: [] for impl in impls}   # per impl: one result per round
    failed = set()
    for rnd in range(args.rounds):
        for impl in impls:
            if impl in failed or (impl == "numpy" and rnd > 0):  # NumPy: one round
                continue
            n = steps if impl != "numpy" else max(3, steps // 3)
            out = run_child(name, impl, n, args)
            if isinstance(out, str):
                print("%-6s %-7s failed: %s" % (name, impl, out))
                failed.add(impl)
                continue
            runs[impl].append(out)
    med = {}
    for impl in impls:
        if not runs[impl]:
            continue
        tps = [B * T / t for out in runs[impl] for t in out["times"]]
        med[impl] = [float(np.median([B * T / t for t in out["times"]])) for out in runs[impl]]
        rss = max(out["rss_mib"] for out in runs[impl])
        print("%-6s %-7s %10.0f (%6.0f-%6.0f) %10.0f %10.4f" % (
            name, impl, float(np.median(tps)), min(tps), max(tps), rss, runs[impl][-1]["loss"]))
    sys.stdout.flush()
    if "c" in med:
        parts = []
        for k in med:
            if k == "c":
                continue
            if len(med[k]) == len(med["c"]) > 1:  # round by round (PyTorch)
                ratios = [c / o for c, o in zip(med["c"], med[k])]
                parts.append("%s: C is %.2fx %s (rounds %.2f-%.2f)" % (
                    name, float(np.median(ratios)), k, min(ratios), max(ratios)))
            else:  # one run (NumPy): against the median of C's rounds
                parts.append("%s: C is %.2fx %s" % (
                    name, float(np.median(med["c"])) / float(np.median(med[k])), k))
        print("  " + "; ".join(parts))


if __name__ == "__main__":
    sys.exit(main())
