"""Tests for pyllm.viewer: the offline single-file attention viewer.

The first half checks the document from Python (input checks, the data encoding, escaping, no
network references). The second half opens pages in headless Chromium through tests/_browser.py
and checks what a user sees: values, clicks, hovers, SVG export, download; those tests skip when
no Chromium is installed (PYLLM_CHROMIUM names one explicitly).
"""
import base64
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from pyllm.viewer import MAX_CELLS, decode_maps, render_html

from _browser import browser_session, find_chromium

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SVG_NS = "http://www.w3.org/2000/svg"
QUANT = 0.5 / 65535 + 1e-7      # the largest error of a uint16-quantised weight

HOSTILE = ["</script>", "<!--", "-->", "<script>alert(1)</script>", 'a "quoted" \'s',
           "&amp; & <b>", "\n", "", "\U0001F600", "caf\u00e9", " leading", "\t", "\u2028",
           "\x00", "\x7f", "trailing ", "x", "]]>", "</SCRIPT ", "\\u003c"]


def causal_softmax(rng, L, NH, T, scale=2.0):
    """Random attention maps (L, NH, T, T): each row a softmax over sources 0..t."""
    x = rng.normal(scale=scale, size=(L, NH, T, T))
    x[:, :, np.triu(np.ones((T, T), dtype=bool), k=1)] = -np.inf
    x = np.exp(x - x.max(axis=-1, keepdims=True))
    return x / x.sum(axis=-1, keepdims=True)


def page_data(doc):
    """The JSON object in the page's data element."""
    m = re.search(r'<script type="application/json" id="pyllm-data">(.*?)</script>', doc, re.S)
    assert m, "no data element"
    return json.loads(m.group(1))


def sample(T=6, L=2, NH=3, seed=0):
    rng = np.random.default_rng(seed)
    return ["t%d" % i for i in range(T)], causal_softmax(rng, L, NH, T)


# ---- Python side ---------------------------------------------------------------------------------

def bad_inputs():
    toks, maps = sample()
    L, NH, T = maps.shape[0], maps.shape[1], len(toks)
    nan = maps.copy()
    nan[0, 0, 3, 1] = np.nan
    neg = maps.copy()
    neg[1, 2, 4, 0] = -0.5
    big = maps.copy()
    big[0, 1, 2, 2] = 1.5
    upper = maps.copy()
    upper[0, 0, 1, 4] = 0.25
    ok_scores = {"induction": np.zeros((L, NH))}
    return [
        ({"maps": maps[0]}, ValueError, "maps must have 4 dimensions"),
        ({"maps": maps[..., :-1]}, ValueError, "len(tokens) = 6"),
        ({"tokens": toks[:-1]}, ValueError, "len(tokens) = 5"),
        ({"maps": nan}, ValueError, "maps must be finite"),
        ({"maps": neg}, ValueError, "maps must lie in [0, 1]"),
        ({"maps": big}, ValueError, "maps must lie in [0, 1]"),
        ({"maps": upper}, ValueError, "maps must be causal"),
        ({"maps": maps > 0.5}, TypeError, "maps must be an array of real numbers"),
        ({"maps": maps.astype(complex)}, TypeError, "maps must be an array of real numbers"),
        ({"maps": np.zeros((0, NH, T, T))}, ValueError, "at least one layer"),
        ({"tokens": "t0 t1"}, TypeError, "tokens must be a list of str"),
        ({"tokens": toks[:-1] + [b"t5"]}, TypeError, "tokens[5] must be a str"),
        ({"tokens": toks[:-1] + [5]}, TypeError, "tokens[5] must be a str"),
        ({"tokens": [], "maps": np.zeros((L, NH, 0, 0))}, ValueError, "tokens must not be empty"),
        ({"scores": {"induction": np.zeros((NH, L))}}, ValueError,
         "scores['induction'] must have shape (L, NH) = (2, 3)"),
        ({"scores": {"induction": np.full((L, NH), np.inf)}}, ValueError,
         "scores['induction'] must be finite"),
        ({"scores": {"induction": np.full((L, NH), 2.0)}}, ValueError,
         "scores['induction'] must lie in [0, 1]"),
        ({"scores": {"": np.zeros((L, NH))}}, TypeError, "scores keys must be non-empty str"),
        ({"scores": [("induction", np.zeros((L, NH)))]}, TypeError, "scores must be None or a dict"),
        ({"scores": ok_scores, "title": 3}, TypeError, "title must be a str"),
        ({"info": {"loss": [1.0]}}, TypeError, "info['loss'] must be a str or a number"),
        ({"info": {1: "x"}}, TypeError, "info keys must be str"),
        ({"info": "model"}, TypeError, "info must be None or a dict"),
    ]


