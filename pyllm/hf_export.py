"""Export a model to the Hugging Face GPT-2 layout: ``pyllm export-hf`` and ``GPT.save_hf``.

:func:`export_hf` writes a directory that ``transformers.GPT2LMHeadModel.from_pretrained`` loads
and that :func:`pyllm.load_gpt2` (and :func:`pyllm.checkpoint.load_gpt2_tokenizer`) read back
exactly. numpy and the standard library only: neither ``transformers`` nor ``torch`` is needed to
write it. The files (docs/FORMATS.md, "Hugging Face GPT-2 directory"):

``model.safetensors``
    Every parameter under its public GPT-2 checkpoint name, no ``transformer.`` prefix
    (``wte.weight``, ``wpe.weight``, ``h.<i>.attn.c_attn.weight`` ...), ``F32``, Conv1D layout
    (in, out) -- what pyllm holds already, so the bits are pyllm's (a float64 model is rounded to
    float32, as ``GPT.save`` does). No ``lm_head.weight`` (tied to
    ``wte``) and no ``attn.bias`` mask buffers (transformers builds them). ``__metadata__`` is
    ``{"format": "pt"}``, which transformers requires of a safetensors checkpoint.
``config.json``
    A GPT-2 config (:func:`hf_config`): ``gelu_new`` (the tanh GELU), no dropout, LayerNorm eps
    1e-5 (pyllm's kernels), LM head tied, ``bos_token_id`` / ``eos_token_id`` the id of
    ``<|endoftext|>`` for a BPE tokenizer, null otherwise.
tokenizer, BPE (:class:`~pyllm.BPETokenizer`)
    ``vocab.json`` + ``merges.txt`` in GPT-2's byte-level format (each token's bytes spelled with
    :func:`~pyllm.tokenizer.bytes_to_unicode`, merges in rank order after a ``#version: 0.2``
    line) and ``tokenizer_config.json``. pyllm's BPE is GPT-2's algorithm over ids; GPT-2's files
    name tokens by their byte strings, so the two agree id for id whenever every id has its own
    byte string and the special token is ``<|endoftext|>`` -- always so for a tokenizer read from
    GPT-2 files, and for every tokenizer pyllm's trainer gave in thousands of randomized trials,
    though nothing in BPE training rules out two merges spelling the same bytes. Otherwise the
    export is refused (``ValueError`` naming the ids): no GPT-2 file can say it.
tokenizer, char (:class:`~pyllm.CharTokenizer`)
    GPT-2's byte-level BPE cannot hold a character vocabulary (it needs all 256 byte tokens, and a
    char model's ids name characters, not bytes), so no ``vocab.json`` / ``merges.txt`` is written.
    Instead ``tokenizer.txt`` (pyllm's own format, what pyllm reads back) and, for other tools,
    ``tokenizer.json`` (the ``tokenizers`` library's format: a ``WordLevel`` model over the
    characters, a pre-tokenizer that isolates every code point, a ``Fuse`` decoder) with a
    ``tokenizer_config.json`` naming ``PreTrainedTokenizerFast``, so
    ``AutoTokenizer.from_pretrained`` gives the same ids. GPT-2 tools that insist on vocab.json +
    merges.txt cannot read it; an unknown character is an error in both, as in pyllm.

The directory appears whole or not at all: everything is written (each file fsync'ed) into a
new hidden directory ``.<name>.export-<random>.tmp`` beside the target, which is then renamed to
the target. An existing empty directory is replaced by that rename. A non-empty one is refused
unless ``force`` is given, and even then only when it holds nothing but files an export (or
``save_pretrained``) writes: it is moved aside, the new one renamed in, the old removed (if the
process dies between those two renames, the old export survives as ``.<name>.export-*.old``). A
failure removes the temporary directory; a killed process can leave it behind.
"""
import json
import os
import secrets
import shutil
import sys

import numpy as np

from .checkpoint import TOKENIZER_FILE as PYLLM_TOKENIZER_FILE
from .tensorfile import _fsync_dir
from .tokenizer import EOT_TOKEN, BPETokenizer, CharTokenizer, bytes_to_unicode

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
VOCAB_FILE, MERGES_FILE = "vocab.json", "merges.txt"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
HF_TOKENIZER_FILE = "tokenizer.json"
#: What an export, or transformers' ``save_pretrained`` of a GPT-2, puts in its directory: the
#: only names a forced export may replace.
EXPORT_FILES = frozenset([MODEL_FILE, CONFIG_FILE, VOCAB_FILE, MERGES_FILE,
                          TOKENIZER_CONFIG_FILE, HF_TOKENIZER_FILE, PYLLM_TOKENIZER_FILE,
                          "special_tokens_map.json", "generation_config.json", "added_tokens.json"])

