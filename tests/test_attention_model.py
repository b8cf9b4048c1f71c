"""A GPT with attention="favor" or "linear": the config and its files (old files load as softmax),
the forward against an independent float64 model built from the kernel definitions, whole-model
gradients against finite differences, both backends agreeing, causality, sampling through the
running state, random features saved bit for bit and redrawn exactly on resume, the explorer's
maps, and the CLI."""
import json

import numpy as np
import pytest

import pyllm
from pyllm.checkpoint import CheckpointError
from pyllm.model import GPT, GPTConfig
from pyllm.tensorfile import load_safetensors, save_safetensors

from _close import assert_close
from _reference import kernel_weights, ref_forward
from test_kernels import assert_fd_close
from test_model import assert_edited_file_refused, batch, randomize
from test_train import losses, run

SHAPE = dict(vocab_size=13, block_size=12, n_layer=2, n_head=2, n_embd=8)
KINDS = ("favor", "linear")


def model(kind, dtype=np.float32, seed=0, **kw):
    return GPT(GPTConfig(**dict(SHAPE, attention=kind, n_features=6, **kw)), seed=seed,
               dtype=dtype)


def assert_logits_close(got, want, what=""):
    """Float32 logits (..., V) against a reference (float64, or the other backend's float32):
    relative 2e-5, with a floor of 96 ulps of each row's largest logit (tests/_close.py).
    Measured over this file's models: at most 8.8 ulps and 2.1e-6 relative on the large
    logits."""
    assert_close(got, want, rtol=2e-5, floor_ulps=96, what=what)


# ---- configuration and files ------------------------------------------------------------------

def test_config_fields_defaults_and_errors():
    c = GPTConfig(**SHAPE)
    assert (c.attention, c.n_features, c.feature_redraw) == ("softmax", 64, 0)
    assert set(c.to_dict()) == set(SHAPE)          # a softmax file says what it always said
    f = GPTConfig(**SHAPE, attention="favor", n_features=32, feature_redraw=100)
    assert f.to_dict()["attention"] == "favor" and GPTConfig.from_dict(f.to_dict()) == f
    assert GPTConfig.from_dict(dict(SHAPE)).attention == "softmax"   # a file from before
    with pytest.raises(ValueError, match="attention must be one of"):
        GPTConfig(**SHAPE, attention="performer")
    with pytest.raises(ValueError, match="n_features must be >= 1"):
        GPTConfig(**SHAPE, attention="favor", n_features=0)
    with pytest.raises(ValueError, match="feature_redraw must be >= 0"):
        GPTConfig(**SHAPE, feature_redraw=-1)
    with pytest.raises(TypeError, match="n_features must be an int"):
        GPTConfig(**SHAPE, n_features=2.5)
    with pytest.raises(ValueError, match="unknown keys"):
        GPTConfig.from_dict(dict(SHAPE, kernel="favor"))
    assert "attention='favor', n_features=6" in repr(model("favor"))


def test_softmax_file_from_before_loads_and_favor_round_trips_bit_for_bit(tmp_path):
    sm = GPT(GPTConfig(**SHAPE), seed=1)
    # a model file as format version 1 has always written it: no attention field, no features
    meta = {"format": "pyllm-model", "format_version": "1", "config": json.dumps(SHAPE)}
    save_safetensors(tmp_path / "old.safetensors", sm.state_dict(), meta)
    old = pyllm.load(tmp_path / "old.safetensors")
    assert old.config.attention == "softmax" and np.array_equal(old.params, sm.params)
    sm.save(tmp_path / "sm.safetensors")
    assert "attention" not in load_safetensors(tmp_path / "sm.safetensors")[1]["config"]
    idx = np.random.default_rng(0).integers(0, 13, (2, 9))
    for kind in KINDS:
        m = model(kind, seed=3)
        randomize(m, seed=4, scale=0.2)
        m.save(tmp_path / (kind + ".safetensors"))
        back = pyllm.load(tmp_path / (kind + ".safetensors"))
        assert back.config == m.config
        assert set(back.buffers()) == set(m.buffers())
        for name, w in m.buffers().items():
            assert np.array_equal(back.buffers()[name], w)
        assert np.array_equal(back.forward(idx), m.forward(idx))        # bit for bit


