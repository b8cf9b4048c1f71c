"""Tests for pyllm.export_html: a trained model in one offline web page.

The first part checks the document from Python (size limit, refusals, CLI). The second opens the
page in headless Chromium (tests/_browser.py) and compares its forward pass and greedy generation
with pyllm's own; those tests skip when no Chromium is installed (PYLLM_CHROMIUM names one).
"""
import json
import time
import urllib.parse

import numpy as np
import pytest

import pyllm
from pyllm import CharTokenizer, GPT, GPTConfig
from pyllm.export_html import render_html, write_html

from _browser import browser_session

CHARS = ["\n"] + [chr(c) for c in range(32, 123)]          # newline, space .. z (no {|}~)


def make_model(block_size=64, n_layer=4, n_head=4, n_embd=128, seed=0):
    """A ~0.8M-parameter char model with weights spread wide enough to give decisive logits."""
    cfg = GPTConfig(vocab_size=len(CHARS), block_size=block_size, n_layer=n_layer, n_head=n_head,
                    n_embd=n_embd)
    model = GPT(cfg, seed=seed)
    rng = np.random.default_rng(seed)
    sd = {}
    for name, arr in model.state_dict().items():
        if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight":
            sd[name] = 1 + 0.1 * rng.standard_normal(arr.shape)
        elif arr.ndim == 1:
            sd[name] = 0.05 * rng.standard_normal(arr.shape)
        else:
            sd[name] = (0.5 if name.startswith("w") else 0.08) * rng.standard_normal(arr.shape)
    model.load_state_dict({k: v.astype(np.float32) for k, v in sd.items()})
    return model


@pytest.fixture(scope="module")
def model():
    return make_model()


TOK = CharTokenizer(CHARS)


# ---- Python side ---------------------------------------------------------------------------------

def test_page_is_self_contained(model):
    doc = render_html(model, TOK)
    assert doc.startswith("<!DOCTYPE html>")
    for ref in ("src=", "href=", "@import", "fetch(", "XMLHttpRequest", "WebSocket"):
        assert ref not in doc, ref
    assert "default-src 'none'" in doc


def test_size_limit_refuses_with_a_clear_message(model, tmp_path):
    with pytest.raises(ValueError, match=r"over the limit of 0.5 MB \(--max-mb\).*--int8"):
        write_html(tmp_path / "m.html", model, TOK, max_mb=0.5)
    assert not (tmp_path / "m.html").exists()
    n8 = len(render_html(model, TOK, int8=True))
    n32 = len(render_html(model, TOK))
    assert n8 < n32 / 3


def test_cli_writes_the_page(model, tmp_path, capsys):
    d = tmp_path / "ckpt"
    d.mkdir()
    model.save(str(d / "model.safetensors"))
    TOK.save(str(d / "tokenizer.txt"))
    out = tmp_path / "model.html"
    from pyllm.cli import main
    assert main(["export-html", "--ckpt", str(d), "--out", str(out), "--int8"]) == 0
    assert out.exists() and "wrote" in capsys.readouterr().out
    assert main(["export-html", "--ckpt", str(d), "--out", str(tmp_path / "b.html"),
                 "--max-mb", "0.1"]) == 2
    assert "over the limit of 0.1 MB" in capsys.readouterr().err
    assert not (tmp_path / "b.html").exists()


# ---- in the browser ------------------------------------------------------------------------------

browser = pytest.fixture(scope="module")(browser_session)


