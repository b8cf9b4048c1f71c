"""The training loop: data, schedule, accumulation, evaluation, progress, log, checkpoints.

``train(TrainConfig(...))`` trains a GPT on a text file, a directory of text files, or the default
corpus (text from the running Python's standard library), and writes into ``out``:

- ``checkpoint.safetensors``: model, AdamW state, step, batch-RNG state and settings (one file,
  written atomically; see :mod:`pyllm.checkpoint`);
- ``tokenizer.txt``, ``config.json`` (readable settings), ``tokens.bin`` (+ ``.json``, the token
  cache), ``log.jsonl`` (one JSON object per step and per evaluation) and ``loss.svg``.

Resuming (``resume=True``) continues from the checkpoint so that the losses equal those of an
uninterrupted run, step for step. Ctrl-C (SIGINT) finishes the current step, saves and returns.
A NaN or Inf loss (or gradient norm) stops training with :class:`TrainingDiverged` and leaves the
last good checkpoint untouched; a checkpoint is never written from non-finite weights. A checkpoint
whose training state is missing or inconsistent raises :class:`~pyllm.CheckpointError` on resume.
"""
import dataclasses
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from . import data as data_mod
from .checkpoint import CHECKPOINT_FILE, TOKENIZER_FILE, CheckpointError, load_checkpoint, \
    save_checkpoint
from .model import ATTENTION_KINDS, GPT, MAX_FEATURES, GPTConfig
from .optim import AdamW, clip_grad_norm, cosine_lr
from .plot import MAX_POINTS, write_loss_curve
from .rng import RNG
from .tensorfile import _atomic_write, atomic_write_text
from .tokenizer import BPETokenizer, CharTokenizer, load_tokenizer

# Model and run presets. "shakespeare" is nanoGPT's CPU recipe for Shakespeare-char.
PRESETS = {
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=16, steps=1500,
                 lr=1e-3, min_lr=1e-4, warmup=100, beta2=0.99, eval_interval=250),
    "shakespeare": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12,
                        steps=2000, lr=1e-3, min_lr=1e-4, warmup=100, beta2=0.99,
                        eval_interval=250),
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=8, steps=5000,
                  lr=1e-3, min_lr=1e-4, warmup=200, beta2=0.99, eval_interval=500),
}
LOG_FILE, CURVE_FILE, CONFIG_FILE, TOKENS_FILE = "log.jsonl", "loss.svg", "config.json", \
    "tokens.bin"


