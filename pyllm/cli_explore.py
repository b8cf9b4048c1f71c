"""The attention commands of the command line: ``pyllm heads`` and ``pyllm neighbors``.

``heads`` prints a layer x head table of the head scores (``pyllm.explore.head_scores``), the loss
with and without an ablation, and writes the offline viewer; ``neighbors`` lists the tokens whose
embeddings are closest to a word's.
"""
import os
import sys

import numpy as np


def _positive(text):
    import argparse
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("invalid int value: %r" % text) from None
    if n < 1:
        raise argparse.ArgumentTypeError("must be >= 1, got %d" % n)
    return n


def add_parsers(sub, add_model_source, add_backend_args):
    """Register ``heads`` and ``neighbors`` on the sub-command set ``sub``."""
    h = sub.add_parser("heads", help="score every attention head (previous-token, induction, "
                       "duplicate), ablate heads, write an offline viewer")
    add_model_source(h)
    txt = h.add_mutually_exclusive_group()
    txt.add_argument("--text", default=None, help="text to measure the loss on and to show")
    txt.add_argument("--file", default=None, help="read that text from a file (UTF-8)")
    h.add_argument("--out", default=None, help="write the viewer to this HTML file (without "
                   "--text/--file it shows random tokens repeated twice)")
    h.add_argument("--ablate", default=None, metavar="L.H,L.H",
                   help="heads to switch off, e.g. 1.3,0.2 (layer.head, counted from 0)")
    h.add_argument("--ablate-mode", choices=["zero", "mean"], default="zero",
                   help="zero: the heads output 0; mean: their mean output over the text (or, "
                   "without text, over the random repeated sequences)")
    h.add_argument("--seq-len", type=_positive, default=None,
                   help="length of the random sequence that is repeated (default: "
                   "min(64, block_size // 2))")
    h.add_argument("--n-seqs", type=_positive, default=8, help="random sequences to average over")
    h.add_argument("--seed", type=int, default=0)
    add_backend_args(h)

    n = sub.add_parser("neighbors", help="the tokens whose embeddings are nearest a word's")
    add_model_source(n)
    n.add_argument("word", nargs="?", default=None,
                   help="a word that is one token (GPT-2: mind the leading space, ' king')")
    n.add_argument("--id", type=int, default=None, help="a token id instead of a word")
    n.add_argument("--k", type=_positive, default=10)
    n.add_argument("--metric", choices=["cosine", "dot"], default="cosine")
    add_backend_args(n)


def _read_text(args):
    if args.file is not None:
        if os.path.isdir(args.file):
            raise SystemExit("error: --file %s is a directory" % args.file)
        with open(args.file, encoding="utf-8") as f:
            return f.read()
    return args.text


def _repeated_half_loss(model, idx):
    """Mean loss on the second half of repeated sequences idx (B, 2S): predicting r[1:] from the
    first copy (positions S .. 2S-2 predict S+1 .. 2S-1)."""
    S = idx.shape[1] // 2
    logits = model.forward(idx[:, :-1]).astype(np.float64)           # (B, 2S-1, V)
    z = logits - logits.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    tgt = idx[:, 1:]
    nll = -np.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0]   # (B, 2S-1)
    return float(nll[:, S:].mean())


def cmd_heads(args):
    """``pyllm heads``: the score table, the loss with and without an ablation, the viewer."""
    from . import explore
    from .cli import load_model_and_tokenizer, _printable
    text = _read_text(args)
    if text is not None and not text:
        raise SystemExit("error: the text given with %s is empty; give some text to measure"
                         % ("--file %s" % args.file if getattr(args, "file", None) else "--text"))
    if args.out is not None and os.path.isdir(args.out):
        raise SystemExit("error: --out %s is a directory; give a file name such as heads.html"
                         % args.out)
    model, tokenizer = load_model_and_tokenizer(args)
    heads = explore.parse_heads(args.ablate.split(","), model.config) if args.ablate else []
    out = sys.stdout
    print(model, file=out)
    scores = explore.head_scores(model, args.seq_len, args.n_seqs, args.seed)
    S = args.seq_len or min(64, model.config.block_size // 2)
    print(explore.format_table(scores), file=out)
    print("(%d random sequences of %d tokens, each repeated once)" % (args.n_seqs, S), file=out)
    ids = None
    if text is not None:
        try:
            ids = tokenizer.encode(text)
        except ValueError as exc:
            raise SystemExit("error: the text cannot be encoded: %s" % exc)
        if len(ids) < 2:
            raise SystemExit("error: the text is %d token(s); a loss needs at least 2, so give "
                             "a longer --text" % len(ids))
        ids = np.asarray(ids[:model.config.block_size + 1], dtype=np.int64)
    if heads:
        names = ", ".join("%d.%d" % lh for lh in heads)
        rep = explore.repeated_tokens(model, S, args.n_seqs, args.seed + 1)
        measures = [("the repeated half of random sequences", rep, _repeated_half_loss)]
        if ids is not None:
            measures.insert(0, ("the text (%d tokens)" % (len(ids) - 1), ids[None],
                                lambda m, x: m.loss(x[:, :-1], x[:, 1:])))
        ref = ids[None] if ids is not None else rep
        for what, x, loss_of in measures:
            base = loss_of(model, x)
            with explore.ablate(model, heads, args.ablate_mode,
                                ref if args.ablate_mode == "mean" else None):
                abl = loss_of(model, x)
            print("loss on %s: %.4f; with %s ablated (%s): %.4f (%+.4f)"
                  % (what, base, names, args.ablate_mode, abl, abl - base), file=out)
    elif ids is not None:
        print("loss on the text (%d tokens): %.4f" % (len(ids) - 1,
                                                     model.loss(ids[None, :-1], ids[None, 1:])),
              file=out)
    if args.out is not None:
        if text is None:
            vocab = min(tokenizer.vocab_size, model.config.vocab_size)
            shown = explore.repeated_tokens(model, min(32, S), 1, args.seed)[0] % vocab
        else:
            shown = ids
        n = explore.write_html(args.out, model, tokenizer, shown.tolist(), scores=scores)
        print(_printable("wrote %s (%d tokens, %d x %d heads)" % (
            args.out, n, model.config.n_layer, model.config.n_head), out), file=out)
    return 0


def cmd_neighbors(args):
    """``pyllm neighbors``: the k nearest tokens of a word by embedding similarity."""
    from . import explore
    from .cli import load_model_and_tokenizer, _printable
    if (args.word is None) == (args.id is None):
        raise SystemExit("error: give either a WORD or --id N")
    model, tokenizer = load_model_and_tokenizer(args)
    query = args.id if args.id is not None else args.word
    res = explore.nearest_tokens(model, tokenizer, query, k=args.k, metric=args.metric)
    out = sys.stdout
    q = tokenizer.decode([args.id]) if args.id is not None else args.word
    print(_printable("nearest tokens to %r by %s similarity of wte rows:" % (q, args.metric), out),
          file=out)
    for rank, (i, tok, score) in enumerate(res, 1):
        print(_printable("%3d  %8.4f  %6d  %r" % (rank, score, i, tok), out), file=out)
    return 0