@pytest.fixture(scope="module")
def pages(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("webmodel")
    paths = {}
    for name, int8 in (("f32", False), ("q8", True)):
        paths[name] = d / ("model_%s.html" % name)
        write_html(paths[name], model, TOK, int8=int8)
    return paths


def open_query(browser, path, **query):
    url = path.resolve().as_uri() + ("?" + urllib.parse.urlencode(query) if query else "")
    p = browser.open(url)
    p.wait_for("document.body && document.body.dataset.done === '1'", timeout=20)
    return p


def ids(text):
    return np.array(TOK.encode(text), dtype=np.int32)


def check_clean(p):
    assert p.errors == []
    assert [u for u in p.requests if not u.startswith(("data:", "blob:"))] == [p.url]


PROMPT = "The quick brown fox jumps over the lazy dog. "


@pytest.mark.parametrize("kind", ["f32", "q8"])
def test_page_logits_equal_pyllm(browser, pages, model, kind):
    ref_model = pyllm.quantize(model) if kind == "q8" else model
    p = open_query(browser, pages[kind], prompt=PROMPT, logits="1")
    check_clean(p)
    got = np.array(json.loads(p.eval("document.getElementById('output').textContent")))
    want = ref_model.forward(ids(PROMPT))[0, -1]
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    # forward() through the API, on other prompts, one longer than block_size (window slides)
    for text in ["a", "Hello, World", "x" * 10 + PROMPT * 3]:
        got = np.array(p.eval("Array.from(pyllm.forward(pyllm.encode(%s)))" % json.dumps(text)))
        want = ref_model.forward(ids(text)[-model.config.block_size:])[0, -1]
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), text
    assert p.eval("pyllm.decode(pyllm.encode('Hi there!'))") == "Hi there!"


def greedy_ok(model, prompt_ids, got_text, n):
    """got equals pyllm's greedy continuation, or first differs right after a near-tie."""
    want = model.generate(prompt_ids[None], n, temperature=0)[0, len(prompt_ids):]
    got = np.array(TOK.encode(got_text))
    if np.array_equal(got, want):
        return True, None
    k = int(np.argmax(got != want)) if len(got) == len(want) else min(len(got), len(want))
    seq = np.concatenate([prompt_ids, want[:k]])[-model.config.block_size:]
    logits = model.forward(seq)[0, -1]
    top = np.sort(logits)[-2:]
    return bool(top[1] - top[0] <= 1e-4 * np.abs(logits).max()), k


@pytest.mark.parametrize("prompt", [PROMPT, "x" * 70 + "Q"])   # the second is > block_size (64)
def test_greedy_generation_equals_pyllm(browser, pages, model, prompt):
    p = open_query(browser, pages["f32"], prompt=prompt, n=50, temperature=0)
    check_clean(p)
    got = p.eval("document.getElementById('output').textContent")
    assert len(got) == 50
    ok, k = greedy_ok(model, ids(prompt), got, 50)
    assert ok, "differs at token %s without a near-tie" % k
    assert p.eval("pyllm.tokensPerSecond") > 0


def test_sampling_equals_pyllm(browser, pages, model):
    """Same PCG32 stream and sampling rule as pyllm: same tokens for the same seed."""
    p = open_query(browser, pages["f32"])
    for opts, kw in [({"temperature": 1.0, "seed": 3}, {"temperature": 1.0, "seed": 3}),
                     ({"temperature": 0.8, "topK": 5, "topP": 0.9, "seed": 7},
                      {"temperature": 0.8, "top_k": 5, "top_p": 0.9, "seed": 7})]:
        got = p.eval("pyllm.generate(%s, 30, %s)" % (json.dumps(PROMPT), json.dumps(opts)),
                     timeout=30)
        want = TOK.decode(model.generate(ids(PROMPT)[None], 30, **kw)[0, len(PROMPT):])
        assert got == want, opts
    check_clean(p)


def test_unknown_characters_are_dropped_with_a_message(browser, pages, model):
    prompt = "caf\u00e9 {not} here \U0001F600"
    p = open_query(browser, pages["f32"], prompt=prompt, n=5, temperature=0)
    check_clean(p)
    msg = p.eval("document.getElementById('notice').hidden ? '' : "
                 "document.getElementById('notice').textContent")
    assert "Left out 4 character(s)" in msg and "\u00e9" in msg
    kept = "".join(c for c in prompt if c in CHARS)
    got = p.eval("document.getElementById('output').textContent")
    assert got == TOK.decode(model.generate(ids(kept)[None], 5, temperature=0)[0, len(kept):])


def test_attention_rows_are_causal_softmax(browser, pages, model):
    p = open_query(browser, pages["f32"])
    maps = np.array(p.eval("pyllm.attention(pyllm.encode('abcabcab')).maps.map(l => l.map("
                           "h => h.map(r => Array.from(r))))"))
    L, NH, T = model.config.n_layer, model.config.n_head, 8
    assert maps.shape == (L, NH, T, T)
    np.testing.assert_allclose(maps.sum(-1), 1, atol=1e-5)
    assert np.all(np.triu(maps, 1) == 0)
    from pyllm import explore
    if hasattr(explore, "attention_maps"):
        want = np.asarray(explore.attention_maps(model, ids("abcabcab")))
        np.testing.assert_allclose(maps, want.reshape(maps.shape), atol=1e-4)