def test_favor_file_without_or_with_bad_features_is_refused(tmp_path):
    m = model("favor")
    m.save(tmp_path / "f.safetensors")
    tensors, meta = load_safetensors(tmp_path / "f.safetensors")
    for name, change, msg in (("h.1.attn.features", None, "lacks tensor 'h.1.attn.features'"),
                              ("h.0.attn.features", np.zeros((5, 4), np.float32), "has shape"),
                              ("h.0.attn.features", np.full((6, 4), np.nan, np.float32),
                               "not finite")):
        assert_edited_file_refused(tmp_path / "bad.safetensors", tensors, meta, name, change,
                                   msg)


# ---- forward and backward ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_forward_matches_the_definition(backend, kind):
    """The prefix-sum model equals a float64 model that materialises phi(Q) phi(K)^T (no
    stabiliser, no prefix sums); float32 on both backends, float64 on NumPy."""
    m = model(kind)
    randomize(m, seed=5, scale=0.3)
    idx, _ = batch(np.random.default_rng(1), 3, 12, 13)
    want = ref_forward(m.state_dict(), m.config, idx, features=m.buffers())
    assert_logits_close(m.forward(idx), want)
    if backend == "numpy":
        m64 = model(kind, dtype=np.float64)
        m64.params[...] = m.params
        for name, w in m64.buffers().items():
            w[...] = m.buffers()[name]
        # float64: measured 1.8e-15 relative, 3.7 float64 ulps of the row maximum
        assert_close(m64.forward(idx), want, rtol=2e-14, floor_ulps=64,
                     eps=np.finfo(np.float64).eps, what="float64 model")


@pytest.mark.parametrize("kind", KINDS)
def test_whole_model_gradient_matches_finite_differences(kind):
    pyllm.set_backend("numpy")
    try:
        m = model(kind, dtype=np.float64)
        randomize(m, seed=6, scale=0.3)
        rng = np.random.default_rng(7)
        idx, tgt = batch(rng, 2, 9, 13)
        _, grads = m.loss_and_grads(idx, tgt)
        ana = grads.flat.copy()
        attn = [i for i, n in enumerate(np.concatenate(
            [np.full(v.size, "attn" in k) for k, v in m._p.views.items()])) if n]
        assert np.abs(ana).max() > 0
        picks = np.concatenate([rng.choice(m.params.size, 30, replace=False),
                                rng.choice(attn, 20, replace=False)])
        # relative 1e-5 (as before), floor 16 eps64 |loss| / step (measured at most 0.96 of it)
        assert_fd_close(m.params, ana, picks, lambda: m.loss(idx, tgt))
    finally:
        pyllm.set_backend("auto")


@pytest.mark.parametrize("kind", KINDS)
def test_backends_agree_and_causality_holds(kind, rng):
    from conftest import need_c
    need_c()
    m = model(kind)
    randomize(m, seed=8, scale=0.3)
    idx, tgt = batch(rng, 2, 12, 13)
    out = {}
    for be in ("numpy", "c"):
        pyllm.set_backend(be)
        loss, g = m.loss_and_grads(idx, tgt)
        out[be] = (m.forward(idx), loss, g.flat.copy())
    pyllm.set_backend("auto")
    assert_logits_close(out["c"][0], out["numpy"][0], "logits")
    assert_close(out["c"][1], out["numpy"][1], rtol=1e-6, what="loss")      # measured 1.9e-8
    # the gradient slab as one row: 1e-5 relative, 32 ulps of its largest element (measured
    # 7.0e-7 and 2.7)
    assert_close(out["c"][2], out["numpy"][2], rtol=1e-5, floor_ulps=32, axis=None,
                 what="gradients")
    # changing the tokens after position t changes no logit at positions <= t: the same bits
    t = 6
    other = idx.copy()
    other[:, t + 1:] = (other[:, t + 1:] + 5) % 13
    assert np.array_equal(m.forward(other)[:, :t + 1], out["c"][0][:, :t + 1])


