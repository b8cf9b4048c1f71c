"""Softmax, FAVOR+ and linear attention trained on the same Shakespeare-char recipe.

    python benchmarks/attention_training.py [--data PATH] [--out DIR] [--steps N]
        [--kernels softmax,favor,linear] [--svg PATH] [--quick]

Each kernel trains the recipe of ``shakespeare_char.py`` (nanoGPT's CPU recipe: 4 layers, 4
heads, n_embd 128, block_size 64, batch 12, 2,000 steps, seed 1337) with only ``attention``
changed; favor uses 64 random features redrawn every 100 steps. Prints each kernel's final
validation loss over --final-batches random batches (one fixed set for all three), its ratio to
softmax's, the wall time and training tokens/s, whether any loss was NaN, and writes the three
validation curves into one SVG (--svg). Exit status 1 when a kernel is more than 10% above
softmax or produced a NaN (full runs only). ``--quick``: a few steps on a small slice, to test
the script.
"""
import argparse
import json
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import pyllm  # noqa: E402
from pyllm.plot import write_loss_curve  # noqa: E402
from pyllm.train import TrainConfig, estimate_loss, prepare_data, train  # noqa: E402

DEFAULT_DATA = os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "data",
                            "tinyshakespeare.txt")
KERNELS = ("softmax", "favor", "linear")


def run(kernel, args):
    """Train one kernel; returns a dict of its figures and its logged validation curve."""
    out = os.path.join(args.out, kernel)
    extra = dict(preset="shakespeare", steps=args.steps, seed=1337, attention=kernel,
                 n_features=64, feature_redraw=100)
    if args.quick:
        extra.update(n_layer=2, n_embd=32, n_head=2, block_size=16, batch_size=4,
                     eval_interval=max(1, args.steps // 2), eval_iters=2)
    cfg = TrainConfig(data=args.data, tokenizer="char", out=out, val_fraction=0.1,
                      eval_iters=extra.pop("eval_iters", 20), **extra)
    t0 = time.time()
    res = train(cfg, progress=False, log=lambda s: None)
    wall = time.time() - t0
    rc = cfg.resolved()
    _, ds = prepare_data(rc, lambda s: None, res["tokenizer"])
    val = estimate_loss(res["model"], ds, "val", args.final_batches, rc.batch_size,
                        rc.block_size, seed=2024)
    curve, nan, tps = [], False, []
    with open(os.path.join(out, "log.jsonl"), encoding="utf-8") as f:
        for line in f:
            e = json.loads(line)
            nan |= not math.isfinite(e["loss"])
            tps.append(e["tokens_per_s"])
            if "val_loss" in e:
                curve.append((e["step"] + 1, e["val_loss"]))
    tps.sort()
    return {"kernel": kernel, "val": val, "wall": wall, "nan": nan or not math.isfinite(val),
            "tokens_per_s": tps[len(tps) // 2], "curve": curve}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--out", default="out/attention_training")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--final-batches", type=int, default=400)
    ap.add_argument("--kernels", default=",".join(KERNELS))
    ap.add_argument("--svg", default=None, help="write the validation curves here")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="a few steps on a small model")
    args = ap.parse_args(argv)
    kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    bad = [k for k in kernels if k not in KERNELS]
    if bad or not kernels:
        ap.error("--kernels takes a comma-separated subset of %s, got %r"
                 % (",".join(KERNELS), args.kernels))
    if not os.path.exists(args.data):
        sys.exit("Tiny Shakespeare not found at %s (pass --data)" % args.data)
    if args.threads:
        pyllm.set_num_threads(args.threads)
    if args.quick:
        args.steps, args.final_batches = min(args.steps, 6), min(args.final_batches, 4)
    print("pyllm %s, backend %s, %d threads; %d steps per kernel"
          % (pyllm.__version__, pyllm.get_backend(), pyllm.get_num_threads(), args.steps),
          flush=True)
    results = []
    for k in kernels:
        r = run(k, args)
        results.append(r)
        print("%-8s val loss %.4f over %d batches | %s tokens/s | %.0f s | NaN: %s"
              % (k, r["val"], args.final_batches, format(int(r["tokens_per_s"]), ","),
                 r["wall"], "yes" if r["nan"] else "no"), flush=True)
    ok = not any(r["nan"] for r in results)
    base = next((r["val"] for r in results if r["kernel"] == "softmax"), None)
    if base is not None:
        for r in results:
            ratio = r["val"] / base
            within = ratio <= 1.10
            ok &= within
            print("%-8s / softmax = %.3f (%s 10%%)" % (r["kernel"], ratio,
                                                       "within" if within else "NOT within"))
    if args.svg:
        write_loss_curve(args.svg, {r["kernel"]: r["curve"] for r in results},
                         title="Shakespeare-char validation loss by attention kernel",
                         xlabel="step", ylabel="validation loss")
        print("curves: %s" % args.svg)
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
