"""Model files, Hugging Face GPT-2 checkpoints, and training checkpoints. No pickle anywhere.

Model file (``GPT.save``): one safetensors file holding every parameter under its GPT-2 name as
F32, with ``__metadata__`` ``{"format": "pyllm-model", "format_version": "1", "config": <JSON of
GPTConfig>}``.

Training checkpoint: a directory holding

- ``checkpoint.safetensors``: the parameters (as a model file) plus the AdamW moments as
  ``optim.m`` and ``optim.v`` (flat F32, in the model's slab order), and in ``__metadata__`` also
  ``"state"``: JSON with ``step``, ``optim_t``, ``rng`` (the batch RNG state) and ``train`` (the
  training settings). Everything that changes during training is in this one file, written
  atomically, so an interrupted save leaves the previous checkpoint intact;
- ``tokenizer.txt`` (pyllm tokenizer format), ``config.json`` (a readable copy of the settings),
  ``log.jsonl`` and ``loss.svg``, written by the trainer.

``load(path)`` accepts a model file or a checkpoint directory.
"""
import json
import os

import numpy as np

from .model import GPT, MODEL_FORMAT, MODEL_FORMAT_VERSION, GPTConfig, model_metadata, \
    param_shapes
from .tensorfile import TensorFileError, load_safetensors, read_safetensors_header, \
    save_safetensors

CHECKPOINT_FILE = "checkpoint.safetensors"
MODEL_FILE = "model.safetensors"      # the model of a finetuning directory
TOKENIZER_FILE = "tokenizer.txt"


class CheckpointError(ValueError):
    """A model or checkpoint file is missing, corrupt, or of the wrong kind."""


def _config_from_metadata(meta, path, fmt=MODEL_FORMAT, version=MODEL_FORMAT_VERSION):
    if meta.get("format") != fmt:
        raise CheckpointError("%s is not a pyllm model file (format %r)"
                              % (path, meta.get("format")))
    if meta.get("format_version") != str(version):
        raise CheckpointError("%s has %s format version %r; this pyllm reads version %d"
                              % (path, fmt, meta.get("format_version"), version))
    try:
        return GPTConfig.from_dict(json.loads(meta["config"]))
    except RecursionError:
        raise CheckpointError("%s has an invalid model config: JSON nested too deeply"
                              % path) from None
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError("%s has an invalid model config: %s" % (path, exc)) from None


def _model_from_tensors(cfg, tensors, path, prefix="", mmap=False):
    # a config may claim any number of layers: check it against the file before listing them
    needed = 4 + 12 * cfg.n_layer
    if needed > len(tensors):
        raise CheckpointError("%s holds %d tensors, fewer than the %d that a %d-layer model needs"
                              % (path, len(tensors), needed, cfg.n_layer))
    expected = dict(param_shapes(cfg))
    sd = {}
    for name, shape in expected.items():
        arr = tensors.get(prefix + name)
        if arr is None:
            raise CheckpointError("%s lacks tensor %r" % (path, prefix + name))
        if tuple(arr.shape) != shape:
            raise CheckpointError("%s: tensor %r has shape %s, expected %s"
                                  % (path, name, tuple(arr.shape), shape))
        sd[name] = arr
    model = GPT(cfg, seed=None)  # the weights come from the file: no random init
    if mmap:
        model._map(sd)           # views of the file's pages: not read (nor checked) until used
    else:
        model.load_state_dict(sd)
        if not np.all(np.isfinite(model.params)):
            raise CheckpointError("%s holds non-finite weights (NaN or Inf)" % path)
    for name, buf in model.buffers().items():     # a favor model's random features
        arr = tensors.get(prefix + name)
        if arr is None:
            raise CheckpointError("%s lacks tensor %r (the random features of a model with "
                                  "attention=%r)" % (path, prefix + name, cfg.attention))
        if tuple(arr.shape) != buf.shape:
            raise CheckpointError("%s: tensor %r has shape %s, expected %s"
                                  % (path, name, tuple(arr.shape), buf.shape))
        if not np.all(np.isfinite(arr)):
            raise CheckpointError("%s: tensor %r is not finite (NaN or Inf)" % (path, name))
        buf[...] = arr
    return model


def _resolve(path):
    path = os.fspath(path)
    if os.path.isdir(path):
        f = os.path.join(path, CHECKPOINT_FILE)
        if not os.path.exists(f) and os.path.exists(os.path.join(path, MODEL_FILE)):
            f = os.path.join(path, MODEL_FILE)      # a finetuned model's directory
        if not os.path.exists(f):
            raise CheckpointError("%s is a directory without %s" % (path, CHECKPOINT_FILE))
        return f
    if not os.path.exists(path):
        raise FileNotFoundError("no such model file or checkpoint directory: %s" % path)
    return path


def _load_file(path, mmap=False):
    try:
        return load_safetensors(path, dtype=np.float32, mmap=mmap)
    except TensorFileError as exc:
        raise CheckpointError(str(exc)) from None


