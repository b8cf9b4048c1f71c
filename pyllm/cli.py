"""The command line: ``python -m pyllm train | sample | quantize | info | heads | neighbors`` (also the
``pyllm`` script). The attention commands live in ``cli_explore.py``."""
import argparse
import os
import sys
import time

import numpy as np

from . import __version__


def _add_backend_args(p):
    p.add_argument("--backend", choices=["auto", "c", "numpy"], default=None,
                   help="kernel backend (default: $PYLLM_BACKEND or auto)")
    p.add_argument("--threads", type=_thread_count, default=None,
                   help="C kernel threads (default: all)")


def _thread_count(text):
    """argparse type of --threads: an int in [1, 2**31 - 1] (the C kernels take a C int)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("invalid int value: %r" % text) from None
    if not 1 <= n <= 2**31 - 1:
        raise argparse.ArgumentTypeError("must be an integer from 1 to 2147483647, got %d" % n)
    return n


def _apply_backend_args(args):
    import pyllm
    if args.backend:
        pyllm.set_backend(args.backend)
    if args.threads is not None:
        pyllm.set_num_threads(args.threads)


def _sample_args(p):
    p.add_argument("--prompt", default=None, help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=300)
    p.add_argument("--temperature", type=float, default=0.8, help="0 means greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)


def build_parser():
    """The argparse parser of every sub-command."""
    ap = argparse.ArgumentParser(prog="pyllm", description="A small GPT-2 from scratch: train, "
                                 "sample, and inspect the build.")
    ap.add_argument("--version", action="version", version="pyllm " + __version__)
    sub = ap.add_subparsers(dest="command",
                            metavar="{train,sample,quantize,finetune,classify,info,heads,"
                                    "neighbors,export-hf,export-html,bench}")
    sub.required = True

    t = sub.add_parser("train", help="train a model (default: the tiny preset on text from "
                       "this Python's standard library), then print a sample")
    t.add_argument("--data", default=None, help="a text file or a directory of text files "
                   "(default: the embedded default corpus)")
    t.add_argument("--tokenizer", choices=["char", "bpe"], default="char")
    t.add_argument("--vocab-size", type=int, default=512, help="BPE vocabulary size")
    from .train import PRESETS
    t.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    t.add_argument("--out", default="out", help="checkpoint directory (default: out)")
    t.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel training over MPI: run as `mpirun -n N pyllm train "
                   "--distributed ...`; --batch-size is the global batch (docs/DISTRIBUTED.md)")
    for name, typ in (("steps", int), ("batch-size", int), ("block-size", int),
                      ("n-layer", int), ("n-head", int), ("n-embd", int), ("lr", float),
                      ("min-lr", float), ("warmup", int), ("beta2", float),
                      ("eval-interval", int)):
        t.add_argument("--" + name, type=typ, default=None, help="(default: from the preset)")
    t.add_argument("--weight-decay", type=float, default=0.1)
    t.add_argument("--grad-clip", type=float, default=1.0)
    t.add_argument("--grad-accum", type=int, default=1)
    t.add_argument("--eval-iters", type=int, default=20)
    t.add_argument("--seed", type=int, default=1337)
    t.add_argument("--attention", choices=["softmax", "favor", "linear"], default="softmax",
                   help="the attention kernel: softmax (GPT-2's, exact), favor (FAVOR+ random "
                   "features) or linear (elu + 1); see docs/ATTENTION.md")
    t.add_argument("--n-features", type=int, default=64,
                   help="random features per layer for --attention favor (default: 64)")
    t.add_argument("--feature-redraw", type=int, default=100,
                   help="redraw the favor features every this many steps; 0: never "
                   "(default: 100)")
    t.add_argument("--sample-tokens", type=int, default=300,
                   help="tokens to sample after training (0: none)")
    t.add_argument("--quiet", action="store_true", help="no progress line")
    _add_backend_args(t)

    s = sub.add_parser("sample", help="generate text from a checkpoint or a GPT-2 download")
    add_model_source(s)
    _sample_args(s)
    s.add_argument("--no-cache", action="store_true", help="recompute instead of the KV cache")
    s.add_argument("--instruction", default=None,
                   help="format an Alpaca-style prompt (docs/FINETUNE.md) and print only the "
                   "response")
    s.add_argument("--input", default=None, help="the instruction's input (with --instruction)")
    s.add_argument("--int8", action="store_true",
                   help="quantize the weights to int8 (Q8_0) first: about 3x faster sampling "
                   "(see docs/QUANT.md); a file written by `pyllm quantize` is int8 already")
    _add_backend_args(s)

    q = sub.add_parser("quantize", help="write an int8 (Q8_0) copy of a model for fast sampling")
    add_model_source(q, tokenizer=False)
    q.add_argument("--out", required=True, help="the .safetensors file to write")
    _add_backend_args(q)

    i = sub.add_parser("info", help="version, backend, threads, build flags, kernel self-test")
    i.add_argument("--ckpt", default=None,
                   help="also describe this model file or training directory (shape, "
                   "parameters, attention kernel)")
    _add_backend_args(i)
    from . import cli_explore, cli_finetune
    cli_explore.add_parsers(sub, add_model_source, _add_backend_args)
    cli_finetune.add_parsers(sub, add_model_source, _add_backend_args)
    from . import hf_export
    hf_export.add_parser(sub, add_model_source, _add_backend_args)
    from . import cli_bench
    cli_bench.add_parser(sub, _thread_count)
    from . import export_html
    export_html.add_parser(sub, add_model_source, _add_backend_args)
    return ap


def _printable(text, stream):
    """``text`` with what ``stream``'s encoding cannot represent (a lone surrogate from a
    hand-edited tokenizer, non-ASCII on an ASCII terminal) replaced, so printing never fails."""
    enc = getattr(stream, "encoding", None) or "utf-8"
    try:
        return text.encode(enc, "replace").decode(enc)
    except LookupError:  # an encoding name Python does not know: leave it to the stream
        return text


def _check_sampling_args(args):
    """Reject bad sampling settings before anything is loaded or printed."""
    from .model import check_sampling
    check_sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p)


def _stream_sample(model, tokenizer, prompt, args, use_cache=True, echo=True, stop=None):
    """Print prompt (unless ``echo`` is False) + sampled text, decoding incrementally as tokens
    arrive; sampling ends early at the token id ``stop``, which is not printed."""
    _check_sampling_args(args)
    if prompt is None:
        prompt = "\n"
    try:
        ids = tokenizer.encode(prompt)
    except ValueError as exc:
        raise SystemExit("error: the prompt %r cannot be encoded: %s; use only characters the "
                         "model's tokenizer knows (a char model knows those of its training "
                         "text)" % (prompt[:60], exc))
    if not ids:
        raise SystemExit("error: the prompt encodes to no tokens (%r); give a non-empty "
                         "--prompt" % prompt)
    out = sys.stdout
    if echo:
        out.write(_printable(prompt, out))
        out.flush()
    new, shown = [], ""
    t0 = time.time()
    try:
        for tok in model.stream(np.array([ids]), args.max_new_tokens, args.temperature,
                                args.top_k, args.top_p, args.seed, use_cache=use_cache,
                                stop_token=stop):
            if stop is not None and int(tok[0]) == stop:
                break
            new.append(int(tok[0]))
            if new[-1] >= tokenizer.vocab_size:  # a model with a padded vocabulary
                raise SystemExit("error: the model sampled token id %d, which the tokenizer "
                                 "(%d ids) cannot decode" % (new[-1], tokenizer.vocab_size))
            text = tokenizer.decode(new)
            if text.endswith("\ufffd"):  # a multi-byte character still incomplete
                continue
            out.write(_printable(text[len(shown):], out))
            out.flush()
            shown = text
    except (Exception, SystemExit):
        out.write("\n")  # end the text line, so the error message does not run into it
        out.flush()
        raise
    text = tokenizer.decode(new)
    out.write(_printable(text[len(shown):] + "\n", out))
    out.flush()
    dt = time.time() - t0
    print("[%d tokens in %.2f s, %.1f tokens/s]" % (len(new), dt, len(new) / max(dt, 1e-9)),
          file=sys.stderr)


def cmd_train(args):
    from .train import TrainConfig, TrainingDiverged, train
    cfg = TrainConfig(data=args.data, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                      preset=args.preset, out=args.out, steps=args.steps,
                      batch_size=args.batch_size, block_size=args.block_size,
                      n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, lr=args.lr,
                      min_lr=args.min_lr, warmup=args.warmup, weight_decay=args.weight_decay,
                      beta2=args.beta2, grad_clip=args.grad_clip, grad_accum=args.grad_accum,
                      eval_interval=args.eval_interval, eval_iters=args.eval_iters,
                      seed=args.seed, attention=args.attention, n_features=args.n_features,
                      feature_redraw=args.feature_redraw, distributed=args.distributed)
    try:
        res = train(cfg, resume=args.resume, progress=not args.quiet)
    except TrainingDiverged as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 3
    if res["rank"] != 0:
        return 130 if res["interrupted"] else 0   # rank 0 reports for the run
    print("trained to step %d in %.1f s: train loss %s, val loss %s; saved in %s" % (
        res["step"], res["elapsed"], "%.4f" % res["loss"] if res["loss"] is not None else "-",
        "%.4f" % res["val_loss"] if res["val_loss"] is not None else "-", args.out),
        file=sys.stderr)
    if res["interrupted"]:
        return 130
    if args.sample_tokens > 0:
        print("--- sample (temperature 0.8, top-k 40) ---", file=sys.stderr)
        ns = argparse.Namespace(max_new_tokens=args.sample_tokens, temperature=0.8, top_k=40,
                                top_p=None, seed=0)
        _stream_sample(res["model"], res["tokenizer"], "\n", ns)
    return 0


def add_model_source(p, tokenizer=True):
    """--ckpt | --gpt2 (one required) and --tokenizer-file: where a command's model comes from."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="a training directory (or model file) written by pyllm")
    src.add_argument("--gpt2", help="a Hugging Face GPT-2 directory (config.json, "
                     "model.safetensors, vocab.json + merges.txt)")
    if tokenizer:
        p.add_argument("--tokenizer-file", default=None,
                       help="tokenizer for --ckpt when it is a bare model file")


