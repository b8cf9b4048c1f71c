"""LoRA: low-rank adapters over a frozen GPT (Hu et al. 2021, "LoRA: Low-Rank Adaptation of
Large Language Models"; Raschka's book, appendix E).

For each targeted linear layer W (in, out) of every block, the adapted layer computes

    y = x W + b + (alpha / rank) (x A) B,     A (in, rank), B (rank, out)

with A drawn like a linear layer's weight (uniform in +-1/sqrt(in), as microsoft/LoRA's
kaiming_uniform(a=sqrt(5))) and B zero, so the adapted model equals the base at step 0. The
scaling is alpha / rank, as in the paper and microsoft/LoRA (the book scales by alpha alone).

Only A and B train: they live in their own slab (``lora.params``, ``lora.grads``), so
``pyllm.AdamW(lora)`` and ``pyllm.clip_grad_norm`` work on a LoRA as on a model, and the base's
weights are never written -- no gradient and no optimizer state for them. The model runs its own
forward and backward with the adapters hooked into its four linear layers, carrying dx through
the frozen weights to the adapters below.
"""
import contextlib
import hashlib
import json
import math

import numpy as np

from .backend import ops
from .model import GPT, GradDict, _Slab

TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
LORA_FORMAT = "pyllm-lora"
LORA_FORMAT_VERSION = 1


def _layer_shape(cfg, target):
    C = cfg.n_embd
    return {"attn.c_attn": (C, 3 * C), "attn.c_proj": (C, C), "mlp.c_fc": (C, 4 * C),
            "mlp.c_proj": (4 * C, C)}[target]


def base_checksum(model):
    """SHA-256 of the base model's weights (GPT-2 order, float32 bytes): what an adapter file
    names its base by."""
    h = hashlib.sha256()
    for name, w in model.state_dict().items():
        h.update(name.encode("utf-8"))
        h.update(np.ascontiguousarray(w, dtype=np.float32).tobytes())
    return h.hexdigest()


