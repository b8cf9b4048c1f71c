"""LoRA adapters: the adapted model equals the base at step 0, its forward equals an independent
float64 model with W + (alpha/rank) A B, the adapter gradients match finite differences (float64)
and agree across backends, merged() equals the adapted model, the trainable count follows the
formula, the base's weights never change, and adapter files round-trip and refuse another base."""
import numpy as np
import pytest

import pyllm
from pyllm.checkpoint import CheckpointError
from pyllm.lora import TARGETS, LoRA

from _close import assert_close
from _reference import ref_forward
from test_kernels import assert_fd_close
from test_model import batch, randomize

CFG = dict(vocab_size=13, block_size=10, n_layer=2, n_head=2, n_embd=8)


def assert_logits_close(got, want, what=""):
    """Float32 logits against the float64 reference or another float32 run: relative 1e-5, with
    a floor of 32 ulps of the row's largest logit (tests/_close.py; measured on both backends:
    8.8e-7 and 3.2 ulps)."""
    assert_close(got, want, rtol=1e-5, floor_ulps=32, what=what)


def base(dtype=np.float32, seed=0):
    m = pyllm.GPT(pyllm.GPTConfig(**CFG), seed=seed, dtype=dtype)
    randomize(m, seed=seed + 1, scale=0.3)
    return m


def adapted_state(lora):
    """The base's state dict with each targeted W replaced by W + (alpha/rank) A B, float64."""
    sd = {k: v.astype(np.float64) for k, v in lora.model.state_dict().items()}
    for name, A in lora.state_dict().items():
        if name.endswith("lora_A"):
            layer = name[:-len(".lora_A")]
            B = lora.state_dict()[layer + ".lora_B"]
            sd[layer + ".weight"] = sd[layer + ".weight"] + lora.scale * (
                A.astype(np.float64) @ B.astype(np.float64))
    return sd


def test_zero_B_is_the_base_and_the_count_follows_the_formula(backend):
    m = base()
    idx, _ = batch(np.random.default_rng(0), 2, 9, 13)
    lora = LoRA(m, rank=3, alpha=6)
    assert np.array_equal(lora.forward(idx), m.forward(idx))       # bit for bit
    C, L = CFG["n_embd"], CFG["n_layer"]
    per_block = 3 * ((C + 3 * C) + (C + C) + (C + 4 * C) + (4 * C + C))   # rank * (in + out)
    assert lora.n_trainable == L * per_block
    only = LoRA(m, rank=2, targets=("attn.c_attn",))
    assert only.n_trainable == L * 2 * (C + 3 * C)
    # GPT-2 124M's blocks, rank 8, the four targets: 8 * (3,072 + 1,536 + 3,840 + 3,840) * 12
    gpt2 = pyllm.GPT(pyllm.GPTConfig(vocab_size=1, block_size=1, n_layer=12, n_head=12,
                                     n_embd=768), seed=None)      # zero pages: no memory used
    assert LoRA(gpt2, rank=8).n_trainable == 1_179_648


def test_forward_and_merged_match_an_independent_model(backend):
    m = base()
    lora = LoRA(m, rank=4, alpha=8, seed=3)
    for name, v in lora.state_dict().items():          # B non-zero, so the adapters count
        if name.endswith("lora_B"):
            v[...] = np.random.default_rng(len(name)).standard_normal(v.shape) * 0.3
    idx, _ = batch(np.random.default_rng(1), 2, 9, 13)
    want = ref_forward(adapted_state(lora), m.config, idx)
    assert_logits_close(lora.forward(idx), want, "against the reference")
    merged = lora.merged()
    assert isinstance(merged, pyllm.GPT)
    assert_logits_close(merged.forward(idx), lora.forward(idx), "merged")
    assert not np.array_equal(m.forward(idx), lora.forward(idx))


