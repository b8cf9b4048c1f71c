"""How fast the attention viewer (pyllm.viewer.render_html) opens in headless Chromium.

    python benchmarks/bench_viewer.py                  # 256 tokens, 4 layers x 4 heads, 5 rounds
    python benchmarks/bench_viewer.py --tokens 256 1024 --rounds 5
    python benchmarks/bench_viewer.py --quick          # CI: 64 tokens, 2 rounds

The maps are synthetic causal softmax rows (random logits; every head and row differs). For each
size the page is written to a temporary file and opened --rounds times, each in a fresh tab of one
browser (driven by tests/_browser.py). Reported: the Python render time, the file size, the wall
time from Page.navigate to the viewer's `ready` (Python's clock), the page's own `drawMs`
(performance.now() from the script's start to the grid drawn) and the time to build the SVG of one
head: medians (min-max). Target: under 2 s for 256 tokens on 4 x 4 heads.
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
from pyllm.viewer import render_html  # noqa: E402
from _browser import Browser, find_chromium  # noqa: E402

TARGET_S = 2.0


def synthetic_maps(L, NH, T, seed=0):
    """Causal softmax rows over random logits: (L, NH, T, T) float32, rows sum to 1."""
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=2.0, size=(L, NH, T, T))
    x[:, :, np.triu(np.ones((T, T), dtype=bool), k=1)] = -np.inf
    x = np.exp(x - x.max(axis=-1, keepdims=True))
    return (x / x.sum(axis=-1, keepdims=True)).astype(np.float32)


def spread(xs, fmt="%.0f"):
    return (fmt + " (" + fmt + "-" + fmt + ")") % (statistics.median(xs), min(xs), max(xs))


def bench(browser, T, L, NH, rounds):
    tokens = ["tok%d " % i if i % 7 else "\n" for i in range(T)]
    maps = synthetic_maps(L, NH, T)
    t = time.perf_counter()
    html = render_html(tokens, maps, scores={"induction": np.full((L, NH), 0.5)},
                       info={"model": "synthetic", "tokens": T})
    render_s = time.perf_counter() - t
    fd, path = tempfile.mkstemp(suffix=".html", prefix="pyllm-bench-viewer-")
    walls, draws, svgs = [], [], []
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(html)
        for _ in range(rounds):
            page = browser.new_page()
            t = time.perf_counter()
            page.navigate(path, timeout=60)
            page.wait_for("window.pyllmViewer && pyllmViewer.ready", timeout=60)
            walls.append(time.perf_counter() - t)
            draws.append(page.eval("pyllmViewer.drawMs"))
            svgs.append(page.eval("(() => { const t = performance.now(); pyllmViewer.exportSvg(0, 0);"
                                  " return performance.now() - t; })()", timeout=60))
            if page.errors:
                raise SystemExit("page errors: %s" % page.errors)
            page.close()
    finally:
        os.unlink(path)
    return render_s, len(html.encode("utf-8")), walls, draws, svgs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[256])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="64 tokens, 2 rounds (CI)")
    args = ap.parse_args(argv)
    if args.quick:
        args.tokens, args.rounds = [64], 2
    binary = find_chromium()
    if binary is None:
        print("no Chromium found (set PYLLM_CHROMIUM): nothing to measure")
        return 0
    rows = []
    with Browser(binary, timeout=60) as browser:
        print("browser: %s" % browser.version.get("product", binary))
        for T in args.tokens:
            rows.append((T, bench(browser, T, args.layers, args.heads, args.rounds)))
    print("%d layers x %d heads, %d rounds; medians (min-max)" % (args.layers, args.heads, args.rounds))
    print("%6s %10s %10s %22s %20s %20s" % ("tokens", "render s", "size MB", "navigate->ready ms",
                                            "page drawMs", "exportSvg ms"))
    for T, (render_s, size, walls, draws, svgs) in rows:
        print("%6d %10.3f %10.2f %22s %20s %20s" % (T, render_s, size / 1e6,
                                                    spread([w * 1e3 for w in walls]),
                                                    spread(draws), spread(svgs)))
    for T, (_, _, walls, _, _) in rows:
        if T == 256 and args.layers == 4 and args.heads == 4:
            ok = statistics.median(walls) < TARGET_S
            print("256 tokens, 4 x 4 heads: %.0f ms to ready, target < %.0f ms: %s"
                  % (statistics.median(walls) * 1e3, TARGET_S * 1e3, "met" if ok else "MISSED"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