class LoRA:
    """Low-rank adapters of ``rank`` over ``targets`` of every block of ``model`` (a GPT, left
    unchanged); see the module docstring for the math and ``n_trainable`` for the count."""

    def __init__(self, model, rank=8, alpha=16, targets=TARGETS, seed=0):
        if not isinstance(model, GPT):
            raise TypeError("LoRA needs a pyllm.GPT, got %s" % type(model).__name__)
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
            raise ValueError("rank must be an int >= 1, got %r" % (rank,))
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) \
                or not math.isfinite(alpha):
            raise ValueError("alpha must be a finite number, got %r" % (alpha,))
        targets = tuple(targets)
        bad = [t for t in targets if t not in TARGETS]
        if bad or not targets or len(set(targets)) != len(targets):
            raise ValueError("targets must be distinct names among %s, got %r"
                             % (", ".join(TARGETS), targets))
        self.model, self.rank, self.alpha, self.targets = model, int(rank), float(alpha), targets
        self.scale = self.alpha / self.rank
        cfg = model.config
        shapes = []
        for i in range(cfg.n_layer):
            for t in targets:
                fan_in, fan_out = _layer_shape(cfg, t)
                shapes += [("h.%d.%s.lora_A" % (i, t), (fan_in, self.rank)),
                           ("h.%d.%s.lora_B" % (i, t), (self.rank, fan_out))]
        self._p, self._g = _Slab(shapes, model.dtype), _Slab(shapes, model.dtype)
        self.params, self.n_decay = self._p.flat, self._p.n_decay
        self.grads = GradDict(self._g.views)
        self.grads.flat, self.grads.n_decay = self._g.flat, self._g.n_decay
        rng = np.random.default_rng(seed)
        for name, view in self._p.views.items():
            if name.endswith("lora_A"):
                bound = 1.0 / math.sqrt(view.shape[0])
                view[...] = rng.uniform(-bound, bound, view.shape)
        self._scratch = {}

    @property
    def n_trainable(self):
        """Trained numbers: rank * (in + out) summed over the targeted matrices of every block."""
        return int(self.params.size)

    @property
    def config(self):
        return self.model.config

    def state_dict(self):
        """``{name: array}`` of the adapters (``h.<i>.<target>.lora_A`` / ``lora_B``)."""
        return dict(self._p.views)

    # ---- the hooks the model calls --------------------------------------------------------

    def _u(self, name, inp):
        """u = (alpha / rank) x A, (N, rank), in a reused buffer."""
        A = self._p.views[name + ".lora_A"]
        N = inp.size // A.shape[0]
        key = (name, N)
        u = self._scratch.get(key)
        if u is None:
            u = self._scratch[key] = np.empty((N, self.rank), dtype=A.dtype)
        ops.gemm(u, inp.reshape(N, A.shape[0]), A)
        u *= u.dtype.type(self.scale)
        return u

    def add_forward(self, name, out, inp):
        """out (.., out) += (alpha / rank) (inp A) B for layer ``name`` when it is adapted."""
        if name + ".lora_A" not in self._p.views:
            return
        B = self._p.views[name + ".lora_B"]
        u = self._u(name, inp)
        ops.gemm(out.reshape(-1, B.shape[1]), u, B, accumulate=True)

    def add_backward(self, name, dout, inp, dinp):
        """Adapter gradients of layer ``name``: dB += u^T dout, dA += x^T (s dout B^T), and
        dinp += (s dout B^T) A^T (added to the frozen weight's dx)."""
        if name + ".lora_A" not in self._p.views:
            return
        A, B = self._p.views[name + ".lora_A"], self._p.views[name + ".lora_B"]
        dA, dB = self._g.views[name + ".lora_A"], self._g.views[name + ".lora_B"]
        N = inp.size // A.shape[0]
        x, g = inp.reshape(N, A.shape[0]), dout.reshape(N, B.shape[1])
        u = self._u(name, inp)
        ops.gemm(dB, u, g, trans_a=True, accumulate=True)
        du = np.empty_like(u)
        ops.gemm(du, g, B, trans_b=True)
        du *= du.dtype.type(self.scale)
        ops.gemm(dA, x, du, trans_a=True, accumulate=True)
        ops.gemm(dinp.reshape(N, A.shape[0]), du, A, trans_b=True, accumulate=True)

    # ---- the model with its adapters ------------------------------------------------------

    @contextlib.contextmanager
    def _attached(self):
        """The model with these adapters hooked in and its own weights frozen, for the body."""
        m = self.model
        if m._adapters is not None:
            raise RuntimeError("the model already has adapters attached")
        m._adapters, m._frozen = self, True
        try:
            yield
        finally:
            m._adapters, m._frozen = None, False

    def forward(self, idx):
        """Logits (B, T, vocab_size) of the adapted model (see :meth:`GPT.forward`)."""
        with self._attached():
            return self.model.forward(idx)

    def loss(self, idx, targets, mask=None):
        """The adapted model's mean cross-entropy (see :meth:`GPT.loss`)."""
        with self._attached():
            return self.model.loss(idx, targets, mask=mask)

    def loss_and_grads(self, idx, targets, accumulate=False, loss_scale=1.0, mask=None):
        """Loss and the gradients of the adapters only (``self.grads``, views of their slab);
        the base's weights get none. Arguments as :meth:`GPT.loss_and_grads`."""
        if not accumulate:
            self._g.flat.fill(0.0)
        with self._attached():
            loss, _ = self.model.loss_and_grads(idx, targets, accumulate=True,
                                                loss_scale=loss_scale, mask=mask)
        return loss, self.grads

    def merged(self):
        """A plain :class:`GPT` whose weights are W + (alpha / rank) A B (a new model; the base
        is left as it is)."""
        m = GPT(self.model.config, seed=None, dtype=self.model.dtype)
        m.load_state_dict(self.model.state_dict())
        if self.model._kattn is not None:
            for name, w in self.model.buffers().items():
                m.buffers()[name][...] = w
        sd = m.state_dict()
        for name in self._p.views:
            if name.endswith("lora_A"):
                layer = name[:-len(".lora_A")]
                A, B = self._p.views[name], self._p.views[layer + ".lora_B"]
                sd[layer + ".weight"] += (self.scale * (A.astype(np.float64)
                                                        @ B.astype(np.float64))).astype(m.dtype)
        return m

    def generate(self, *args, **kwargs):
        """Sample from the adapted model: :meth:`GPT.generate` of :meth:`merged` (a float copy
        of the model for the duration of the call)."""
        return self.merged().generate(*args, **kwargs)

    def save(self, path):
        """Write the adapters alone (atomically): a small safetensors file naming its base by
        config and by :func:`base_checksum`."""
        from .tensorfile import save_safetensors
        meta = {"format": LORA_FORMAT, "format_version": str(LORA_FORMAT_VERSION),
                "config": json.dumps(self.model.config.to_dict(), sort_keys=True),
                "rank": str(self.rank), "alpha": repr(self.alpha),
                "targets": json.dumps(list(self.targets)), "base_sha256": base_checksum(self.model)}
        save_safetensors(path, {k: np.ascontiguousarray(v, dtype=np.float32)
                                for k, v in self._p.views.items()}, meta)

    @classmethod
    def load(cls, model, path):
        """Adapters saved by :meth:`save`, over ``model``, which must be their base (same config
        and the same weights, by checksum); ``CheckpointError`` otherwise."""
        from .checkpoint import CheckpointError
        from .tensorfile import TensorFileError, load_safetensors
        try:
            tensors, meta = load_safetensors(path, dtype=np.float32)
        except TensorFileError as exc:
            raise CheckpointError(str(exc)) from None
        if meta.get("format") != LORA_FORMAT or meta.get("format_version") != "1":
            raise CheckpointError("%s is not a pyllm LoRA adapter file (format %r, version %r)"
                                  % (path, meta.get("format"), meta.get("format_version")))
        try:
            cfg = json.loads(meta["config"])
            rank, alpha = int(meta["rank"]), float(meta["alpha"])
            targets = tuple(json.loads(meta["targets"]))
            base = meta["base_sha256"]
        except (KeyError, ValueError, TypeError, RecursionError) as exc:
            raise CheckpointError("%s: invalid adapter metadata (%s)" % (path, exc)) from None
        if cfg != model.config.to_dict() or base != base_checksum(model):
            raise CheckpointError("%s holds adapters for another base model (its config or "
                                  "weights differ from this model's)" % path)
        try:
            lora = cls(model, rank=rank, alpha=alpha, targets=targets)
        except (ValueError, TypeError) as exc:
            raise CheckpointError("%s: %s" % (path, exc)) from None
        for name, view in lora._p.views.items():
            arr = tensors.get(name)
            if arr is None or arr.shape != view.shape:
                raise CheckpointError("%s: tensor %r missing or of shape %s, expected %s"
                                      % (path, name, None if arr is None else arr.shape,
                                         view.shape))
            if not np.all(np.isfinite(arr)):
                raise CheckpointError("%s: tensor %r is not finite" % (path, name))
            view[...] = arr
        return lora