# ---- sampling through the running state -------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_running_state_decoding_equals_the_full_forward(backend, kind):
    """Each step's logits from the running sums equal the full forward's at that position, and
    greedy output is its argmax; past block_size it falls back to the window, as softmax does."""
    m = model(kind)
    randomize(m, seed=9, scale=0.3)
    prompt = np.random.default_rng(2).integers(0, 13, (2, 3))
    seq, state = prompt, None
    gen = m.stream(prompt, 6, temperature=0)
    for nxt in gen:
        full = m.forward(seq)[:, -1]
        assert np.array_equal(nxt, full.argmax(-1))
        seq = np.concatenate([seq, nxt[:, None]], axis=1)
    del state
    # the state's logits themselves (no argmax ties hiding a difference)
    st, dec = m._decoder(2)
    logits = m._prefill(np.ascontiguousarray(seq[:, :4].astype(np.int32)), st)
    assert_logits_close(logits, m.forward(seq[:, :4])[:, -1], "prefill")
    for T in range(4, seq.shape[1]):
        step = dec.step(seq[:, T].astype(np.int32), T)
        assert_logits_close(step, m.forward(seq[:, :T + 1])[:, -1], "step %d" % T)
    long = m.generate(prompt, 15, temperature=0)                  # 18 > block_size 12
    again = m.generate(prompt, 15, temperature=0, use_cache=False)
    assert np.array_equal(long, again)


def test_running_state_rescales_when_a_key_raises_the_stabiliser():
    """FAVOR+ decoding with keys that grow along the sequence (each raising the running
    maximum) still gives the full forward's attention."""
    from pyllm.linear_attention import KernelAttention
    cfg = GPTConfig(**dict(SHAPE, attention="favor", n_features=6))
    ka = KernelAttention(cfg, np.float32)
    ka.draw(0)
    st = ka.running_state(1)
    r = np.random.default_rng(3)
    T, C = 7, cfg.n_embd
    qkv = r.standard_normal((1, T, 3 * C)).astype(np.float32)
    qkv[0, :, C:2 * C] *= np.linspace(0.2, 3.0, T)[:, None].astype(np.float32)
    att = np.zeros((1, C), np.float32)
    hd = C // cfg.n_head
    for t in range(T):
        st.decode(0, att, qkv[:, t], t)
        q, k, v = (qkv[0, :t + 1, j * C:(j + 1) * C] for j in range(3))
        for h in range(cfg.n_head):
            s = slice(h * hd, (h + 1) * hd)
            a = kernel_weights(q[None, :, s].astype(np.float64), k[None, :, s].astype(np.float64),
                               "favor", ka.features[0].astype(np.float64))[0, -1]
            want = a @ v[:, s] / a.sum()
            # measured 6.1e-7 relative, 5.2 ulps of the head's largest output
            assert_close(att[0, s], want, rtol=1e-5, floor_ulps=64, what="t=%d head %d" % (t, h))


# ---- training: features redrawn, resume exact -------------------------------------------------

def test_redraw_is_a_function_of_seed_and_step():
    m = model("favor")
    w0 = m.buffers()["h.0.attn.features"].copy()
    m.redraw_features(1337, 100)
    w1 = m.buffers()["h.0.attn.features"].copy()
    assert not np.array_equal(w0, w1)
    m.redraw_features(0, 0)
    assert np.array_equal(m.buffers()["h.0.attn.features"], w0)      # the init draw again
    m.redraw_features(1337, 100)
    assert np.array_equal(m.buffers()["h.0.attn.features"], w1)
    # rows are marginally N(0, I): norms near sqrt(hd) on average over many draws
    from pyllm.linear_attention import random_features
    norms = [np.linalg.norm(random_features(64, 16, s), axis=1).mean() for s in range(20)]
    assert abs(np.mean(norms) - np.sqrt(16) * (1 - 1 / 64)) < 0.05


def test_favor_training_redraws_and_resumes_bit_for_bit(tmp_path):
    kw = dict(attention="favor", n_features=8, feature_redraw=3, steps=10)
    full = run(tmp_path, "a", **kw)
    part = run(tmp_path, "b", stop_at=6, **kw)
    assert part["interrupted"]
    run(tmp_path, "b", resume=True, **kw)
    la, lb = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert [la[s] for s in range(10)] == [lb[s] for s in range(10)]
    a, b = pyllm.load(tmp_path / "a"), pyllm.load(tmp_path / "b")
    assert a.config.attention == "favor" and a.config.feature_redraw == 3
    for name, w in a.buffers().items():
        assert np.array_equal(w, b.buffers()[name])
    # the features in the file are the last redraw's (step 9), not the initial ones
    m = model("favor", n_layer=2)
    ref = GPT(a.config, seed=None)
    ref.redraw_features(1337, 9)
    for name, w in a.buffers().items():
        assert np.array_equal(w, ref.buffers()[name])
    del m, full
    # without redraws the losses differ from step 3 on (the redraw is real)
    run(tmp_path, "c", **dict(kw, feature_redraw=0))
    lc = losses(tmp_path / "c")
    assert [la[s] for s in range(3)] == [lc[s] for s in range(3)] and la[3] != lc[3]


