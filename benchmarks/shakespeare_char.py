"""nanoGPT's CPU recipe for Shakespeare-char, reproduced with pyllm (the quality bar).

    python benchmarks/shakespeare_char.py [--data PATH] [--out DIR] [--backend c|numpy]

Recipe (nanoGPT README, "I only have a macbook"): character-level Tiny Shakespeare, first 90%
train / last 10% val; n_layer 4, n_head 4, n_embd 128, block_size 64, batch 12, 2000 iterations,
lr 1e-3 with 100 warm-up steps and cosine decay to 1e-4, beta2 0.99, weight decay 0.1, gradient
clip 1.0, no dropout; evaluation every 250 steps on 20 batches. nanoGPT reports val loss ~1.88
(a 20-batch estimate); rerun on this machine it scores 1.896 on 400 random val batches. The bar
here: val loss <= 1.91 on at least 200 random val batches of 12 x 64.

Prints the final validation loss over --final-batches (default 400) batches, the wall time of
the whole run (training + evaluation) and where the loss curve was written.
"""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import pyllm  # noqa: E402
from pyllm.train import TrainConfig, estimate_loss, prepare_data, train  # noqa: E402

DEFAULT_DATA = os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "data",
                            "tinyshakespeare.txt")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--out", default="out/shakespeare_char")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--final-batches", type=int, default=400)
    ap.add_argument("--backend", default=None, choices=["c", "numpy"])
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if not os.path.exists(args.data):
        sys.exit("Tiny Shakespeare not found at %s (pass --data)" % args.data)
    if args.backend:
        pyllm.set_backend(args.backend)
    if args.threads:
        pyllm.set_num_threads(args.threads)
    cfg = TrainConfig(data=args.data, tokenizer="char", preset="shakespeare", out=args.out,
                      steps=args.steps, eval_iters=20, val_fraction=0.1, seed=1337)
    t0 = time.time()
    res = train(cfg, progress=sys.stderr.isatty())
    _, ds = prepare_data(cfg.resolved(), lambda s: None, res["tokenizer"])
    val = estimate_loss(res["model"], ds, "val", args.final_batches, 12, 64, seed=2024)
    wall = time.time() - t0
    print("pyllm %s, backend %s, %d threads" % (pyllm.__version__, pyllm.get_backend(),
                                                 pyllm.get_num_threads()))
    print("shakespeare-char: %d steps, final val loss %.4f over %d random batches of 12x64 "
          "(bar: <= 1.91; nanoGPT here: 1.896)" % (res["step"], val, args.final_batches))
    print("wall time %.1f s (training + evaluation; nanoGPT here: 118 s); loss curve: %s"
          % (wall, os.path.join(args.out, "loss.svg")))
    return 0 if val <= 1.91 else 1


if __name__ == "__main__":
    sys.exit(main())
