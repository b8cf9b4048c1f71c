"""The model: GPT-2 names and initialisation, forward against an independent float64 reference,
whole-model gradients against finite differences, backends agreeing, AdamW against the textbook
formula, generation with and without the KV cache, and model files."""
import contextlib
import json
import math
import os

import numpy as np
import pytest

import pyllm
from pyllm.model import sample_token
from pyllm.rng import RNG
from pyllm.tensorfile import save_safetensors

from _reference import ref_forward, ref_loss  # an independent float64 GPT-2

TINY = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)


@contextlib.contextmanager
def using_backend(name):
    """Make ``name`` the backend inside the block; the previous one is back afterwards, also when
    the block fails."""
    prev = pyllm.get_backend()
    pyllm.set_backend(name)
    try:
        yield
    finally:
        pyllm.set_backend(prev)


def tiny(seed=0, dtype=np.float32, **kw):
    cfg = dict(TINY, **kw)
    return pyllm.GPT(pyllm.GPTConfig(**cfg), seed=seed, dtype=dtype)


def batch(rng, B, T, V):
    return rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))


# ---- configuration, names, initialisation -------------------------------------------------------

def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        pyllm.GPTConfig(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match=">= 1"):
        pyllm.GPTConfig(n_layer=0)
    with pytest.raises(TypeError):
        pyllm.GPTConfig(vocab_size=65.0)
    with pytest.raises(ValueError, match="unknown keys"):
        pyllm.GPTConfig.from_dict(dict(TINY, dropout=0.1))
    assert pyllm.GPTConfig.from_dict(dict(TINY)) == pyllm.GPTConfig(**TINY)


def test_state_dict_has_gpt2_names_and_shapes():
    m = tiny()
    sd = m.state_dict()
    C = 8
    want = {"wte.weight": (11, C), "wpe.weight": (8, C), "ln_f.weight": (C,), "ln_f.bias": (C,)}
    for i in range(2):
        p = "h.%d." % i
        want.update({p + "ln_1.weight": (C,), p + "ln_1.bias": (C,), p + "ln_2.weight": (C,),
                     p + "ln_2.bias": (C,), p + "attn.c_attn.weight": (C, 3 * C),
                     p + "attn.c_attn.bias": (3 * C,), p + "attn.c_proj.weight": (C, C),
                     p + "attn.c_proj.bias": (C,), p + "mlp.c_fc.weight": (C, 4 * C),
                     p + "mlp.c_fc.bias": (4 * C,), p + "mlp.c_proj.weight": (4 * C, C),
                     p + "mlp.c_proj.bias": (C,)})
    assert {k: v.shape for k, v in sd.items()} == want
    assert all(v.dtype == np.float32 for v in sd.values())
    assert m.num_params == sum(math.prod(s) for s in want.values())


def test_initialisation_as_gpt2():
    m = pyllm.GPT(pyllm.GPTConfig(vocab_size=500, block_size=64, n_layer=3, n_head=4, n_embd=64))
    sd = m.state_dict()
    assert abs(sd["wte.weight"].std() - 0.02) < 0.001
    assert abs(sd["h.0.mlp.c_fc.weight"].std() - 0.02) < 0.001
    proj = np.concatenate([sd["h.%d.attn.c_proj.weight" % i].ravel() for i in range(3)] +
                          [sd["h.%d.mlp.c_proj.weight" % i].ravel() for i in range(3)])
    assert abs(proj.std() - 0.02 / math.sqrt(6)) < 0.0005
    assert all(np.all(v == 0) for k, v in sd.items() if k.endswith(".bias"))
    assert all(np.all(v == 1) for k, v in sd.items() if "ln_" in k and k.endswith(".weight"))
    # same seed, same weights; another seed, other weights
    assert np.array_equal(pyllm.GPT(m.config, seed=0).params, m.params)
    assert not np.array_equal(pyllm.GPT(m.config, seed=1).params, m.params)
    assert not np.any(pyllm.GPT(m.config, seed=None).params)  # no init: loaders fill it


# ---- forward and loss against the reference ---------------------------------------------------

def randomize(m, seed=0, scale=0.3):
    """Give every parameter (biases and gains included) non-trivial values."""
    r = np.random.default_rng(seed)
    m.params[...] = r.standard_normal(m.params.shape) * scale
    for k, v in m.state_dict().items():
        if "ln_" in k and k.endswith("weight"):
            v += 1.0


