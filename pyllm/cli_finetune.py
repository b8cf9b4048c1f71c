"""``pyllm finetune classify | instruct`` and ``pyllm classify``: train a classifier on labelled
text files, or tune a model on instruction data, and use them (see docs/FINETUNE.md)."""
import os
import sys
import time

import numpy as np


def add_parsers(sub, add_model_source, add_backend_args):
    f = sub.add_parser("finetune", help="finetune a model: a text classifier, or an instruction "
                       "follower")
    fsub = f.add_subparsers(dest="task", metavar="{classify,instruct}")
    fsub.required = True
    c = fsub.add_parser("classify", help="train a classification head (and LoRA adapters, the "
                        "last block or everything) on labelled texts")
    add_model_source(c)
    c.add_argument("--train", required=True, help="CSV (text,label) or JSONL ({text, label})")
    c.add_argument("--val", required=True, help="the same, for validation")
    c.add_argument("--test", default=None, help="the same, scored once at the end")
    _training_args(c, ["lora", "last_block", "all"], 3, "directory for the classifier")
    add_backend_args(c)
    add_instruct_parser(fsub, add_model_source, add_backend_args)
    k = sub.add_parser("classify", help="label a text with a classifier from `finetune classify`")
    k.add_argument("--ckpt", required=True, help="the classifier's directory")
    k.add_argument("text", help="the text to classify")
    add_backend_args(k)


def _training_args(p, modes, epochs, out_help):
    """The settings both finetuning commands take."""
    p.add_argument("--finetune", choices=modes, default="lora")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16)
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=None,
                   help="default: 1e-3 for lora, 5e-5 otherwise")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help=out_help)


def _optimizer(trained, args):
    """AdamW for what trains: lr 1e-3 and no weight decay for adapters, 5e-5 and 0.1 for model
    weights, unless --lr says otherwise."""
    import pyllm
    if args.epochs < 1 or args.batch_size < 1:
        raise ValueError("--epochs and --batch-size must be >= 1, got %d and %d"
                         % (args.epochs, args.batch_size))
    lora = args.finetune == "lora"
    lr = args.lr if args.lr is not None else (1e-3 if lora else 5e-5)
    return pyllm.AdamW(trained, lr=lr, weight_decay=0.0 if lora else 0.1)


def _encode(tokenizer, texts, path):
    out = []
    for i, t in enumerate(texts):
        try:
            ids = tokenizer.encode(t)
        except ValueError as exc:
            raise ValueError("%s example %d cannot be encoded: %s" % (path, i + 1, exc)) from None
        if not ids:
            raise ValueError("%s example %d is empty" % (path, i + 1))
        out.append(ids)
    return out


def _accuracy(clf, seqs, y, batch):
    hits = 0
    for i in range(0, len(seqs), batch):
        hits += int((clf.predict(seqs[i:i + batch]) == y[i:i + batch]).sum())
    return hits / len(seqs)


