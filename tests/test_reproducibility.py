"""Reproducibility (docs/REPRODUCIBILITY.md): the same seed and config give the same losses, weights
and samples bit for bit on the C backend whatever the thread count, from one process to the next;
the NumPy backend is reproducible run to run. Each C run is a fresh Python process."""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import pyllm
from pyllm.checkpoint import load_checkpoint
from pyllm.train import TrainConfig, train

from conftest import need_c

# big enough that the GEMMs split over threads both by columns and by rows (B*T = 512 rows) and
# attention spreads its (batch, head) pairs over the threads
RUN = dict(steps=20, n_layer=2, n_head=4, n_embd=64, block_size=64, batch_size=8, eval_interval=10,
           eval_iters=2, warmup=4, lr=3e-3, min_lr=3e-4, seed=7)
NUMPY_RUN = dict(RUN, steps=8, n_embd=32, block_size=16, batch_size=4, eval_interval=4)  # slower
PROMPT, SAMPLE_SEED = [[5, 3, 9]], 11


def corpus(tmp_path):
    words = ["alpha", "beta", "gamma", "delta", "lambda", "sigma", "omega", "kappa", "Zeta!"]
    r = np.random.default_rng(0)
    path = os.path.join(str(tmp_path), "text.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(" ".join(r.choice(words, 8)) + "." for _ in range(400)))
    return path


def new_tokens(run):
    return run["block_size"] + 24  # past block_size: prefill, cached decode, then recompute


def _sha(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def fingerprint(data, out, run=RUN):
    """Train `run` on `data` into `out` with the current backend and thread count; return the
    per-step and validation losses (float.hex), SHA-256 of the weights, of the AdamW moments and
    of the logits of one forward pass, and tokens sampled with the KV cache."""
    res = train(TrainConfig(data=data, out=out, **run), log=lambda s: None, progress=False)
    with open(os.path.join(out, "log.jsonl"), encoding="utf-8") as f:
        log = [json.loads(line) for line in f]
    model, opt_state, state = load_checkpoint(out)
    assert state["step"] == run["steps"]
    assert np.array_equal(model.params, res["model"].params)
    x = np.arange(2 * run["block_size"]).reshape(2, -1) % model.config.vocab_size
    tokens = model.generate(PROMPT, max_new_tokens=new_tokens(run), temperature=1.0, top_k=10,
                            seed=SAMPLE_SEED)
    return {"losses": [e["loss"].hex() for e in log],
            "val_losses": [e["val_loss"].hex() for e in log if "val_loss" in e],
            "params": _sha(model.params), "adam_m": _sha(opt_state["m"]),
            "adam_v": _sha(opt_state["v"]), "logits": _sha(model.forward(x)),
            "tokens": tokens[0].tolist()}


# a fresh process: python -c CHILD <pyllm's parent> <tests> <data> <out> <simd> <threads>
# threads: "env" (OMP_NUM_THREADS decides) or thread counts "n1,n2,..." set with
# pyllm.set_num_threads, one training run each, in this order
CHILD = r"""
import json, os, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import pyllm
from test_reproducibility import fingerprint
pyllm.set_backend("c")
from pyllm.backend import c
if int(sys.argv[5]) == 0:
    c.lib.pyllm_set_simd_level(0)  # the portable C kernels, as on a CPU without AVX2+FMA
out = []
for i, n in enumerate(sys.argv[6].split(",")):
    if n != "env":
        pyllm.set_num_threads(int(n))
    fp = fingerprint(sys.argv[3], os.path.join(sys.argv[4], str(i)))
    fp.update(threads=pyllm.get_num_threads(), simd=c.simd_level())
    out.append(fp)
print(json.dumps(out))
"""


def run_child(tmp_path, data, name, threads, simd, via_env=False):
    """Fingerprints from a new process, one per thread count in `threads` (set through
    OMP_NUM_THREADS when via_env, else with pyllm.set_num_threads), at SIMD level `simd`
    (0: portable C)."""
    assert not via_env or len(threads) == 1
    # idle OpenMP threads sleep instead of spinning (a loaded machine makes spinning threads
    # crawl); the work split, and so the bits, do not depend on it
    env = dict(os.environ, OMP_NUM_THREADS=str(threads[0] if via_env else 1),
               OMP_WAIT_POLICY="passive")
    env.pop("PYLLM_NUM_THREADS", None)
    env.pop("PYLLM_BACKEND", None)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(pyllm.__file__)))
    here = os.path.dirname(os.path.abspath(__file__))
    r = subprocess.run([sys.executable, "-c", CHILD, pkg_parent, here, data,
                        os.path.join(str(tmp_path), name), str(simd),
                        "env" if via_env else ",".join(map(str, threads))],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    fps = json.loads(r.stdout.strip().splitlines()[-1])
    assert [fp.pop("threads") for fp in fps] == list(threads)
    assert [fp.pop("simd") for fp in fps] == [simd] * len(threads)
    return fps


def assert_same(a, b, what):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == b[key], "%s: %s differ" % (what, key)


def _need_openmp():
    need_c()
    from pyllm.backend import c
    if not c.has_openmp():
        pytest.skip("the C extension was built without OpenMP: one thread only")
    return c


def test_c_same_bits_any_thread_count_and_run_to_run(tmp_path):
    c = _need_openmp()
    data, simd = corpus(tmp_path), c.simd_level()
    (one,) = run_child(tmp_path, data, "a", [1], simd, via_env=True)
    (two,) = run_child(tmp_path, data, "b", [2], simd, via_env=True)
    three, two_again = run_child(tmp_path, data, "c", [3, 2], simd)
    assert len(one["losses"]) == RUN["steps"] and len(one["val_losses"]) == 2
    assert len(one["tokens"]) == len(PROMPT[0]) + new_tokens(RUN)
    assert float.fromhex(one["losses"][-1]) < float.fromhex(one["losses"][0])  # it trained
    assert_same(one, two, "1 vs 2 threads")
    assert_same(one, three, "1 vs 3 threads")
    assert_same(two, two_again, "2 threads, two processes")


def test_c_portable_path_same_bits_any_thread_count(tmp_path):
    """pyllm_set_simd_level(0) runs the portable C kernels, as a CPU without AVX2+FMA does."""
    _need_openmp()
    one, two = run_child(tmp_path, corpus(tmp_path), "p", [1, 2], simd=0)
    assert_same(one, two, "portable C, 1 vs 2 threads")


def test_numpy_backend_run_to_run(tmp_path):
    prev = pyllm.get_backend()
    pyllm.set_backend("numpy")
    try:
        data = corpus(tmp_path)
        a = fingerprint(data, os.path.join(str(tmp_path), "a"), NUMPY_RUN)
        b = fingerprint(data, os.path.join(str(tmp_path), "b"), NUMPY_RUN)
    finally:
        pyllm.set_backend(prev)
    assert float.fromhex(a["losses"][-1]) < float.fromhex(a["losses"][0])
    assert_same(a, b, "NumPy backend, run 1 vs run 2")