def load_model_and_tokenizer(args):
    """The model and tokenizer named by ``add_model_source``'s arguments, checked to match."""
    import pyllm
    from .checkpoint import TOKENIZER_FILE
    if args.gpt2:
        model = pyllm.load_gpt2(args.gpt2)
        from .checkpoint import load_gpt2_tokenizer
        tokenizer = load_gpt2_tokenizer(args.gpt2)   # GPT-2 BPE files, or a char export
    else:
        model = pyllm.load(args.ckpt)
        tf = args.tokenizer_file
        if tf is None:
            base = args.ckpt if os.path.isdir(args.ckpt) else os.path.dirname(args.ckpt)
            tf = os.path.join(base, TOKENIZER_FILE)
        if not os.path.exists(tf):
            raise SystemExit("error: no tokenizer found at %s (pass --tokenizer-file)" % tf)
        tokenizer = pyllm.load_tokenizer(tf)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise SystemExit("error: the tokenizer (%d ids) does not fit the model (%d): pass the "
                         "tokenizer the model was trained with (--tokenizer-file)"
                         % (tokenizer.vocab_size, model.config.vocab_size))
    if args.ckpt and tokenizer.vocab_size != model.config.vocab_size:
        # pyllm writes the two together, so they always agree: this is the wrong tokenizer
        raise SystemExit("error: the tokenizer (%d ids) does not match the model (%d ids): pass "
                         "the tokenizer the model was trained with (--tokenizer-file)"
                         % (tokenizer.vocab_size, model.config.vocab_size))
    return model, tokenizer


