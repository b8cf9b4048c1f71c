"""The benchmarks, as a library: ``pyllm bench`` (pyllm/cli_bench.py) and the scripts in
``benchmarks/`` (bench_kernels.py, bench_train.py, bench_sample.py) all run this code, so an
installed package (wheel or sdist, no source checkout) can measure itself.

Three parts, each printing medians with their min-max:

* **kernels** -- every kernel at the shapes one training step uses, C against NumPy in one
  process, and each C kernel on 1 thread and on N (the 1->N speed-up). Milliseconds per call.
* **train** -- tokens/s of whole training steps (forward, backward, gradient clipping, AdamW),
  C vs NumPy, and PyTorch eager when it is importable. Every (config, implementation) runs in its
  own subprocess (``python -m pyllm.bench --child train ...``), so its peak RSS is its own.
* **sample** -- tokens/s of KV-cache generation at batch 1: C float32, C int8 (pyllm.quantize),
  NumPy, and PyTorch when importable.

The machine these were written on is shared and noisy (its speed drifts 10-20% from one minute to
the next), so implementations alternate in rounds and every figure is a median; ratios compare
runs made close together in time.

``pyllm bench --json FILE`` writes the figures; ``pyllm bench --compare OLD.json`` prints, per row
present in both runs, the new/old ratio (``--new NEW.json`` compares two saved runs without
measuring anything). JSON schema, ``"version": 1``::

    {
      "version": 1,                         # this schema; --compare refuses any other
      "created": "2025-01-31T12:00:00Z",    # UTC
      "argv": ["bench", "--quick"],         # the command line, for the record
      "quick": true,                        # --quick sizes (a quick run and a full run share no
                                            # rows: their configs differ)
      "threads": 2,                         # N, the C threads of every part
      "machine": {
        "cpu_model": "AMD EPYC",            # /proc/cpuinfo "model name", else platform
        "arch": "x86_64",
        "platform": "Linux-6.1-x86_64-with-glibc2.36",
        "logical_cores": 2,                 # os.cpu_count()
        "usable_cores": 2,                  # os.sched_getaffinity(0)
        "c_backend": true,                  # false: "c_unavailable" says why, simd_available
        "c_unavailable": null,              #   is [] and the other C fields are null
        "simd": "avx2",                     # the level the C kernels ran at
        "simd_available": ["portable", "avx2"],
        "openmp": true,
        "c_threads": 2,
        "build_info": "compiler: gcc ...; flags: -O3 -fopenmp; openmp: yes; ...",
        "source_hash": "4f5b...",           # sha256 of the C sources the extension was built from
        "versions": {"pyllm": "0.1.0", "python": "3.11.7", "numpy": "1.26.4",
                     "torch": "2.3.0"},     # torch: null when not installed
        "pyllm_path": "/usr/lib/python3/site-packages/pyllm"  # the package that ran
      },
      "parts": {                            # the settings each part ran with, and its wall time
        "kernels": {"config": "b", "shape": {"B": 8, "T": 256, ...}, "rounds": 2, "repeat": 3,
                    "seconds": 31.2},
        "train": {...}, "sample": {...}
      },
      "rows": [                             # one per (part, config, name, implementation)
        {"part": "kernels", "config": "b",  # config: kernels quick|a|b, train quick|a|b|c,
                                            #   sample quick|a|b|gpt2
         "name": "matmul_forward qkv",      # kernels: the table's label; train: "training
                                            #   step"; sample: "generate N tokens" (and
                                            #   "first token after N prompt tokens", unit s,
                                            #   from bench_sample.py --ttft)
         "implementation": "c",             # kernels: numpy | c | c-1thread;
                                            # train: c | numpy | torch;
                                            # sample: c | c-int8 | numpy | torch
         "threads": 2,                      # C threads; null for NumPy's kernels (its BLAS
                                            #   picks its own; train children get N)
         "median": 25.7, "min": 23.7, "max": 26.6,   # finite, > 0
         "unit": "ms",                      # "ms" or "s" (lower is better) or "tokens/s" (higher)
         "better": "lower",                 # "lower" | "higher"
         "samples": 6},                     # how many timings the median is of
        {"part": "train", "config": "a", "name": "training step", "implementation": "torch",
         "threads": 2, "median": 9100.0, "min": 8000.0, "max": 9800.0, "unit": "tokens/s",
         "better": "higher", "samples": 30, "rounds": 2,  # train rows also carry their peak
         "rss_mib": 310.2, "loss": 5.55},   #   RSS (the subprocess's own) and last loss
        ...
      ]
    }

``--compare`` matches rows on (part, config, name, implementation) and prints new/old; it says
which way is better per unit, warns when the two machines differ (CPU, cores, SIMD, OpenMP) and
notes differing settings or software (threads, versions, build).
"""
import json
import math
import os
import platform
import subprocess
import sys
import time

import numpy as np

SCHEMA_VERSION = 1
LOWER, HIGHER = "lower", "higher"
UNIT_BETTER = {"ms": LOWER, "s": LOWER, "tokens/s": HIGHER}


def _say(*args):
    print(*args, flush=True)


def progress(msg):
    """A progress line (stderr, so the tables on stdout stay clean)."""
    print("[bench] " + msg, file=sys.stderr, flush=True)


def _stats(values):
    v = [float(x) for x in values]
    return float(np.median(v)), min(v), max(v)


