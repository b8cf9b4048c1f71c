"""AdamW over the parameter slab, global gradient-norm clipping, and learning-rate schedules.

AdamW as torch.optim.AdamW (Loshchilov & Hutter 2019): bias-corrected first and second moments and
decoupled weight decay ``p -= lr * wd * p``. Weight decay applies to every parameter of two or more
dimensions (embeddings and weight matrices) and to no bias or LayerNorm parameter; the model keeps
those in two contiguous parts of its slab, so a step is two kernel calls.
"""
import math

import numpy as np

from .backend import ops


def _is_slab_grads(model, grads):
    return grads is model.grads


class AdamW:
    """AdamW for a :class:`pyllm.GPT`. ``lr`` (and the other hyper-parameters) may be assigned
    between steps; ``step(grads)`` applies one update and advances ``t``."""

    def __init__(self, model, lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1):
        self.model = model
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        self._validate()
        if getattr(model, "mapped", False):
            model._unmap()             # a memory-mapped model's weights are copied in to train
        # what trains: a model's (or LoRA's) slab, decayed up to n_decay; or the list of
        # (params, grads, decayed) arrays of ``model.param_groups()`` (a classifier)
        self._groups = model.param_groups() if hasattr(model, "param_groups") else None
        if self._groups is None:
            self.m = np.zeros_like(model.params)
            self.v = np.zeros_like(model.params)
        else:
            self.m = [np.zeros_like(p) for p, _, _ in self._groups]
            self.v = [np.zeros_like(p) for p, _, _ in self._groups]
        self.t = 0

    def _validate(self):
        if len(self.betas) != 2:
            raise ValueError("betas must be a pair (beta1, beta2), got %r" % (self.betas,))
        for name, x in (("lr", self.lr), ("eps", self.eps), ("weight_decay", self.weight_decay)):
            if isinstance(x, bool) or not isinstance(x, (int, float, np.floating)) \
                    or not math.isfinite(x) or x < 0:
                raise ValueError("%s must be a finite number >= 0, got %r" % (name, x))
        for b in self.betas:
            if not 0.0 <= b < 1.0:
                raise ValueError("betas must lie in [0, 1), got %r" % (self.betas,))

    def step(self, grads=None):
        """Apply one AdamW update with ``grads`` (the model's gradient dict, or any dict with the
        names and shapes of ``model.state_dict()``; ``None`` means the model's own gradients)."""
        self._validate()
        model = self.model
        if self._groups is not None and grads is not None and grads is not model.grads:
            # the gradients are read where loss_and_grads wrote them: refuse anything else
            raise ValueError("step() takes the gradients of model.loss_and_grads (its .grads) "
                             "or None")
        if grads is not None and self._groups is None and not _is_slab_grads(model, grads):
            if not isinstance(grads, dict):
                raise TypeError("grads must be a dict of arrays, got %s" % type(grads).__name__)
            views = model.grads
            if set(grads) != set(views):
                raise ValueError("grads must have exactly the parameter names of the model")
            arrays = {name: np.asarray(g) for name, g in grads.items()}
            for name, g in arrays.items():   # every shape checked before anything is copied
                if g.shape != views[name].shape:
                    raise ValueError("grads[%r] has shape %s, expected %s"
                                     % (name, g.shape, views[name].shape))
            for name, g in arrays.items():
                views[name][...] = g
        self.t += 1
        b1, b2 = self.betas
        if self._groups is not None:
            for (p, g, decayed), m, v in zip(self._groups, self.m, self.v):
                ops.adamw_update(p, g, m, v, float(self.lr), b1, b2, float(self.eps),
                                 float(self.weight_decay if decayed else 0.0), self.t)
            return
        p, g, m, v, k = model.params, model.grads.flat, self.m, self.v, model.n_decay
        for sl, wd in ((slice(0, k), self.weight_decay), (slice(k, None), 0.0)):
            ops.adamw_update(p[sl], g[sl], m[sl], v[sl], float(self.lr), b1, b2, float(self.eps),
                             float(wd), self.t)

    def state_dict(self):
        """Moments and step count (arrays are views of the live state)."""
        return {"m": self.m, "v": self.v, "t": self.t}

    def load_state_dict(self, st):
        """Restore :meth:`state_dict` output (shapes checked)."""
        for k in ("m", "v"):
            a = np.asarray(st[k])
            if a.shape != self.m.shape:
                raise ValueError("optimizer %s has shape %s, expected %s" % (k, a.shape,
                                                                             self.m.shape))
            getattr(self, k)[...] = a
        t = int(st["t"])
        if t < 0:
            raise ValueError("optimizer step count must be >= 0, got %d" % t)
        self.t = t


def clip_grad_norm(grads, max_norm):
    """Scale ``grads`` in place so their global L2 norm is at most ``max_norm``; returns the
    norm before clipping (a float; inf or nan when the gradients are not finite, unscaled)."""
    if not (isinstance(max_norm, (int, float)) and max_norm > 0):
        raise ValueError("max_norm must be a number > 0, got %r" % (max_norm,))
    flat = getattr(grads, "flat", None)
    if flat is None and not isinstance(grads, dict):
        raise TypeError("grads must be a GradDict or a dict of numpy arrays, got %s"
                        % type(grads).__name__)
    arrays = [flat] if flat is not None else list(grads.values())
    for a in arrays:
        if not isinstance(a, np.ndarray) or not np.issubdtype(a.dtype, np.floating):
            raise TypeError("every gradient must be a float numpy.ndarray, got %s"
                            % (type(a).__name__ if not isinstance(a, np.ndarray) else a.dtype))
    total = 0.0
    for a in arrays:
        total += ops.norm_squared(a) if a.dtype in (np.float32, np.float64) and \
            a.flags.c_contiguous else float(np.sum(np.square(a, dtype=np.float64)))
    norm = math.sqrt(total)
    if math.isfinite(norm) and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for a in arrays:
            if a.flags.c_contiguous and a.flags.writeable:
                ops.scale_inplace(a, scale)
            else:
                a *= scale
    return norm


def cosine_lr(step, max_lr, min_lr, warmup, total):
    """Learning rate at ``step`` (0-based): linear warm-up over ``warmup`` steps to ``max_lr``
    (as nanoGPT: ``max_lr * (step + 1) / (warmup + 1)``), then cosine decay to ``min_lr`` at
    ``total``, and ``min_lr`` after."""
    if step < warmup:
        return max_lr * (step + 1) / (warmup + 1)
    if step >= total:
        return min_lr
    ratio = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)