def cmd_finetune(args):
    if args.task == "instruct":
        return cmd_instruct(args)
    import pyllm
    from .classify import Classifier, read_labelled_texts
    from .cli import load_model_and_tokenizer
    data = {}
    for split in ("train", "val", "test"):
        path = getattr(args, split)
        if path is not None:
            data[split] = (path,) + read_labelled_texts(path)
    names = sorted({str(x) for _, _, lab in data.values() for x in lab})
    train_names = {str(x) for x in data["train"][2]}
    if len(train_names) < 2:
        raise ValueError("%s has one class only (%s): a classifier needs two or more"
                         % (args.train, ", ".join(sorted(train_names))))
    ids = {n: i for i, n in enumerate(names)}
    model, tok = load_model_and_tokenizer(args)
    sets = {s: (_encode(tok, texts, path), np.array([ids[str(x)] for x in lab]))
            for s, (path, texts, lab) in data.items()}
    clf = Classifier(model, len(names), finetune=args.finetune, rank=args.rank,
                     alpha=args.alpha, seed=args.seed)
    opt = _optimizer(clf, args)
    seqs, y = sets["train"]
    rng = np.random.default_rng(args.seed)
    print("classes: %s; %d training examples; %s numbers train (finetune=%s)"
          % (", ".join(names), len(seqs), format(clf.n_trainable, ","), args.finetune),
          file=sys.stderr)
    for epoch in range(args.epochs):
        order, losses, t0 = rng.permutation(len(seqs)), [], time.time()
        steps = -(-len(seqs) // args.batch_size)
        for k in range(steps):
            b = order[k * args.batch_size:(k + 1) * args.batch_size]
            loss, g = clf.loss_and_grads([seqs[i] for i in b], y[b])
            pyllm.clip_grad_norm(g, 1.0)
            opt.step(g)
            losses.append(loss)
            if sys.stderr.isatty():
                sys.stderr.write("\repoch %d: step %d/%d, loss %.4f" % (epoch + 1, k + 1, steps,
                                                                       np.mean(losses)))
        acc = _accuracy(clf, *sets["val"], args.batch_size)
        print("%sepoch %d: train loss %.4f, val accuracy %.1f%% (%.0f s)"
              % ("\r" if sys.stderr.isatty() else "", epoch + 1, np.mean(losses), 100 * acc,
                 time.time() - t0), file=sys.stderr)
    if "test" in sets:
        print("test accuracy %.1f%%" % (100 * _accuracy(clf, *sets["test"], args.batch_size)),
              file=sys.stderr)
    clf.save(args.out, labels=names)
    tok.save(os.path.join(args.out, "tokenizer.txt"))
    print("saved in %s" % args.out, file=sys.stderr)
    return 0


def cmd_classify(args):
    import pyllm
    from .classify import Classifier
    clf = Classifier.load(args.ckpt)
    tok = pyllm.load_tokenizer(os.path.join(args.ckpt, "tokenizer.txt"))
    ids = tok.encode(args.text)
    if not ids:
        raise ValueError("the text encodes to no tokens")
    p = clf.predict_proba([ids])[0]
    k = int(p.argmax())
    name = clf.labels[k] if clf.labels else str(k)
    print("%s\t%.4f" % (name, p[k]))
    return 0


def add_instruct_parser(fsub, add_model_source, add_backend_args):
    i = fsub.add_parser("instruct", help="instruction tuning on Alpaca-style JSON data (the loss "
                        "on the responses only)")
    add_model_source(i)
    i.add_argument("--data", required=True, help="a JSON list (or JSONL) of {instruction, input, "
                   "output} objects")
    i.add_argument("--val-fraction", type=float, default=0.1)
    _training_args(i, ["lora", "all"], 2, "directory for the finetuned model")
    add_backend_args(i)


def read_instructions(path):
    """Instruction entries from a JSON list or a JSONL file; ValueError naming the entry."""
    import json
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        data = json.loads(text)
        lines = None
    except (ValueError, RecursionError):
        data, lines = [], text.splitlines()
        for n, line in enumerate(lines, 1):
            if line.strip():
                try:
                    data.append(json.loads(line))
                except (ValueError, RecursionError) as exc:
                    raise ValueError("%s line %d: not JSON (%s)" % (path, n, exc)) from None
    if not isinstance(data, list) or not data:
        raise ValueError("%s must hold a non-empty list of instruction entries" % path)
    for k, e in enumerate(data):
        if not isinstance(e, dict) or not isinstance(e.get("instruction"), str) \
                or not isinstance(e.get("output"), str) \
                or not isinstance(e.get("input", ""), str):
            raise ValueError("%s entry %d: expected {\"instruction\": str, \"input\": str "
                             "(optional), \"output\": str}" % (path, k + 1))
    return data


def cmd_instruct(args):
    import pyllm
    from .cli import load_model_and_tokenizer
    from .finetune import end_token, instruction_batch
    data = read_instructions(args.data)
    if not 0 <= args.val_fraction < 1:
        raise ValueError("--val-fraction must be in [0, 1), got %r" % args.val_fraction)
    model, tok = load_model_and_tokenizer(args)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(data))
    n_val = int(round(len(data) * args.val_fraction))
    val, train = [data[i] for i in order[:n_val]], [data[i] for i in order[n_val:]]
    if not train:
        raise ValueError("%s: no training entries left after the validation split (%d of %d "
                         "entries); lower --val-fraction (now %g) or add entries"
                         % (args.data, n_val, len(data), args.val_fraction))
    end, bs = end_token(tok), model.config.block_size
    trained = pyllm.LoRA(model, rank=args.rank, alpha=args.alpha, seed=args.seed) \
        if args.finetune == "lora" else model
    opt = _optimizer(trained, args)
    print("%d training and %d validation entries; %s numbers train (finetune=%s)"
          % (len(train), len(val), format(int(trained.params.size), ","), args.finetune),
          file=sys.stderr)

    def mean_loss(entries):
        losses = []
        for i in range(0, len(entries), args.batch_size):
            x, y, mask = instruction_batch(tok, entries[i:i + args.batch_size], bs, end_id=end)
            losses.append(trained.loss(x, y, mask=mask))
        return float(np.mean(losses))
    for epoch in range(args.epochs):
        perm, losses, t0 = rng.permutation(len(train)), [], time.time()
        for k in range(0, len(train), args.batch_size):
            x, y, mask = instruction_batch(tok, [train[i] for i in perm[k:k + args.batch_size]],
                                           bs, end_id=end)
            loss, g = trained.loss_and_grads(x, y, mask=mask)
            pyllm.clip_grad_norm(g, 1.0)
            opt.step(g)
            losses.append(loss)
        msg = "epoch %d: train loss %.4f" % (epoch + 1, np.mean(losses))
        if val:
            msg += ", val loss %.4f" % mean_loss(val)
        print(msg + " (%.0f s)" % (time.time() - t0), file=sys.stderr)
    os.makedirs(args.out, exist_ok=True)
    final = trained.merged() if args.finetune == "lora" else model
    final.save(os.path.join(args.out, "model.safetensors"))
    if args.finetune == "lora":
        trained.save(os.path.join(args.out, "adapters.safetensors"))
    tok.save(os.path.join(args.out, "tokenizer.txt"))
    print("saved in %s; try: pyllm sample --ckpt %s --instruction \"...\""
          % (args.out, args.out), file=sys.stderr)
    return 0