def test_forward_and_loss_match_reference(backend, rng):
    m = tiny()
    randomize(m)
    idx, tgt = batch(rng, 3, 8, 11)
    want = ref_forward(m.state_dict(), m.config, idx)
    logits = m.forward(idx)
    assert logits.shape == (3, 8, 11) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)
    assert abs(m.loss(idx, tgt) - ref_loss(want, tgt)) < 1e-5
    # one sequence (T,) works as (1, T); shorter T than block_size too
    np.testing.assert_allclose(m.forward(idx[0, :5]), want[:1, :5], rtol=1e-4, atol=1e-4)


def assert_fd_gradient(m, ana, picks, loss, eps=1e-6, atol=1e-6):
    """Central finite differences of ``loss()`` over the parameters ``picks`` of float64 model
    ``m`` agree with the analytic gradient ``ana`` (flat) to atol + 1e-5 relative."""
    for i in picks:
        old = m.params[i]
        m.params[i] = old + eps
        lp = loss()
        m.params[i] = old - eps
        lm = loss()
        m.params[i] = old
        num = (lp - lm) / (2 * eps)
        assert abs(ana[i] - num) <= atol + 1e-5 * abs(num), (i, ana[i], num)


def test_whole_model_gradient_matches_finite_differences():
    with using_backend("numpy"):
        m = tiny(dtype=np.float64)
        randomize(m, seed=3)
        rng = np.random.default_rng(5)
        idx, tgt = batch(rng, 2, 7, 11)
        loss, grads = m.loss_and_grads(idx, tgt)
        assert abs(loss - ref_loss(ref_forward(m.state_dict(), m.config, idx), tgt)) < 1e-10
        ana = grads.flat.copy()
        assert_fd_gradient(m, ana, rng.choice(m.params.size, 60, replace=False),
                           lambda: m.loss(idx, tgt))
        # every named gradient view is a view of the same slab
        for k, g in grads.items():
            assert np.shares_memory(g, grads.flat)