def cmd_sample(args):
    _check_sampling_args(args)
    model, tokenizer = load_model_and_tokenizer(args)
    from .model import GPT
    if args.int8 and isinstance(model, GPT):
        from .quant import quantize
        model = quantize(model)
    if args.instruction is not None:
        if args.prompt is not None:
            raise ValueError("give --prompt or --instruction, not both")
        from .finetune import end_token, format_instruction
        prompt = format_instruction({"instruction": args.instruction, "input": args.input or ""})
        _stream_sample(model, tokenizer, prompt, args, use_cache=not args.no_cache, echo=False,
                       stop=end_token(tokenizer))
        return 0
    if args.input is not None:
        raise ValueError("--input %r needs --instruction (the task it is the input to); for "
                         "plain text use --prompt" % args.input)
    _stream_sample(model, tokenizer, args.prompt, args, use_cache=not args.no_cache)
    return 0


def cmd_quantize(args):
    import pyllm
    from .model import GPT
    from .quant import quantize
    src = pyllm.load_gpt2(args.gpt2) if args.gpt2 else pyllm.load(args.ckpt)
    if not isinstance(src, GPT):
        raise ValueError("%s is already an int8 model; quantize the float model it came from, "
                         "or sample it as it is (pyllm sample --ckpt %s)" % (args.ckpt, args.ckpt))
    qm = quantize(src)
    qm.save(args.out)
    fp32 = src.params.nbytes
    print("wrote %s: %s (%.1f MB of weights, %.2fx the float32 %.1f MB)"
          % (args.out, qm, qm.nbytes / 1e6, qm.nbytes / fp32, fp32 / 1e6), file=sys.stderr)
    return 0