def row(part, config, name, impl, threads, values, unit, **extra):
    """One JSON row: median, min and max of ``values``."""
    med, lo, hi = _stats(values)
    r = {"part": part, "config": config, "name": name, "implementation": impl,
         "threads": threads, "median": med, "min": lo, "max": hi, "unit": unit,
         "better": UNIT_BETTER[unit], "samples": len(values)}
    r.update(extra)
    return r


# ---- the machine -------------------------------------------------------------------------------

def _cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key.strip() in ("model name", "Processor", "cpu model", "uarch") and val.strip():
                    return val.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(dist):
    try:
        from importlib import metadata
        return metadata.version(dist)
    except Exception:  # not installed, or no metadata (a source tree on sys.path)
        return None


def torch_available():
    """Whether PyTorch is installed (checked without importing it: that takes seconds)."""
    import importlib.util
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def machine_info():
    """The machine block: CPU, cores, SIMD, OpenMP, versions, the extension's build."""
    import pyllm
    from .backend import backend_module, c_unavailable_reason
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    reason = c_unavailable_reason()
    info = {"cpu_model": _cpu_model(), "arch": platform.machine(), "platform": platform.platform(),
            "logical_cores": os.cpu_count() or 1, "usable_cores": usable,
            "c_backend": reason is None, "c_unavailable": reason, "simd": None,
            "simd_available": [], "openmp": None, "c_threads": None, "build_info": None,
            "source_hash": None}
    if reason is None:
        c = backend_module("c")
        info.update(simd=pyllm.get_simd(), simd_available=list(pyllm.available_simd()),
                    openmp=c.has_openmp(), c_threads=pyllm.get_num_threads(),
                    build_info=c.build_info(), source_hash=c.source_hash())
    torch_version = None
    if torch_available():
        torch_version = _version("torch") or "installed"
    info["versions"] = {"pyllm": pyllm.__version__, "python": platform.python_version(),
                        "numpy": np.__version__, "torch": torch_version}
    info["pyllm_path"] = os.path.dirname(os.path.abspath(pyllm.__file__))
    return info


def format_machine(m):
    """The machine block as printed lines."""
    lines = ["machine: %s (%s), %d logical cores, %d usable; %s"
             % (m["cpu_model"], m["arch"], m["logical_cores"], m["usable_cores"], m["platform"])]
    if m["c_backend"]:
        lines.append("C kernels: SIMD %s (available: %s), OpenMP %s, %d threads; sources sha256 "
                     "%s" % (m["simd"], ", ".join(m["simd_available"]),
                             "yes" if m["openmp"] else "no", m["c_threads"],
                             (m["source_hash"] or "?")[:16]))
        lines.append("C build: %s" % m["build_info"])
    else:
        lines.append("C kernels: unavailable (%s): NumPy only" % m["c_unavailable"])
    v = m["versions"]
    lines.append("versions: pyllm %s, Python %s, NumPy %s, %s; pyllm from %s"
                 % (v["pyllm"], v["python"], v["numpy"],
                    "torch %s" % v["torch"] if v["torch"] else "no torch", m["pyllm_path"]))
    return lines


# ---- kernels -----------------------------------------------------------------------------------

KERNEL_CONFIGS = {  # name: (B, T, C, V, NH)
    "a": (16, 128, 128, 256, 4),
    "b": (8, 256, 384, 256, 6),
    "quick": (4, 64, 64, 256, 4),
}


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def kernel_cases(B, T, C, V, NH):
    """(label, kernel, args) at the shapes one training step of this config uses."""
    from .backend import backend_module
    rng = np.random.default_rng(0)
    N = B * T
    x, w1, w4 = f32(rng, N, C), f32(rng, C, 3 * C, scale=0.02), f32(rng, C, 4 * C, scale=0.02)
    idx = rng.integers(0, V, (B, T))
    qkv = f32(rng, B, T, 3 * C)
    att, lse = np.empty((B, T, C), np.float32), np.empty((B, NH, T), np.float32)
    backend_module("numpy").attention_forward(att, lse, qkv, NH)
    mean, rstd = np.empty(N, np.float32), np.empty(N, np.float32)
    lnw = np.ones(C, np.float32)
    backend_module("numpy").layernorm_forward(np.empty_like(x), mean, rstd, x, lnw, lnw)
    logits = f32(rng, N, V)
    probs = np.empty_like(logits)
    backend_module("numpy").softmax_forward(probs, logits)
    nparams = 12 * C * C * 4  # roughly four blocks' worth of parameters
    h = f32(rng, N, 4 * C)
    wp, res = f32(rng, C, C, scale=0.02), f32(rng, N, C)
    return [
        ("encoder_forward", "encoder_forward",
         [np.empty((B, T, C), np.float32), idx, f32(rng, V, C), f32(rng, T, C)]),
        ("encoder_backward", "encoder_backward",
         [np.zeros((V, C), np.float32), np.zeros((T, C), np.float32), f32(rng, B, T, C), idx]),
        ("layernorm_forward", "layernorm_forward",
         [np.empty_like(x), mean.copy(), rstd.copy(), x, lnw, lnw]),
        ("layernorm_backward", "layernorm_backward",
         [np.zeros_like(x), np.zeros(C, np.float32), np.zeros(C, np.float32), x, x, lnw, mean,
          rstd]),
        ("matmul_forward qkv", "matmul_forward",
         [np.empty((N, 3 * C), np.float32), x, w1, np.zeros(3 * C, np.float32)]),
        ("matmul_backward qkv", "matmul_backward",
         [np.zeros_like(x), np.zeros_like(w1), np.zeros(3 * C, np.float32),
          f32(rng, N, 3 * C), x, w1]),
        ("matmul_forward fc", "matmul_forward",
         [np.empty((N, 4 * C), np.float32), x, w4, np.zeros(4 * C, np.float32)]),
        ("gemm lm-head (x @ wte^T)", "gemm",
         [np.empty((N, V), np.float32), x, f32(rng, V, C), False, True, False]),
        ("gelu_forward", "gelu_forward", [np.empty_like(h), h]),
        ("gelu_backward", "gelu_backward", [np.zeros_like(h), h, h]),
        ("residual_forward", "residual_forward", [np.empty_like(x), x, res]),
        ("matmul_forward proj", "matmul_forward", [np.empty_like(x), x, wp, wp[0]]),
        ("  + residual (fused)", "matmul_forward", [np.empty_like(x), x, wp, wp[0], res]),
        ("softmax_forward", "softmax_forward", [np.empty_like(logits), logits]),
        ("softmax_backward", "softmax_backward", [np.zeros_like(logits), logits, probs]),
        ("crossentropy_forward", "crossentropy_forward",
         [np.empty(N, np.float32), logits, idx.reshape(-1) % V]),
        ("crossentropy_backward", "crossentropy_backward",
         [np.empty_like(logits), logits, idx.reshape(-1) % V, 1.0 / N]),
        ("attention_forward", "attention_forward", [np.empty_like(att), lse.copy(), qkv, NH]),
        ("attention_backward", "attention_backward",
         [np.zeros_like(qkv), att, qkv, att, lse, NH]),
        ("adamw_update", "adamw_update",
         [f32(rng, nparams), f32(rng, nparams), np.zeros(nparams, np.float32),
          np.zeros(nparams, np.float32), 1e-3, 0.9, 0.95, 1e-8, 0.1, 1]),
    ]


