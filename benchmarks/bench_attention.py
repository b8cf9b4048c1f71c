"""Attention kernels against the context length: softmax, FAVOR+ and elu+1 linear attention, C.

    python benchmarks/bench_attention.py            # T = 256 ... 8192, head sizes 32 and 64
    python benchmarks/bench_attention.py --quick    # small T, one round (CI)

Times forward + backward of one attention layer of one batch row with 4 heads, through the C
backend's kernels: ``attention_forward`` / ``attention_backward`` on qkv (1, T, 3C) for softmax;
feature maps + ``linear_attention_forward`` / ``_backward`` + the feature maps' backwards on
per-head arrays (4, T, hd) for favor (m = 64 features) and linear. The per-head layout change a
model needs around them is not timed. The kernels run in alternation, ``--rounds`` times; the
medians are printed with the ratio to softmax, the smallest T where favor is faster than
softmax (the crossover), and favor's time(8192) / time(1024).

Then the whole model: training tokens/s (forward + backward + AdamW, one sequence of --model-T
tokens, default 2048) of the Shakespeare-char shape (4 layers, 4 heads, n_embd 128, 65 token
ids) with each kernel, alternating, median of --rounds; the layout changes and everything else a
model does are included here.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pyllm  # noqa: E402
from pyllm.backend import backend_module, c_unavailable_reason  # noqa: E402
from pyllm.linear_attention import feature_maps, feature_maps_backward, random_features  # noqa: E402
from bench_kernels import timeit  # noqa: E402  (benchmarks/ is sys.path[0] when run)


def softmax_step(K, T, hd, NH, rng):
    C = hd * NH
    qkv = rng.standard_normal((1, T, 3 * C)).astype(np.float32)
    out, lse = np.empty((1, T, C), np.float32), np.empty((1, NH, T), np.float32)
    dout, dqkv = rng.standard_normal((1, T, C)).astype(np.float32), np.zeros_like(qkv)

    def step():
        K.attention_forward(out, lse, qkv, NH)
        K.attention_backward(dqkv, dout, qkv, out, lse, NH)
    return step


def linear_step(K, T, hd, NH, rng, kernel, m=64):
    q, k, v = (rng.standard_normal((NH, T, hd)).astype(np.float32) for _ in range(3))
    w = random_features(m, hd, rng) if kernel == "favor" else None
    mf = m if kernel == "favor" else hd
    qf, kf = np.empty((NH, T, mf), np.float32), np.empty((NH, T, mf), np.float32)
    kc = np.empty((NH, T), np.float32) if kernel == "favor" else None
    out, den = np.empty((NH, T, hd), np.float32), np.empty((NH, T), np.float32)
    dout = rng.standard_normal((NH, T, hd)).astype(np.float32)
    dqf, dkf, dv = np.zeros_like(qf), np.zeros_like(kf), np.zeros_like(v)
    dq, dk = np.zeros_like(q), np.zeros_like(k)

    def step():
        feature_maps(qf, kf, kc, q, k, kernel, w, backend=K)
        K.linear_attention_forward(out, den, qf, kf, v, kc)
        K.linear_attention_backward(dqf, dkf, dv, dout, qf, kf, v, out, den, kc)
        feature_maps_backward(dq, dk, dqf, dkf, qf, kf, q, k, kernel, w, backend=K)
    return step


def model_step(kernel, T, m, seed=0):
    """One training step of a Shakespeare-char-shaped GPT on one sequence of T tokens."""
    cfg = pyllm.GPTConfig(vocab_size=65, block_size=T, n_layer=4, n_head=4, n_embd=128,
                          attention=kernel, n_features=m)
    model = pyllm.GPT(cfg, seed=seed)
    opt = pyllm.AdamW(model, lr=1e-4)
    idx = np.random.default_rng(seed).integers(0, 65, (1, T + 1))
    x, y = idx[:, :-1], idx[:, 1:]

    def step():
        _, grads = model.loss_and_grads(x, y)
        opt.step(grads)
    return step


def bench_models(T, m, rounds, min_time):
    """Training tokens/s of each kernel's model at T (alternating, medians)."""
    steps = {k: model_step(k, T, m) for k in ("softmax", "favor", "linear")}
    times = {k: [] for k in steps}
    for _ in range(rounds):
        for k, fn in steps.items():
            times[k].append(timeit(fn, (), 1, min_time)[0])
    print("\nwhole model, training (forward + backward + AdamW), 1 x %d tokens, 4 layers, "
          "4 heads, n_embd 128; tokens/s, median of %d" % (T, rounds))
    base = float(np.median(times["softmax"]))
    for k, v in times.items():
        t = float(np.median(v))
        print("%8s  %10s tokens/s  %6.2fx softmax" % (k, format(int(T / t), ","), base / t))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="T = 64, 128; one round (CI)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--features", type=int, default=64, help="favor's m (default %(default)s)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--model-T", type=int, default=2048,
                    help="context length of the whole-model comparison (0: skip it)")
    args = ap.parse_args(argv)
    reason = c_unavailable_reason()
    if reason:
        print("the C backend is not available: %s" % reason)
        return 1
    if args.threads:
        pyllm.set_num_threads(args.threads)
    K = backend_module("c")
    Ts = [64, 128] if args.quick else [256, 512, 1024, 2048, 4096, 8192]
    rounds = 1 if args.quick else args.rounds
    min_time = 0.01 if args.quick else 0.2
    NH = 4
    print("attention forward + backward, 1 x T, %d heads, C backend, %d threads; ms, median of %d"
          % (NH, pyllm.get_num_threads(), rounds))
    for hd in (32, 64):
        print("\nhead size %d (favor m = %d)" % (hd, args.features))
        print("%6s  %10s  %10s  %10s  %8s  %8s" % ("T", "softmax", "favor", "linear",
                                                 "fav/sm", "lin/sm"))
        med = {}
        for T in Ts:
            rng = np.random.default_rng(T)
            steps = {"softmax": softmax_step(K, T, hd, NH, rng),
                     "favor": linear_step(K, T, hd, NH, rng, "favor", args.features),
                     "linear": linear_step(K, T, hd, NH, rng, "linear")}
            times = {k: [] for k in steps}
            for _ in range(rounds):
                for k, fn in steps.items():
                    times[k].append(timeit(fn, (), 1, min_time)[0])
            med[T] = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
            r = med[T]
            print("%6d  %10.3f  %10.3f  %10.3f  %8.2f  %8.2f" % (
                T, r["softmax"], r["favor"], r["linear"], r["favor"] / r["softmax"],
                r["linear"] / r["softmax"]), flush=True)
        cross = next((T for T in Ts if med[T]["favor"] < med[T]["softmax"]), None)
        print("crossover: favor faster than softmax from T = %s" % (cross if cross else
                                                                      "(not within %d)" % Ts[-1]))
        if 1024 in med and 8192 in med:
            print("favor time(8192) / time(1024) = %.2f (linear growth: 8)"
                  % (med[8192]["favor"] / med[1024]["favor"]))
    if args.model_T:
        bench_models(64 if args.quick else args.model_T, args.features, rounds,
                     min_time if args.quick else 1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