def test_masked_loss_and_grads(backend):
    """mask=: the mean runs over the marked positions only; FD-exact gradient; a mask that keeps
    whole rows gives the gradient of those rows alone; bad masks are refused by name."""
    rng = np.random.default_rng(11)
    m = tiny(dtype=np.float64) if backend == "numpy" else tiny()
    randomize(m, seed=4, scale=0.2)
    idx, tgt = batch(rng, 3, 7, 11)
    mask = rng.random((3, 7)) < 0.4
    mask[0, 0] = True
    logits = ref_forward(m.state_dict(), m.config, idx)
    lp = logits - logits.max(-1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    nll = -np.take_along_axis(lp, tgt[..., None], -1)[..., 0]
    tol = 1e-10 if backend == "numpy" else 1e-5
    assert abs(m.loss(idx, tgt, mask=mask) - nll[mask].mean()) < tol
    loss, grads = m.loss_and_grads(idx, tgt, mask=mask)
    assert abs(loss - nll[mask].mean()) < tol
    ana = grads.flat.copy()
    if backend == "numpy":                      # float64: finite differences of the masked loss
        assert_fd_gradient(m, ana, rng.choice(m.params.size, 40, replace=False),
                           lambda: m.loss(idx, tgt, mask=mask))
    # keeping rows 0 and 2 whole equals training on those rows alone
    rows = np.zeros((3, 7), bool)
    rows[[0, 2]] = True
    _, g_rows = m.loss_and_grads(idx, tgt, mask=rows)
    g_rows = g_rows.flat.copy()
    _, g_sub = m.loss_and_grads(idx[[0, 2]], tgt[[0, 2]])
    np.testing.assert_allclose(g_rows, g_sub.flat, rtol=1e-5, atol=1e-7)
    # an all-True mask is the unmasked loss
    full = m.loss_and_grads(idx, tgt)[1].flat.copy()
    np.testing.assert_allclose(m.loss_and_grads(idx, tgt, mask=np.ones((3, 7), int))[1].flat,
                               full, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="mask must have the shape"):
        m.loss_and_grads(idx, tgt, mask=np.ones((3, 6), bool))
    with pytest.raises(ValueError, match="selects no position"):
        m.loss(idx, tgt, mask=np.zeros((3, 7), bool))
    with pytest.raises(TypeError, match="mask must be a bool"):
        m.loss(idx, tgt, mask=np.full((3, 7), 0.5))


def test_backends_agree_on_logits_loss_and_grads(simd, rng):
    """C (at each SIMD level) and NumPy: the same logits, loss and gradients to rounding."""
    cfg = pyllm.GPTConfig(vocab_size=37, block_size=24, n_layer=2, n_head=3, n_embd=24)
    idx, tgt = batch(rng, 4, 24, 37)
    out = {}
    for be in ("numpy", "c"):
        with using_backend(be):
            m = pyllm.GPT(cfg, seed=7)
            randomize(m, seed=1, scale=0.1)
            loss, g = m.loss_and_grads(idx, tgt)
            out[be] = (m.forward(idx), loss, g.flat.copy())
    np.testing.assert_allclose(out["c"][0], out["numpy"][0], rtol=1e-4, atol=1e-5)
    assert abs(out["c"][1] - out["numpy"][1]) < 1e-5
    np.testing.assert_allclose(out["c"][2], out["numpy"][2], rtol=1e-3, atol=1e-6)


def test_accumulated_gradients_equal_the_big_batch(backend, rng):
    m = tiny()
    randomize(m, scale=0.1)
    idx, tgt = batch(rng, 4, 8, 11)
    _, g = m.loss_and_grads(idx, tgt)
    full = g.flat.copy()
    m.loss_and_grads(idx[:2], tgt[:2], loss_scale=0.5)
    m.loss_and_grads(idx[2:], tgt[2:], accumulate=True, loss_scale=0.5)
    np.testing.assert_allclose(m.grads.flat, full, rtol=1e-4, atol=1e-7)


def test_kept_and_recomputed_gelu_give_the_same_gradients(backend, rng, monkeypatch):
    """Backward reads gelu(fch) from a buffer kept per layer, or recomputes it into one shared
    buffer when keeping them all would cost more than GELU_KEEP_BYTES: the same bits."""
    import pyllm.model as model_mod
    cfg = pyllm.GPTConfig(vocab_size=11, block_size=8, n_layer=3, n_head=2, n_embd=8)
    x, y = rng.integers(0, 11, (2, 8)), rng.integers(0, 11, (2, 8))
    results = []
    for limit in (model_mod.GELU_KEEP_BYTES, 0):
        monkeypatch.setattr(model_mod, "GELU_KEEP_BYTES", limit)
        m = pyllm.GPT(cfg, seed=4)
        loss, g = m.loss_and_grads(x, y)
        results.append((loss, g.flat.copy(), m._acts["gelu_kept"]))
    assert [r[2] for r in results] == [True, False]
    assert results[0][0] == results[1][0]
    assert np.array_equal(results[0][1], results[1][1])


def test_bad_inputs_to_the_model(backend):
    m = tiny()
    with pytest.raises(ValueError, match="block_size"):
        m.forward(np.zeros((1, 9), np.int64))
    with pytest.raises(ValueError, match="outside"):
        m.forward(np.array([[1, 11]]))
    with pytest.raises(ValueError, match="outside"):
        m.forward(np.array([[-1, 0]]))
    with pytest.raises(TypeError, match="integer"):
        m.forward(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="shape"):
        m.loss(np.zeros((2, 3), np.int64), np.zeros((2, 4), np.int64))
    with pytest.raises(ValueError, match="non-empty"):
        m.forward(np.zeros((1, 0), np.int64))
    with pytest.raises(TypeError):
        pyllm.GPT(dict(TINY))


# ---- optimisation -------------------------------------------------------------------------------

def test_adamw_matches_textbook_formula(backend, rng):
    m = tiny()
    randomize(m, scale=0.1)
    p0 = {k: v.astype(np.float64) for k, v in m.state_dict().items()}
    opt = pyllm.AdamW(m, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    mom = {k: np.zeros_like(v) for k, v in p0.items()}
    vel = {k: np.zeros_like(v) for k, v in p0.items()}
    for t in range(1, 4):
        idx, tgt = batch(rng, 2, 8, 11)
        _, g = m.loss_and_grads(idx, tgt)
        gd = {k: v.astype(np.float64) for k, v in g.items()}
        opt.step(g)
        for k in p0:
            wd = 0.1 if p0[k].ndim >= 2 else 0.0
            mom[k] = 0.9 * mom[k] + 0.1 * gd[k]
            vel[k] = 0.95 * vel[k] + 0.05 * gd[k] ** 2
            upd = (mom[k] / (1 - 0.9 ** t)) / (np.sqrt(vel[k] / (1 - 0.95 ** t)) + 1e-8)
            p0[k] = p0[k] - 1e-2 * (upd + wd * p0[k])
        for k, v in m.state_dict().items():
            np.testing.assert_allclose(v, p0[k], rtol=1e-4, atol=1e-5, err_msg=k)
            p0[k] = v.astype(np.float64)  # follow the float32 trajectory


def test_adamw_lr_assignable_and_plain_dict_grads(backend):
    m = tiny()
    opt = pyllm.AdamW(m, lr=0.0)
    before = m.params.copy()
    grads = {k: np.ones_like(v) for k, v in m.state_dict().items()}
    opt.step(grads)
    assert np.array_equal(m.params, before)  # lr 0: nothing moves
    opt.lr = 0.1
    opt.step(grads)
    assert np.all(m.params < before)        # positive grads: every parameter decreases
    with pytest.raises(ValueError):
        opt.step({"wte.weight": np.ones((11, 8), np.float32)})
    opt.lr = -1.0
    with pytest.raises(ValueError):
        opt.step(grads)


def test_clip_grad_norm(backend, rng):
    m = tiny()
    randomize(m)
    _, g = m.loss_and_grads(*batch(rng, 2, 8, 11))
    want = math.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in g.values()))
    before = g.flat.copy()
    norm = pyllm.clip_grad_norm(g, want / 4)
    assert abs(norm - want) < 1e-6 * want
    np.testing.assert_allclose(g.flat, before / 4, rtol=1e-5)
    # a plain dict works too, and a small norm is left alone
    d = {"a": np.full(4, 0.1, np.float32)}
    assert abs(pyllm.clip_grad_norm(d, 1.0) - 0.2) < 1e-7
    assert np.allclose(d["a"], 0.1)