@pytest.mark.parametrize("change,exc,msg", bad_inputs(),
                         ids=[c[2][:40] for c in bad_inputs()])
def test_bad_input_raises_a_clear_error(change, exc, msg):
    toks, maps = sample()
    kwargs = {"tokens": toks, "maps": maps, **change}
    with pytest.raises(exc) as info:
        render_html(**kwargs)
    assert msg in str(info.value)


def test_too_many_values_for_one_page_is_refused():
    T = int(math.sqrt(2 * MAX_CELLS)) + 1
    maps = np.broadcast_to(np.float32(0), (1, 1, T, T))   # no memory: the check comes first
    with pytest.raises(ValueError, match="MAX_CELLS"):
        render_html(["x"] * T, maps)


def test_embedded_maps_decode_back_within_quantisation_error():
    rng = np.random.default_rng(1)
    L, NH, T = 3, 2, 17
    maps = causal_softmax(rng, L, NH, T).astype(np.float32)
    maps[0, 0, 5, :6] = [0, 1, 0.5, 1 / 3, 2e-6, 0.9999]   # edge values (not a softmax row: fine)
    data = page_data(render_html(["t"] * T, maps))
    assert (data["nLayer"], data["nHead"], data["T"]) == (L, NH, T)
    assert data["encoding"] == "uint16le-tril-base64"
    # an independent decoder: base64 -> little-endian uint16 -> lower triangles, row by row
    q = np.frombuffer(base64.b64decode(data["maps"]), dtype="<u2")
    assert q.size == L * NH * T * (T + 1) // 2
    got = np.zeros((L, NH, T, T))
    k = 0
    for l in range(L):
        for h in range(NH):
            for dst in range(T):
                got[l, h, dst, :dst + 1] = q[k:k + dst + 1] / 65535
                k += dst + 1
    assert np.abs(got - maps).max() <= QUANT < 1e-4
    np.testing.assert_array_equal(decode_maps(data["maps"], L, NH, T), got)
    assert got[0, 0, 5, 1] == 1.0 and got[0, 0, 5, 0] == 0.0


def test_scores_info_and_title_are_carried():
    toks, maps = sample()
    ind = np.arange(6).reshape(2, 3) / 10
    doc = render_html(toks, maps, scores={"induction": ind, "previous_token": 1 - ind},
                      title="my <model> & co", info={"model": "tiny", "loss": 1.23456789, "step": 7})
    data = page_data(doc)
    assert [s[0] for s in data["scores"]] == ["induction", "previous_token"]
    np.testing.assert_allclose(data["scores"][0][1], ind, atol=1e-4)
    assert data["info"] == [["model", "tiny"], ["loss", "1.23457"], ["step", "7"]]
    assert data["title"] == "my <model> & co"
    assert "<title>my &lt;model&gt; &amp; co</title>" in doc


def test_hostile_tokens_cannot_end_the_data_element():
    rng = np.random.default_rng(2)
    T = len(HOSTILE)
    doc = render_html(HOSTILE, causal_softmax(rng, 1, 1, T), title="</script><script>x()")
    # exactly the two script elements of the template, each closed once
    assert len(re.findall(r"<script\b", doc, re.I)) == 2
    assert len(re.findall(r"</script", doc, re.I)) == 2
    m = re.search(r'id="pyllm-data">(.*?)</script>', doc, re.S)
    assert not re.search(r"[<>&]", m.group(1)), "markup characters left raw in the data"
    assert m.group(1).isascii()
    assert page_data(doc)["tokens"] == HOSTILE