MAX_PARAMS = 2**31 - 1       # the C kernels index the parameter slab with a C int
MAX_BLOCK_SIZE = 2**20       # as GPTConfig


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or Inf; the last good checkpoint was kept."""


@dataclass
class TrainConfig:
    """Settings of a training run. ``None`` fields take the preset's value."""
    data: Optional[str] = None          # text file or directory; None: the default corpus
    tokenizer: str = "char"             # "char" or "bpe"
    vocab_size: int = 512               # BPE vocabulary size (bpe only)
    preset: str = "tiny"
    out: str = "out"
    steps: Optional[int] = None
    batch_size: Optional[int] = None
    block_size: Optional[int] = None
    n_layer: Optional[int] = None
    n_head: Optional[int] = None
    n_embd: Optional[int] = None
    lr: Optional[float] = None
    min_lr: Optional[float] = None
    warmup: Optional[int] = None
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: Optional[float] = None
    grad_clip: float = 1.0
    grad_accum: int = 1
    eval_interval: Optional[int] = None
    eval_iters: int = 20
    val_fraction: float = 0.1
    seed: int = 1337
    attention: str = "softmax"          # "softmax", "favor" or "linear" (docs/ATTENTION.md)
    n_features: int = 64                # FAVOR+ random features per layer (favor only)
    feature_redraw: int = 100           # redraw them every this many steps; 0: never (favor)
    stop_at: Optional[int] = None       # stop (and save) before this step, as Ctrl-C would
    distributed: bool = False           # data-parallel over MPI ranks (pyllm.distributed)
    extra: dict = field(default_factory=dict)

    def resolved(self):
        """A copy with every ``None`` filled from the preset, validated."""
        if self.preset not in PRESETS:
            raise ValueError("unknown preset %r; choose one of %s" % (self.preset,
                                                                    ", ".join(PRESETS)))
        c = dataclasses.replace(self)
        for k, v in PRESETS[self.preset].items():
            if getattr(c, k) is None:
                setattr(c, k, v)
        if c.tokenizer not in ("char", "bpe"):
            raise ValueError("tokenizer must be 'char' or 'bpe', got %r" % c.tokenizer)
        for k in ("steps", "batch_size", "block_size", "n_layer", "n_head", "n_embd",
                  "grad_accum", "eval_interval", "eval_iters"):
            v = getattr(c, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError("%s must be an integer >= 1, got %r" % (k, v))
        if not isinstance(c.warmup, int) or c.warmup < 0:
            raise ValueError("warmup must be an integer >= 0, got %r" % (c.warmup,))
        for k in ("lr", "min_lr", "weight_decay", "grad_clip"):
            v = getattr(c, k)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError("%s must be a finite number >= 0, got %r" % (k, v))
        if c.grad_clip == 0:
            raise ValueError("grad_clip must be > 0")
        for k in ("beta1", "beta2"):
            if not 0 <= getattr(c, k) < 1:
                raise ValueError("%s must be in [0, 1)" % k)
        if not 0 < c.val_fraction <= 0.5:
            raise ValueError("val_fraction must be in (0, 0.5], got %r" % (c.val_fraction,))
        if c.n_embd % c.n_head:
            raise ValueError("n_embd (%d) must be divisible by n_head (%d)" % (c.n_embd, c.n_head))
        if c.attention not in ATTENTION_KINDS:
            raise ValueError("attention must be one of %s, got %r"
                             % (", ".join(ATTENTION_KINDS), c.attention))
        for k, lo in (("n_features", 1), ("feature_redraw", 0)):
            v = getattr(c, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError("%s must be an integer >= %d, got %r" % (k, lo, v))
        if c.n_features > MAX_FEATURES:
            raise ValueError("n_features must be at most %d, got %d" % (MAX_FEATURES,
                                                                       c.n_features))
        if c.block_size > MAX_BLOCK_SIZE:
            raise ValueError("block_size must be at most %d, got %d" % (MAX_BLOCK_SIZE,
                                                                        c.block_size))
        # parameters apart from the token embedding (the vocabulary is not known yet): refuse
        # absurd shapes at once, before reading the data or allocating anything
        n = c.n_layer * (12 * c.n_embd ** 2 + 13 * c.n_embd) + (c.block_size + 2) * c.n_embd
        if n > MAX_PARAMS:
            raise ValueError("n_layer=%d, n_embd=%d and block_size=%d give %s parameters, more "
                             "than pyllm can train (%s)" % (c.n_layer, c.n_embd, c.block_size,
                                                            format(n, ","),
                                                            format(MAX_PARAMS, ",")))
        return c


def _format_time(s):
    s = int(max(0, s))
    return "%dh%02dm" % (s // 3600, s % 3600 // 60) if s >= 3600 else "%dm%02ds" % (s // 60, s % 60)


def estimate_loss(model, dataset, split, iters, batch_size, block_size, seed, world=None):
    """Mean loss over ``iters`` random batches drawn with a fresh RNG(seed) (the same batches
    every time it is called with the same seed). With a ``world`` of N ranks (pyllm.distributed)
    rank r computes batches r, r + N, ...; the sum is reduced over the ranks."""
    rng = RNG(seed)
    rank, size = (world.rank, world.size) if world is not None else (0, 1)
    total = 0.0
    for i in range(iters):
        x, y = dataset.get_batch(split, batch_size, block_size, rng)  # every rank draws all
        if i % size == rank:
            total += model.loss(x, y)
    if size > 1:
        total = world.sum(total)
    return float(total / iters)


def _iter_log(path, before_step=None):
    """Entries of log.jsonl, one at a time (those with step < before_step when given); the file
    is streamed, never held in memory whole."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                e = json.loads(line)
            except ValueError:
                continue  # a torn last line after a crash
            if not isinstance(e, dict) or isinstance(e.get("step"), bool) \
                    or not isinstance(e.get("step"), int):
                continue  # not a line this trainer wrote (an edited file)
            if before_step is None or e["step"] < before_step:
                yield e


class _CurvePoints:
    """Evenly spaced points of a stream in bounded memory, for the loss curve: every stride-th
    point, the stride doubling whenever more than ``limit`` are kept, plus the latest point (so
    a curve of up to ``limit`` points is drawn whole, a longer one with limit/2 to limit + 1)."""

    def __init__(self, limit=MAX_POINTS):
        self.limit, self.stride, self.n, self.pts, self.last = limit, 1, 0, [], None

    def add(self, p):
        if self.n % self.stride == 0:
            self.pts.append(p)
            if len(self.pts) > self.limit:
                self.pts, self.stride = self.pts[::2], self.stride * 2
        self.n += 1
        self.last = p

    def points(self):
        if self.pts and self.pts[-1] is not self.last:
            return self.pts + [self.last]
        return list(self.pts)


def _write_curve(out):
    # one pass over the log keeping a bounded number of points, so that the memory this takes
    # does not grow with the length of the run (it runs at every evaluation)
    train, val = _CurvePoints(), _CurvePoints()
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    for e in _iter_log(os.path.join(out, LOG_FILE)):
        if number(e.get("loss")):
            train.add((e["step"], e["loss"]))
        if number(e.get("val_loss")):
            val.add((e["step"], e["val_loss"]))
    write_loss_curve(os.path.join(out, CURVE_FILE),
                     {"train": train.points(), "val": val.points()}, title="pyllm training loss")


def _truncate_log(path, before_step):
    """Rewrite log.jsonl atomically with only the entries of steps < before_step (streamed)."""
    def write(f):
        for e in _iter_log(path, before_step):
            f.write((json.dumps(e) + "\n").encode("utf-8"))
    _atomic_write(path, write)


def prepare_data(cfg, log, tokenizer=None):
    """Read the text, build (or reuse) the tokenizer, and tokenize with the on-disk cache."""
    if cfg.data is None:
        text, desc = data_mod.default_corpus()
        log("data: the default corpus (%s)" % desc)
    else:
        text = data_mod.read_text(cfg.data)
        log("data: %s (%s characters)" % (cfg.data, format(len(text), ",")))
    if tokenizer is None:
        t0 = time.time()
        if cfg.tokenizer == "char":
            tokenizer = CharTokenizer.train(text)
        else:
            tokenizer = BPETokenizer.train(text, cfg.vocab_size)
        log("tokenizer: %s, vocabulary %d (%.1f s)" % (cfg.tokenizer, tokenizer.vocab_size,
                                                       time.time() - t0))
        tokens = data_mod.tokenize_cached(text, tokenizer, os.path.join(cfg.out, TOKENS_FILE))
    else:
        # resuming: the text may have changed since, or the tokenizer file been replaced
        try:
            tokens = data_mod.tokenize_cached(text, tokenizer,
                                              os.path.join(cfg.out, TOKENS_FILE))
        except ValueError as exc:
            raise ValueError("%s cannot be encoded with the run's tokenizer (%s): %s"
                             % (cfg.data or "the default corpus",
                                os.path.join(cfg.out, TOKENIZER_FILE), exc)) from None
    ds = data_mod.TokenDataset(tokens, cfg.val_fraction)
    log("tokens: %s train, %s val" % (format(ds.n_train, ","), format(ds.n_val, ",")))
    need = cfg.block_size + 1
    if ds.n_train < need or ds.n_val < need:
        # say so now, not after building the model (or at the first evaluation)
        raise ValueError("the text gives %s training and %s validation tokens, too few for "
                         "block_size %d (each split needs at least %d); use a smaller "
                         "block_size or more text" % (format(ds.n_train, ","),
                                                     format(ds.n_val, ","), cfg.block_size, need))
    return tokenizer, ds


class _Interrupt:
    """Turns SIGINT into a flag checked between steps (a step is never cut in half)."""

    def __init__(self):
        self.hit = False
        self.old = None

    def __enter__(self):
        try:
            self.old = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not in the main thread: no handler, Ctrl-C behaves as usual
            self.old = None
        return self

    def _handler(self, signum, frame):
        if self.hit:  # a second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.hit = True

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)


def _rows(cfg, world):
    """This rank's rows of the global batch (all of them in one process)."""
    if world.size == 1:
        return 0, cfg.batch_size
    from .distributed import split_rows
    return split_rows(cfg.batch_size, world)


def _load_resume_state(out, cfg):
    """Read the checkpoint in ``out`` for resuming; returns ``(model, optim_state, state,
    settings, rng)``. Raises :class:`CheckpointError` when the saved training state is missing
    or inconsistent (a checkpoint edited by hand or written by something else)."""
    model, opt_state, state = load_checkpoint(out)
    where = os.path.join(out, CHECKPOINT_FILE)
    saved = state.get("train")
    if not isinstance(saved, dict):
        raise CheckpointError("%s has no training settings ('train' in its state); a model "
                              "file can be loaded with pyllm.load, not resumed" % where)
    # the run's settings come from the checkpoint; only the length, the stop and the number of
    # processes may change
    saved = dict(saved, steps=cfg.steps or saved.get("steps"), stop_at=cfg.stop_at,
                 distributed=cfg.distributed)
    try:
        settings = TrainConfig(**saved).resolved()
    except (TypeError, ValueError) as exc:
        raise CheckpointError("%s has invalid training settings: %s" % (where, exc)) from None
    mc = model.config
    keys = ("block_size", "n_layer", "n_head", "n_embd", "attention")
    if mc.attention == "favor":
        keys += ("n_features", "feature_redraw")
    for k in keys:
        if getattr(settings, k) != getattr(mc, k):
            raise CheckpointError("%s: the training settings say %s=%r but the model has %r"
                                  % (where, k, getattr(settings, k), getattr(mc, k)))
    rng = RNG(0)
    try:
        rng.set_state(state.get("rng"))
    except ValueError as exc:
        raise CheckpointError("%s: %s" % (where, exc)) from None
    return model, opt_state, state, settings, rng


def train(cfg, resume=False, log=None, progress=True):
    """Run training as described by ``cfg`` (a :class:`TrainConfig`); returns a dict with the
    model, tokenizer, final step, last train and validation loss and whether it was interrupted.
    ``log`` receives human-readable lines (default: print to stderr).

    With ``cfg.distributed`` the run is one rank of a data-parallel MPI job
    (:mod:`pyllm.distributed`): ``cfg.batch_size`` is the global batch, split evenly over the
    ranks; only rank 0 logs, prints and writes files. An exception on any rank aborts every
    rank (mpirun exits non-zero) instead of leaving the others waiting in a collective."""
    if not cfg.distributed:
        from .distributed import Solo
        return _train(cfg, resume, log, progress, Solo())
    from . import distributed
    world = distributed.init()
    try:
        return _train(cfg, resume, log, progress, world)
    except BaseException as exc:
        distributed.fail(world, exc)   # returns only in a world of one process
        raise


def _train(cfg, resume, log, progress, world):
    root = world.is_root
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    if not root:
        log = lambda s: None  # noqa: E731  (rank 0 speaks for the run)
    progress = progress and root
    out = cfg.out
    if os.path.exists(out) and not os.path.isdir(out):
        raise NotADirectoryError("the output directory %s exists and is not a directory" % out)
    if root:
        os.makedirs(out, exist_ok=True)
    if not root:
        world.barrier()   # rank 0 prepares the directory, tokenizer and token cache first
    if resume:
        model, opt_state, state, cfg, rng = _load_resume_state(out, cfg)
        rows = _rows(cfg, world)
        tokenizer = load_tokenizer(os.path.join(out, TOKENIZER_FILE))
        if tokenizer.vocab_size != model.config.vocab_size:
            raise CheckpointError("%s has %d token ids but the checkpoint's model has %d: it is "
                                  "not the tokenizer this run was trained with"
                                  % (os.path.join(out, TOKENIZER_FILE), tokenizer.vocab_size,
                                     model.config.vocab_size))
        tokenizer, ds = prepare_data(cfg, log, tokenizer)
        opt = AdamW(model, cfg.lr, (cfg.beta1, cfg.beta2), 1e-8, cfg.weight_decay)
        opt.load_state_dict(opt_state)
        start = state["step"]
        log("resuming from step %d" % start)
    else:
        cfg = cfg.resolved()
        rows = _rows(cfg, world)
        if root:
            tokenizer, ds = prepare_data(cfg, log)
            tokenizer.save(os.path.join(out, TOKENIZER_FILE))
        else:
            tokenizer, ds = prepare_data(cfg, log,
                                         load_tokenizer(os.path.join(out, TOKENIZER_FILE)))
        mcfg = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=cfg.block_size,
                         n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                         attention=cfg.attention, n_features=cfg.n_features,
                         feature_redraw=cfg.feature_redraw if cfg.attention == "favor" else 0)
        model = GPT(mcfg, seed=cfg.seed)
        opt = AdamW(model, cfg.lr, (cfg.beta1, cfg.beta2), 1e-8, cfg.weight_decay)
        rng = RNG(cfg.seed)
        start = 0
        if root and os.path.exists(os.path.join(out, LOG_FILE)):
            os.remove(os.path.join(out, LOG_FILE))
    if root:
        world.barrier()   # the other ranks may read the directory now
    if world.size > 1:    # identical on every rank already; the broadcast makes it certain
        world.bcast_(model.params)
        if start:
            world.bcast_(opt.m)
            world.bcast_(opt.v)
    settings = dataclasses.asdict(cfg)
    if root:
        atomic_write_text(os.path.join(out, CONFIG_FILE),
                          json.dumps({"model": model.config.to_dict(), "train": settings},
                                     indent=2) + "\n")
        # keep the log consistent with the checkpoint: drop entries of steps it does not contain
        _truncate_log(os.path.join(out, LOG_FILE), start)
    log("model: %s" % model)
    from .backend import get_backend, get_num_threads, ops
    log("backend: %s, %d thread(s)%s; %d steps of %d x %d tokens%s" % (
        get_backend(), get_num_threads(),
        " per rank x %d MPI ranks (%d rows each; %s)" % (world.size, rows[1] - rows[0],
                                                          world.library)
        if cfg.distributed else "", cfg.steps, cfg.batch_size, cfg.block_size,
        " x %d accumulated" % cfg.grad_accum if cfg.grad_accum > 1 else ""))

    def checkpoint(step):
        if not math.isfinite(ops.norm_squared(model.params)):  # never replace a good one
            raise TrainingDiverged("the weights are no longer finite at step %d; stopping. The "
                                   "last good checkpoint in %s was kept." % (step, out))
        if root:
            save_checkpoint(out, model, opt, {"step": step, "rng": rng.get_state(),
                                              "train": settings})

    tokens_per_step = cfg.batch_size * cfg.block_size * cfg.grad_accum
    result = {"model": model, "tokenizer": tokenizer, "interrupted": False,
              "loss": None, "val_loss": None, "rank": world.rank, "ranks": world.size}
    logf = open(os.path.join(out, LOG_FILE) if root else os.devnull, "a", encoding="utf-8")
    t_start, step = time.time(), start
    recent = []
    tty = sys.stderr.isatty()
    try:
        with _Interrupt() as intr:
            for step in range(start, cfg.steps):
                # every rank stops at the same step (a Ctrl-C may reach them a step apart)
                if world.any(intr.hit or (cfg.stop_at is not None and step >= cfg.stop_at)):
                    checkpoint(step)
                    if root:
                        _write_curve(out)
                    result["interrupted"] = True
                    if progress and tty:
                        sys.stderr.write("\n")
                    log("stopped at step %d; checkpoint saved in %s (continue with --resume)"
                        % (step, out))
                    break
                t0 = time.time()
                redraw = model.config.feature_redraw
                if redraw and step > 0 and step % redraw == 0:
                    # FAVOR+ features: a function of (seed, step), so resuming redraws the same
                    model.redraw_features(cfg.seed, step)
                lr = cosine_lr(step, cfg.lr, cfg.min_lr, cfg.warmup, cfg.steps)
                opt.lr = lr
                loss = 0.0
                for micro in range(cfg.grad_accum):
                    # every rank draws the whole global batch and computes its own rows
                    x, y = ds.get_batch("train", cfg.batch_size, cfg.block_size, rng)
                    if world.size > 1:
                        x, y = x[rows[0]:rows[1]], y[rows[0]:rows[1]]
                    li, grads = model.loss_and_grads(
                        x, y, accumulate=micro > 0,
                        loss_scale=1.0 / (cfg.grad_accum * world.size))
                    loss += li / cfg.grad_accum
                if world.size > 1:  # the global batch's gradient and loss on every rank
                    t_comm = time.time()
                    world.allreduce_sum_(grads.flat)
                    loss = world.sum(loss) / world.size
                    t_comm = time.time() - t_comm
                if not math.isfinite(loss):
                    raise TrainingDiverged(
                        "the loss became %r at step %d; stopping. The last good checkpoint in "
                        "%s was kept. Try a lower learning rate (now %g) or stronger gradient "
                        "clipping." % (loss, step, out, lr))
                norm = clip_grad_norm(grads, cfg.grad_clip)
                if not math.isfinite(norm):  # an update would make every weight NaN
                    raise TrainingDiverged(
                        "the gradient norm became %r at step %d (loss %r); stopping. The last "
                        "good checkpoint in %s was kept. Try a lower learning rate (now %g)."
                        % (norm, step, loss, out, lr))
                opt.step(grads)
                dt = time.time() - t0
                recent = (recent + [dt])[-20:]
                tps = tokens_per_step / max(1e-9, float(np.median(recent)))
                entry = {"step": step, "loss": loss, "lr": lr,
                         "grad_norm": round(norm, 6), "tokens_per_s": round(tps, 1),
                         "time": round(time.time() - t_start, 3)}
                if world.size > 1:
                    entry["allreduce_s"] = round(t_comm, 6)
                result["loss"] = loss
                last = step == cfg.steps - 1
                if (step + 1) % cfg.eval_interval == 0 or last:
                    entry["val_loss"] = float(estimate_loss(
                        model, ds, "val", cfg.eval_iters, cfg.batch_size, cfg.block_size,
                        cfg.seed + 1, world))
                    result["val_loss"] = entry["val_loss"]
                logf.write(json.dumps(entry) + "\n")
                logf.flush()
                # a progress line redrawn every step on a terminal; into a file or pipe, one
                # plain line every 5% of the run
                every = 1 if tty else max(1, cfg.steps // 20)
                if progress and ((step + 1) % every == 0 or last):
                    eta = (cfg.steps - step - 1) * tokens_per_step / tps
                    sys.stderr.write("%sstep %d/%d | loss %.4f | lr %.2e | %s tok/s | ETA %s%s"
                                     % ("\r" if tty else "", step + 1, cfg.steps, loss, lr,
                                        format(int(tps), ","), _format_time(eta),
                                        "   " if tty else "\n"))
                    sys.stderr.flush()
                if "val_loss" in entry:
                    checkpoint(step + 1)
                    if root:
                        _write_curve(out)
                    if progress and tty:
                        sys.stderr.write("\n")
                    log("step %d: train loss %.4f, val loss %.4f (checkpoint saved)"
                        % (step + 1, loss, entry["val_loss"]))
            else:
                step = cfg.steps
    finally:
        logf.close()
    result["step"] = step
    result["elapsed"] = time.time() - t_start
    return result