def load(path, mmap=False):
    """Load a model saved with ``GPT.save`` or a training checkpoint directory (a
    :class:`~pyllm.GPT`), or an int8 model saved with ``QuantizedGPT.save`` (a
    :class:`~pyllm.quant.QuantizedGPT`).

    ``mmap=True`` maps the file instead of reading it: the weights are read-only views of its
    pages, read from disk as they are first used, so opening is fast and takes little memory.
    Such weights are not checked for NaN or Inf at load (that would read them all); sampling
    stops with ``FloatingPointError`` if logits come out non-finite. Training a mapped model
    (``loss_and_grads``, ``AdamW``) first copies its weights into memory. The file must not be
    truncated or rewritten while mapped (see ``load_safetensors``)."""
    path = _resolve(path)
    try:
        meta = read_safetensors_header(path)[0].get("__metadata__") or {}
    except TensorFileError as exc:
        raise CheckpointError(str(exc)) from None
    from .quant import Q8_FORMAT, Q8_FORMAT_VERSION, from_tensors
    if isinstance(meta, dict) and meta.get("format") == Q8_FORMAT:
        try:
            tensors, meta = load_safetensors(path, mmap=mmap)
        except TensorFileError as exc:
            raise CheckpointError(str(exc)) from None
        if meta.get("block") != "32":
            raise CheckpointError("%s: Q8_0 block size %r; this pyllm reads 32"
                                  % (path, meta.get("block")))
        cfg = _config_from_metadata(meta, path, Q8_FORMAT, Q8_FORMAT_VERSION)
        if cfg.attention != "softmax":
            raise CheckpointError("%s: an int8 model with attention=%r (only softmax ones are "
                                  "written)" % (path, cfg.attention))
        return from_tensors(cfg, tensors, path, check_values=not mmap)
    tensors, meta = _load_file(path, mmap)
    return _model_from_tensors(_config_from_metadata(meta, path), tensors, path, mmap=mmap)


# ---- Hugging Face GPT-2 ------------------------------------------------------------------------

_GPT2_HEADS = {768: 12, 1024: 16, 1280: 20, 1600: 25}


def load_gpt2(path, n_head=None, mmap=False, with_tokenizer=False):
    """Load a Hugging Face GPT-2 checkpoint (``gpt2`` ... ``gpt2-xl``) with numpy alone.

    ``path`` is a directory with ``config.json`` and ``model.safetensors``, or the ``.safetensors``
    file alone (then the shape comes from the tensors and ``n_head`` from GPT-2's published sizes
    or the argument). The ``transformer.`` prefix is accepted, the ``attn.bias`` /
    ``attn.masked_bias`` mask buffers are ignored, and the LM head is taken as tied to ``wte``.
    ``mmap=True`` maps the file as :func:`load` does (float32 files; BF16 or F16 ones are read
    and widened). ``with_tokenizer=True`` returns ``(model, tokenizer)``, the tokenizer read by
    :func:`load_gpt2_tokenizer` from the same directory.
    """
    if with_tokenizer:
        model = load_gpt2(path, n_head=n_head, mmap=mmap)
        return model, load_gpt2_tokenizer(path)
    path = os.fspath(path)
    if n_head is not None:
        if isinstance(n_head, bool) or not isinstance(n_head, (int, np.integer)):
            raise TypeError("n_head must be an int, got %r" % (n_head,))
        if n_head < 1:
            raise ValueError("n_head must be >= 1, got %d" % n_head)
    cfg_json = None
    if os.path.isdir(path):
        st = os.path.join(path, "model.safetensors")
        if not os.path.exists(st):
            raise FileNotFoundError("%s has no model.safetensors (pytorch_model.bin is pickle and "
                                    "is not read, by design)" % path)
        cj = os.path.join(path, "config.json")
        if os.path.exists(cj):
            try:
                with open(cj, encoding="utf-8") as f:
                    cfg_json = json.load(f)
            except (OSError, ValueError, RecursionError) as exc:
                raise CheckpointError("%s is not valid JSON: %s" % (cj, exc)) from None
            if not isinstance(cfg_json, dict):
                raise CheckpointError("%s must hold a JSON object" % cj)
        path = st
    elif not os.path.exists(path):
        raise FileNotFoundError("no such file or directory: %s" % path)
    tensors, _ = _load_file(path, mmap)
    prefix = "transformer." if "transformer.wte.weight" in tensors else ""
    if prefix + "wte.weight" not in tensors or prefix + "wpe.weight" not in tensors:
        raise CheckpointError("%s does not look like a GPT-2 checkpoint (no wte/wpe)" % path)
    V, C = tensors[prefix + "wte.weight"].shape
    block = tensors[prefix + "wpe.weight"].shape[0]
    n_layer = 0
    while prefix + "h.%d.ln_1.weight" % n_layer in tensors:
        n_layer += 1
    if cfg_json is not None:
        if cfg_json.get("layer_norm_epsilon", 1e-5) != 1e-5:
            raise CheckpointError("layer_norm_epsilon %r is not GPT-2's 1e-5"
                                  % cfg_json.get("layer_norm_epsilon"))
        if n_head is None and "n_head" in cfg_json:
            n_head = cfg_json["n_head"]
            if isinstance(n_head, bool) or not isinstance(n_head, int):
                raise CheckpointError("config.json: n_head must be an integer, got %r" % (n_head,))
        for key, val in (("n_embd", C), ("n_layer", n_layer), ("vocab_size", V),
                         ("n_positions", block)):
            if key in cfg_json and cfg_json[key] != val:
                raise CheckpointError("config.json says %s=%r but the tensors give %d"
                                      % (key, cfg_json[key], val))
    if n_head is None:
        n_head = _GPT2_HEADS.get(C)
    if n_head is None:
        raise CheckpointError("cannot tell n_head for n_embd=%d without config.json; pass "
                              "n_head=" % C)
    try:
        cfg = GPTConfig(vocab_size=V, block_size=block, n_layer=n_layer, n_head=n_head,
                        n_embd=C)
    except (TypeError, ValueError) as exc:
        raise CheckpointError("%s: %s" % (path, exc)) from None
    return _model_from_tensors(cfg, tensors, path, prefix, mmap=mmap)