def sample_times(fn, args, repeat, min_time=0.05, max_calls=50):
    """``repeat`` timings of ``fn(*args)`` after one warm-up call (first touch of the outputs);
    each is the mean over back-to-back calls lasting ``min_time`` (at most ``max_calls``)."""
    fn(*args)
    times = []
    for _ in range(repeat):
        n, t0 = 0, time.perf_counter()
        while True:
            fn(*args)
            n += 1
            dt = time.perf_counter() - t0
            if dt >= min_time or n >= max_calls:
                break
        times.append(dt / n)
    return times


def timeit(fn, args, repeat, min_time=0.05):
    """(median, min, max) seconds per call of ``fn(*args)``; see :func:`sample_times`."""
    return _stats(sample_times(fn, args, repeat, min_time))


def residual_cost(mod, kargs, n):
    """The cost of the residual add as the model runs it: matmul_forward with ``residual`` minus
    the same product without, the median of n back-to-back pairs (pairs cancel slow drifts of
    the machine's speed)."""
    plain = kargs[:4]
    diffs = []
    for _ in range(n):
        t0 = time.perf_counter()
        mod.matmul_forward(*plain)
        t1 = time.perf_counter()
        mod.matmul_forward(*kargs)
        t2 = time.perf_counter()
        diffs.append((t2 - t1) - (t1 - t0))
    return float(np.median(diffs))