def test_the_document_references_nothing_on_the_network():
    toks, maps = sample()
    doc = render_html(toks, maps, scores={"induction": np.zeros((2, 3))}, info={"m": "x"})
    # the one URL in the page is the SVG namespace name, a string constant that is never fetched
    assert set(re.findall(r"https?://[^\s\"'<>)]*", doc)) == {SVG_NS}
    assert not re.search(r"\b(src|href|action|poster|srcset)\s*=\s*[\"']", doc, re.I)
    assert not re.search(r"@import|\burl\(|<link\b|<img\b|<iframe\b|\bfetch\(|XMLHttpRequest|"
                         r"WebSocket|EventSource|sendBeacon|importScripts", doc, re.I)
    # the policy forbids every fetch, and allows only the viewer's script (named by its hash)
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', doc).group(1)
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp.split("style-src")[0]
    script = re.findall(r"<script>(.*?)</script>", doc, re.S)
    assert len(script) == 1
    digest = base64.b64encode(hashlib.sha256(script[0].encode("utf-8")).digest()).decode()
    assert "script-src 'sha256-%s'" % digest in csp


def test_template_files_ship_with_the_package():
    import pyllm.viewer as viewer
    here = os.path.dirname(viewer.__file__)
    for name in ("viewer.html", "viewer.css", "viewer.js"):
        assert os.path.isfile(os.path.join(here, name))
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
        setup_py = f.read()
    assert re.search(r'package_data=\{"pyllm\.viewer": \[[^]]*"\*\.html"', setup_py)


# ---- in the browser ------------------------------------------------------------------------------

browser = pytest.fixture(scope="module")(browser_session)


L_, NH_ = 3, 4
TOKENS = HOSTILE + ["w%d " % i for i in range(20)] + ["\ud800"]   # 41 tokens, a lone surrogate last
MAPS = causal_softmax(np.random.default_rng(3), L_, NH_, len(TOKENS)).astype(np.float32)
SCORES = {"induction": np.random.default_rng(4).random((L_, NH_)),
          "previous_token": np.random.default_rng(5).random((L_, NH_))}