def panel_matches_attention(p, L, NH):
    """lastPanel's weights are the last row of attention(lastPanel.ids) for its layer/head."""
    panel = p.eval("pyllm.lastPanel")
    T = len(panel["ids"])
    want = p.eval("Array.from(pyllm.attention(pyllm.lastPanel.ids).maps[%d][%d][%d])"
                  % (panel["layer"], panel["head"], T - 1))
    got = np.array(panel["weights"])
    assert got.shape == (T,) and 0 <= panel["layer"] < L and 0 <= panel["head"] < NH
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert abs(got.sum() - 1) <= 1e-5
    # the strip shows one token-labelled cell per token, its weight in the title
    titles = p.eval("Array.from(document.querySelectorAll('#attn-row span'), e => e.title)")
    assert len(titles) == T
    assert all(t.endswith("%.4f" % w) for t, w in zip(titles, got))
    return panel


def test_attention_panel_after_generation(browser, pages, model):
    L, NH, B = model.config.n_layer, model.config.n_head, model.config.block_size
    p = open_query(browser, pages["f32"], prompt=PROMPT, n=25, temperature=0)
    out = p.eval("document.getElementById('output').textContent")
    assert not p.eval("document.getElementById('attn').hidden")
    assert p.eval("document.querySelectorAll('#attn-grid canvas').length") == L * NH
    panel = panel_matches_attention(p, L, NH)
    assert panel["ids"] == TOK.encode(PROMPT + out)[-B:]               # capped to block_size
    assert (panel["layer"], panel["head"]) == (0, 0)
    # the grid's maps: causal upper triangle blank, the diagonal drawn
    T = len(panel["ids"])
    alpha = p.eval("(() => { const c = document.querySelectorAll('#attn-grid canvas')[%d]"
                   ".getContext('2d'); return [c.getImageData(%d, 0, 1, 1).data[3],"
                   " c.getImageData(%d, %d, 1, 1).data[3]]; })()" % (L * NH - 1, T - 1, T - 1, T - 1))
    assert alpha == [0, 255]
    # changing the selector redraws the strip for that head
    p.eval("(() => { const l = document.getElementById('attn-layer'), "
           "h = document.getElementById('attn-head'); l.value = '%d'; h.value = '%d'; "
           "l.dispatchEvent(new Event('change')); h.dispatchEvent(new Event('change')); })()"
           % (L - 1, NH - 2))
    panel = panel_matches_attention(p, L, NH)
    assert (panel["layer"], panel["head"]) == (L - 1, NH - 2)
    # clicking a map in the grid picks it
    p.click(*p.center_of("#attn-grid canvas:nth-child(%d)" % (NH + 2)))
    panel = panel_matches_attention(p, L, NH)
    assert (panel["layer"], panel["head"]) == (1, 1)
    assert p.eval("document.querySelectorAll('#attn-grid canvas.sel').length") == 1
    # refreshing for another text, also through the API and for a short one
    for text, l, h in [("abcabcab", 2, 3), ("x" * 80, 3, 0)]:
        p.eval("pyllm.showAttention(%s, %d, %d) && 0" % (json.dumps(text), l, h))
        panel = panel_matches_attention(p, L, NH)
        assert (panel["layer"], panel["head"]) == (l, h)
        assert panel["ids"] == TOK.encode(text)[-B:]
        assert p.eval("document.querySelectorAll('#attn-grid canvas').length") == L * NH
    check_clean(p)

def test_generate_button_streams_and_shows_speed(browser, pages):
    p = open_query(browser, pages["f32"])
    p.eval("document.getElementById('prompt').value = 'Hello'; "
           "document.getElementById('length').value = '50'; "
           "document.getElementById('temperature').value = '0'")
    p.click(*p.center_of("#generate"))
    # the page keeps answering while it generates: text arrives in pieces
    p.wait_for("document.getElementById('output').textContent.length > 6", timeout=10)
    t0 = time.monotonic()
    p.wait_for("document.getElementById('generate').textContent === 'Generate'", timeout=30)
    assert time.monotonic() - t0 >= 0
    assert len(p.eval("document.getElementById('output').textContent")) == 5 + 50
    assert "tokens/s" in p.eval("document.getElementById('speed').textContent")
    # the attention panel was drawn for prompt + continuation when the generation finished
    assert p.eval("pyllm.lastPanel.ids.length") == 5 + 50
    assert p.eval("pyllm.decode(pyllm.lastPanel.ids)") == p.eval(
        "document.getElementById('output').textContent")
    assert p.eval("document.querySelectorAll('#attn-grid canvas').length") == 4 * 4
    check_clean(p)