def bench_kernels(config="b", repeat=3, rounds=2, threads=None, scaling=False, min_time=0.05,
                  pause=0.5, residual=True, shape=None):
    """Time every kernel on NumPy and C (and, with ``scaling``, C on 1 thread); print the table
    and return the JSON rows. ``rounds`` passes, each a NumPy pass over all kernels, a C pass at
    ``threads`` and, with ``scaling``, a C pass at 1 thread, with a pause of ``pause`` s between
    passes (OpenBLAS threads spin for a while after NumPy's BLAS calls and would slow the OpenMP
    kernels that follow; switching the thread count between the timings of one kernel slows the
    next multi-threaded call on the project's VM, hence whole passes). Each figure is the median
    (min-max) of the ``rounds * repeat`` timings."""
    import pyllm
    from .backend import backend_module, c_unavailable_reason
    have_c = c_unavailable_reason() is None
    if threads:
        pyllm.set_num_threads(threads)
    nthreads = pyllm.get_num_threads()
    one_thread_note = scaling and have_c and nthreads == 1
    scaling = scaling and have_c and nthreads > 1
    B, T, C, V, NH = shape or KERNEL_CONFIGS[config]
    _say("pyllm %s kernel benchmark: B=%d T=%d C=%d V=%d NH=%d, C threads=%d, medians of %d "
         "(%d round(s) of %d)" % (pyllm.__version__, B, T, C, V, NH, nthreads, rounds * repeat,
                                  rounds, repeat))
    if not have_c:
        _say("the C backend is unavailable (%s): NumPy only" % c_unavailable_reason())
    elif one_thread_note:
        _say("1 C thread: no 1-to-N scaling column (give more threads for one)")
    all_cases = kernel_cases(B, T, C, V, NH)
    passes = [("numpy", backend_module("numpy"), None)]
    if have_c:
        passes.append(("c", backend_module("c"), nthreads))
        if scaling:
            passes.append(("c-1thread", backend_module("c"), 1))
    times = {(impl, label): [] for impl, _, _ in passes for label, _, _ in all_cases}
    for rnd in range(rounds):
        for impl, mod, nt in passes:
            if nt is not None and nt != pyllm.get_num_threads():
                pyllm.set_num_threads(nt)
            for label, name, kargs in all_cases:
                times[impl, label] += sample_times(getattr(mod, name), kargs, repeat, min_time)
            time.sleep(pause)
        if have_c:
            pyllm.set_num_threads(nthreads)
        if rounds > 1:
            progress("kernels: round %d of %d done" % (rnd + 1, rounds))
    if have_c:
        _say("%-26s %22s %22s %8s%s" % ("kernel", "numpy ms (min-max)", "c ms (min-max)",
                                        "speedup", "  c 1-thread ms, scaling" if scaling else ""))
    else:
        _say("%-26s %22s" % ("kernel", "numpy ms (min-max)"))
    rows, ratios = [], []
    cfg = config if shape is None else "custom"
    for label, _, _ in all_cases:
        tn = _stats(times["numpy", label])
        rows.append(row("kernels", cfg, label.strip(), "numpy", None,
                        [t * 1e3 for t in times["numpy", label]], "ms"))
        if not have_c:
            _say("%-26s %7.3f (%6.3f-%6.3f)" % (label, tn[0] * 1e3, tn[1] * 1e3, tn[2] * 1e3))
            continue
        tc = _stats(times["c", label])
        rows.append(row("kernels", cfg, label.strip(), "c", nthreads,
                        [t * 1e3 for t in times["c", label]], "ms"))
        ratios.append(tn[0] / tc[0])
        extra = ""
        if scaling:
            t1 = _stats(times["c-1thread", label])
            rows.append(row("kernels", cfg, label.strip(), "c-1thread", 1,
                            [t * 1e3 for t in times["c-1thread", label]], "ms"))
            extra = "  %8.3f %5.2fx" % (t1[0] * 1e3, t1[0] / tc[0])
        _say("%-26s %7.3f (%6.3f-%6.3f) %7.3f (%6.3f-%6.3f) %7.1fx%s" % (
            label, tn[0] * 1e3, tn[1] * 1e3, tn[2] * 1e3, tc[0] * 1e3, tc[1] * 1e3, tc[2] * 1e3,
            ratios[-1], extra))
    if not have_c:
        return rows
    _say("geometric-mean speed-up: %.1fx" % np.exp(np.mean(np.log(ratios))))
    if scaling:
        sc = [r1["median"] / rc["median"] for r1, rc in zip(rows[2::3], rows[1::3])]
        _say("geometric-mean 1-to-%d-thread scaling of the C kernels: %.2fx"
             % (nthreads, np.exp(np.mean(np.log(sc)))))
    if residual:
        kargs = {label: a for label, _, a in all_cases}["  + residual (fused)"]
        n = max(10, rounds * repeat * 5)
        extra_np = residual_cost(backend_module("numpy"), kargs, n)
        time.sleep(pause)
        extra_c = residual_cost(backend_module("c"), kargs, n)
        _say("residual add as the model runs it: NumPy %.3f ms (a separate pass), C %.3f ms (the "
             "fused product's extra time): %.1fx" % (extra_np * 1e3, extra_c * 1e3,
                                                    extra_np / max(extra_c, 1e-6)))
    return rows


def gemm_table(repeat, peak, runs):
    """GFLOP/s of the three products of a C -> 4C dense layer, C vs NumPy's BLAS, at the
    training shapes (N rows = B*T in 512..8192, C in 128..768). The whole table is measured
    ``runs`` times (passes far apart in time see different noise on a shared machine); each
    figure is the median over the passes of each pass's median."""
    from .backend import backend_module
    ck = backend_module("c")
    rng = np.random.default_rng(0)
    shapes = []
    for rows in (512, 2048, 8192):
        for C in (128, 384, 768):
            x, w, g = f32(rng, rows, C), f32(rng, C, 4 * C), f32(rng, rows, 4 * C)
            shapes += [  # label, M, N, K, a, b, trans_a, trans_b, numpy expression
                ("fwd", rows, 4 * C, C, x, w, False, False, lambda x=x, w=w: x @ w),
                ("dinp", rows, C, 4 * C, g, w, False, True, lambda g=g, w=w: g @ w.T),
                ("dw", C, 4 * C, rows, x, g, True, False, lambda x=x, g=g: x.T @ g)]
    res = [[] for _ in shapes]
    for r in range(runs):
        for i, (label, M, N, K, a, b, ta, tb, npf) in enumerate(shapes):
            c = np.empty((M, N), np.float32)
            fl = 2.0 * M * N * K
            time.sleep(0.5)  # OpenBLAS threads spin after NumPy's call: C goes first, after a
            tc = timeit(ck.gemm, (c, a, b, ta, tb), repeat)[0]  # pause
            tn = timeit(lambda *_: npf(), (), repeat)[0]
            res[i].append((fl / tc / 1e9, fl / tn / 1e9))
        print("pass %d of %d done" % (r + 1, runs), file=sys.stderr)
    print("%-5s %5s %5s %5s  %9s %9s %7s %7s   %s" % ("prod", "M", "N", "K", "c GF/s", "np GF/s",
                                                   "c/np", "% peak", "c/np of each pass"))
    ratios = []
    for (label, M, N, K, *_), r in zip(shapes, res):
        gc, gn = np.median([x[0] for x in r]), np.median([x[1] for x in r])
        ratio = np.median([x[0] / x[1] for x in r])
        ratios.append(ratio)
        print("%-5s %5d %5d %5d  %9.1f %9.1f %6.2fx %6.0f%%   %s"
              % (label, M, N, K, gc, gn, ratio, 100 * gc / peak,
                 " ".join("%.2f" % (x[0] / x[1]) for x in r)))
    print("shapes at >= 0.90x NumPy: %d of %d; lowest %.2fx; %% peak is of %.0f GFLOP/s (--peak)"
          % (sum(q >= 0.9 for q in ratios), len(ratios), min(ratios), peak))


