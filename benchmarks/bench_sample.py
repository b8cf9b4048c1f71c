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
machine's speed drifts, and this compares runs made a second apart. The measuring code is
pyllm.bench's (also `pyllm bench sample`).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pyllm import bench  # noqa: E402

CONFIGS = bench.SAMPLE_CONFIGS


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="b", choices=sorted(CONFIGS))
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-numpy", action="store_true", help="skip the NumPy backend")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch peer")
    ap.add_argument("--ttft", type=int, default=0, metavar="N",
                    help="also time the first token after an N-token prompt")
    args = ap.parse_args(argv)
    if args.quick:
        args.config, args.tokens, args.repeat = "quick", 30, 2
    if args.tokens < 1 or args.repeat < 1 or args.threads < 1 or args.ttft < 0:
        ap.error("--tokens, --repeat and --threads must be >= 1, --ttft >= 0")
    bench.bench_sample(args.config, tokens=args.tokens, repeat=args.repeat, threads=args.threads,
                       numpy=not args.no_numpy, torch=not args.no_torch, ttft=args.ttft)
    return 0


if __name__ == "__main__":
    sys.exit(main())