# how the checks name the directory, the force switch and the tokenizer (API vs. CLI)
_API_NAMES = {"out": "directory", "force": "force=True", "tokenizer": "the tokenizer argument"}
_CLI_NAMES = {"out": "--out", "force": "--force", "tokenizer": "--tokenizer-file"}


# ---- checks -----------------------------------------------------------------------------------

def check_exportable(model):
    """Raise ``TypeError`` / ``ValueError`` (saying what to do instead) unless ``model`` is a
    plain softmax-attention :class:`~pyllm.GPT`, the only kind GPT2LMHeadModel can run."""
    from .model import GPT
    name = type(model).__name__
    if not isinstance(model, GPT):
        if name == "LoRA":
            raise TypeError("a LoRA holds adapters over a base model, not a model: export "
                            "lora.merged() (a GPT with the adapters folded in), or the directory "
                            "`pyllm finetune` wrote (its model.safetensors is merged already)")
        if name == "QuantizedGPT":
            raise TypeError("an int8 (Q8_0) model cannot be exported: Hugging Face GPT-2 "
                            "checkpoints hold float weights; export the float32 model it was "
                            "quantized from")
        if name == "Classifier":
            raise TypeError("a Classifier is a model plus a classification head (and maybe "
                            "adapters), which GPT2LMHeadModel cannot hold: only language models "
                            "(pyllm.GPT) are exported")
        raise TypeError("export_hf needs a pyllm.GPT, got %s" % name)
    if model.config.attention != "softmax":
        raise ValueError("this model uses attention=%r, but Hugging Face's GPT2LMHeadModel has "
                         "softmax attention only, so its logits would change: only softmax "
                         "models can be exported (train with --attention softmax)"
                         % model.config.attention)
    if model._adapters is not None:
        raise ValueError("the model has LoRA adapters attached: export lora.merged() instead")
    if model._attn_hook is not None:
        raise ValueError("an ablation (pyllm.explore.ablate) is in effect on this model; its "
                         "edits are not part of the weights: export outside the `with` block")


def _check_tokenizer(model, tokenizer, names):
    if tokenizer is None:
        return
    if not isinstance(tokenizer, (CharTokenizer, BPETokenizer)):
        raise TypeError("%s must be a pyllm CharTokenizer or BPETokenizer (or None), got %s"
                        % (names["tokenizer"], type(tokenizer).__name__))
    if tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError("the tokenizer has %d ids but the model's vocab_size is %d: they must "
                         "match; pass the tokenizer the model was trained with (%s)"
                         % (tokenizer.vocab_size, model.config.vocab_size, names["tokenizer"]))


def _check_out(directory, force, names):
    """Refuse a target that is a file, or a non-empty directory without force (or with files no
    export writes); returns whether a non-empty directory is to be replaced."""
    if os.path.islink(directory):
        raise FileExistsError("%s %s is a symbolic link: give the path of the directory itself"
                              % (names["out"], directory))
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise FileExistsError("%s %s is an existing file, not a directory: give the path of a "
                              "new directory (or remove the file)" % (names["out"], directory))
    if not os.path.isdir(directory):
        return False
    entries = sorted(os.listdir(directory))
    if not entries:
        return False
    if not force:
        raise FileExistsError("%s %s is a directory that is not empty: pass %s to replace an "
                              "earlier export there, or give a new path"
                              % (names["out"], directory, names["force"]))
    for name in entries:
        path = os.path.join(directory, name)
        if name not in EXPORT_FILES or os.path.islink(path) or not os.path.isfile(path):
            raise FileExistsError("%s %s holds %r, which an export does not write: refusing to "
                                  "replace that directory even with %s; remove it or give a new "
                                  "path" % (names["out"], directory, name, names["force"]))
    return True


# ---- the files --------------------------------------------------------------------------------

def hf_config(model, tokenizer=None):
    """The ``config.json`` dict: a transformers ``GPT2Config`` of the model's shape, with
    pyllm's arithmetic (tanh GELU, LayerNorm eps 1e-5, no dropout, tied head)."""
    from .backend.numpy import LN_EPS
    c = model.config
    eot = tokenizer.eot_token if isinstance(tokenizer, BPETokenizer) else None
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": c.vocab_size,
        "n_positions": c.block_size,
        "n_ctx": c.block_size,
        "n_embd": c.n_embd,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_inner": None,                      # 4 * n_embd
        "activation_function": "gelu_new",   # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "summary_first_dropout": 0.0,
        "layer_norm_epsilon": float(LN_EPS),
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "torch_dtype": "float32",
    }