# ---- training ----------------------------------------------------------------------------------

TRAIN_CONFIGS = {  # name: (vocab, n_layer, n_head, n_embd, block, batch)
    "a": (256, 4, 4, 128, 128, 16),
    "b": (256, 6, 6, 384, 256, 8),
    "c": (50257, 12, 12, 768, 64, 4),
    "quick": (256, 2, 2, 64, 64, 4),
}
TRAIN_STEPS = {"a": 60, "b": 8, "c": 4, "quick": 3}  # benchmarks/bench_train.py's defaults


def _batches(V, T, B, n, seed=0):
    r = np.random.default_rng(seed)
    return [(r.integers(0, V, (B, T)), r.integers(0, V, (B, T))) for _ in range(n)]


def run_pyllm(cfg, backend, steps, warmup, threads):
    """Seconds of each timed training step of pyllm on ``backend``, and the last loss."""
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
    return times, float(loss)


def run_torch(cfg, steps, warmup, threads):
    """The same for PyTorch eager running the same GPT-2 (tied head, tanh-GELU, fused causal
    attention, GPT-2 initialisation, AdamW without decay on biases and LayerNorms)."""
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


def train_child(config, impl, steps, warmup, threads):
    """One (config, implementation) run, in the subprocess: prints its JSON result line."""
    cfg = TRAIN_CONFIGS[config]
    if impl == "torch":
        times, loss = run_torch(cfg, steps, warmup, threads)
    else:
        times, loss = run_pyllm(cfg, impl, steps, warmup, threads)
    print(json.dumps({"times": times, "loss": loss, "rss_mib": peak_rss_mib()}))
    return 0