def test_resume_refuses_a_changed_kernel(tmp_path):
    run(tmp_path, "d", attention="linear", steps=4, stop_at=2)
    ck = tmp_path / "d" / "checkpoint.safetensors"
    tensors, meta = load_safetensors(ck)
    state = json.loads(meta["state"])
    state["train"]["attention"] = "softmax"
    meta["state"] = json.dumps(state)
    save_safetensors(ck, tensors, meta)
    with pytest.raises(CheckpointError, match="attention"):
        run(tmp_path, "d", resume=True)


# ---- the explorer -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_attention_maps_materialise_the_kernel_weights(backend, kind):
    from pyllm import explore
    m = model(kind)
    randomize(m, seed=10, scale=0.3)
    idx = np.random.default_rng(4).integers(0, 13, (2, 10))
    maps = explore.attention_maps(m, idx)
    want = []
    ref_forward(m.state_dict(), m.config, idx, maps=want, features=m.buffers())
    # probabilities: each relative to itself, no floor (measured 7.8e-7 on every nonzero one;
    # the zeros above the diagonal exact)
    assert_close(maps, np.stack(want, 1), rtol=1e-5, floor_ulps=0, what="maps")
    assert_close(maps.sum(-1), np.ones(maps.shape[:-1]), rtol=2e-6, what="row sums")
    assert np.all(np.triu(maps, 1) == 0) and np.all(maps >= 0)
    s = explore.head_scores(m, seq_len=5, n_seqs=2)
    assert s["induction"].shape == (2, 2)


def test_cli_trains_a_favor_model_and_info_shows_it(tmp_path, capsys):
    from pyllm.cli import main
    from test_train import corpus
    out = tmp_path / "run"
    rc = main(["train", "--data", corpus(tmp_path), "--out", str(out), "--steps", "4",
               "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
               "--batch-size", "2", "--eval-interval", "4", "--eval-iters", "1",
               "--attention", "favor", "--n-features", "16", "--feature-redraw", "2",
               "--sample-tokens", "5", "--quiet"])
    assert rc == 0
    cfg = json.load(open(out / "config.json"))
    assert cfg["model"]["attention"] == "favor" and cfg["model"]["n_features"] == 16
    assert cfg["model"]["feature_redraw"] == 2
    m = pyllm.load(out)
    assert m.buffers()["h.0.attn.features"].shape == (16, 8)
    capsys.readouterr()
    assert main(["info", "--ckpt", str(out)]) == 0
    text = capsys.readouterr().out
    assert "attention: favor, 16 random features per layer, redrawn every 2 steps" in text
    with pytest.raises(SystemExit):
        main(["train", "--attention", "performer"])


@pytest.mark.parametrize("kind", KINDS)
def test_ablation_reaches_forward_and_sampling(kind):
    """explore.ablate zeroes a favor / linear head as for softmax: the forward equals the
    reference with that head's output replaced by 0, and greedy sampling through the running
    state follows the ablated model."""
    from pyllm import explore
    m = model(kind)
    randomize(m, seed=11, scale=0.3)
    idx = np.random.default_rng(5).integers(0, 13, (2, 10))
    want = ref_forward(m.state_dict(), m.config, idx, ablate={(1, 0): 0.0},
                       features=m.buffers())
    with explore.ablate(m, [(1, 0)]):
        assert_logits_close(m.forward(idx), want)
        seq = m.generate(idx[:, :4], 5, temperature=0)
        for T in range(4, 9):
            assert np.array_equal(seq[:, T], m.forward(seq[:, :T])[:, -1].argmax(-1))
    assert np.abs(m.forward(idx) - want).max() > 1e-3        # and it is lifted on exit