def load_gpt2_tokenizer(path):
    """The tokenizer of a Hugging Face GPT-2 directory (or of the directory of a file in it):
    GPT-2's ``vocab.json`` + ``merges.txt`` (or ``encoder.json`` + ``vocab.bpe``) as a
    :class:`~pyllm.BPETokenizer` when present, else pyllm's ``tokenizer.txt`` (what ``pyllm
    export-hf`` writes for a char model, docs/FORMATS.md). ``FileNotFoundError`` if neither."""
    from .tokenizer import BPETokenizer, load_tokenizer
    path = os.fspath(path)
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    if not os.path.isdir(directory or "."):
        raise FileNotFoundError("no such directory: %s" % directory)
    directory = directory or "."
    for gpt2_files in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
        if any(os.path.exists(os.path.join(directory, f)) for f in gpt2_files):
            return BPETokenizer.from_gpt2(directory)
    tf = os.path.join(directory, TOKENIZER_FILE)
    if os.path.exists(tf):
        return load_tokenizer(tf)
    raise FileNotFoundError("%s holds no tokenizer: expected GPT-2's vocab.json + merges.txt or "
                            "pyllm's %s" % (directory, TOKENIZER_FILE))


# ---- training checkpoints ----------------------------------------------------------------------

def save_checkpoint(directory, model, optimizer, state):
    """Write ``directory/checkpoint.safetensors`` atomically: weights, AdamW moments and
    ``state`` (a JSON-serialisable dict with at least ``step`` and ``rng``)."""
    os.makedirs(directory, exist_ok=True)
    tensors = model.file_tensors()
    tensors["optim.m"], tensors["optim.v"] = optimizer.m, optimizer.v
    meta = model_metadata(model.config)
    meta["state"] = json.dumps(dict(state, optim_t=optimizer.t), sort_keys=True)
    save_safetensors(os.path.join(directory, CHECKPOINT_FILE), tensors, meta)


def load_checkpoint(directory):
    """Read a training checkpoint: returns ``(model, optim_state, state)`` where optim_state is
    ``{"m", "v", "t"}`` for ``AdamW.load_state_dict``."""
    path = _resolve(directory)
    tensors, meta = _load_file(path)
    model = _model_from_tensors(_config_from_metadata(meta, path), tensors, path)
    try:
        state = json.loads(meta["state"])
        t = state["optim_t"]
        m, v = tensors["optim.m"], tensors["optim.v"]
    except RecursionError:
        raise CheckpointError("%s: the training state's JSON is nested too deeply" % path) from None
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError("%s is not a training checkpoint (%s missing or invalid); "
                              "a model file can be loaded with pyllm.load" % (path, exc)) from None
    if m.shape != model.params.shape or v.shape != model.params.shape:
        raise CheckpointError("%s: optimizer state has the wrong size" % path)
    if not isinstance(state, dict) or isinstance(state.get("step"), bool) \
            or not isinstance(state.get("step"), int) or state["step"] < 0:
        raise CheckpointError("%s: state has no integer step >= 0" % path)
    if isinstance(t, bool) or not isinstance(t, int):  # e.g. 2.5, or 1e999 (inf)
        raise CheckpointError("%s: the optimizer step count is not an integer (%r)" % (path, t))
    if t < 0:
        raise CheckpointError("%s: the optimizer step count is negative (%d)" % (path, t))
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(v)) and np.all(v >= 0)):
        raise CheckpointError("%s: the optimizer moments are not finite (or the second moment "
                              "is negative)" % path)
    return model, {"m": m, "v": v, "t": t}, state
