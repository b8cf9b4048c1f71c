"""GPT-2: configuration, parameters in one slab, forward, explicit backward, and generation.

Architecture exactly as GPT-2 (Radford et al. 2019): learned token and position embeddings;
``n_layer`` pre-LayerNorm blocks x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)) with causal multi-head
attention and a 4x MLP with tanh-GELU; a final LayerNorm; the LM head tied to ``wte``.

Every parameter lives in one float32 slab (``model.params``) with named views using the public
GPT-2 checkpoint names (``wte.weight``, ``h.0.attn.c_attn.weight`` (C, 3C), ...); the gradients
(``model.grads``) mirror it. Weights of two or more dimensions come first in the slab, so AdamW can
decay them with one call and skip biases and LayerNorm gains with another.

All arithmetic goes through ``pyllm.backend.ops`` (C or NumPy kernels); activations are allocated
once per (B, T) and reused every step. Shapes: B batch, T time, C = n_embd, NH = n_head,
hd = C // NH, V = vocab_size, L = n_layer.
"""
import json
import math
import numbers
from dataclasses import asdict, dataclass

import numpy as np

from .backend import get_backend, hooked_decoder, numpy_decoder, ops
from .backend._check import CE_IGNORE, decoder_weight_names
from .rng import RNG

MODEL_FORMAT = "pyllm-model"
MODEL_FORMAT_VERSION = 1
GELU_KEEP_BYTES = 64 * 2**20  # keep every layer's gelu(fch) for backward up to this size


ATTENTION_KINDS = ("softmax", "favor", "linear")
_SHAPE_FIELDS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")
_ATTENTION_DEFAULTS = {"attention": "softmax", "n_features": 64, "feature_redraw": 0}
MAX_FEATURES = 2**16