def gpt2_tokenizer_files(tokenizer):
    """``(vocab.json text, merges.txt text)`` of a BPE tokenizer in GPT-2's byte-level format.

    Raises ``ValueError`` when the files cannot say the tokenizer id for id: two ids with the same
    bytes, a special token other than ``<|endoftext|>``, or an ordinary token spelled like it."""
    special = tokenizer._special
    if special != EOT_TOKEN:
        raise ValueError("the tokenizer's special token is %r; GPT-2's files (and "
                         "BPETokenizer.from_gpt2) need %r" % (special, EOT_TOKEN))
    b2u = bytes_to_unicode()
    eot = tokenizer.eot_token
    names, seen = [], {EOT_TOKEN: eot}
    for i in range(tokenizer.vocab_size):
        if i == eot:
            names.append(EOT_TOKEN)
            continue
        s = "".join(b2u[b] for b in tokenizer.token_bytes(i))
        if s in seen:
            raise ValueError(
                "this BPE tokenizer cannot be written as GPT-2's vocab.json + merges.txt: ids %d "
                "and %d both denote %r (GPT-2's vocabulary maps each token string to one id); "
                "its pyllm tokenizer.txt (tokenizer.save) still holds it exactly"
                % (seen[s], i, s))
        seen[s] = i
        names.append(s)
    vocab = json.dumps({s: i for i, s in enumerate(names)}, ensure_ascii=False, indent=None)
    lines = ["#version: 0.2"]
    for a, b, new in tokenizer.merges:
        assert names[a] + names[b] == names[new]
        lines.append("%s %s" % (names[a], names[b]))
    return vocab, "\n".join(lines) + "\n"


def char_tokenizer_json(tokenizer):
    """``tokenizer.json`` (the ``tokenizers`` library's format) of a char tokenizer: each code
    point a token, the id pyllm gives it; unknown characters are an error, as in pyllm."""
    chars = tokenizer.chars
    for ch in chars:
        if 0xD800 <= ord(ch) <= 0xDFFF:
            raise ValueError("the char tokenizer holds U+%04X, a lone surrogate, which "
                             "tokenizer.json (UTF-8) cannot hold" % ord(ch))
    doc = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "[\\s\\S]"},
                          "behavior": "Isolated", "invert": False},
        "post_processor": None,
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": {ch: i for i, ch in enumerate(chars)},
                  "unk_token": "<unk>"},    # not in the vocabulary: unknown characters fail
    }
    return json.dumps(doc, ensure_ascii=False, indent=1)


def _tokenizer_config(model, tokenizer):
    cfg = {"model_max_length": model.config.block_size, "clean_up_tokenization_spaces": False}
    if isinstance(tokenizer, BPETokenizer):
        cfg.update(tokenizer_class="GPT2Tokenizer", bos_token=EOT_TOKEN, eos_token=EOT_TOKEN,
                   unk_token=EOT_TOKEN, add_prefix_space=False, add_bos_token=False,
                   errors="replace")
    else:
        cfg.update(tokenizer_class="PreTrainedTokenizerFast")
    return json.dumps(cfg, indent=2, sort_keys=True) + "\n"


def _file_writers(model, tokenizer):
    """[(name, write(path))] of every file of the export; all checks that can fail on the
    model or tokenizer run here, before anything is written."""
    from .tensorfile import atomic_write_text, save_safetensors
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32)
               for k, v in model.state_dict().items()}
    if not all(np.all(np.isfinite(t)) for t in tensors.values()):
        raise ValueError("the model holds non-finite weights (NaN or Inf); not exported")
    config = json.dumps(hf_config(model, tokenizer), indent=2, sort_keys=True) + "\n"

    def text(content):
        return lambda path: atomic_write_text(path, content)

    files = [(MODEL_FILE, lambda path: save_safetensors(path, tensors, {"format": "pt"})),
             (CONFIG_FILE, text(config))]
    if isinstance(tokenizer, BPETokenizer):
        vocab, merges = gpt2_tokenizer_files(tokenizer)
        files += [(VOCAB_FILE, text(vocab)), (MERGES_FILE, text(merges)),
                  (TOKENIZER_CONFIG_FILE, text(_tokenizer_config(model, tokenizer)))]
    elif isinstance(tokenizer, CharTokenizer):
        hf_json = char_tokenizer_json(tokenizer)
        files += [(PYLLM_TOKENIZER_FILE, tokenizer.save),
                  (HF_TOKENIZER_FILE, text(hf_json)),
                  (TOKENIZER_CONFIG_FILE, text(_tokenizer_config(model, tokenizer)))]
    return files


# ---- writing the directory --------------------------------------------------------------------

