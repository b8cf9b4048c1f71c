"""The head explorer (pyllm.explore): attention maps against an independent float64 GPT-2 (and
Hugging Face transformers where importable), head scores against hand-computed diagonals and exact
patterns, ablation against the reference with heads replaced (forward, loss, gradients by finite
differences, generation), embedding neighbours by hand, the viewer's numbers, the CLI."""
import base64
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import pyllm
from pyllm import explore
from pyllm.tokenizer import CharTokenizer

from _close import assert_close
from _reference import ref_forward, ref_loss
from test_model import _hf_checkpoint, randomize

CFG = dict(vocab_size=23, block_size=32, n_layer=3, n_head=4, n_embd=16)


def model(seed=0, dtype=np.float32, **kw):
    m = pyllm.GPT(pyllm.GPTConfig(**dict(CFG, **kw)), seed=seed, dtype=dtype)
    randomize(m, seed=seed, scale=0.5)  # sharp, varied attention patterns
    return m


def ref_maps(m, idx, **kw):
    maps = []
    ref_forward(m.state_dict(), m.config, np.atleast_2d(idx), maps=maps, **kw)
    return np.stack(maps, 1)                                             # (B,L,NH,T,T)


# Attention probabilities are compared each relative to itself, without a floor (tests/_close.py):
# the float32 model's score errors make every probability -- down to the 1e-23 ones of these sharp
# heads -- off by the same relative amount, measured at most 4.0e-5 through 3 layers (2.1e-5 on
# the large ones); the zeros above the diagonal are exact.
MAPS_RTOL = 2e-4


def assert_maps_close(got, want, rtol=MAPS_RTOL, what="maps"):
    assert_close(got, want, rtol=rtol, floor_ulps=0, what=what)


def assert_logits_close(got, want, what="logits"):
    """Float32 logits against the float64 reference: relative 2e-5 with a floor of 64 ulps of the
    row's largest logit (measured: 2.2e-6 and 4.8 ulps)."""
    assert_close(got, want, rtol=2e-5, floor_ulps=64, what=what)


# ---- attention maps ---------------------------------------------------------------------------

def test_maps_match_an_independent_forward(backend, rng):
    m = model(1)
    idx = rng.integers(0, 23, (3, 29))
    got = explore.attention_maps(m, idx)
    assert got.dtype == np.float32 and got.shape == (3, 3, 4, 29, 29)
    want = ref_maps(m, idx)
    assert_maps_close(got, want)
    assert_close(got.sum(-1), np.ones(got.shape[:-1]), rtol=4e-5, what="row sums")  # 3.7e-6
    assert not np.any(np.triu(got, 1))
    assert got.max() > 0.9  # the test model's heads are sharp: a real pattern, not uniform
    one = explore.attention_maps(m, idx[1])                              # (T,) -> no batch axis
    assert one.shape == (3, 4, 29, 29)
    assert_maps_close(one, got[1], what="one sequence")                 # measured 1.9e-5


def test_both_backends_give_the_same_maps_and_scores(rng):
    from conftest import need_c
    need_c()
    m, idx = model(2), rng.integers(0, 23, (2, 32))
    res = {}
    prev = pyllm.get_backend()
    try:
        for be in ("numpy", "c"):
            pyllm.set_backend(be)
            res[be] = explore.attention_maps(m, idx), explore.head_scores(m, seq_len=12)
    finally:
        pyllm.set_backend(prev)
    assert_maps_close(res["c"][0], res["numpy"][0], what="C vs NumPy")   # measured 2.7e-5
    for name in explore.SCORE_NAMES:                                    # means of probabilities:
        assert_close(res["c"][1][name], res["numpy"][1][name], rtol=1e-5, floor_ulps=0,
                     what=name)                                         # measured 5.5e-7