def write_page(tmp_path_factory, name, *args, **kwargs):
    path = tmp_path_factory.mktemp("viewer") / name
    path.write_text(render_html(*args, **kwargs), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def page(browser, tmp_path_factory):
    path = write_page(tmp_path_factory, "view.html", TOKENS, MAPS, scores=SCORES,
                      info={"model": "synthetic", "loss": 2.5})
    p = browser.open(path)
    p.wait_for("window.pyllmViewer && pyllmViewer.ready", timeout=15)
    return p


def readout(page):
    return page.eval("document.getElementById('readout').textContent")


def test_page_loads_offline_without_errors(page):
    assert page.eval("pyllmViewer.errors") == []
    assert page.errors == []
    assert page.eval("[pyllmViewer.nLayer, pyllmViewer.nHead, pyllmViewer.T]") == [L_, NH_, len(TOKENS)]
    assert page.eval("pyllmViewer.drawMs") > 0  # its speed is measured by bench_viewer.py
    assert page.eval("document.querySelectorAll('#grid .head canvas').length") == L_ * NH_
    assert page.eval("Array.from(document.querySelectorAll('#info dt, #info dd'))"
                     ".map(e => e.textContent)") == ["tokens", str(len(TOKENS)), "layers \u00d7 heads",
                                                     "%d \u00d7 %d" % (L_, NH_), "model", "synthetic",
                                                     "loss", "2.5"]
    # the page's own file and nothing else (data: and blob: URLs are not network)
    assert [u for u in page.requests if not u.startswith(("data:", "blob:"))] == [page.url]


def test_tokens_read_back_equal_to_the_input(page):
    got = page.eval("pyllmViewer.tokens")
    assert got[:-1] == TOKENS[:-1]
    assert page.eval("pyllmViewer.tokens[%d].charCodeAt(0)" % (len(TOKENS) - 1)) == 0xD800
    assert page.eval("document.getElementById('text').querySelectorAll('.tok').length") == len(TOKENS)


def test_values_equal_the_maps_and_the_upper_triangle_is_zero(page):
    rng = np.random.default_rng(6)
    T = len(TOKENS)
    idx = [[int(rng.integers(L_)), int(rng.integers(NH_)), int(rng.integers(T)),
            int(rng.integers(T))] for _ in range(500)]
    idx += [[L_ - 1, NH_ - 1, T - 1, s] for s in range(T)] + [[0, 0, 0, 0], [0, 0, 0, T - 1]]
    got = page.eval("%s.map(a => pyllmViewer.value(...a))" % json.dumps(idx))
    for (l, h, d, s), v in zip(idx, got):
        if s > d:
            assert v == 0
        else:
            assert abs(v - MAPS[l, h, d, s]) <= QUANT, (l, h, d, s)
    with pytest.raises(Exception, match="RangeError"):
        page.eval("pyllmViewer.value(0, %d, 0, 0)" % NH_)


def test_clicking_a_head_enlarges_it(page):
    page.eval("pyllmViewer.select(0, 0)")
    x, y = page.center_of('#grid .head[data-layer="2"][data-head="1"] canvas')
    page.click(x, y)
    assert page.eval("pyllmViewer.selected") == [2, 1]
    assert page.eval("document.getElementById('detail-title').textContent") == "L2 H1"
    assert page.eval("document.querySelectorAll('.head.selected').length") == 1
    assert page.eval("document.querySelector('.head.selected').dataset.layer") == "2"
    assert page.errors == []


def test_hovering_a_cell_reads_out_its_weight(page):
    page.eval("pyllmViewer.select(1, 3)")
    T = len(TOKENS)
    for dst, src in [(T - 1, 0), (25, 24), (5, 5), (30, 2)]:
        x, y = page.eval("(() => { const c = pyllmViewer.cellCenter(%d, %d); return [c.x, c.y]; })()"
                         % (dst, src))
        page.hover(x, y)
        text = readout(page)
        assert text.startswith("dst %d '" % dst) and (" \u2190 src %d '" % src) in text, text
        shown = float(text.rsplit(": ", 1)[1])
        assert abs(shown - MAPS[1, 3, dst, src]) <= 0.5e-4 + QUANT, text
        assert re.search(r": \d\.\d{4}$", text)
        assert text == page.eval("pyllmViewer.hoverInfo(%d, %d)" % (dst, src))
    x, y = page.eval("(() => { const c = pyllmViewer.cellCenter(3, 9); return [c.x, c.y]; })()")
    page.hover(x, y)
    assert readout(page).endswith("0.0000 (masked: the source comes later)")


def test_hovering_a_token_shades_what_it_attends_to(page):
    page.eval("pyllmViewer.select(2, 2)")
    dst = 33
    x, y = page.center_of('#text .tok[data-i="%d"]' % dst)
    page.hover(x, y)
    alphas = page.eval("""Array.from(document.querySelectorAll('#text .tok')).map(s => {
        const m = getComputedStyle(s).backgroundColor.match(/rgba?\\(([^)]*)\\)/);
        const p = m ? m[1].split(',').map(Number) : [];
        return p.length === 4 ? p[3] : (p.length === 3 ? 1 : 0); })""")
    row = MAPS[2, 2, dst, :dst + 1]
    assert alphas[int(np.argmax(row))] == pytest.approx(1.0, abs=1e-3)
    np.testing.assert_allclose(alphas[:dst + 1], row / row.max(), atol=0.006)  # 8-bit alpha
    assert all(a == 0 for a in alphas[dst + 1:])
    assert page.eval("document.querySelector('#text .tok.dst').dataset.i") == str(dst)
    assert readout(page).startswith("dst %d '" % dst)


def test_export_svg_has_one_cell_per_causal_weight_and_the_token_labels(page):
    T = len(TOKENS)
    svg = page.eval("pyllmViewer.exportSvg(1, 2)")
    root = ET.fromstring(svg.encode("utf-8"))
    assert root.tag == "{%s}svg" % SVG_NS
    cells = [e for e in root.iter("{%s}rect" % SVG_NS) if e.get("class") == "cell"]
    assert len(cells) == T * (T + 1) // 2
    cell = float(cells[0].get("width"))
    x0, y0 = float(cells[0].get("x")), float(cells[0].get("y"))
    for e in cells:
        src = round((float(e.get("x")) - x0) / cell)
        dst = round((float(e.get("y")) - y0) / cell)
        assert 0 <= src <= dst < T
        assert abs(float(e.get("data-w")) - MAPS[1, 2, dst, src]) <= 0.5e-4 + QUANT
        assert re.fullmatch(r"#[0-9a-f]{6}", e.get("fill"))
    labels = page.eval("pyllmViewer.tokens.map((_, i) => pyllmViewer.label(i))")
    for cls in ("dst-label", "src-label"):
        texts = [e.text or "" for e in root.iter("{%s}text" % SVG_NS) if e.get("class") == cls]
        assert texts == labels
    # a label is the token itself, made visible: spaces as middle dots, newline as a return arrow
    assert labels[TOKENS.index("</script>")] == "</script>"
    assert labels[TOKENS.index('a "quoted" \'s')] == 'a\u00b7"quoted"\u00b7\'s'
    assert labels[TOKENS.index("\n")] == "\u21b5"
    assert labels[TOKENS.index("")] == "\u2205"
    assert labels[TOKENS.index("\x00")] == "\\x00"
    assert labels[-1] == "\ufffd"                        # the lone surrogate
    assert page.eval("pyllmViewer.exportSvg() === pyllmViewer.exportSvg(...pyllmViewer.selected)")


def test_export_button_downloads_the_svg(page, browser, tmp_path):
    page.eval("pyllmViewer.select(0, 3)")
    browser.call("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path),
                                                 "eventsEnabled": True})
    x, y = page.center_of("#export")
    page.click(x, y)
    target = tmp_path / "attention-L0-H3.svg"
    deadline = time.monotonic() + 10
    while not target.exists() and time.monotonic() < deadline:
        browser.pump(0.05)
    assert target.exists(), sorted(os.listdir(tmp_path))
    assert target.read_text(encoding="utf-8") == page.eval("pyllmViewer.exportSvg(0, 3)")
    assert page.errors == []