def _export(model, directory, tokenizer, force, names):
    check_exportable(model)
    _check_tokenizer(model, tokenizer, names)
    directory = os.fspath(directory)
    if not directory:
        raise ValueError("%s is empty: give the path of the directory to write" % names["out"])
    target = os.path.normpath(os.path.abspath(directory))
    replace = _check_out(directory, force, names)
    files = _file_writers(model, tokenizer)

    parent, base = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    while True:
        tmp = os.path.join(parent, ".%s.export-%s.tmp" % (base, secrets.token_hex(6)))
        try:
            os.mkdir(tmp)       # mode 0o777 less the umask, as any new directory
            break
        except FileExistsError:
            continue
    try:
        for name, write in files:
            write(os.path.join(tmp, name))
        _fsync_dir(tmp)
        if replace:
            old = tmp[:-len(".tmp")] + ".old"
            os.rename(target, old)
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            if os.name != "posix" and os.path.isdir(target):
                os.rmdir(target)       # elsewhere a rename does not replace an empty directory
            os.replace(tmp, target)    # also replaces an empty directory there (POSIX)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(parent)
    return directory


def export_hf(model, directory, tokenizer=None, force=False):
    """Write ``model`` (a softmax :class:`~pyllm.GPT`) and its ``tokenizer`` (a
    :class:`~pyllm.CharTokenizer`, a :class:`~pyllm.BPETokenizer`, or None for weights and config
    alone) as a Hugging Face GPT-2 directory; returns ``directory``.

    The files and the char/BPE tokenizer forms are in this module's docstring. Written whole or
    not at all: into a temporary directory beside ``directory``, then renamed. ``directory`` may
    not exist yet or be empty; an existing non-empty one is replaced only with ``force=True`` and
    only if it holds nothing but export files (``EXPORT_FILES``).

    Raises ``TypeError`` for a LoRA, an int8 model, a Classifier or a tokenizer of another kind;
    ``ValueError`` for a favor or linear attention model, a tokenizer whose vocabulary size is not
    the model's, or a BPE tokenizer GPT-2's files cannot express; ``FileExistsError`` when
    ``directory`` is a file or a non-empty directory (see ``force``)."""
    return _export(model, directory, tokenizer, force, _API_NAMES)


# ---- the command line -------------------------------------------------------------------------

def add_parser(sub, add_model_source, add_backend_args):
    """Register ``pyllm export-hf`` (called from ``pyllm.cli.build_parser``)."""
    p = sub.add_parser("export-hf", help="write a model as a Hugging Face GPT-2 directory "
                       "(model.safetensors, config.json, tokenizer files) for transformers")
    add_model_source(p)
    p.add_argument("--out", required=True, help="the directory to write (new or empty)")
    p.add_argument("--force", action="store_true",
                   help="replace --out if it holds an earlier export (and nothing else)")
    add_backend_args(p)
    return p


def _cli_source(args):
    """The model and tokenizer named by --ckpt / --gpt2 / --tokenizer-file."""
    import pyllm
    from .checkpoint import TOKENIZER_FILE, load_gpt2_tokenizer
    from .tensorfile import TensorFileError, read_safetensors_header
    if args.gpt2:
        model = pyllm.load_gpt2(args.gpt2)
        if args.tokenizer_file:
            return model, pyllm.load_tokenizer(args.tokenizer_file)
        return model, load_gpt2_tokenizer(args.gpt2)
    ckpt = args.ckpt
    if os.path.isdir(ckpt) and os.path.exists(os.path.join(ckpt, "head.safetensors")):
        raise ValueError("--ckpt %s is a classifier directory (head.safetensors): export-hf "
                         "writes language models only" % ckpt)
    if os.path.isfile(ckpt):
        try:
            meta = read_safetensors_header(ckpt)[0].get("__metadata__") or {}
        except TensorFileError:
            meta = {}
        if isinstance(meta, dict) and meta.get("format") == "pyllm-lora":
            raise ValueError("--ckpt %s is a LoRA adapter file (adapters only, no model): give "
                             "the directory `pyllm finetune` wrote, whose model.safetensors has "
                             "the adapters merged in" % ckpt)
    model = pyllm.load(ckpt)
    tf = args.tokenizer_file
    if tf is None:
        base = ckpt if os.path.isdir(ckpt) else os.path.dirname(ckpt)
        tf = os.path.join(base, TOKENIZER_FILE)
        if not os.path.exists(tf):
            raise FileNotFoundError("no tokenizer found at %s: pass --tokenizer-file" % tf)
    return model, pyllm.load_tokenizer(tf)


def cmd_export_hf(args):
    """``pyllm export-hf``: returns the exit code."""
    model, tokenizer = _cli_source(args)
    _export(model, args.out, tokenizer, args.force, _CLI_NAMES)
    written = sorted(os.listdir(args.out))
    print("wrote %s: %s\n  transformers: GPT2LMHeadModel.from_pretrained(%r); pyllm: "
          "pyllm.load_gpt2(%r)" % (args.out, ", ".join(written), args.out, args.out),
          file=sys.stderr)
    return 0