def test_maps_of_a_gpt2_checkpoint_match_the_reference(tmp_path, backend, rng):
    src = model(3, vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=8)
    _hf_checkpoint(src, tmp_path / "hf")
    g = pyllm.load_gpt2(tmp_path / "hf")
    idx = rng.integers(0, 50, 16)
    got = explore.attention_maps(g, idx)
    assert_maps_close(got, ref_maps(src, idx)[0], rtol=3e-5)            # measured 2.9e-6


def test_maps_match_transformers_output_attentions(tmp_path, rng):
    """A GPT-2 written by transformers itself (its own initialisation and file writer), read with
    load_gpt2: the maps equal its output_attentions."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=4,
                                  layer_norm_epsilon=1e-5, activation_function="gelu_new",
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  initializer_range=0.3)  # sharp patterns
    cfg._attn_implementation = "eager"  # the attention that returns its probabilities
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    g = pyllm.load_gpt2(tmp_path / "hf")
    idx = rng.integers(0, 50, (2, 16))
    with torch.no_grad():
        out = hf(torch.tensor(idx), output_attentions=True)
    want = np.stack([a.numpy() for a in out.attentions], 1)             # (B,L,NH,T,T)
    assert want.max() > 0.5
    assert_maps_close(explore.attention_maps(g, idx), want, rtol=3e-5)  # measured 2.7e-6
    assert_logits_close(g.forward(idx), out.logits.numpy())             # 1.7e-6, 4.3 ulps


def test_memory_limit_is_stated_and_enforced():
    m = model()
    assert explore.maps_bytes(m, 2, 10) == 2 * 3 * 4 * 10 * 10 * 4
    with pytest.raises(MemoryError, match=r"3 x n_head 4 x T x T float32.*max_bytes"):
        explore.attention_maps(m, np.zeros((2, 10), np.int64), max_bytes=3000)
    assert explore.attention_maps(m, np.zeros((2, 10), np.int64), max_bytes=9600).shape[0] == 2


def test_float64_model_maps(rng):
    pyllm.set_backend("numpy")
    try:
        m = model(5, dtype=np.float64)
        idx = rng.integers(0, 23, 20)
        got = explore.attention_maps(m, idx)
        assert got.dtype == np.float32                                 # float64 maps, rounded
        assert_maps_close(got, ref_maps(m, idx)[0], rtol=1e-6)         # to float32: 6e-8
    finally:
        pyllm.set_backend("auto")


# ---- head scores ------------------------------------------------------------------------------

def _pattern_maps(kind, S, L=1, NH=1):
    T = 2 * S
    A = np.zeros((T, T))
    for t in range(T):
        if kind == "uniform":
            A[t, :t + 1] = 1.0 / (t + 1)
        else:
            src = {"previous": t - 1, "induction": t - S + 1, "duplicate": t - S}[kind]
            A[t, src if (t >= 1 and (kind == "previous" or t >= S)) else t] = 1.0
    return np.broadcast_to(A, (2, L, NH, T, T))


@pytest.mark.parametrize("kind,name", [("previous", "previous_token"), ("induction", "induction"),
                                       ("duplicate", "duplicate")])
def test_exact_patterns_score_one(kind, name):
    s = explore.scores_from_maps(_pattern_maps(kind, 10), 10)
    assert s[name][0, 0] == 1.0
    assert all(s[o][0, 0] < 0.2 for o in explore.SCORE_NAMES if o != name)


def test_offset_attention_finds_where_a_head_looks():
    """A head that always looks 3 back: 1.0 at offset 3 from any first row >= 3, 0 elsewhere;
    uniform rows give the mean of 1/(t+1) by hand; impossible offsets are refused."""
    T = 12
    A = np.zeros((T, T))
    for t in range(T):
        A[t, max(t - 3, 0)] = 1.0
    assert explore.offset_attention(A, 3, 3) == 1.0
    assert explore.offset_attention(A, 2, 3) == 0.0 and explore.offset_attention(A, 4, 5) == 0.0
    U = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]
    assert abs(explore.offset_attention(U, 2, 4) - np.mean([1 / (t + 1) for t in range(4, T)])) \
        < 1e-12
    with pytest.raises(ValueError, match="offset <= first"):
        explore.offset_attention(A, 5, 4)
    with pytest.raises(ValueError, match="maps"):
        explore.offset_attention(np.zeros((3, 4)), 1, 1)


def test_uniform_attention_scores_low_by_hand():
    S = 16
    s = explore.scores_from_maps(_pattern_maps("uniform", S), S)
    # mean of 1/(t+1): t = 1..2S-1 for previous-token, t = S..2S-1 for the other two
    assert abs(s["previous_token"][0, 0] - np.mean([1 / (t + 1) for t in range(1, 2 * S)])) < 1e-12
    assert abs(s["induction"][0, 0] - np.mean([1 / (t + 1) for t in range(S, 2 * S)])) < 1e-12
    assert max(v[0, 0] for v in s.values()) < 0.1


def test_head_scores_are_the_diagonals_of_the_maps(backend):
    m, S = model(6), 9
    got = explore.head_scores(m, seq_len=S, n_seqs=3, seed=4)
    idx = explore.repeated_tokens(m, S, 3, seed=4)
    assert idx.shape == (3, 18) and np.array_equal(idx[:, :S], idx[:, S:])
    assert all(len(set(r[:S])) == S for r in idx)      # no token twice in r (23 >= 9)
    A = ref_maps(m, idx)
    L, NH = 3, 4
    for l in range(L):
        for h in range(NH):
            prev = np.mean([A[b, l, h, t, t - 1] for b in range(3) for t in range(1, 2 * S)])
            ind = np.mean([A[b, l, h, t, t - S + 1] for b in range(3) for t in range(S, 2 * S)])
            dup = np.mean([A[b, l, h, t, t - S] for b in range(3) for t in range(S, 2 * S)])
            # means of probabilities: relative, no floor (measured 1.4e-6)
            for name, want in (("previous_token", prev), ("induction", ind), ("duplicate", dup)):
                assert_close(got[name][l, h], want, rtol=2e-5, floor_ulps=0,
                             what="%s %d.%d" % (name, l, h))
    assert set(got) == set(explore.SCORE_NAMES)
    assert all(v.shape == (L, NH) and v.min() >= 0 and v.max() <= 1 for v in got.values())


def test_head_scores_arguments_checked():
    m = model()
    with pytest.raises(ValueError, match="seq_len must be in"):
        explore.head_scores(m, seq_len=17)          # 2 * 17 > block_size 32
    with pytest.raises(ValueError, match="seq_len must be in"):
        explore.head_scores(m, seq_len=1)
    with pytest.raises(TypeError, match="seq_len"):
        explore.head_scores(m, seq_len=4.0)
    with pytest.raises(ValueError, match="n_seqs"):
        explore.head_scores(m, n_seqs=0)
    with pytest.raises(TypeError, match="pyllm.GPT"):
        explore.head_scores("gpt2")


# ---- ablation ---------------------------------------------------------------------------------

def _head_mean_ref(m, ref):
    outs = []
    ref_forward(m.state_dict(), m.config, np.atleast_2d(ref), ablate="record", maps=outs)
    return outs                                               # per layer (B,T,NH,hd)


def test_zero_ablation_matches_the_reference_and_restores(backend, rng):
    m = model(7)
    idx, tgt = rng.integers(0, 23, (2, 20)), rng.integers(0, 23, (2, 20))
    before = m.params.copy()
    base = m.loss(idx, tgt)
    with explore.ablate(m, [(1, 2), (0, 0)]):
        got = m.forward(idx)
        loss = m.loss(idx, tgt)
    want = ref_forward(m.state_dict(), m.config, idx, ablate={(1, 2): 0.0, (0, 0): 0.0})
    assert_logits_close(got, want)
    assert_close(loss, ref_loss(want, tgt), rtol=1e-6, what="loss")     # measured 4.4e-8
    assert abs(loss - base) > 1e-3
    assert np.array_equal(m.params, before) and m._attn_hook is None
    assert m.loss(idx, tgt) == base


def test_mean_ablation_uses_the_reference_batch_mean(backend, rng):
    m = model(8)
    idx, ref = rng.integers(0, 23, (2, 16)), rng.integers(0, 23, (3, 25))
    means = {(l, h): _head_mean_ref(m, ref)[l][:, :, h].reshape(-1, 4).mean(0)
             for l, h in [(2, 1), (0, 3)]}
    with explore.ablate(m, ["2.1", (0, 3)], mode="mean", reference=ref):
        got = m.forward(idx)
    assert_logits_close(got, ref_forward(m.state_dict(), m.config, idx, ablate=means))


def test_ablated_gradients_match_finite_differences(rng):
    pyllm.set_backend("numpy")
    try:
        m = model(9, dtype=np.float64, n_layer=2, vocab_size=7, n_embd=8, n_head=2)
        idx, tgt = rng.integers(0, 7, (2, 6)), rng.integers(0, 7, (2, 6))
        ref = rng.integers(0, 7, (1, 8))
        for mode, kw in (("zero", {}), ("mean", {"reference": ref})):
            with explore.ablate(m, [(0, 1), (1, 0)], mode=mode, **kw):
                _, grads = m.loss_and_grads(idx, tgt)
                g = grads.flat.copy()
                pts = rng.choice(m.params.size, 60, replace=False)
                num = []
                for i in pts:
                    old = m.params[i]
                    m.params[i] = old + 1e-6
                    lp = m.loss(idx, tgt)
                    m.params[i] = old - 1e-6
                    lm = m.loss(idx, tgt)
                    m.params[i] = old
                    num.append((lp - lm) / 2e-6)
                # relative 1e-6, with a floor of 16 eps64 |loss| / step: the rounding of the
                # two losses (measured at most 0.86 of those)
                assert_close(g[pts], np.array(num), rtol=1e-6, floor_ulps=16,
                             eps=np.finfo(np.float64).eps, scale=abs(m.loss(idx, tgt)) / 1e-6,
                             what="%s ablation gradient" % mode)
            # the ablated head's q, k, v weights get no gradient through it
            W = grads["h.0.attn.c_attn.weight"]
            assert not np.any(W[:, 4:8]) and not np.any(W[:, 12:16]) and not np.any(W[:, 20:24])
    finally:
        pyllm.set_backend("auto")


def test_generate_sees_the_ablation(backend, rng):
    m = model(10)
    prompt = rng.integers(0, 23, (2, 5))
    with explore.ablate(m, [(0, 1), (2, 3)]):
        cached = m.generate(prompt, 12, temperature=0)
        plain = m.generate(prompt, 12, temperature=0, use_cache=False)
    assert np.array_equal(cached, plain)
    # greedy tokens of the reference with the heads zeroed, one at a time
    seq = prompt.copy()
    for _ in range(12):
        logits = ref_forward(m.state_dict(), m.config, seq, ablate={(0, 1): 0.0, (2, 3): 0.0})
        seq = np.concatenate([seq, logits[:, -1].argmax(-1)[:, None]], 1)
    assert np.array_equal(cached, seq)
    assert not np.array_equal(m.generate(prompt, 12, temperature=0), cached)
    # with no head listed, the layer-by-layer decoder samples what the usual decoder samples
    with explore.ablate(m, []):
        hooked = m.generate(prompt, 12, temperature=0.9, seed=5)
    assert np.array_equal(hooked, m.generate(prompt, 12, temperature=0.9, seed=5))


def test_ablation_restores_after_an_exception_and_nests(rng):
    m = model(11)
    idx = rng.integers(0, 23, (1, 12))
    base = m.forward(idx)
    with pytest.raises(KeyError):
        with explore.ablate(m, [(0, 0)]):
            raise KeyError("boom")
    assert m._attn_hook is None and np.array_equal(m.forward(idx), base)
    with explore.ablate(m, [(0, 0)]):
        with explore.ablate(m, [(1, 1)]):
            both = m.forward(idx)
        outer = m.forward(idx)
    want = ref_forward(m.state_dict(), m.config, idx, ablate={(0, 0): 0.0, (1, 1): 0.0})
    assert_logits_close(both, want, "both ablated")
    assert_logits_close(outer, ref_forward(m.state_dict(), m.config, idx, ablate={(0, 0): 0.0}),
                        "the outer ablation")


@pytest.mark.parametrize("heads,mode,kw,exc,match", [
    ([(3, 0)], "zero", {}, ValueError, r"layer 3 .* layers 0\.\.2"),
    ([(0, 4)], "zero", {}, ValueError, r"head 4 .* heads 0\.\.3"),
    ([(0, -1)], "zero", {}, ValueError, "out of range"),
    ([(0, 1.0)], "zero", {}, TypeError, "pair of ints"),
    ([0, 1], "zero", {}, TypeError, "pair of ints"),
    ("0.1", "zero", {}, TypeError, "list of"),
    (["1-2"], "zero", {}, ValueError, "LAYER.HEAD"),
    ([(0, 0)], "off", {}, ValueError, "mode must be one of"),
    ([(0, 0)], "mean", {}, ValueError, "needs reference"),
    ([(0, 0)], "zero", {"reference": [[1, 2]]}, ValueError, "only with mode='mean'"),
    ([(0, 0)], "mean", {"reference": [[1, 99]]}, ValueError, "reference holds token id 99"),
])
def test_ablate_bad_arguments(heads, mode, kw, exc, match):
    m = model()
    with pytest.raises(exc, match=match):
        with explore.ablate(m, heads, mode, **kw):
            pass
    assert m._attn_hook is None


@pytest.mark.parametrize("idx,exc,match", [
    ([[1, 2], [3]], ValueError, None), (np.zeros((2, 2, 2), np.int64), ValueError, "shape"),
    ([1, 23], ValueError, r"token id 23, outside \[0, 23\)"), ([-1], ValueError, "token id -1"),
    ([0.5, 1.0], TypeError, "integer token ids"), (np.zeros(33, np.int64), ValueError,
                                                    "block_size"),
    (np.zeros((1, 0), np.int64), ValueError, "non-empty")])
def test_attention_maps_bad_input(idx, exc, match):
    with pytest.raises(exc, match=match):
        explore.attention_maps(model(), idx)


# ---- embeddings -------------------------------------------------------------------------------

def _embedding_model():
    tok = CharTokenizer("abcdef")
    m = pyllm.GPT(pyllm.GPTConfig(vocab_size=6, block_size=4, n_layer=1, n_head=1, n_embd=2))
    m.state_dict()["wte.weight"][...] = [[1, 0], [10, 1], [0.9, 0.1], [0, 1], [-1, 0], [3, 3]]
    return m, tok


def test_nearest_tokens_cosine_and_dot_by_hand():
    m, tok = _embedding_model()
    # cosine to a=(1,0): c=(0.9,0.1) 0.9939, b=(10,1) 0.9950, f 0.7071, d 0, e -1
    cos = explore.nearest_tokens(m, tok, "a", k=3)
    assert [t for _, t, _ in cos] == ["b", "c", "f"]
    assert abs(cos[0][2] - 10 / np.sqrt(101)) < 1e-6
    # dot to c=(0.9,0.1): b 9.1, f 3.0, a 0.9 -- the long vector wins, unlike cosine
    dot = explore.nearest_tokens(m, tok, 2, k=3, metric="dot")
    assert [(i, t) for i, t, _ in dot] == [(1, "b"), (5, "f"), (0, "a")]
    assert abs(dot[0][2] - 9.1) < 1e-5
    assert [t for _, t, _ in explore.nearest_tokens(m, tok, "c", k=2)] == ["b", "a"]
    assert len(explore.nearest_tokens(m, tok, "a", k=100)) == 5      # all but itself


@pytest.mark.parametrize("query,kw,exc,match", [
    ("ab", {}, ValueError, "not one token"), ("z", {}, ValueError, "not in the vocabulary"),
    ("", {}, ValueError, "empty"), (6, {}, ValueError, "outside the vocabulary"),
    (1.5, {}, TypeError, "token id or a str"), ("a", {"k": 0}, ValueError, "k must be"),
    ("a", {"metric": "l2"}, ValueError, "metric must be")])
def test_nearest_tokens_bad_input(query, kw, exc, match):
    m, tok = _embedding_model()
    with pytest.raises(exc, match=match):
        explore.nearest_tokens(m, tok, query, **kw)


# ---- the command line -------------------------------------------------------------------------

def _cli(*args):
    env = dict(os.environ)
    env.pop("PYLLM_BACKEND", None)
    r = subprocess.run([sys.executable, "-m", "pyllm", *args], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz .")
    m = pyllm.GPT(pyllm.GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2,
                                  n_embd=8), seed=0)
    randomize(m, seed=3, scale=0.5)
    m.save(d / "checkpoint.safetensors")
    tok.save(d / "tokenizer.txt")
    return d, m, tok


def test_cli_heads_table_and_ablation_losses(ckpt):
    d, m, tok = ckpt
    text = "the cat sat on the mat. the cat"                 # 31 tokens: within block_size + 1
    out = _cli("heads", "--ckpt", str(d), "--text", text, "--ablate", "1.0,0.1",
               "--ablate-mode", "zero", "--seq-len", "8", "--n-seqs", "3")
    scores = explore.head_scores(m, seq_len=8, n_seqs=3)
    rows = {}
    for line in out.splitlines():
        mm = re.match(r"^\s*(\d+)\.(\d+)\s+([\d.]+)\*?\s+([\d.]+)\*?\s+([\d.]+)\*?\s*$", line)
        if mm:
            rows[int(mm.group(1)), int(mm.group(2))] = [float(x) for x in mm.group(3, 4, 5)]
    assert set(rows) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    for (l, h), vals in rows.items():
        for v, name in zip(vals, explore.SCORE_NAMES):
            assert abs(v - scores[name][l, h]) < 6e-4
    ids = np.array(tok.encode(text))
    base = m.loss(ids[:-1], ids[1:])
    with explore.ablate(m, [(1, 0), (0, 1)]):
        abl = m.loss(ids[:-1], ids[1:])
    mm = re.search(r"loss on the text \(30 tokens\): ([\d.]+); with 0\.1, 1\.0 ablated \(zero\): "
                   r"([\d.]+) \(([+-][\d.]+)\)", out)
    assert mm, out
    assert abs(float(mm.group(1)) - base) < 1e-4 and abs(float(mm.group(2)) - abl) < 1e-4
    assert "loss on the repeated half of random sequences" in out


def test_cli_neighbors_lists_the_nearest_tokens(ckpt):
    d, m, tok = ckpt
    out = _cli("neighbors", "--ckpt", str(d), "a", "--k", "4", "--metric", "dot")
    want = explore.nearest_tokens(m, tok, "a", k=4, metric="dot")
    got = [re.match(r"^\s*(\d+)\s+(-?[\d.]+)\s+(\d+)\s+'(.*)'$", l).groups()
           for l in out.splitlines()[1:]]
    assert [(int(i), t) for _, _, i, t in got] == [(i, t) for i, t, _ in want]
    assert all(abs(float(s) - w[2]) < 1e-4 for (_, s, _, _), w in zip(got, want))


# ---- the viewer -------------------------------------------------------------------------------

def _page_maps(html, L, NH, T):
    from pyllm.viewer import decode_maps
    m = re.search(r'<script type="application/json" id="pyllm-data">(.*?)</script>', html, re.S)
    return decode_maps(json.loads(m.group(1))["maps"], L, NH, T)


VIEW_TOK = CharTokenizer("abcdefghijklmnopqrstuvwxyz .")


def _viewer_model(seed=12):
    m = pyllm.GPT(pyllm.GPTConfig(vocab_size=VIEW_TOK.vocab_size, block_size=64, n_layer=2,
                                  n_head=3, n_embd=12), seed=seed)
    randomize(m, seed=seed, scale=0.5)
    return m


def test_viewer_numbers_equal_attention_maps(tmp_path, backend):
    m = _viewer_model()
    text = "the cat sat on the mat. the cat sat on the mat."
    path = tmp_path / "heads.html"
    assert explore.write_html(path, m, VIEW_TOK, text, seq_len=8, n_seqs=2) == len(text)
    html = path.read_text(encoding="utf-8")
    want = explore.attention_maps(m, VIEW_TOK.encode(text))
    # the page holds each probability as round(p * 65535): off by half a step at most
    assert np.abs(_page_maps(html, 2, 3, len(text)) - want).max() <= 0.5 / 65535 + 1e-12
    assert json.loads(re.search(r'id="pyllm-data">(.*?)</script>', html, re.S).group(1))[
        "tokens"] == list(text)


def test_viewer_cuts_long_text_with_a_warning(tmp_path):
    m = _viewer_model()
    with pytest.warns(UserWarning, match="first 64 of 100 tokens"):
        n = explore.write_html(tmp_path / "h.html", m, VIEW_TOK, "ab" * 50, scores=False)
    assert n == 64


def test_viewer_bad_paths_write_nothing(tmp_path, monkeypatch):
    m = _viewer_model()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        explore.write_html(tmp_path, m, VIEW_TOK, "abc", scores=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        explore.write_html(tmp_path / "no" / "h.html", m, VIEW_TOK, "abc", scores=False)
    with pytest.raises(ValueError, match="unknown character"):
        explore.write_html(tmp_path / "h.html", m, VIEW_TOK, "ABC", scores=False)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 28\)"):
        explore.write_html(tmp_path / "h.html", m, VIEW_TOK, [1, 28], scores=False)
    assert os.listdir(tmp_path) == []
    # a failure while the page is written leaves the previous file whole, and no temporary file
    old = tmp_path / "h.html"
    old.write_text("the previous page")
    import pyllm.viewer

    def broken(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(pyllm.viewer, "render_html", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        explore.write_html(old, m, VIEW_TOK, "abc", scores=False)
    assert old.read_text() == "the previous page" and os.listdir(tmp_path) == ["h.html"]


def test_viewer_of_a_model_in_the_browser(tmp_path):
    from _browser import Browser, BrowserUnavailable, find_chromium
    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium/Chrome found: install chromium or set PYLLM_CHROMIUM")
    m = _viewer_model(13)
    text = "an induction head copies. an induction head copies"
    path = tmp_path / "heads.html"
    explore.write_html(path, m, VIEW_TOK, text, seq_len=8, n_seqs=2)
    want = explore.attention_maps(m, VIEW_TOK.encode(text))
    try:
        b = Browser(binary, timeout=30).start()
    except BrowserUnavailable as exc:
        pytest.skip("Chromium cannot run here: %s" % exc)
    try:
        page = b.open(path)
        page.wait_for("window.pyllmViewer && pyllmViewer.ready", timeout=15)
        T = len(text)
        cells = [[l, h, d, s] for l in range(2) for h in range(3) for d in range(T)
                 for s in range(T)]
        got = np.array(page.eval("%s.map(a => pyllmViewer.value(...a))" % json.dumps(cells)))
        assert np.abs(got.reshape(2, 3, T, T) - want).max() < 1e-4
        assert page.eval("pyllmViewer.errors") == [] and page.errors == []
        assert [u for u in page.requests if not u.startswith(("data:", "blob:"))] == [page.url]
    finally:
        b.close()