def test_adapter_gradients_match_finite_differences():
    pyllm.set_backend("numpy")
    try:
        m = base(np.float64)
        lora = LoRA(m, rank=3, alpha=5, seed=2)
        r = np.random.default_rng(4)
        for name, v in lora.state_dict().items():
            if name.endswith("lora_B"):
                v[...] = r.standard_normal(v.shape) * 0.3
        idx, tgt = batch(r, 2, 8, 13)
        _, g = lora.loss_and_grads(idx, tgt)
        ana = g.flat.copy()
        assert np.abs(ana).max() > 0
        m_params = m.params.copy()

        # over the adapter slab: relative 1e-5, floor 16 eps64 |loss| / step (measured 0.54)
        assert_fd_close(lora.params, ana, r.choice(lora.params.size, 60, replace=False),
                        lambda: lora.loss(idx, tgt))
        assert np.array_equal(m.params, m_params)
    finally:
        pyllm.set_backend("auto")


def test_backends_agree_and_the_base_never_changes(rng):
    from conftest import need_c
    need_c()
    m = base()
    frozen = m.params.copy()
    grads = {}
    for be in ("numpy", "c"):
        pyllm.set_backend(be)
        lora = LoRA(m, rank=4, alpha=8, seed=1)
        opt = pyllm.AdamW(lora, lr=1e-2)
        idx, tgt = batch(np.random.default_rng(5), 3, 9, 13)
        for _ in range(5):
            loss, g = lora.loss_and_grads(idx, tgt)
            pyllm.clip_grad_norm(g, 1.0)
            opt.step(g)
        grads[be] = (loss, lora.loss_and_grads(idx, tgt)[1].flat.copy())
    pyllm.set_backend("auto")
    # after 5 AdamW steps on each backend (measured: loss 3.2e-9 apart; gradients 2.1e-6
    # relative on the large ones, 5.3 ulps of the slab's largest)
    assert_close(grads["c"][0], grads["numpy"][0], rtol=1e-6, what="loss")
    assert_close(grads["c"][1], grads["numpy"][1], rtol=1e-4, floor_ulps=128, axis=None,
                 what="gradients")
    assert np.array_equal(m.params, frozen)                           # bit-identical base
    assert m._adapters is None and not m._frozen                      # nothing left attached


def test_training_lowers_the_loss_and_generation_follows_the_adapters():
    m = base()
    lora = LoRA(m, rank=4, alpha=16, seed=0)
    opt = pyllm.AdamW(lora, lr=3e-2, weight_decay=0.0)
    idx = np.tile(np.arange(10) % 13, (4, 1))            # one fixed sequence to learn
    first = None
    for _ in range(60):
        loss, g = lora.loss_and_grads(idx[:, :-1], idx[:, 1:])
        first = first if first is not None else loss
        opt.step(g)
    assert loss < 0.5 * first
    out = lora.generate(idx[:1, :3], 5, temperature=0)
    assert np.array_equal(out, lora.merged().generate(idx[:1, :3], 5, temperature=0))


def test_adapter_files_round_trip_and_refuse_another_base(tmp_path):
    m = base()
    lora = LoRA(m, rank=2, alpha=4, targets=("attn.c_attn", "mlp.c_fc"), seed=7)
    lora.params[...] += 0.01
    lora.save(tmp_path / "a.safetensors")
    back = LoRA.load(m, tmp_path / "a.safetensors")
    assert back.targets == lora.targets and back.rank == 2 and back.alpha == 4.0
    assert np.array_equal(back.params, lora.params)
    idx, _ = batch(np.random.default_rng(2), 1, 6, 13)
    assert np.array_equal(back.forward(idx), lora.forward(idx))
    other = base(seed=5)
    with pytest.raises(CheckpointError, match="another base"):
        LoRA.load(other, tmp_path / "a.safetensors")
    m.save(tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="not a pyllm LoRA adapter file"):
        LoRA.load(m, tmp_path / "m.safetensors")


def test_bad_settings_are_refused_by_name():
    m = base()
    for kw, msg in ((dict(rank=0), "rank must be"), (dict(rank=-2), "rank must be"),
                    (dict(rank=2.5), "rank must be"), (dict(alpha=float("nan")), "alpha"),
                    (dict(targets=("attn.qkv",)), "targets must be"),
                    (dict(targets=()), "targets must be"),
                    (dict(targets=TARGETS[:1] * 2), "targets must be")):
        with pytest.raises(ValueError, match=msg):
            LoRA(m, **kw)
    with pytest.raises(TypeError, match="pyllm.GPT"):
        LoRA(pyllm.quantize(m))