def self_test():
    """Run every kernel on small random inputs in both backends; returns [(name, max_err)]."""
    from .backend import backend_module, c_unavailable_reason
    if c_unavailable_reason():
        return []
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    x, w, b = f(6, 16), f(16, 24), f(24)
    qkv = f(2, 9, 24)
    cases = {
        "matmul_forward": ([np.empty((6, 24), np.float32), x, w, b], 0),
        "layernorm_forward": ([np.empty_like(x), None, None, x, f(16), f(16)], 0),
        "gelu_forward": ([np.empty_like(x), x], 0),
        "softmax_forward": ([np.empty_like(x), x], 0),
        "crossentropy_forward": ([np.empty(6, np.float32), x, np.arange(6)], 0),
        "attention_forward": ([np.empty((2, 9, 8), np.float32), np.empty((2, 2, 9), np.float32),
                               qkv, 2], 0),
        "favor_features_forward": ([np.empty((2, 9, 16), np.float32), qkv[..., :8] * 0.5,
                                    f(16, 8)], 0),
        "linear_attention_forward": ([np.empty((2, 9, 8), np.float32),
                                      np.empty((2, 9), np.float32), np.exp(qkv[..., :8]),
                                      np.exp(qkv[..., 8:16]), qkv[..., 16:], f(2, 9)], 0),
    }
    res = []
    for name, (args, out_i) in cases.items():
        outs = []
        for be in ("numpy", "c"):
            a = [v.copy() if isinstance(v, np.ndarray) else v for v in args]
            getattr(backend_module(be), name)(*a)
            outs.append(a[out_i])
        res.append((name, float(np.max(np.abs(outs[0] - outs[1])))))
    return res


def cmd_info(args):
    import pyllm
    from .backend import backend_module, c_unavailable_reason
    print("pyllm %s (Python %s, NumPy %s)" % (__version__, sys.version.split()[0],
                                              np.__version__))
    print("backend: %s (%s)" % (pyllm.get_backend(), pyllm.backend_reason()))
    reason = c_unavailable_reason()
    if reason:
        print("C extension: unavailable: %s" % reason)
    else:
        c = backend_module("c")
        print("C extension: %s" % c.build_info())
        from ._srchash import describe_sources
        print("C sources: %s" % describe_sources(c.source_hash()))
        print("OpenMP: %s, threads: %d; SIMD level: %s (available: %s; force one with "
              "PYLLM_SIMD)" % ("yes" if c.has_openmp() else "no", pyllm.get_num_threads(),
                               pyllm.get_simd(), ", ".join(pyllm.available_simd())))
        worst = 0.0
        for name, err in self_test():
            worst = max(worst, err)
            print("  self-test %-22s max |C - NumPy| = %.2e" % (name, err))
        print("self-test: %s" % ("ok" if worst < 1e-4 else "FAILED"))
        if worst >= 1e-4:
            return 1
    from .distributed import describe
    print("distributed training: %s" % describe())
    if args.ckpt:
        describe_model(pyllm.load(args.ckpt), args.ckpt)
    return 0


def describe_model(model, where):
    """Print a model's shape, size and attention kernel (``pyllm info --ckpt``)."""
    c = model.config
    print("model %s: %s" % (where, model))
    print("  vocab_size %d, block_size %d, n_layer %d, n_head %d, n_embd %d (head size %d)"
          % (c.vocab_size, c.block_size, c.n_layer, c.n_head, c.n_embd, c.n_embd // c.n_head))
    if c.attention == "favor":
        print("  attention: favor, %d random features per layer, %s" % (
            c.n_features, "redrawn every %d steps" % c.feature_redraw if c.feature_redraw
            else "never redrawn"))
    else:
        print("  attention: %s" % {"softmax": "softmax (exact, GPT-2)",
                                   "linear": "linear (elu + 1 features)"}[c.attention])


def _cmd_bench(args):
    from .cli_bench import cmd_bench
    return cmd_bench(args)


def main(argv=None):
    """Entry point of ``python -m pyllm`` and the ``pyllm`` script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        _apply_backend_args(args)
        from . import cli_explore, cli_finetune, export_html, hf_export
        return {"train": cmd_train, "sample": cmd_sample, "info": cmd_info,
                "quantize": cmd_quantize, "finetune": cli_finetune.cmd_finetune,
                "classify": cli_finetune.cmd_classify,
                "heads": cli_explore.cmd_heads,
                "neighbors": cli_explore.cmd_neighbors,
                "export-hf": hf_export.cmd_export_hf,
                "bench": _cmd_bench,
                "export-html": export_html.cmd_export_html}[args.command](args)
    except BrokenPipeError:
        return 0
    except MemoryError as exc:
        print("error: out of memory%s" % (": %s" % exc if str(exc) else ""), file=sys.stderr)
        return 2
    # OSError: missing, unreadable or unwritable paths; ArithmeticError: e.g. the
    # FloatingPointError of a model whose logits overflow
    except (ValueError, TypeError, OSError, RuntimeError, ArithmeticError) as exc:
        print("error: %s" % (str(exc) or type(exc).__name__), file=sys.stderr)
        return 2