@dataclass
class GPTConfig:
    """Model shape (defaults: GPT-2 small, 124M) and the attention kernel.

    ``attention`` picks how each head weighs the positions it looks at (docs/ATTENTION.md):
    ``"softmax"`` is GPT-2's exact attention; ``"favor"`` is FAVOR+ (Performer) with
    ``n_features`` positive orthogonal random features per layer, redrawn every
    ``feature_redraw`` training steps (0: never); ``"linear"`` is the elu(x) + 1 feature map. The
    last two cost time linear in the context length.
    """
    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    attention: str = "softmax"
    n_features: int = 64
    feature_redraw: int = 0

    def __post_init__(self):
        for name in _SHAPE_FIELDS + ("n_features", "feature_redraw"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError("GPTConfig.%s must be an int, got %r" % (name, v))
            if v < (0 if name == "feature_redraw" else 1):
                raise ValueError("GPTConfig.%s must be >= %d, got %d"
                                 % (name, 0 if name == "feature_redraw" else 1, v))
            setattr(self, name, int(v))
        if self.n_embd % self.n_head:
            raise ValueError("n_embd (%d) must be divisible by n_head (%d)"
                             % (self.n_embd, self.n_head))
        if self.vocab_size > 2**31 - 1 or self.block_size > 2**20:
            raise ValueError("vocab_size or block_size is unreasonably large")
        if self.attention not in ATTENTION_KINDS:
            raise ValueError("GPTConfig.attention must be one of %s, got %r"
                             % (", ".join(map(repr, ATTENTION_KINDS)), self.attention))
        if self.n_features > MAX_FEATURES:
            raise ValueError("GPTConfig.n_features must be at most %d, got %d"
                             % (MAX_FEATURES, self.n_features))

    def to_dict(self):
        """The config as a plain dict (JSON-friendly). A softmax model's dict holds the five
        shape fields only, as files have since format version 1."""
        d = asdict(self)
        if self.attention == "softmax":
            for k in _ATTENTION_DEFAULTS:
                del d[k]
        return d

    @classmethod
    def from_dict(cls, d):
        """Build from a dict with the five shape fields and optionally ``attention``,
        ``n_features`` and ``feature_redraw`` (absent: a softmax model); other keys are an
        error."""
        if not isinstance(d, dict):
            raise ValueError("model config must be a JSON object, got %s" % type(d).__name__)
        extra = set(d) - set(_SHAPE_FIELDS) - set(_ATTENTION_DEFAULTS)
        missing = set(_SHAPE_FIELDS) - set(d)
        if extra or missing:
            raise ValueError("model config has unknown keys %s / lacks keys %s"
                             % (sorted(extra), sorted(missing)))
        return cls(**d)


def param_shapes(cfg):
    """(name, shape) of every parameter, in GPT-2 checkpoint naming, in GPT-2 order."""
    C, V, L = cfg.n_embd, cfg.vocab_size, cfg.n_layer
    shapes = [("wte.weight", (V, C)), ("wpe.weight", (cfg.block_size, C))]
    for i in range(L):
        p = "h.%d." % i
        shapes += [(p + "ln_1.weight", (C,)), (p + "ln_1.bias", (C,)),
                   (p + "attn.c_attn.weight", (C, 3 * C)), (p + "attn.c_attn.bias", (3 * C,)),
                   (p + "attn.c_proj.weight", (C, C)), (p + "attn.c_proj.bias", (C,)),
                   (p + "ln_2.weight", (C,)), (p + "ln_2.bias", (C,)),
                   (p + "mlp.c_fc.weight", (C, 4 * C)), (p + "mlp.c_fc.bias", (4 * C,)),
                   (p + "mlp.c_proj.weight", (4 * C, C)), (p + "mlp.c_proj.bias", (C,))]
    shapes += [("ln_f.weight", (C,)), ("ln_f.bias", (C,))]
    return shapes


class _Slab:
    """One flat array and named views into it; matrices first, then vectors."""

    def __init__(self, shapes, dtype):
        order = sorted(shapes, key=lambda s: len(s[1]) < 2)  # stable: matrices, then vectors
        self.flat = np.zeros(sum(math.prod(s) for _, s in order), dtype=dtype)
        self.views, off = {}, 0
        self.n_decay = sum(math.prod(s) for _, s in order if len(s) >= 2)
        for name, shape in order:
            n = math.prod(shape)
            self.views[name] = self.flat[off:off + n].reshape(shape)
            off += n
        self.views = {name: self.views[name] for name, _ in shapes}  # GPT-2 order for users
        self.flat_views = dict(self.views)                # the slab's own, when views are mapped


class GradDict(dict):
    """The gradients as ``{name: array}`` views into one flat slab (``.flat``).

    Views stay valid until the next ``loss_and_grads`` call overwrites them. ``clip_grad_norm`` and
    ``AdamW.step`` use ``.flat`` to work in one pass.
    """
    flat = None
    n_decay = 0


class GPT:
    """A GPT-2 model. ``GPT(cfg, seed=0)`` initialises it as GPT-2 does.

    Initialisation: weights normal(0, 0.02), the residual projections (``attn.c_proj``,
    ``mlp.c_proj``) scaled by 1/sqrt(2 n_layer), biases zero, LayerNorm gains one. ``dtype``
    float64 works on the NumPy backend only (for finite-difference checks). ``seed=None`` skips
    the initialisation (all weights zero), for callers that load weights right after.
    """

    def __init__(self, config, seed=0, dtype=np.float32):
        if not isinstance(config, GPTConfig):
            raise TypeError("config must be a GPTConfig, got %s" % type(config).__name__)
        self.config = config
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError("dtype must be float32 or float64")
        shapes = param_shapes(config)
        self._p = _Slab(shapes, self.dtype)
        self._g = _Slab(shapes, self.dtype)
        self.params, self.grads = self._p.flat, GradDict(self._g.views)
        self.grads.flat, self.grads.n_decay = self._g.flat, self._g.n_decay
        self.n_decay = self._p.n_decay
        self._acts = None
        self._mapped = False
        # finetuning (pyllm.lora): adapters add to the four linear layers of each block
        # (add_forward(name, out, inp), add_backward(name, dout, inp, dinp)); frozen skips
        # every gradient of the base weights (none is written to the slab but LayerNorm's)
        self._adapters = None
        self._frozen = False
        self._train_from = None  # pyllm.classify: weight gradients from this layer up only
        # the attention of favor and linear models (feature maps and prefix sums); None: softmax
        self._kattn = None
        if config.attention != "softmax":
            from .linear_attention import KernelAttention
            self._kattn = KernelAttention(config, self.dtype)
        # per-head outputs hook (pyllm.explore.ablate): None, or an object whose
        # forward(layer, atty) edits the attention output (.., C) before c_proj and whose
        # backward(layer, d_atty) edits its gradient to match
        self._attn_hook = None
        if seed is not None:
            self._init_weights(seed)
            self.redraw_features(seed, 0)

    # ---- parameters ---------------------------------------------------------------------------

    def _init_weights(self, seed):
        rng = np.random.default_rng(seed)
        std_proj = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, view in self._p.views.items():
            if name.endswith(".bias"):
                view[...] = 0.0
            elif "ln_" in name:
                view[...] = 1.0
            else:
                std = std_proj if name.endswith("c_proj.weight") else 0.02
                view[...] = rng.standard_normal(view.shape) * std

    @property
    def num_params(self):
        """Number of parameters (the tied LM head counted once)."""
        return int(self.params.size)

    def buffers(self):
        """``{name: array}`` of the model state that is not trained: the FAVOR+ random features
        ``h.<i>.attn.features`` (n_features, head size) of a favor model (else empty). Saved and
        loaded with the weights; views of the live arrays."""
        if self._kattn is None:
            return {}
        return dict(zip(self._kattn.feature_names(), self._kattn.features))

    def redraw_features(self, seed, index):
        """Draw a favor model's random features afresh, as a function of (seed, index) alone
        (training redraws with its seed and the step); nothing for other kernels."""
        if self._kattn is not None:
            self._kattn.draw(seed, index)

    @property
    def mapped(self):
        """True while the weights are read-only views of a memory-mapped file
        (``pyllm.load(path, mmap=True)``); training copies them into the model first."""
        return self._mapped

    def _map(self, sd):
        """Use the arrays of ``sd`` (same names and shapes, float32, read-only views of a
        mapped file) as the weights, without copying; the slab stays untouched (its zero pages
        cost no memory) until :meth:`_unmap`."""
        for name, arr in sd.items():
            self._p.views[name] = arr
        self._mapped = True

    def _unmap(self):
        """Copy mapped weights into the parameter slab and use it again (before any write)."""
        if not self._mapped:
            return
        views = self._p.views
        for name, arr in list(views.items()):
            slab = self._p.flat_views[name]
            slab[...] = arr
            views[name] = slab
        self._mapped = False

    def state_dict(self):
        """``{name: array}`` in GPT-2 checkpoint names. The arrays are views of the live weights."""
        return dict(self._p.views)

    def load_state_dict(self, sd, strict=True):
        """Copy weights in from ``sd`` (same names and shapes as :meth:`state_dict`)."""
        if not isinstance(sd, dict):
            raise TypeError("state dict must be a dict, got %s" % type(sd).__name__)
        self._unmap()
        mine = self._p.views
        if strict:
            missing, extra = set(mine) - set(sd), set(sd) - set(mine)
            if missing or extra:
                raise ValueError("state dict mismatch: missing %s, unexpected %s"
                                 % (sorted(missing)[:5], sorted(extra)[:5]))
        checked = {}
        for name, arr in sd.items():                     # check everything, then copy
            if name not in mine:
                continue
            arr = np.asarray(arr)
            if arr.shape != mine[name].shape:
                raise ValueError("%s has shape %s, expected %s"
                                 % (name, arr.shape, mine[name].shape))
            if not np.issubdtype(arr.dtype, np.floating):
                raise TypeError("%s must be a float array, got %s" % (name, arr.dtype))
            checked[name] = arr
        for name, arr in checked.items():
            mine[name][...] = arr

    # ---- activations --------------------------------------------------------------------------

    def _activations(self, B, T):
        """Buffers for a (B, T) forward + backward, allocated once and reused."""
        if self._acts is not None and self._acts["shape"] == (B, T):
            return self._acts
        C, L, V, NH = self.config.n_embd, self.config.n_layer, self.config.vocab_size, \
            self.config.n_head
        e = lambda *s: np.zeros(s, dtype=self.dtype)  # noqa: E731
        # gelu(fch) feeds the next matmul and, in backward, its weight gradient. Kept per layer
        # when that costs at most GELU_KEEP_BYTES; else one buffer serves every layer and
        # backward recomputes it (saving 4C floats per token per layer).
        keep = L * B * T * 4 * C * self.dtype.itemsize <= GELU_KEEP_BYTES
        shared = None if keep else e(B, T, 4 * C)
        ka = self._kattn
        a = {"shape": (B, T), "encoded": e(B, T, C), "gelu_kept": keep,
             "kattn": ka.scratch(B, T) if ka is not None else None,
             "layers": [dict(ln_1=e(B, T, C), ln_1_mean=e(B, T), ln_1_rstd=e(B, T),
                             qkv=e(B, T, 3 * C), atty=e(B, T, C),
                             lse=e(B, NH, T) if ka is None else None,
                             kattn=ka.buffers(B, T) if ka is not None else None,
                             res_2=e(B, T, C),
                             ln_2=e(B, T, C), ln_2_mean=e(B, T), ln_2_rstd=e(B, T),
                             fch=e(B, T, 4 * C), fch_gelu=e(B, T, 4 * C) if keep else shared,
                             res_3=e(B, T, C)) for _ in range(L)],
             "ln_f": e(B, T, C), "ln_f_mean": e(B, T), "ln_f_rstd": e(B, T),
             "logits": e(B, T, V), "losses": e(B, T),
             # backward scratch
             "dres": e(B, T, C), "dC": e(B, T, C), "dC2": e(B, T, C), "d4C": e(B, T, 4 * C),
             "d4C2": e(B, T, 4 * C), "d3C": e(B, T, 3 * C)}
        self._acts = a
        return a

    def _check_idx(self, idx, name="idx", limit=True):
        if not isinstance(idx, np.ndarray):
            idx = np.asarray(idx)
        if idx.dtype == np.bool_ or not np.issubdtype(idx.dtype, np.integer):
            raise TypeError("%s must hold integer token ids, got dtype %s" % (name, idx.dtype))
        if idx.ndim == 1:
            idx = idx[None, :]
        if idx.ndim != 2:
            raise ValueError("%s must have shape (B, T), got %s" % (name, idx.shape))
        B, T = idx.shape
        if B < 1 or T < 1:
            raise ValueError("%s must be non-empty, got shape %s" % (name, idx.shape))
        if limit and T > self.config.block_size:
            raise ValueError("%s has T = %d tokens, more than block_size = %d"
                             % (name, T, self.config.block_size))
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError("%s holds token id %d, outside [0, %d)"
                             % (name, lo if lo < 0 else hi, self.config.vocab_size))
        return np.ascontiguousarray(idx, dtype=np.int32)

    def _check_backend(self):
        if self.dtype != np.float32 and get_backend() == "c":
            raise TypeError("a float64 model runs on the NumPy backend only "
                            "(pyllm.set_backend('numpy'))")

    # ---- forward ------------------------------------------------------------------------------

    def _forward(self, idx, head=True):
        """Run the network on idx (B,T) int32; fills the activation buffers, returns them.
        ``head=False`` stops at the final LayerNorm (a["ln_f"]), without the LM head's logits."""
        self._check_backend()
        B, T = idx.shape
        a, P, NH = self._activations(B, T), self._p.views, self.config.n_head
        ad = self._adapters
        ops.encoder_forward(a["encoded"], idx, P["wte.weight"], P["wpe.weight"])
        x = a["encoded"]                                               # (B,T,C) residual stream
        for i, l in enumerate(a["layers"]):
            p = "h.%d." % i
            ops.layernorm_forward(l["ln_1"], l["ln_1_mean"], l["ln_1_rstd"], x,
                                  P[p + "ln_1.weight"], P[p + "ln_1.bias"])
            ops.matmul_forward(l["qkv"], l["ln_1"], P[p + "attn.c_attn.weight"],
                               P[p + "attn.c_attn.bias"])             # (B,T,3C)
            if ad is not None:
                ad.add_forward(p + "attn.c_attn", l["qkv"], l["ln_1"])
            if self._kattn is None:
                ops.attention_forward(l["atty"], l["lse"], l["qkv"], NH)  # (B,T,C)
            else:
                self._kattn.forward(i, l["atty"], l["qkv"], l["kattn"], a["kattn"])
            if self._attn_hook is not None:
                self._attn_hook.forward(i, l["atty"])
            ops.matmul_forward(l["res_2"], l["atty"], P[p + "attn.c_proj.weight"],
                               P[p + "attn.c_proj.bias"], residual=x)   # x + proj, fused
            if ad is not None:
                ad.add_forward(p + "attn.c_proj", l["res_2"], l["atty"])
            ops.layernorm_forward(l["ln_2"], l["ln_2_mean"], l["ln_2_rstd"], l["res_2"],
                                  P[p + "ln_2.weight"], P[p + "ln_2.bias"])
            ops.matmul_forward(l["fch"], l["ln_2"], P[p + "mlp.c_fc.weight"],
                               P[p + "mlp.c_fc.bias"])                # (B,T,4C)
            if ad is not None:
                ad.add_forward(p + "mlp.c_fc", l["fch"], l["ln_2"])
            ops.gelu_forward(l["fch_gelu"], l["fch"])
            ops.matmul_forward(l["res_3"], l["fch_gelu"], P[p + "mlp.c_proj.weight"],
                               P[p + "mlp.c_proj.bias"], residual=l["res_2"])
            if ad is not None:
                ad.add_forward(p + "mlp.c_proj", l["res_3"], l["fch_gelu"])
            x = l["res_3"]
        ops.layernorm_forward(a["ln_f"], a["ln_f_mean"], a["ln_f_rstd"], x,
                              P["ln_f.weight"], P["ln_f.bias"])
        C, V = self.config.n_embd, self.config.vocab_size
        if head:
            ops.gemm(a["logits"].reshape(B * T, V), a["ln_f"].reshape(B * T, C),
                     P["wte.weight"], trans_b=True)                    # (B,T,V) tied head
        return a

    def forward(self, idx):
        """Logits (B, T, vocab_size) float32 for token ids idx (B, T) (or (T,) for one sequence)."""
        idx = self._check_idx(idx)
        return self._forward(idx)["logits"].copy()

    __call__ = forward

    def _check_targets(self, targets, shape):
        targets = self._check_idx(targets, "targets")
        if targets.shape != shape:
            raise ValueError("targets must have the shape of idx %s, got %s"
                             % (shape, targets.shape))
        return targets

    @staticmethod
    def _check_mask(mask, shape):
        """None, or a bool array of ``shape`` with at least one True (the positions that count)."""
        if mask is None:
            return None
        m = np.asarray(mask)
        if m.dtype != np.bool_:
            if m.dtype.kind not in "iuf" or not np.all((m == 0) | (m == 1)):
                raise TypeError("mask must be a bool array (or 0/1 values), got dtype %s"
                                % m.dtype)
            m = m.astype(bool)
        if m.shape != shape:
            raise ValueError("mask must have the shape of idx %s, got %s" % (shape, m.shape))
        if not m.any():
            raise ValueError("mask selects no position: at least one entry must be True")
        return m

    @staticmethod
    def _masked_targets(targets, mask):
        """The targets with the positions outside ``mask`` set to the cross-entropy kernels'
        ignore value (-1: loss 0, gradient row 0)."""
        if mask is None:
            return targets
        return np.ascontiguousarray(np.where(mask, targets, CE_IGNORE), dtype=np.int32)

    @staticmethod
    def _mean_loss(losses, targets):
        """The mean over the positions that count (ignored ones have loss 0)."""
        return float(losses.sum(dtype=np.float64) / np.count_nonzero(targets != CE_IGNORE))

    def loss(self, idx, targets, mask=None):
        """Mean cross-entropy of the next-token predictions (forward only); a Python float.

        ``mask`` (bool, shape of ``idx``) restricts the mean to the positions marked True, e.g.
        the answer tokens of an instruction or the predictable half of a repeated sequence.
        """
        idx = self._check_idx(idx)
        targets = self._masked_targets(self._check_targets(targets, idx.shape),
                                       self._check_mask(mask, idx.shape))
        a = self._forward(idx)
        ops.crossentropy_forward(a["losses"], a["logits"], targets)
        return self._mean_loss(a["losses"], targets)

    # ---- backward -----------------------------------------------------------------------------

    def loss_and_grads(self, idx, targets, accumulate=False, loss_scale=1.0, mask=None):
        """Mean cross-entropy and its gradient w.r.t. every parameter.

        Returns ``(loss, grads)``; ``grads`` is a :class:`GradDict` with the names and shapes of
        :meth:`state_dict`, views into the model's gradient slab (overwritten by the next call).
        ``accumulate=True`` adds into the existing gradients instead (gradient accumulation);
        ``loss_scale`` multiplies the gradient (e.g. 1/steps when accumulating). ``mask`` (bool,
        shape of ``idx``) restricts the loss to the positions marked True: the mean runs over
        them only and the other positions contribute no gradient.
        """
        idx = self._check_idx(idx)
        targets = self._masked_targets(self._check_targets(targets, idx.shape),
                                       self._check_mask(mask, idx.shape))
        if not self._frozen:
            self._unmap()                  # training writes the weights: copy a mapped file in
        a = self._forward(idx)
        B, T = idx.shape
        C, V = self.config.n_embd, self.config.vocab_size
        P, G = self._p.views, self._g.views
        ops.crossentropy_forward(a["losses"], a["logits"], targets)
        loss = self._mean_loss(a["losses"], targets)
        frozen = self._frozen
        if not accumulate and not frozen:
            self._g.flat.fill(0.0)
        # dlogits (B,T,V) overwrites logits: (softmax - onehot) * loss_scale / (number counted),
        # rows of ignored positions 0
        dlogits = a["logits"]
        n = np.count_nonzero(targets != CE_IGNORE)
        ops.crossentropy_backward(dlogits, dlogits, targets, float(loss_scale) / n)
        ops.gemm(a["dC"].reshape(B * T, C), dlogits.reshape(B * T, V), P["wte.weight"])
        if not frozen:
            ops.gemm(G["wte.weight"], dlogits.reshape(B * T, V), a["ln_f"].reshape(B * T, C),
                     trans_a=True, accumulate=True)
        self._backward(idx, a)
        return loss, self.grads

    def _backward(self, idx, a):
        """The backward from a["dC"] = dL/d(final LayerNorm output) (B,T,C) down through every
        block: gradients added into the slab (none for the base's weights when ``_frozen``;
        from layer ``_train_from`` up only, and no embedding gradients, when that is set)."""
        P, G = self._p.views, self._g.views
        NH, start = self.config.n_head, self._train_from
        dres = a["dres"]                                              # dL/d residual stream
        x_last = a["layers"][-1]["res_3"] if a["layers"] else a["encoded"]
        dres.fill(0.0)
        ops.layernorm_backward(dres, G["ln_f.weight"], G["ln_f.bias"], a["dC"], x_last,
                               P["ln_f.weight"], a["ln_f_mean"], a["ln_f_rstd"])
        for i in reversed(range(self.config.n_layer)):
            if start is not None and i < start:
                return                                  # nothing below trains
            l, p = a["layers"][i], "h.%d." % i
            x_in = a["layers"][i - 1]["res_3"] if i > 0 else a["encoded"]
            # MLP: res_3 = res_2 + c_proj(gelu(c_fc(ln_2(res_2))))
            d_gelu, d_fch, d_ln2 = a["d4C"], a["d4C2"], a["dC"]
            if not a["gelu_kept"]:
                ops.gelu_forward(l["fch_gelu"], l["fch"])             # recompute
            self._linear_backward(d_gelu, p + "mlp.c_proj", dres, l["fch_gelu"])
            ops.gelu_backward(d_fch, l["fch"], d_gelu, accumulate=False)
            self._linear_backward(d_ln2, p + "mlp.c_fc", d_fch, l["ln_2"])
            ops.layernorm_backward(dres, G[p + "ln_2.weight"], G[p + "ln_2.bias"], d_ln2,
                                   l["res_2"], P[p + "ln_2.weight"], l["ln_2_mean"],
                                   l["ln_2_rstd"])
            # attention: res_2 = x_in + c_proj(attn(c_attn(ln_1(x_in))))
            d_atty, d_qkv, d_ln1 = a["dC"], a["d3C"], a["dC2"]
            self._linear_backward(d_atty, p + "attn.c_proj", dres, l["atty"])
            if self._attn_hook is not None:
                self._attn_hook.backward(i, d_atty)
            if self._kattn is None:
                ops.attention_backward(d_qkv, d_atty, l["qkv"], l["atty"], l["lse"], NH,
                                       accumulate=False)
            else:
                self._kattn.backward(i, d_qkv, d_atty, l["qkv"], l["kattn"], a["kattn"])
            self._linear_backward(d_ln1, p + "attn.c_attn", d_qkv, l["ln_1"])
            ops.layernorm_backward(dres, G[p + "ln_1.weight"], G[p + "ln_1.bias"], d_ln1,
                                   x_in, P[p + "ln_1.weight"], l["ln_1_mean"], l["ln_1_rstd"])
        if not self._frozen and start is None:
            ops.encoder_backward(G["wte.weight"], G["wpe.weight"], dres, idx)

    def _linear_backward(self, dinp, name, dout, inp):
        """Backward of the layer ``name`` (out = inp @ W + b): dinp = dout @ W^T is written (not
        added, so it needs no zeroing first), and dW, db are added into the gradient slab."""
        W, OC = self._p.views[name + ".weight"], dout.shape[-1]
        ops.gemm(dinp.reshape(-1, W.shape[0]), dout.reshape(-1, OC), W, trans_b=True)
        if not self._frozen:
            ops.matmul_backward(None, self._g.views[name + ".weight"],
                                self._g.views[name + ".bias"], dout, inp, W)
        if self._adapters is not None:
            self._adapters.add_backward(name, dout, inp, dinp)
        return dinp

    # ---- generation ---------------------------------------------------------------------------

    def _new_cache(self, B):
        cfg = self.config
        hd = cfg.n_embd // cfg.n_head
        shape = (cfg.n_layer, 2, B, cfg.n_head, cfg.block_size, hd)
        return np.zeros(shape, dtype=self.dtype)

    def _prefill(self, idx, cache):
        """Forward over idx (B,T); fill the KV cache (or a favor / linear model's running state);
        return last-position logits (B,V)."""
        a = self._forward(idx)
        B, T = idx.shape
        NH, C = self.config.n_head, self.config.n_embd
        hd = C // NH
        for i, l in enumerate(a["layers"]):
            if self._kattn is not None:
                cache.prefill(i, l["qkv"], l["kattn"])
                continue
            kv = l["qkv"].reshape(B, T, 3, NH, hd)
            cache[i, 0, :, :, :T] = kv[:, :, 1].transpose(0, 2, 1, 3)
            cache[i, 1, :, :, :T] = kv[:, :, 2].transpose(0, 2, 1, 3)
        return a["logits"][:, -1].copy()

    def _decoder(self, B):
        """The one-token decoder and its cache: a KV cache for softmax attention, the running
        sums of :class:`~pyllm.linear_attention.RunningState` for favor and linear."""
        cfg, P = self.config, self._p.views
        weights = [P[n] for n in decoder_weight_names(cfg.n_layer)]
        if self._kattn is not None:
            state = self._kattn.running_state(B)
            return state, numpy_decoder(weights, None, cfg.n_head, self._attn_hook, state)
        cache = self._new_cache(B)
        dec = (ops.Decoder(weights, cache, cfg.n_head) if self._attn_hook is None
               else hooked_decoder(weights, cache, cfg.n_head, self._attn_hook))
        return cache, dec

    def stream(self, prompt_idx, max_new_tokens=100, temperature=1.0, top_k=None, top_p=None,
               seed=0, use_cache=True, stop_token=None):
        """Generate tokens one at a time: yields an int array (B,) per step.

        Same sampling as :meth:`generate`; see there for the arguments.
        """
        self._check_backend()
        idx = self._check_idx(prompt_idx, "prompt_idx", limit=False)
        check_sampling(max_new_tokens, temperature, top_k, top_p)
        B, cfg = idx.shape[0], self.config
        rng = RNG(int(seed))
        seq, bs = idx, cfg.block_size
        cache = dec = None
        if use_cache:
            cache, dec = self._decoder(B)
        logits = None
        for step in range(int(max_new_tokens)):
            T = seq.shape[1]
            if use_cache and logits is not None and T <= bs:
                # the cache holds positions 0..T-2; the new token sits at T-1
                logits = dec.step(seq[:, -1], T - 1)
            elif use_cache and T <= bs:
                logits = self._prefill(seq, cache)
            else:
                # no cache, or the context outgrew block_size: recompute on the last block_size
                # tokens (absolute positions shift, so a cache cannot be reused)
                logits = self._forward(np.ascontiguousarray(seq[:, -bs:]))["logits"][:, -1].copy()
            nxt = np.array([sample_token(logits[b], temperature, top_k, top_p, rng)
                            for b in range(B)], dtype=np.int32)
            seq = np.concatenate([seq, nxt[:, None]], axis=1)
            yield nxt
            if stop_token is not None and np.all(nxt == stop_token):
                return

    def generate(self, prompt_idx, max_new_tokens=100, temperature=1.0, top_k=None, top_p=None,
                 seed=0, use_cache=True, stop_token=None, callback=None):
        """Sample a continuation; returns prompt + new tokens, int32 (B, T + max_new_tokens).

        ``temperature=0`` is greedy (argmax). ``top_k`` keeps the k most likely tokens,
        ``top_p`` the smallest set whose probability reaches p (nucleus sampling). Sampling
        uses pyllm's own RNG seeded with ``seed``, so the same seed gives the same tokens on both
        backends. ``use_cache`` runs the one-token decode step through a KV cache (results equal
        the cache-free path). ``callback(tokens)`` is called with each new (B,) array as it
        comes; ``stop_token`` ends generation once every sequence produced it. A prompt longer
        than ``block_size`` is conditioned on its last ``block_size`` tokens.
        """
        idx = self._check_idx(prompt_idx, "prompt_idx", limit=False)
        out = [idx]
        for nxt in self.stream(idx, max_new_tokens, temperature, top_k, top_p, seed, use_cache,
                               stop_token):
            if callback is not None:
                callback(nxt)
            out.append(nxt[:, None])
        return np.concatenate(out, axis=1)

    # ---- files --------------------------------------------------------------------------------

    def save(self, path, dtype="float32"):
        """Write the weights, any random features (:meth:`buffers`) and the config to one
        safetensors file (atomically). ``dtype="bfloat16"`` halves the file: every value rounded
        to the nearest bfloat16 (ties to even; NaN stays NaN), widened back to float32 exactly
        when loaded -- so the loaded model is the rounded one."""
        from .tensorfile import BF16Array, save_safetensors
        if dtype not in ("float32", "bfloat16"):
            raise ValueError("dtype must be 'float32' or 'bfloat16', got %r" % (dtype,))
        tensors = self.file_tensors()
        if dtype == "bfloat16":
            tensors = {k: BF16Array.from_float(v) for k, v in tensors.items()}
        save_safetensors(path, tensors, model_metadata(self.config))

    def save_hf(self, directory, tokenizer=None, force=False):
        """Write a Hugging Face GPT-2 directory (``model.safetensors``, ``config.json`` and the
        tokenizer's files) that ``transformers.GPT2LMHeadModel.from_pretrained`` and
        ``pyllm.load_gpt2`` read; see :func:`pyllm.hf_export.export_hf`."""
        from .hf_export import export_hf
        return export_hf(self, directory, tokenizer, force=force)

    def file_tensors(self):
        """Everything a model file holds, as F32 arrays: the weights (:meth:`state_dict`), then
        any random features (:meth:`buffers`)."""
        return {k: np.ascontiguousarray(v, dtype=np.float32)
                for k, v in list(self.state_dict().items()) + list(self.buffers().items())}

    def __repr__(self):
        c = self.config
        att = {"softmax": "", "linear": ", attention='linear'",
               "favor": ", attention='favor', n_features=%d, feature_redraw=%d"
                        % (c.n_features, c.feature_redraw)}[c.attention]
        return ("GPT(vocab_size=%d, block_size=%d, n_layer=%d, n_head=%d, n_embd=%d%s; "
                "%.2fM params)" % (c.vocab_size, c.block_size, c.n_layer, c.n_head, c.n_embd,
                                   att, self.num_params / 1e6))


def model_metadata(config):
    """The safetensors ``__metadata__`` that identifies a pyllm model file."""
    return {"format": MODEL_FORMAT, "format_version": str(MODEL_FORMAT_VERSION),
            "config": json.dumps(config.to_dict(), sort_keys=True)}


# ---- sampling ---------------------------------------------------------------------------------

def check_sampling(max_new_tokens, temperature, top_k, top_p):
    """Validate sampling arguments (ValueError / TypeError with the argument's name)."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)):
        raise TypeError("max_new_tokens must be an int")
    if max_new_tokens < 0:
        raise ValueError("max_new_tokens must be >= 0, got %d" % max_new_tokens)
    if not (isinstance(temperature, numbers.Real) and not isinstance(temperature, bool)
            and math.isfinite(temperature) and temperature >= 0):
        raise ValueError("temperature must be a finite number >= 0, got %r" % (temperature,))
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer))
                              or top_k < 1):
        raise ValueError("top_k must be None or an int >= 1, got %r" % (top_k,))
    if top_p is not None and not (isinstance(top_p, numbers.Real) and not isinstance(top_p, bool)
                                  and 0 < top_p <= 1):
        raise ValueError("top_p must be None or in (0, 1], got %r" % (top_p,))


def descending_order(logits):
    """Token ids by descending logit, ties by id: ``np.argsort(-logits, kind="stable")``.

    For float32 logits (as models give) the same permutation comes from one unstable sort of
    64-bit keys, the logit's bits made order-preserving above the id, 3-4x faster for a
    50,257-token vocabulary, where the stable sort took most of a sampled token's time."""
    z = np.asarray(logits)
    if z.dtype != np.float32 or z.ndim != 1 or z.size >= 2**32:
        return np.argsort(-np.asarray(z, dtype=np.float64), kind="stable")
    bits = (np.negative(z) + np.float32(0)).view(np.uint32)        # -0.0 becomes +0.0
    key = np.where(bits >> 31, ~bits, bits | np.uint32(0x80000000)).astype(np.uint64)
    key = np.sort((key << np.uint64(32)) | np.arange(z.size, dtype=np.uint64))
    return (key & np.uint64(0xFFFFFFFF)).astype(np.intp)


def sample_token(logits, temperature, top_k, top_p, rng):
    """Draw one token id from a (V,) logits row (float64 math, pyllm's RNG).

    Greedy when temperature is 0. Otherwise: divide by temperature, keep the top_k largest,
    softmax, keep the smallest prefix (by descending probability) whose mass reaches top_p,
    renormalise, and invert the CDF at one uniform draw. Ties sort by token id.
    """
    z = np.asarray(logits, dtype=np.float64)
    if not np.all(np.isfinite(z)):
        raise FloatingPointError("the model produced non-finite logits (NaN or Inf weights?)")
    if temperature == 0:
        return int(np.argmax(z))
    order = descending_order(logits)                                  # ties by id
    z = z / temperature
    if top_k is not None:
        order = order[:top_k]
    zs = z[order]
    p = np.exp(zs - zs[0])
    p /= p.sum()
    if top_p is not None and top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(p), top_p) + 1)
        order, p = order[:keep], p[:keep] / p[:keep].sum()
    u = rng.random()
    i = int(np.searchsorted(np.cumsum(p), u, side="right"))
    return int(order[min(i, len(order) - 1)])
