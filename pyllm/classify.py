"""A text classifier on a GPT (Raschka's book, chapter 6): a new head on the last real token.

``clf = pyllm.Classifier(model, n_classes, finetune="lora")`` puts a linear head (n_embd ->
n_classes) on the final-LayerNorm output of each sequence's last real token -- the only position
that has seen the whole text under causal attention. Sequences go in as lists of token ids of any
lengths: they are padded on the right (padding comes after the last real token, so causal
attention keeps it out of the result) and the last real position is taken per row.

What trains besides the head (``finetune``):

- ``"lora"``: low-rank adapters on the four linear layers of every block (:class:`pyllm.LoRA`,
  ``rank``, ``alpha``), the base frozen;
- ``"last_block"``: the last transformer block and the final LayerNorm (the book's choice); the
  backward stops below that block;
- ``"all"``: every weight of the model (the LM head's tie to the token embedding is kept, though
  the LM head itself is not used).

``pyllm.AdamW(clf)`` and ``pyllm.clip_grad_norm(clf.grads, ...)`` train it as they train a model:
``clf.param_groups()`` lists the arrays that train, ``clf.grads`` their gradients by name.
"""
import warnings

import numpy as np

from .lora import LoRA
from .model import GPT

FINETUNE = ("lora", "last_block", "all")
HEAD_FILE, MODEL_FILE, ADAPTER_FILE = "head.safetensors", "model.safetensors", \
    "adapters.safetensors"