def peak_rss_mib():
    """This process's peak resident memory in MiB: VmHWM of /proc/self/status, which starts
    afresh at exec (ru_maxrss does not: after fork + exec it can report the parent's RSS at the
    fork, e.g. a parent that imported torch), else ru_maxrss."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        pass
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0)  # bytes or KiB


def _child_env(threads):
    """The environment of a child: thread counts, and the directory this pyllm was imported
    from first on PYTHONPATH, so the child runs the same package (a source checkout run in place,
    an installed wheel) whatever its working directory."""
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = [pkg_parent] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
                PYTHONPATH=os.pathsep.join(path))


def run_train_child(config, impl, steps, warmup, threads, timeout=1800):
    """One subprocess run: {"times": [...], "loss": float, "rss_mib": float}, or an error string."""
    cmd = [sys.executable] + (["-S"] if sys.flags.no_site else []) + [
        "-m", "pyllm.bench", "--child", "train", config, impl, str(steps), str(warmup),
        str(threads)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(threads),
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timed out after %d s" % timeout
    if r.returncode != 0:
        return (r.stderr.strip() or "exit status %d" % r.returncode)[-500:]
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return "no result line in its output: %r" % r.stdout[-300:]


def bench_train(configs, impls=("c", "numpy", "torch"), steps=None, warmup=2, rounds=3,
                threads=2, numpy_steps=None):
    """Training tokens/s of each config, printed as a table; returns the JSON rows.

    C and PyTorch run in ``rounds`` alternating rounds (C, PyTorch, C, PyTorch, ...; the NumPy
    backend, far behind, once, with ``numpy_steps`` steps, default max(3, steps // 3)); each row
    is the median tokens/s over the timed steps of all rounds (min-max of the steps), and each
    ratio is the median over the rounds of that round's ratio of medians (min-max over the
    rounds). ``steps`` and ``numpy_steps``: an int, a {config: steps} dict, or None (steps:
    TRAIN_STEPS)."""
    import pyllm
    from .backend import c_unavailable_reason
    have_torch = torch_available()
    _say("pyllm %s training benchmark, %d threads, %d round(s): tokens/s median (min-max) of the "
         "timed steps, peak RSS" % (pyllm.__version__, threads, rounds))
    _say("%-6s %-7s %26s %10s %10s" % ("config", "impl", "tokens/s", "RSS MiB", "loss"))
    rows = []
    for name in configs:
        n = (steps.get(name) if isinstance(steps, dict) else steps) or TRAIN_STEPS.get(name, 5)
        nn = numpy_steps.get(name) if isinstance(numpy_steps, dict) else numpy_steps
        rows += _bench_train_config(name, impls, n, nn or max(3, n // 3), warmup, rounds,
                                    threads, have_torch, c_unavailable_reason())
    return rows


def _bench_train_config(name, impls, steps, numpy_steps, warmup, rounds, threads, have_torch,
                        no_c):
    V, L, H, C, T, B = TRAIN_CONFIGS[name]
    skip = {}
    if "torch" in impls and not have_torch:
        skip["torch"] = "skipped (torch not importable)"
    if "c" in impls and no_c:
        skip["c"] = "skipped (the C backend is unavailable)"
    for impl, why in skip.items():
        _say("%-6s %-7s %26s" % (name, impl, why))
    impls = [i for i in impls if i not in skip]
    runs = {impl: [] for impl in impls}   # per impl: one result per round
    failed = set()
    for rnd in range(rounds):
        for impl in impls:
            if impl in failed or (impl == "numpy" and rnd > 0):  # NumPy: one round
                continue
            out = run_train_child(name, impl, steps if impl != "numpy" else numpy_steps,
                                  warmup, threads)
            if isinstance(out, str):
                _say("%-6s %-7s failed: %s" % (name, impl, out))
                failed.add(impl)
                continue
            runs[impl].append(out)
    med, rows = {}, []
    for impl in impls:
        if not runs[impl]:
            continue
        tps = [B * T / t for out in runs[impl] for t in out["times"]]
        med[impl] = [float(np.median([B * T / t for t in out["times"]])) for out in runs[impl]]
        rss = max(out["rss_mib"] for out in runs[impl])
        loss = runs[impl][-1]["loss"]
        _say("%-6s %-7s %10.0f (%6.0f-%6.0f) %10.0f %10.4f" % (
            name, impl, float(np.median(tps)), min(tps), max(tps), rss, loss))
        rows.append(row("train", name, "training step", impl, threads, tps, "tokens/s",
                        rss_mib=rss, loss=loss, rounds=len(runs[impl])))
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
        if parts:
            _say("  " + "; ".join(parts))
    return rows


# ---- sampling ----------------------------------------------------------------------------------

SAMPLE_CONFIGS = {"b": (256, 6, 6, 384, 256), "a": (256, 4, 4, 128, 128),
                  "quick": (256, 2, 2, 64, 64), "gpt2": (50257, 12, 12, 768, 1024)}


def torch_sampler(model, threads):
    """A PyTorch KV-cache decoder running pyllm's weights (so both do identical work)."""
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    cfg = model.config
    C, H, L = cfg.n_embd, cfg.n_head, cfg.n_layer
    W = {k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()}

    def ln(x, p):
        return F.layer_norm(x, (C,), W[p + ".weight"], W[p + ".bias"], 1e-5)

    def lin(x, p):
        return torch.addmm(W[p + ".bias"], x, W[p + ".weight"])

    @torch.no_grad()
    def generate(tok, n):
        kc = [torch.zeros(1, H, cfg.block_size, C // H) for _ in range(L)]
        vc = [torch.zeros(1, H, cfg.block_size, C // H) for _ in range(L)]
        out = []
        g = torch.Generator().manual_seed(0)
        for pos in range(n):
            x = (W["wte.weight"][int(tok)] + W["wpe.weight"][pos]).view(1, C)
            for i in range(L):
                p = "h.%d." % i
                q, k, v = lin(ln(x, p + "ln_1"), p + "attn.c_attn").split(C, dim=1)
                kc[i][0, :, pos] = k.view(H, C // H)
                vc[i][0, :, pos] = v.view(H, C // H)
                y = F.scaled_dot_product_attention(q.view(1, H, 1, C // H),
                                                   kc[i][:, :, :pos + 1], vc[i][:, :, :pos + 1])
                x = x + lin(y.reshape(1, C), p + "attn.c_proj")
                x = x + lin(F.gelu(lin(ln(x, p + "ln_2"), p + "mlp.c_fc"), approximate="tanh"),
                            p + "mlp.c_proj")
            logits = ln(x, "ln_f") @ W["wte.weight"].T
            tok = torch.multinomial(torch.softmax(logits[0], -1), 1, generator=g)
            out.append(int(tok))
        return out

    return generate


def timed(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


SAMPLE_IMPL = {"pyllm-c": "c", "pyllm-c-int8": "c-int8", "pyllm-numpy": "numpy", "torch": "torch"}


def bench_sample(config="b", tokens=200, repeat=5, threads=2, numpy=True, torch=True, ttft=0,
                 pause=0.3):
    """Sampling tokens/s at batch 1 with the KV cache, printed; returns the JSON rows.

    Each implementation generates ``tokens`` new tokens after a one-token prompt, ``repeat``
    times, interleaved (C, NumPy, PyTorch, C, ...; a ``pause`` after each, so no runtime's
    spinning threads are left over for the next); each ratio is the median of the per-round
    ratios (min-max over the rounds). ``ttft`` > 0 also times the first token after a
    ``ttft``-token prompt (prefill + one step), float32 and int8."""
    import pyllm
    V, L, H, C, T = SAMPLE_CONFIGS[config]
    n = min(tokens, T - 1)
    pyllm.set_num_threads(threads)
    model = pyllm.GPT(pyllm.GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=H, n_embd=C))
    qmodel = pyllm.quantize(model)
    _say("pyllm %s sampling benchmark: config %s (V%d L%d H%d C%d), batch 1, %d new tokens, "
         "%d threads; tokens/s median (min-max) of %d runs"
         % (pyllm.__version__, config, V, L, H, C, n, threads, repeat))

    backend_before = pyllm.get_backend()

    def pyllm_run(be, m=model):
        pyllm.set_backend(be)
        m.generate([[0]], n, temperature=1.0, seed=0)

    runs = {}  # name -> () -> None, each one generation of n tokens
    for be in pyllm.available_backends():
        if be == "numpy" and (not numpy or config == "gpt2"):
            continue
        runs["pyllm-" + be] = lambda be=be: pyllm_run(be)
    if "pyllm-c" in runs:
        runs["pyllm-c-int8"] = lambda: pyllm_run("c", qmodel)
    if torch:
        try:
            gen = torch_sampler(model, threads)
            runs["torch"] = lambda: gen(0, n)
        except ImportError:
            _say("torch not importable: PyTorch peer skipped")
    else:
        _say("PyTorch peer left out")
    res = {k: [] for k in runs}
    try:
        for fn in runs.values():  # warm-up
            fn()
            time.sleep(pause)
        for _ in range(repeat):
            for k, fn in runs.items():
                res[k].append(n / timed(fn, 1)[0])
                time.sleep(pause)  # let this runtime's threads stop spinning
    finally:
        pyllm.set_backend(backend_before)
    rows = []
    for k, v in res.items():
        _say("%-14s %8.1f (%6.1f-%6.1f) tokens/s" % (k, np.median(v), min(v), max(v)))
        rows.append(row("sample", config, "generate %d tokens" % n, SAMPLE_IMPL[k], threads, v,
                        "tokens/s"))
    for base in ("pyllm-c", "pyllm-c-int8"):
        if base not in res:
            continue
        parts = []
        for k, v in res.items():
            if k != base and not (base == "pyllm-c" and k == "pyllm-c-int8"):
                ratios = [c / o for c, o in zip(res[base], v)]
                parts.append("%s is %.2fx %s (rounds %.2f-%.2f)"
                             % (base, np.median(ratios), k, min(ratios), max(ratios)))
        if parts:
            _say("; ".join(parts))
    if ttft and "pyllm-c" in res:
        pyllm.set_backend("c")
        try:
            prompt = np.random.default_rng(0).integers(0, V, (1, min(ttft, T - 1)))
            for name, m in (("float32", model), ("int8", qmodel)):
                times = timed(lambda: m.generate(prompt, 1, temperature=0),
                              max(2, repeat // 2))
                _say("time to first token after %d prompt tokens, %-7s %7.3f s (median of %d)"
                     % (prompt.shape[1], name, float(np.median(times)), len(times)))
                rows.append(row("sample", config, "first token after %d prompt tokens"
                                % prompt.shape[1], "c" if name == "float32" else "c-int8",
                                threads, times, "s"))
        finally:
            pyllm.set_backend(backend_before)
    return rows


# ---- pyllm bench: the plan, the run, the JSON, the comparison ---------------------------------

PARTS = ("kernels", "train", "sample")
# The sizes of ``pyllm bench`` (full: about 2-3 minutes on the project's two shared cores;
# quick: under 30 s). The scripts in benchmarks/ keep their own, longer defaults.
PLANS = {
    "full": {
        "kernels": dict(config="b", rounds=2, repeat=3, min_time=0.05, pause=0.5),
        # NumPy at config b: ~5 s a step on two quiet cores, so two timed steps
        "train": dict(configs=["a", "b"], steps={"a": 15, "b": 3}, numpy_steps={"a": 3, "b": 2},
                      warmup=1, rounds=2),
        "sample": dict(config="b", tokens=100, repeat=3),
    },
    "quick": {
        "kernels": dict(config="quick", rounds=2, repeat=2, min_time=0.005, pause=0.2),
        "train": dict(configs=["quick"], steps=3, numpy_steps=3, warmup=1, rounds=1),
        # no PyTorch peer: importing torch alone takes 4 s (the train part has one)
        "sample": dict(config="quick", tokens=30, repeat=2, pause=0.1, torch=False),
    },
}


def run_parts(parts, quick=False, threads=None, argv=None):
    """Run ``parts`` (a subset of PARTS) at the --quick or full sizes; print the machine block
    and each part's table; return the result dict of the JSON schema above."""
    import pyllm
    if threads:
        pyllm.set_num_threads(threads)
    threads = pyllm.get_num_threads() or 1
    machine = machine_info()
    for line in format_machine(machine):
        _say(line)
    if threads > machine["usable_cores"]:
        _say("note: %d C threads on %d usable cores: the threads share cores"
             % (threads, machine["usable_cores"]))
    plan = PLANS["quick" if quick else "full"]
    result = {"version": SCHEMA_VERSION,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "argv": list(argv or []), "quick": bool(quick), "threads": threads,
              "machine": machine, "parts": {}, "rows": []}
    t_all = time.perf_counter()
    for i, part in enumerate(parts):
        progress("%s (%d of %d)..." % (part, i + 1, len(parts)))
        _say("")
        t0 = time.perf_counter()
        p = dict(plan[part])
        if part == "kernels":
            rows = bench_kernels(threads=threads, scaling=True, **p)
            B, T, C, V, NH = KERNEL_CONFIGS[p["config"]]
            p["shape"] = {"B": B, "T": T, "C": C, "V": V, "NH": NH}
        elif part == "train":
            rows = bench_train(threads=threads, **p)
            p["shapes"] = {name: dict(zip(("V", "L", "H", "C", "T", "B"), TRAIN_CONFIGS[name]))
                           for name in p["configs"]}
        else:
            rows = bench_sample(threads=threads, **p)
            p["shape"] = dict(zip(("V", "L", "H", "C", "T"), SAMPLE_CONFIGS[p["config"]]))
        p["seconds"] = round(time.perf_counter() - t0, 2)
        result["parts"][part] = p
        result["rows"] += rows
        progress("%s done in %.1f s" % (part, p["seconds"]))
    progress("all done in %.1f s" % (time.perf_counter() - t_all))
    return result


ROW_KEYS = {"part": str, "config": str, "name": str, "implementation": str, "unit": str,
            "better": str}


def check_result(obj):
    """Raise ValueError naming the first way ``obj`` is not a result of this schema."""
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    if obj.get("version") != SCHEMA_VERSION:
        raise ValueError("schema version %r, this pyllm reads version %d"
                         % (obj.get("version"), SCHEMA_VERSION))
    if not isinstance(obj.get("machine"), dict):
        raise ValueError("no machine block")
    rows = obj.get("rows")
    if not isinstance(rows, list):
        raise ValueError("no list of rows")
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise ValueError("row %d is not an object" % i)
        for k, typ in ROW_KEYS.items():
            if not isinstance(r.get(k), typ):
                raise ValueError("row %d has no %s" % (i, k))
        if r["better"] not in (LOWER, HIGHER):
            raise ValueError("row %d: better is %r, not 'lower' or 'higher'" % (i, r["better"]))
        for k in ("median", "min", "max"):
            v = r.get(k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v <= 0:
                raise ValueError("row %d: %s is %r, not a finite positive number" % (i, k, v))
    return obj


def load_result(path):
    """A saved result, checked; raises ValueError with a message naming ``path``."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError("cannot read %s: %s" % (path, getattr(exc, "strerror", None) or exc))
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise ValueError("%s is not JSON (%s)" % (path, exc))
    try:
        return check_result(obj)
    except ValueError as exc:
        raise ValueError("%s is not a `pyllm bench --json` result: %s" % (path, exc))


def write_result(result, path):
    """Write ``result`` to ``path`` (through a temporary file, so a failure leaves no half file)."""
    tmp = "%s.tmp%d" % (path, os.getpid())
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


MACHINE_KEYS = ("cpu_model", "arch", "logical_cores", "usable_cores", "simd_available", "openmp")


def _key(r):
    return (r["part"], r["config"], r["name"], r["implementation"])


def _num(v):
    return "%.0f" % v if v >= 1e4 else "%.4g" % v


def compare(new, old, old_name="old", out=None):
    """Print new/old per row present in both results; returns the number of rows compared."""
    out = out or sys.stdout

    def say(s=""):
        print(s, file=out, flush=True)

    nm, om = new.get("machine", {}), old.get("machine", {})
    say("comparison with %s (written %s, pyllm %s): new/old per row in both runs"
        % (old_name, old.get("created", "?"), om.get("versions", {}).get("pyllm", "?")))
    diff = ["%s %r -> %r" % (k, om.get(k), nm.get(k)) for k in MACHINE_KEYS
            if om.get(k) != nm.get(k)]
    if diff:
        say("warning: the machines differ (%s): the ratios compare machines, not code"
            % "; ".join(diff))
    sdiff = ["%s %r -> %r" % (k, old.get(k), new.get(k)) for k in ("threads", "quick")
             if old.get(k) != new.get(k)]
    sdiff += ["%s %s -> %s" % (k, v, nm.get("versions", {}).get(k))
              for k, v in sorted(om.get("versions", {}).items())
              if v != nm.get("versions", {}).get(k)]
    for k in ("simd", "source_hash", "build_info"):
        if om.get(k) != nm.get(k):
            sdiff.append("%s %s -> %s" % (k, om.get(k), nm.get(k)))
    if sdiff:
        say("note: settings or software differ: %s" % "; ".join(sdiff))
    say("ms and s (times): lower is better, so a ratio < 1 is faster now; tokens/s: higher is "
        "better, so a ratio > 1 is faster now. 'faster'/'slower' only where the min-max ranges "
        "do not overlap")
    olds = {_key(r): r for r in old["rows"]}
    both = [(r, olds[_key(r)]) for r in new["rows"] if _key(r) in olds]
    news = {_key(r) for r in new["rows"]}
    only_old = sum(1 for k in olds if k not in news)
    only_new = len(new["rows"]) - len(both)
    say("%-8s %-6s %-26s %-10s %-9s %11s %11s %8s" % ("part", "config", "name", "impl", "unit",
                                                      "old", "new", "new/old"))
    speed = []
    for n, o in both:
        ratio = n["median"] / o["median"]
        faster = ratio < 1 if n["better"] == LOWER else ratio > 1
        speed.append(1 / ratio if n["better"] == LOWER else ratio)
        overlap = n["min"] <= o["max"] and o["min"] <= n["max"]
        verdict = "" if overlap else ("faster" if faster else "slower")
        say("%-8s %-6s %-26s %-10s %-9s %11s %11s %7.2fx %s" % (
            n["part"], n["config"], n["name"][:26], n["implementation"], n["unit"],
            _num(o["median"]), _num(n["median"]), ratio, verdict))
    if speed:
        say("%d rows compared; geometric mean of the speed ratios (> 1: faster now): %.2fx"
            % (len(both), float(np.exp(np.mean(np.log(speed))))))
    else:
        say("no row is in both runs (a --quick run and a full run share none)")
    if only_new or only_old:
        say("not compared: %d rows only in the new run, %d only in the old" % (only_new, only_old))
    return len(both)


def _child_main(argv):
    """``python -m pyllm.bench --child train CONFIG IMPL STEPS WARMUP THREADS``."""
    if len(argv) == 7 and argv[:2] == ["--child", "train"]:
        config, impl, steps, warmup, threads = argv[2:]
        return train_child(config, impl, int(steps), int(warmup), int(threads))
    from .cli import main
    return main(["bench"] + argv)


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
