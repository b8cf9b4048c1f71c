"""Sampling speed with the KV cache: pyllm C (float32 and int8) vs pyllm NumPy vs PyTorch.

    python benchmarks/bench_sample.py             # config (b): V256 L6 H6 C384 block 256, batch 1
    python benchmarks/bench_sample.py --config gpt2 --ttft 512   # GPT-2 124M's shape
    python benchmarks/bench_sample.py --quick     # CI: a small model, few tokens

``pyllm-c-int8`` is the same model through ``pyllm.quantize`` (Q8_0 weights, docs/QUANT.md).
``--ttft N`` also times the first token after an N-token prompt (prefill + one step), float32
and int8. The NumPy backend is left out for the GPT-2 shape (minutes per run); ``--no-numpy``
leaves it out anywhere.

Each implementation generates --tokens new tokens after a one-token prompt, with a KV cache,
--repeat times; tokens/s is the median (min-max). PyTorch runs the same GPT-2 model in eager mode
with its own KV cache (torch.no_grad, torch.set_num_threads(threads)). The runs are interleaved
(C, NumPy, PyTorch, C, ...; a pause after each, so no runtime's spinning threads are left over for
the next), and each ratio is the median of the per-round ratios (min-max over the rounds): the
machine's speed drifts, and this compares runs made a second apart.
"""
import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import pyllm  # noqa: E402

CONFIGS = {"b": (256, 6, 6, 384, 256), "a": (256, 4, 4, 128, 128), "quick": (256, 2, 2, 64, 64),
           "gpt2": (50257, 12, 12, 768, 1024)}


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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="b", choices=sorted(CONFIGS))
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-numpy", action="store_true", help="skip the NumPy backend")
    ap.add_argument("--ttft", type=int, default=0, metavar="N",
                    help="also time the first token after an N-token prompt")
    args = ap.parse_args(argv)
    if args.quick:
        args.config, args.tokens, args.repeat = "quick", 30, 2
    V, L, H, C, T = CONFIGS[args.config]
    n = min(args.tokens, T - 1)
    pyllm.set_num_threads(args.threads)
    model = pyllm.GPT(pyllm.GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=H, n_embd=C))
    qmodel = pyllm.quantize(model)
    print("pyllm %s sampling benchmark: config %s (V%d L%d H%d C%d), batch 1, %d new tokens, "
          "%d threads; tokens/s median (min-max) of %d runs"
          % (pyllm.__version__, args.config, V, L, H, C, n, args.threads, args.repeat))
    def pyllm_run(be, m=model):
        pyllm.set_backend(be)
        m.generate([[0]], n, temperature=1.0, seed=0)

    runs = {}  # name -> () -> None, each one generation of n tokens
    for be in pyllm.available_backends():
        if be == "numpy" and (args.no_numpy or args.config == "gpt2"):
            continue
        runs["pyllm-" + be] = lambda be=be: pyllm_run(be)
    if "pyllm-c" in runs:
        runs["pyllm-c-int8"] = lambda: pyllm_run("c", qmodel)
    try:
        gen = torch_sampler(model, args.threads)
        runs["torch"] = lambda: gen(0, n)
    except ImportError:
        print("torch not importable: PyTorch peer skipped")
    for fn in runs.values():  # warm-up
        fn()
        time.sleep(0.3)
    res = {k: [] for k in runs}
    for _ in range(args.repeat):
        for k, fn in runs.items():
            res[k].append(n / timed(fn, 1)[0])
            time.sleep(0.3)  # let this runtime's threads stop spinning
    pyllm.set_backend("auto")
    for k, v in res.items():
        print("%-14s %8.1f (%6.1f-%6.1f) tokens/s" % (k, np.median(v), min(v), max(v)))
    for base in ("pyllm-c", "pyllm-c-int8"):
        if base not in res:
            continue
        parts = []
        for k, v in res.items():
            if k != base and not (base == "pyllm-c" and k == "pyllm-c-int8"):
                ratios = [c / o for c, o in zip(res[base], v)]
                parts.append("%s is %.2fx %s (rounds %.2f-%.2f)"
                             % (base, np.median(ratios), k, min(ratios), max(ratios)))
        print("; ".join(parts))
    if args.ttft and "pyllm-c" in res:
        pyllm.set_backend("c")
        prompt = np.random.default_rng(0).integers(0, V, (1, min(args.ttft, T - 1)))
        for name, m in (("float32", model), ("int8", qmodel)):
            times = timed(lambda: m.generate(prompt, 1, temperature=0), max(2, args.repeat // 2))
            print("time to first token after %d prompt tokens, %-7s %7.3f s (median of %d)"
                  % (prompt.shape[1], name, float(np.median(times)), len(times)))
        pyllm.set_backend("auto")


if __name__ == "__main__":
    sys.exit(main())