class Classifier:
    """A classification head over ``model``'s last real token; see the module docstring.
    ``labels``: the class names a saved classifier was given (None otherwise)."""

    labels = None

    def __init__(self, model, n_classes, finetune="lora", rank=8, alpha=16, seed=0):
        if not isinstance(model, GPT):
            raise TypeError("Classifier needs a pyllm.GPT, got %s" % type(model).__name__)
        if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) \
                or n_classes < 2:
            raise ValueError("n_classes must be an int >= 2, got %r" % (n_classes,))
        if finetune not in FINETUNE:
            raise ValueError("finetune must be one of %s, got %r" % (", ".join(FINETUNE),
                                                                     finetune))
        self.model, self.n_classes, self.finetune = model, int(n_classes), finetune
        C, dt = model.config.n_embd, model.dtype
        rng = np.random.default_rng(seed)
        self.head_weight = (rng.standard_normal((C, self.n_classes)) * 0.02).astype(dt)
        self.head_bias = np.zeros(self.n_classes, dtype=dt)
        self.head_grads = {"head.weight": np.zeros_like(self.head_weight),
                           "head.bias": np.zeros_like(self.head_bias)}
        self.lora = LoRA(model, rank=rank, alpha=alpha, seed=seed) if finetune == "lora" else None
        if finetune != "lora" and getattr(model, "mapped", False):
            model._unmap()
        self.grads = self._grads()

    # ---- what trains ----------------------------------------------------------------------

    def _model_names(self):
        if self.finetune == "lora":
            return []
        names = list(self.model.state_dict())
        if self.finetune == "all":
            return names
        last = "h.%d." % (self.model.config.n_layer - 1)
        return [n for n in names if n.startswith(last) or n.startswith("ln_f.")]

    def param_groups(self):
        """``[(params, grads, decayed)]``: the arrays that train, their gradient arrays, and
        whether weight decay applies (matrices yes, biases and LayerNorm no)."""
        groups = [(self.head_weight, self.head_grads["head.weight"], True),
                  (self.head_bias, self.head_grads["head.bias"], False)]
        if self.lora is not None:
            groups.append((self.lora.params, self.lora.grads.flat, True))
        sd, g = self.model.state_dict(), self.model.grads
        for name in self._model_names():
            groups.append((sd[name], g[name], sd[name].ndim >= 2))
        return groups

    def _grads(self):
        """The gradients by name (views, built once as ``self.grads``): the head's, then the
        adapters' or the model's."""
        out = dict(self.head_grads)
        if self.lora is not None:
            out.update(self.lora.grads)
        for name in self._model_names():
            out[name] = self.model.grads[name]
        return out

    @property
    def n_trainable(self):
        """Numbers that train: the head, plus the adapters or the chosen model weights."""
        return int(sum(p.size for p, _, _ in self.param_groups()))

    # ---- data ------------------------------------------------------------------------------

    def _batch(self, seqs):
        """Right-padded ids (B, T) int32 and the last real position of each row."""
        if isinstance(seqs, np.ndarray) and seqs.ndim == 2:
            seqs = [list(r) for r in seqs]
        if not isinstance(seqs, (list, tuple)) or not seqs:
            raise ValueError("seqs must be a non-empty list of token-id lists")
        bs = self.model.config.block_size
        rows = []
        for i, s in enumerate(seqs):
            s = list(np.asarray(s).reshape(-1))
            if not s:
                raise ValueError("sequence %d is empty" % i)
            if len(s) > bs:
                warnings.warn("sequence %d has %d tokens, more than block_size %d: its last %d "
                              "are used" % (i, len(s), bs, bs), RuntimeWarning, stacklevel=3)
                s = s[-bs:]
            rows.append(s)
        T = max(len(r) for r in rows)
        idx = np.zeros((len(rows), T), dtype=np.int64)
        for b, r in enumerate(rows):
            idx[b, :len(r)] = r
        idx = self.model._check_idx(idx)
        return idx, np.array([len(r) - 1 for r in rows])

    def _features(self, idx, last):
        a = self.model._forward(idx, head=False)
        return a, np.ascontiguousarray(a["ln_f"][np.arange(len(last)), last])     # (B,C)

    def _run(self, fn):
        """Run fn() with the model set for this classifier's finetuning."""
        m = self.model
        if self.lora is not None:
            with self.lora._attached():
                return fn()
        if self.finetune == "last_block":
            m._train_from = m.config.n_layer - 1
        try:
            return fn()
        finally:
            m._train_from = None

    # ---- forward, loss, gradients ---------------------------------------------------------

    def logits(self, seqs):
        """Class logits (B, n_classes) float."""
        idx, last = self._batch(seqs)

        def run():
            _, h = self._features(idx, last)
            return h @ self.head_weight + self.head_bias
        return self._run(run)

    def predict_proba(self, seqs):
        """Class probabilities (B, n_classes)."""
        z = self.logits(seqs).astype(np.float64)
        z = np.exp(z - z.max(-1, keepdims=True))
        return z / z.sum(-1, keepdims=True)

    def predict(self, seqs):
        """Class ids (B,)."""
        return self.logits(seqs).argmax(-1)

    def loss(self, seqs, labels):
        """Mean cross-entropy of the labels (a float)."""
        labels = self._labels(labels, len(seqs))
        logp = np.log(self.predict_proba(seqs))
        return float(-logp[np.arange(len(labels)), labels].mean())

    def _labels(self, labels, n):
        y = np.asarray(labels)
        if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
            raise ValueError("labels must be %d integer class ids, got %r" % (n, labels))
        if y.min() < 0 or y.max() >= self.n_classes:
            raise ValueError("labels must lie in [0, %d), got %d"
                             % (self.n_classes, y.min() if y.min() < 0 else y.max()))
        return y

    def loss_and_grads(self, seqs, labels):
        """Mean cross-entropy and its gradients (``self.grads``, by name) of what trains."""
        idx, last = self._batch(seqs)
        y = self._labels(labels, idx.shape[0])
        m = self.model
        B, T = idx.shape

        def run():
            a, h = self._features(idx, last)
            z = (h @ self.head_weight + self.head_bias).astype(np.float64)
            z -= z.max(-1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(-1, keepdims=True)
            loss = float(-np.log(p[np.arange(B), y]).mean())
            dz = p
            dz[np.arange(B), y] -= 1.0
            dz = (dz / B).astype(m.dtype)                                   # (B,K)
            for _, g, _ in self.param_groups():       # what trains, and nothing else: the
                g.fill(0.0)                           # model's frozen part is never touched
            self.head_grads["head.weight"][...] = h.T @ dz
            self.head_grads["head.bias"][...] = dz.sum(axis=0)
            dC = a["dC"]
            dC.fill(0.0)
            dC[np.arange(B), last] = dz @ self.head_weight.T
            m._backward(idx, a)
            return loss
        return self._run(run), self.grads

    # ---- files -------------------------------------------------------------------------

    def save(self, directory, labels=None):
        """Write the classifier into ``directory`` (atomically, file by file): the model as it now
        is (``model.safetensors``; for LoRA the untouched base), the adapters
        (``adapters.safetensors``, LoRA only) and the head (``head.safetensors``, with ``n_classes``,
        ``finetune`` and the label names, when given, in its metadata)."""
        import json
        import os
        from .tensorfile import save_safetensors
        if labels is not None:
            labels = [str(x) for x in labels]
            if len(labels) != self.n_classes:
                raise ValueError("labels must name the %d classes, got %d" % (self.n_classes,
                                                                             len(labels)))
        os.makedirs(directory, exist_ok=True)
        self.model.save(os.path.join(directory, MODEL_FILE))
        if self.lora is not None:
            self.lora.save(os.path.join(directory, ADAPTER_FILE))
        meta = {"format": "pyllm-classifier", "format_version": "1",
                "n_classes": str(self.n_classes), "finetune": self.finetune,
                "labels": json.dumps(labels)}
        save_safetensors(os.path.join(directory, HEAD_FILE),
                         {"head.weight": np.ascontiguousarray(self.head_weight, np.float32),
                          "head.bias": np.ascontiguousarray(self.head_bias, np.float32)}, meta)

    @classmethod
    def load(cls, directory):
        """A classifier saved with :meth:`save`; returns it (its ``labels`` attribute holds the
        label names, or None). ``CheckpointError`` for a directory that is not one."""
        import json
        import os
        from .checkpoint import CheckpointError, load
        from .tensorfile import TensorFileError, load_safetensors
        try:
            head, meta = load_safetensors(os.path.join(directory, HEAD_FILE), dtype=np.float32)
        except (TensorFileError, FileNotFoundError) as exc:
            raise CheckpointError("%s is not a saved classifier: %s" % (directory, exc)) from None
        try:
            if meta["format"] != "pyllm-classifier" or meta["format_version"] != "1":
                raise ValueError("format %r version %r" % (meta["format"], meta["format_version"]))
            n, finetune = int(meta["n_classes"]), meta["finetune"]
            labels = json.loads(meta["labels"])
        except (KeyError, ValueError, TypeError, RecursionError) as exc:
            raise CheckpointError("%s: invalid classifier metadata (%s)" % (directory, exc)) from None
        model = load(os.path.join(directory, MODEL_FILE))
        try:
            clf = cls(model, n, finetune=finetune)
        except (ValueError, TypeError) as exc:
            raise CheckpointError("%s: %s" % (directory, exc)) from None
        for name, arr in (("head.weight", clf.head_weight), ("head.bias", clf.head_bias)):
            got = head.get(name)
            if got is None or got.shape != arr.shape or not np.all(np.isfinite(got)):
                raise CheckpointError("%s: %s is missing, of the wrong shape or not finite"
                                      % (directory, name))
            arr[...] = got
        if clf.lora is not None:
            clf.lora = LoRA.load(model, os.path.join(directory, ADAPTER_FILE))
        if labels is not None and (not isinstance(labels, list) or len(labels) != n):
            raise CheckpointError("%s: the label names do not match n_classes" % directory)
        clf.labels = labels
        return clf


def read_labelled_texts(path):
    """``(texts, labels)`` from a CSV file with ``text`` and ``label`` columns (a header row) or
    a JSONL file of ``{"text": ..., "label": ...}`` objects (by the extension ``.jsonl`` /
    ``.json``; anything else is read as CSV). Labels stay as written (strings or ints).
    ``ValueError`` naming the file and the line for anything malformed."""
    import csv
    import json
    import os
    texts, labels = [], []
    if os.path.splitext(str(path))[1].lower() in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except (ValueError, RecursionError) as exc:
                    raise ValueError("%s line %d: not JSON (%s)" % (path, n, exc)) from None
                if not isinstance(obj, dict) or "text" not in obj or "label" not in obj:
                    raise ValueError("%s line %d: expected an object with 'text' and 'label'"
                                     % (path, n))
                if not isinstance(obj["text"], str) or not isinstance(obj["label"], (str, int)) \
                        or isinstance(obj["label"], bool):
                    raise ValueError("%s line %d: 'text' must be a string and 'label' a string "
                                     "or an integer" % (path, n))
                texts.append(obj["text"])
                labels.append(obj["label"])
    else:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise ValueError("%s is empty" % path)
            cols = [h.strip().lower() for h in header]
            for need in ("text", "label"):
                if need not in cols:
                    raise ValueError("%s line 1: the header has no %r column (it has %s)"
                                     % (path, need, ", ".join(map(repr, header))))
            ti, li = cols.index("text"), cols.index("label")
            for row in reader:
                n = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    raise ValueError("%s line %d: %d fields, the header has %d"
                                     % (path, n, len(row), len(header)))
                texts.append(row[ti])
                labels.append(row[li])
    if not texts:
        raise ValueError("%s holds no examples" % path)
    return texts, labels