def test_cosine_schedule():
    f = lambda s: pyllm.cosine_lr(s, 1e-3, 1e-4, 100, 2000)  # noqa: E731
    assert f(0) == pytest.approx(1e-3 / 101)
    assert f(99) == pytest.approx(1e-3 * 100 / 101)
    assert f(100) == pytest.approx(1e-3)
    assert f(1050) == pytest.approx(1e-4 + 0.5 * 0.9e-3)
    assert f(2000) == pytest.approx(1e-4) and f(5000) == pytest.approx(1e-4)


def test_training_reduces_loss(backend):
    """A few hundred steps on a repeating pattern drive the loss near zero."""
    m = tiny(seed=1)
    opt = pyllm.AdamW(m, lr=3e-3, weight_decay=0.0)
    seq = np.array([[1, 2, 3, 4, 5, 6, 7, 8, 9]])
    first = None
    for _ in range(300):
        loss, g = m.loss_and_grads(seq[:, :-1], seq[:, 1:])
        first = first if first is not None else loss
        pyllm.clip_grad_norm(g, 1.0)
        opt.step(g)
    assert first > 2.0 and loss < 0.1


# ---- generation ---------------------------------------------------------------------------------

def test_greedy_with_and_without_cache_identical(backend):
    m = tiny(seed=2)
    randomize(m, seed=2, scale=0.5)
    prompt = np.array([[3, 1, 4], [1, 5, 9]])
    a = m.generate(prompt, max_new_tokens=12, temperature=0, use_cache=True)   # beyond block 8
    b = m.generate(prompt, max_new_tokens=12, temperature=0, use_cache=False)
    assert a.shape == (2, 15) and np.array_equal(a[:, :3], prompt)
    assert np.array_equal(a, b)
    # and the cache-free path is plain argmax of forward on the last block_size tokens
    seq = prompt[:1]
    for _ in range(12):
        nxt = int(np.argmax(m.forward(seq[:, -8:])[0, -1]))
        seq = np.concatenate([seq, [[nxt]]], axis=1)
    assert np.array_equal(seq, a[:1])


