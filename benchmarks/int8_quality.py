"""How much int8 (Q8_0) weights change a trained model's predictions.

    python benchmarks/shakespeare_char.py --out out/shakespeare_char   # a trained model first
    python benchmarks/int8_quality.py --ckpt out/shakespeare_char      # then this
    python benchmarks/int8_quality.py --quick                          # CI: a few training steps

On held-out text (the last 10% of the data, as the training split leaves it) it reports, float32
against ``pyllm.quantize(model)``: the mean KL(float32 || int8) of the next-token distributions
over --batches windows of block_size tokens, the perplexity of each and their ratio, greedy
agreement on 200 new tokens after each of 5 prompts from the held-out text -- the int8 model's
argmax at every step of the float32 model's greedy text, and the two free-running texts (which
part for good at their first difference) -- and the bytes of the weights and of the two files. Exit status 1 when a target is missed (full runs): mean
KL < 1e-3, greedy agreement >= 99%, perplexity within 1%, int8 file <= 0.3x the float32 file.
"""
import argparse
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import pyllm  # noqa: E402
from pyllm.data import read_text  # noqa: E402

DEFAULT_DATA = os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "data",
                            "tinyshakespeare.txt")


def log_softmax(z):
    z = z.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", default="out/shakespeare_char", help="a trained pyllm run")
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--batches", type=int, default=50, help="held-out windows of block_size")
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="train a tiny model for a few steps")
    args = ap.parse_args(argv)
    if not os.path.exists(args.data):
        sys.exit("no text at %s (pass --data)" % args.data)
    tmp = tempfile.mkdtemp(prefix="pyllm-int8-")
    if args.quick:
        from pyllm.train import TrainConfig, train
        args.ckpt = os.path.join(tmp, "run")
        train(TrainConfig(data=args.data, out=args.ckpt, steps=30, n_layer=2, n_head=2,
                          n_embd=64, block_size=32, batch_size=4, eval_interval=30,
                          eval_iters=1), progress=False, log=lambda s: None)
        args.batches, args.new_tokens = 4, 20
    model = pyllm.load(args.ckpt)
    tok = pyllm.load_tokenizer(os.path.join(args.ckpt, "tokenizer.txt"))
    qm = pyllm.quantize(model)
    text = read_text(args.data)
    ids = np.array(tok.encode(text[int(len(text) * 0.9):]), dtype=np.int32)   # held out
    T = model.config.block_size
    rng = np.random.default_rng(0)
    starts = rng.integers(0, len(ids) - T - 1, args.batches)
    kls, nll_f, nll_q, same, margins = [], [], [], [], []
    for s in starts:
        x, y = ids[s:s + T][None], ids[s + 1:s + T + 1]
        lf, lq = log_softmax(model.forward(x)[0]), log_softmax(qm.forward(x)[0])
        kls.append((np.exp(lf) * (lf - lq)).sum(-1).mean())
        same.append(lf.argmax(-1) == lq.argmax(-1))
        top2 = np.sort(np.exp(lf), axis=-1)[:, -2:]
        margins.append(top2[:, 1] - top2[:, 0])
        nll_f.append(-lf[np.arange(T), y].mean())
        nll_q.append(-lq[np.arange(T), y].mean())
    kl = float(np.mean(kls))
    same, margins = np.concatenate(same), np.concatenate(margins)
    ppl_f, ppl_q = float(np.exp(np.mean(nll_f))), float(np.exp(np.mean(nll_q)))
    agree, forced, total, first = 0, 0, 0, []
    for s in rng.integers(0, len(ids) - 16, 5):
        prompt = ids[s:s + 16][None]
        full = model.generate(prompt, args.new_tokens, temperature=0)
        a, b = full[0, 16:], qm.generate(prompt, args.new_tokens, temperature=0)[0, 16:]
        agree += int((a == b).sum())
        diff = np.flatnonzero(a != b)
        first.append(int(diff[0]) if len(diff) else len(a))
        # the int8 model's greedy choice at every step of the float32 continuation
        for t in range(16, full.shape[1]):
            ctx = full[:, max(0, t - T):t]
            forced += int(qm.forward(ctx)[0, -1].argmax() == full[0, t])
        total += len(a)
    model.save(os.path.join(tmp, "f.safetensors"))
    qm.save(os.path.join(tmp, "q.safetensors"))
    fsize = os.path.getsize(os.path.join(tmp, "f.safetensors"))
    qsize = os.path.getsize(os.path.join(tmp, "q.safetensors"))
    print("model %s: %s" % (args.ckpt, model))
    print("held-out windows: %d of %d tokens" % (args.batches, T))
    print("mean KL(float32 || int8) = %.2e (target < 1e-3)" % kl)
    print("perplexity float32 %.4f, int8 %.4f: ratio %.5f (target within 1%%)"
          % (ppl_f, ppl_q, ppl_q / ppl_f))
    print("argmax agreement on the held-out windows: %.2f%% of %d positions; where they differ "
          "the float32 top two probabilities are %.4f apart (median; %.4f everywhere)"
          % (100 * same.mean(), same.size, float(np.median(margins[~same])) if (~same).any()
             else 0.0, float(np.median(margins))))
    print("greedy agreement over 5 prompts x %d tokens, each step on the float32 model's "
          "text: %d/%d = %.1f%% (target >= 99%%)" % (args.new_tokens, forced, total,
                                                   100 * forced / total))
    print("free-running greedy texts: %d/%d tokens equal (%.1f%%); the first difference at "
          "new token %s" % (agree, total, 100 * agree / total, ", ".join(map(str, first))))
    print("weights %.2f MB -> %.2f MB; files %d -> %d bytes: %.3fx (target <= 0.3)"
          % (model.params.nbytes / 1e6, qm.nbytes / 1e6, fsize, qsize, qsize / fsize))
    ok = (kl < 1e-3 and forced >= 0.99 * total and abs(ppl_q / ppl_f - 1) <= 0.01
          and qsize <= 0.3 * fsize)
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
