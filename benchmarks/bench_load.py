"""Loading a GPT-2-sized model: read vs memory-mapped, float32 vs int8; time and peak memory.

    python benchmarks/bench_load.py            # GPT-2 124M's shape (a 500 MB file; written once)
    python benchmarks/bench_load.py --quick    # a small model (CI)

Writes a float32 model file and its int8 copy (random weights of GPT-2's shape; loading does not
depend on the values) into --dir, then runs each way of loading in a fresh process: the time from
the call to the end of the load (the first forward's start), the process's resident memory right
after it, and its peak over the load and --tokens sampled tokens (greedy, one-token prompt). The
ratio asked for is the int8 mapped path's peak against the float32 read path's.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

CHILD = r"""
import json, sys, time
import numpy as np
import pyllm
path, mmap, tokens = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
def rss(field="VmRSS"):  # VmHWM: this process's peak (getrusage's maxrss keeps the forking
    with open("/proc/self/status") as f:  # parent's across exec on Linux)
        return next(int(l.split()[1]) for l in f if l.startswith(field)) / 1024
r0 = rss()
t0 = time.perf_counter()
m = pyllm.load(path, mmap=mmap)
load_s = time.perf_counter() - t0
r1 = rss()
m.generate(np.zeros((1, 1), np.int64), tokens, temperature=0)
peak = rss("VmHWM")
print(json.dumps({"load_s": load_s, "rss_before": r0, "rss_after_load": r1, "peak": peak}))
"""


def run_child(code, *args):
    """Run Python ``code`` in a fresh process (this checkout's pyllm first on its path) with
    ``args``; returns the JSON object its last output line holds."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    out = subprocess.run([sys.executable, "-c", code] + [str(a) for a in args],
                         capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=None, help="where the model files go (default: a temp dir)")
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if not os.path.exists("/proc/self/status"):
        print("needs Linux's /proc to measure resident memory")
        return 1
    import pyllm
    shape = (dict(vocab_size=512, block_size=64, n_layer=2, n_head=2, n_embd=64) if args.quick
             else dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768))
    if args.quick:
        args.tokens = 10
    d = args.dir or tempfile.mkdtemp(prefix="pyllm-load-")
    os.makedirs(d, exist_ok=True)
    f32, q8 = os.path.join(d, "model.safetensors"), os.path.join(d, "model-q8.safetensors")
    if not (os.path.exists(f32) and os.path.exists(q8)):
        m = pyllm.GPT(pyllm.GPTConfig(**shape), seed=0)
        m.save(f32)
        pyllm.quantize(m).save(q8)
        del m
    print("pyllm %s: %s, %d sampled tokens; files %.1f MB (float32), %.1f MB (int8)"
          % (pyllm.__version__, shape, args.tokens, os.path.getsize(f32) / 1e6,
             os.path.getsize(q8) / 1e6))
    res = {}
    for name, path, mmap in (("float32 read", f32, 0), ("float32 mmap", f32, 1),
                             ("int8 read", q8, 0), ("int8 mmap", q8, 1)):
        r = res[name] = run_child(CHILD, path, mmap, args.tokens)
        print("%-13s load %7.3f s | resident after load +%7.1f MB | peak with sampling %7.1f MB"
              % (name, r["load_s"], r["rss_after_load"] - r["rss_before"], r["peak"]))
    print("int8 mmap peak / float32 read peak = %.2f (target < 0.40)"
          % (res["int8 mmap"]["peak"] / res["float32 read"]["peak"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