def test_decoder_steps_match_the_reference_forward(backend, rng):
    """Decoder.step at positions 0..T-1 gives the reference forward's logits at each position,
    with two sequences in the batch, and the cache ends up holding every position's k and v."""
    from pyllm.backend import ops
    from pyllm.backend._check import decoder_weight_names
    m = tiny(seed=5)
    randomize(m, seed=5, scale=0.5)
    cfg, sd = m.config, m.state_dict()
    idx = rng.integers(0, cfg.vocab_size, (2, cfg.block_size))
    want = ref_forward(sd, cfg, idx)                                       # (B,T,V)
    cache = np.zeros((cfg.n_layer, 2, 2, cfg.n_head, cfg.block_size, 4), np.float32)
    dec = ops.Decoder([sd[n] for n in decoder_weight_names(cfg.n_layer)], cache, cfg.n_head)
    for t in range(cfg.block_size):
        got = dec.step(idx[:, t], t)
        np.testing.assert_allclose(got, want[:, t], rtol=1e-4, atol=1e-5)
    assert np.all(cache != 0)


def test_decoders_of_both_backends_agree(simd, rng):
    """The C decoder (at each SIMD level) and the NumPy one: the same logits at every position and
    the same keys and values in the cache, to rounding."""
    from pyllm.backend import backend_module
    from pyllm.backend._check import decoder_weight_names
    m = tiny(seed=5)
    randomize(m, seed=5, scale=0.5)
    cfg, sd = m.config, m.state_dict()
    idx = rng.integers(0, cfg.vocab_size, (2, cfg.block_size))
    caches, logits = {}, {}
    for be in ("numpy", "c"):
        caches[be] = np.zeros((cfg.n_layer, 2, 2, cfg.n_head, cfg.block_size, 4), np.float32)
        dec = backend_module(be).Decoder([sd[n] for n in decoder_weight_names(cfg.n_layer)],
                                         caches[be], cfg.n_head)
        logits[be] = np.stack([np.array(dec.step(idx[:, t], t)) for t in range(cfg.block_size)])
    assert np.all(caches["c"] != 0)
    np.testing.assert_allclose(logits["c"], logits["numpy"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(caches["c"], caches["numpy"], rtol=1e-5, atol=1e-5)


def test_decoder_rejects_bad_input(backend):
    from pyllm.backend import ops
    from pyllm.backend._check import decoder_weight_names
    m = tiny()
    cfg, sd = m.config, m.state_dict()
    W = [sd[n] for n in decoder_weight_names(cfg.n_layer)]
    cache = np.zeros((cfg.n_layer, 2, 1, cfg.n_head, cfg.block_size, 4), np.float32)
    with pytest.raises(ValueError, match="4 \\+ 12"):
        ops.Decoder(W[:-1], cache, cfg.n_head)
    with pytest.raises(ValueError, match="n_head"):
        ops.Decoder(W, cache, 3)
    with pytest.raises(ValueError, match="cache must have shape"):
        ops.Decoder(W, cache[:, :, :, :, :4].copy(), cfg.n_head)
    bad = list(W)
    bad[4] = W[4].T.copy()                                                # c_attn (3C, C)
    with pytest.raises(ValueError, match="h.0.attn.c_attn.weight must have shape"):
        ops.Decoder(bad, cache, cfg.n_head)
    with pytest.raises(TypeError, match="dtype"):
        ops.Decoder(W, cache.astype(np.int32), cfg.n_head)
    with pytest.raises(ValueError, match="read-only"):
        ro = cache.copy()
        ro.flags.writeable = False
        ops.Decoder(W, ro, cfg.n_head)
    dec = ops.Decoder(W, cache, cfg.n_head)
    with pytest.raises(ValueError, match="outside the valid range"):
        dec.step(np.array([cfg.vocab_size]), 0)
    with pytest.raises(ValueError, match="outside the valid range"):
        dec.step(np.array([-1]), 0)
    with pytest.raises(ValueError, match="shape"):
        dec.step(np.array([1, 2]), 0)
    with pytest.raises(ValueError, match="pos = 8"):
        dec.step(np.array([1]), cfg.block_size)
    with pytest.raises(TypeError, match="pos must be an int"):
        dec.step(np.array([1]), 1.5)
    assert np.all(cache == 0)                                             # nothing ran


def test_sampling_same_seed_same_tokens_on_both_backends(simd):
    """Sampling through the KV cache: the same seed gives the same tokens on NumPy and on C at
    each SIMD level (and on C without the cache)."""
    outs = []
    for be in ("numpy", "c"):
        with using_backend(be):
            m = tiny(seed=4)
            randomize(m, seed=4, scale=0.2)
            outs.append(m.generate(np.array([[1, 2]]), 20, temperature=0.9, top_k=6, top_p=0.95,
                                   seed=11))
            if be == "c":
                outs.append(m.generate(np.array([[1, 2]]), 20, temperature=0.9, top_k=6,
                                       top_p=0.95, seed=11, use_cache=False))
    assert np.array_equal(outs[0], outs[1])
    assert np.array_equal(outs[1], outs[2])
    m = tiny(seed=4)
    assert not np.array_equal(m.generate([[1, 2]], 20, temperature=1.0, seed=1),
                              m.generate([[1, 2]], 20, temperature=1.0, seed=2))


def test_stream_and_callback_yield_tokens_as_they_come(backend):
    m = tiny()
    got = []
    out = m.generate([[1]], 5, temperature=1.0, seed=3, callback=lambda t: got.append(int(t[0])))
    assert got == list(out[0, 1:])
    assert [int(t[0]) for t in m.stream([[1]], 5, temperature=1.0, seed=3)] == got


def test_descending_order_is_the_stable_argsort():
    """The fast float32 path of sampling's order: ties (many), -0.0 against 0.0, the largest
    and smallest floats, lengths 1 to 3,000 -- the same permutation as a stable argsort."""
    from pyllm.model import descending_order
    r = np.random.default_rng(0)
    for _ in range(100):
        V = int(r.integers(1, 3000))
        z = (r.integers(-5, 5, V) * r.choice([0.5, 1.0, 1e-3, 1e30], V)).astype(np.float32)
        z[r.random(V) < 0.1] = -0.0
        z[r.random(V) < 0.05] = 0.0
        z[r.random(V) < 0.02] = np.float32(3.4e38)
        z[r.random(V) < 0.02] = np.float32(-3.4e38)
        assert np.array_equal(descending_order(z),
                              np.argsort(-z.astype(np.float64), kind="stable"))
    z64 = r.standard_normal(50)
    assert np.array_equal(descending_order(z64), np.argsort(-z64, kind="stable"))


def test_sample_token_rules():
    z = np.array([0.0, 5.0, 4.0, -2.0, 4.5])
    assert sample_token(z, 0, None, None, RNG(0)) == 1
    r = RNG(0)
    draws = {sample_token(z, 1.0, 2, None, r) for _ in range(300)}
    assert draws == {1, 4}                                  # top_k=2 keeps ids 1 and 4
    r = RNG(0)
    assert {sample_token(z, 1.0, None, 0.1, r) for _ in range(100)} == {1}
    # frequencies follow softmax(z / T)
    r = RNG(5)
    counts = np.bincount([sample_token(z, 2.0, None, None, r) for _ in range(4000)], minlength=5)
    p = np.exp(z / 2) / np.exp(z / 2).sum()
    assert np.all(np.abs(counts / 4000 - p) < 0.03)
    with pytest.raises(ValueError):
        tiny().generate([[1]], 3, temperature=-1)
    with pytest.raises(ValueError):
        tiny().generate([[1]], 3, top_p=0.0)
    with pytest.raises(ValueError):
        tiny().generate([[1]], 3, top_k=0)


# ---- files --------------------------------------------------------------------------------------

def assert_edited_file_refused(path, tensors, meta, name, value, match):
    """Write ``tensors`` with tensor ``name`` replaced by ``value`` (None: removed) to ``path``;
    pyllm.load must refuse it with a CheckpointError matching ``match``."""
    t = dict(tensors)
    if value is None:
        del t[name]
    else:
        t[name] = value
    save_safetensors(path, t, meta)
    with pytest.raises(pyllm.CheckpointError, match=match):
        pyllm.load(path)


def test_save_and_load_round_trip(tmp_path, backend):
    m = tiny(seed=9)
    path = tmp_path / "m.safetensors"
    m.save(path)
    m2 = pyllm.load(path)
    assert m2.config == m.config and np.array_equal(m2.params, m.params)


def test_bfloat16_model_file_is_half_and_loads_as_the_rounded_model(tmp_path):
    from pyllm.tensorfile import bf16_bits_to_float32, float32_to_bf16_bits
    m = tiny(seed=1, attention="favor", n_features=4)
    randomize(m, seed=2)
    m.save(tmp_path / "f.safetensors")
    m.save(tmp_path / "b.safetensors", dtype="bfloat16")
    sizes = [os.path.getsize(tmp_path / n) for n in ("f.safetensors", "b.safetensors")]
    ft = m.file_tensors()
    data = sum(v.size for v in ft.values())
    # two bytes fewer per value; the header names "BF16" instead of "F32" (and pads to 8)
    assert abs(sizes[0] - sizes[1] - 2 * data) <= len(ft) + 8
    b = pyllm.load(tmp_path / "b.safetensors")
    for name, v in list(m.state_dict().items()) + list(m.buffers().items()):
        want = bf16_bits_to_float32(float32_to_bf16_bits(v))
        got = b.state_dict().get(name, b.buffers().get(name))
        assert np.array_equal(got, want), name
    with pytest.raises(ValueError, match="dtype must be"):
        m.save(tmp_path / "x.safetensors", dtype="float16")


def test_corrupt_model_files_raise(tmp_path):
    m = tiny()
    path = tmp_path / "m.safetensors"
    m.save(path)
    data = path.read_bytes()
    (tmp_path / "trunc").write_bytes(data[:len(data) // 2])
    with pytest.raises(pyllm.CheckpointError):
        pyllm.load(tmp_path / "trunc")
    (tmp_path / "junk").write_bytes(b"\x00" * 100)
    with pytest.raises(pyllm.CheckpointError):
        pyllm.load(tmp_path / "junk")
    save_safetensors(tmp_path / "other", {"x": np.zeros(3, np.float32)}, {"format": "pt"})
    with pytest.raises(pyllm.CheckpointError, match="not a pyllm model"):
        pyllm.load(tmp_path / "other")
    with pytest.raises(FileNotFoundError):
        pyllm.load(tmp_path / "missing")
    sd = {k: v.copy() for k, v in m.state_dict().items()}
    sd["wte.weight"][0, 0] = np.nan
    from pyllm.model import model_metadata
    save_safetensors(tmp_path / "nan", sd, model_metadata(m.config))
    with pytest.raises(pyllm.CheckpointError, match="non-finite"):
        pyllm.load(tmp_path / "nan")


def _hf_checkpoint(m, directory, prefix="transformer.", with_config=True):
    """Write m as Hugging Face's GPT2LMHeadModel would: prefix, mask buffers, lm_head."""
    os.makedirs(directory, exist_ok=True)
    T = m.config.block_size
    t = {prefix + k: v.copy() for k, v in m.state_dict().items()}
    for i in range(m.config.n_layer):
        t[prefix + "h.%d.attn.bias" % i] = np.tril(np.ones((1, 1, T, T), np.float32))
        t[prefix + "h.%d.attn.masked_bias" % i] = np.array(-1e4, np.float32)
    t["lm_head.weight"] = m.state_dict()["wte.weight"].copy()
    save_safetensors(os.path.join(directory, "model.safetensors"), t, {"format": "pt"})
    if with_config:
        c = m.config
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump({"model_type": "gpt2", "n_embd": c.n_embd, "n_head": c.n_head,
                       "n_layer": c.n_layer, "n_positions": c.block_size,
                       "vocab_size": c.vocab_size, "layer_norm_epsilon": 1e-5}, f)


def test_load_gpt2_hugging_face_layout(tmp_path):
    m = tiny(seed=5)
    randomize(m, seed=5)
    _hf_checkpoint(m, tmp_path / "hf")
    g = pyllm.load_gpt2(tmp_path / "hf")
    assert g.config == m.config and np.array_equal(g.params, m.params)
    # the file alone, without prefix: n_head must then be given (n_embd 8 is no GPT-2 size)
    _hf_checkpoint(m, tmp_path / "bare", prefix="", with_config=False)
    with pytest.raises(pyllm.CheckpointError, match="n_head"):
        pyllm.load_gpt2(tmp_path / "bare" / "model.safetensors")
    g2 = pyllm.load_gpt2(tmp_path / "bare" / "model.safetensors", n_head=2)
    assert np.array_equal(g2.forward([[1, 2, 3]]), m.forward([[1, 2, 3]]))
    with pytest.raises(FileNotFoundError):
        pyllm.load_gpt2(tmp_path / "nothing")