BPE_TEXT = ("It's a test: we'll see if they've 12 cats, 3.5 dogs & caf\u00e9s!\n\n  Indented  "
            "lines\tand tabs.\u00a0\u4e16\u754c \U0001F600 don't STOP'S 2024-01-02 ") * 8
BPE_PROBES = ["It's a test", "we'll  see\n\n\nx", "caf\u00e9 \u4e16\u754c\U0001F600!!",
              "  lead and trail  ", "a<|endoftext|>b", "x\u2028y\x85z\x1cw", "123456 abc.def",
              "DON'T it's", "\t\t\n "]


def test_bpe_page_encodes_decodes_and_matches_logits(browser, tmp_path):
    tok = pyllm.BPETokenizer.train(BPE_TEXT, 300)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32)
    model = GPT(cfg, seed=1)
    path = tmp_path / "bpe.html"
    write_html(path, model, tok)
    p = open_query(browser, path, prompt="It's a test", logits="1")
    check_clean(p)
    for text in BPE_PROBES:
        assert p.eval("pyllm.encode(%s)" % json.dumps(text)) == tok.encode(text), text
        assert p.eval("pyllm.decode(%s)" % json.dumps(tok.encode(text))) == text, text
    assert p.eval("pyllm.decode([%d])" % tok.encode("\u00e9")[0]) == tok.decode(tok.encode("\u00e9")[:1])
    got = np.array(json.loads(p.eval("document.getElementById('output').textContent")))
    want = model.forward(np.array(tok.encode("It's a test")))[0, -1]
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    out = p.eval("pyllm.generate('It', 20, {temperature: 0.9, seed: 5})")
    want_ids = model.generate(np.array(tok.encode("It"))[None], 20, temperature=0.9, seed=5)
    assert out == tok.decode(want_ids[0, len(tok.encode("It")):])


def test_gpt2_directory_through_the_cli(browser, tmp_path, capsys):
    """--gpt2: a Hugging Face GPT-2 directory (GPT-2's byte order and vocab files)."""
    tok = pyllm.BPETokenizer.train(BPE_TEXT, 300)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2,
                          n_embd=32), seed=2)
    model.save_hf(str(tmp_path / "hf"), tok)
    from pyllm.cli import main
    out = tmp_path / "gpt2.html"
    assert main(["export-html", "--gpt2", str(tmp_path / "hf"), "--out", str(out), "--int8"]) == 0
    loaded, ltok = pyllm.load_gpt2(str(tmp_path / "hf"), with_tokenizer=True)
    p = open_query(browser, out, prompt="we'll see", logits="1")
    check_clean(p)
    for text in BPE_PROBES:
        assert p.eval("pyllm.encode(%s)" % json.dumps(text)) == ltok.encode(text), text
        assert p.eval("pyllm.decode(pyllm.encode(%s))" % json.dumps(text)) == text, text
    got = np.array(json.loads(p.eval("document.getElementById('output').textContent")))
    want = pyllm.quantize(loaded).forward(np.array(ltok.encode("we'll see")))[0, -1]
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


@pytest.mark.slow
def test_bench_webmodel_quick_runs():
    import os
    import re
    import subprocess
    import sys
    from _browser import find_chromium
    if find_chromium() is None:
        pytest.skip("no Chromium/Chrome found: install chromium or set PYLLM_CHROMIUM")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "bench_webmodel.py"),
                        "--quick"], capture_output=True, text=True, timeout=300, cwd=root)
    assert r.returncode == 0, r.stdout + r.stderr
    for case in ("context 256", "context 64, filling", "context 64, sliding"):
        assert re.search(r"^%s\s+\d+ \(\d+-\d+\)\s+\d+ \(\d+-\d+\)$" % case, r.stdout, re.M), r.stdout
