"""How fast the page of ``pyllm export-html`` generates, in headless Chromium.

    python benchmarks/bench_webmodel.py               # 200 tokens, 5 rounds, three cases
    python benchmarks/bench_webmodel.py --quick       # CI: 10 tokens, 1 round

The model has the shape of the Shakespeare-char recipe (``benchmarks/shakespeare_char.py``: a
character vocabulary of 65, 4 layers, 4 heads, 128 channels: 0.80M parameters); its weights are
random (speed does not depend on their values). Three cases, each ``window.pyllm.generate`` of
--tokens new tokens at temperature 1, seed 0, timed inside the page (performance.now()):

* ``context 256``: the recipe's model with ``block_size`` 256 and a 10-character prompt: the text
  stays inside the context, so every token is one decode step with the KV cache;
* ``context 64, filling``: the recipe's ``block_size`` 64, the same prompt: the first 54 tokens
  use the cache, after that the window slides;
* ``context 64, sliding``: a 64-character prompt, so every token slides the window. Positions are
  learned, so a slid window is a new input: all 64 positions are recomputed (a prefill), as
  ``GPT.generate`` does in Python.

Reported: tokens per second, median (min-max) over --rounds, each round in a fresh tab. For
comparison, pyllm's own C backend on the same models and cases (``GPT.generate``, 2 threads).
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
import pyllm  # noqa: E402
from pyllm.export_html import write_html  # noqa: E402
from _browser import Browser, find_chromium  # noqa: E402

CHARS = ["\n"] + [chr(c) for c in range(32, 96)]          # 65 characters, as tinyshakespeare's
PROMPT_SHORT = "ROMEO:\nO, "
TARGET_TPS = 200.0


def make_model(block_size, seed=0):
    cfg = pyllm.GPTConfig(vocab_size=len(CHARS), block_size=block_size, n_layer=4, n_head=4,
                          n_embd=128)
    return pyllm.GPT(cfg, seed=seed)


def prompt_for(case, block_size):
    if case == "sliding":
        return ("".join(CHARS[1 + i % 64] for i in range(block_size)))
    return PROMPT_SHORT


def page_tps(browser, path, prompt, n):
    """Tokens/s of one generate() in a fresh tab, measured by the page."""
    page = browser.open(path)
    try:
        page.wait_for("window.pyllm !== undefined", timeout=30)
        res = page.eval("(async () => { const t = performance.now(); "
                        "const s = await pyllm.generate(%r, %d, {temperature: 1, seed: 0}); "
                        "return [performance.now() - t, s.length]; })()" % (prompt, n),
                        timeout=600)
        if page.errors:
            raise RuntimeError("the page logged errors: %r" % (page.errors,))
    finally:
        page.close()
    ms, _ = res
    return n / (ms / 1000.0)


def python_tps(model, tok, prompt, n):
    idx = np.array([tok.encode(prompt)], dtype=np.int64)
    t = time.perf_counter()
    model.generate(idx, n, temperature=1.0, seed=0)
    return n / (time.perf_counter() - t)


def spread(xs):
    return "%.0f (%.0f-%.0f)" % (statistics.median(xs), min(xs), max(xs))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="threads of the Python comparison")
    ap.add_argument("--quick", action="store_true", help="10 tokens, 1 round (CI)")
    args = ap.parse_args(argv)
    if args.quick:
        args.tokens, args.rounds = 10, 1
    if args.tokens < 1 or args.rounds < 1:
        ap.error("--tokens and --rounds must be at least 1")
    if find_chromium() is None:
        print("no Chromium found: install chromium or set PYLLM_CHROMIUM")
        return 2
    pyllm.set_num_threads(args.threads)
    tok = pyllm.CharTokenizer(CHARS)
    cases = [("context 256", 256, "short"), ("context 64, filling", 64, "short"),
             ("context 64, sliding", 64, "sliding")]
    tmp = tempfile.mkdtemp(prefix="pyllm-bench-webmodel-")
    paths, models = {}, {}
    for block in (256, 64):
        models[block] = make_model(block)
        paths[block] = os.path.join(tmp, "model%d.html" % block)
        write_html(paths[block], models[block], tok)
    print("model: %d parameters, %s; %d new tokens, %d rounds"
          % (models[64].num_params, pyllm.get_backend(), args.tokens, args.rounds))
    results = {name: ([], []) for name, _, _ in cases}
    with Browser(timeout=60) as browser:
        for _ in range(args.rounds):
            for name, block, kind in cases:
                prompt = prompt_for(kind, block)
                results[name][0].append(page_tps(browser, paths[block], prompt, args.tokens))
                results[name][1].append(python_tps(models[block], tok, prompt, args.tokens))
    print("%-22s %22s %22s" % ("case", "page tokens/s", "pyllm C tokens/s"))
    for name, _, _ in cases:
        page, py = results[name]
        print("%-22s %22s %22s" % (name, spread(page), spread(py)))
    ok = statistics.median(results["context 256"][0]) >= TARGET_TPS
    print("target: >= %.0f tokens/s while the text fits the context: %s"
          % (TARGET_TPS, "met" if ok else "MISSED"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