def test_long_text_thumbnails_pool_blocks_and_stay_causal(browser, tmp_path_factory):
    # 300 tokens: thumbnails hold 150 x 150 pixels, each the largest weight of a 2 x 2 block
    rng = np.random.default_rng(7)
    T = 300
    maps = causal_softmax(rng, 1, 2, T, scale=4.0)
    path = write_page(tmp_path_factory, "long.html", ["t%d " % i for i in range(T)], maps)
    p = browser.open(path)
    try:
        p.wait_for("window.pyllmViewer && pyllmViewer.ready", timeout=15)
        assert p.errors == [] and p.eval("pyllmViewer.errors") == []
        size, corner, first = p.eval("""(() => {
            const c = document.querySelector('.head canvas'), x = c.getContext('2d');
            return [[c.width, c.height], Array.from(x.getImageData(c.width - 1, 0, 1, 1).data),
                    Array.from(x.getImageData(0, 0, 1, 1).data)]; })()""")
        assert size == [150, 150]
        assert corner[3] == 0                     # above the diagonal: left blank
        assert first[3] == 255                    # (0, 0): painted
        got = p.eval("[[299, 0], [299, 299], [150, 77]].map(([d, s]) => pyllmViewer.value(0, 1, d, s))")
        want = [maps[0, 1, 299, 0], maps[0, 1, 299, 299], maps[0, 1, 150, 77]]
        np.testing.assert_allclose(got, want, atol=QUANT)
    finally:
        p.close()


def test_a_single_token_page_works(browser, tmp_path_factory):
    path = write_page(tmp_path_factory, "one.html", ["only"], np.ones((1, 1, 1, 1)),
                      info={"layers": 1, "tokens": 1})
    p = browser.open(path)
    try:
        p.wait_for("window.pyllmViewer && pyllmViewer.ready", timeout=15)
        assert p.errors == [] and p.eval("pyllmViewer.value(0, 0, 0, 0)") == 1
        # the caller's info gives the sizes: they are not repeated
        assert p.eval("Array.from(document.querySelectorAll('#info dt')).map(e => e.textContent)") \
            == ["layers", "tokens"]
        assert p.eval("pyllmViewer.exportSvg()").count('class="cell"') == 1
    finally:
        p.close()


@pytest.mark.slow
def test_bench_viewer_quick_runs():
    if find_chromium() is None:
        pytest.skip("no Chromium/Chrome found: install chromium or set PYLLM_CHROMIUM")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_viewer.py"),
                        "--quick"], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^\s+64\s+[\d.]+\s+[\d.]+\s+\d+ \(\d+-\d+\)", r.stdout, re.M), r.stdout
