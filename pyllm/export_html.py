"""``pyllm export-html``: a trained model in one offline web page.

:func:`render_html` gives one self-contained HTML document: the weights (float32, or Q8_0 int8
that the page dequantizes), the tokenizer, the settings and a readable, dependency-free
JavaScript forward pass with a KV cache (``pyllm/webmodel/model.js``, named and ordered as
pyllm's NumPy backend). The page has a prompt box, sampling controls and a Generate button that
streams tokens; ``window.pyllm`` exposes ``encode``, ``decode``, ``forward``, ``generate`` and
``attention``. See docs/EXPORT_HTML.md.
"""
import base64
import hashlib
import html
import json
import os
import re

import numpy as np

__all__ = ["render_html", "write_html", "add_parser", "cmd_export_html"]

HERE = os.path.dirname(os.path.abspath(__file__))
WEB = os.path.join(HERE, "webmodel")
_MATRICES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
MB = 1_000_000


def _b64(arr):
    return base64.b64encode(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"),
                                                              copy=False).tobytes()).decode("ascii")


def _f32(arr):
    a = np.ascontiguousarray(arr, dtype=np.float32)
    return {"dtype": "f32", "shape": list(a.shape), "data": _b64(a)}


def _q8(m):
    return {"dtype": "q8_0", "shape": list(m.q.shape), "q": _b64(np.ascontiguousarray(m.q)),
            "scales": _b64(np.ascontiguousarray(m.scales, dtype=np.float32))}


def _tensors(model, int8):
    """name -> tensor entry; matrices (OC, C) (GPT-2's four per layer transposed)."""
    from .model import GPT
    from .quant import QuantizedGPT, quantize
    if isinstance(model, GPT) and int8:
        model = quantize(model)
    out = {}
    if isinstance(model, QuantizedGPT):
        out["wte.weight"], out["wpe.weight"] = _q8(model.m["wte"]), _q8(model.m["wpe"])
        for name, m in model.m.items():
            if name not in ("wte", "wpe"):
                out[name + ".weight"] = _q8(m)
        for name, v in model.v.items():
            out[name] = _f32(v)
        return out, "q8_0"
    for name, arr in model.state_dict().items():
        if name.rsplit(".", 1)[0].split(".", 2)[-1] in _MATRICES and arr.ndim == 2:
            arr = arr.T                         # GPT-2 (C, OC) -> (OC, C)
        out[name] = _f32(arr)
    return out, "float32"


def _tokenizer_data(tokenizer, vocab_size):
    from .tokenizer import BPETokenizer, CharTokenizer
    if tokenizer.vocab_size > vocab_size:
        raise ValueError("the tokenizer (%d ids) does not fit the model (%d)"
                         % (tokenizer.vocab_size, vocab_size))
    if isinstance(tokenizer, CharTokenizer):
        return {"kind": "char", "chars": tokenizer.chars}
    if isinstance(tokenizer, BPETokenizer):
        return {"kind": "bpe", "vocab_size": tokenizer.vocab_size,
                "byte_ids": [int(i) for i in tokenizer._byte_ids],
                "merges": [int(x) for t in tokenizer.merges for x in t],
                "eot_id": int(tokenizer.eot_token), "special": tokenizer._special}
    raise TypeError("export-html needs a CharTokenizer or a BPETokenizer, got %s"
                    % type(tokenizer).__name__)


def _estimate_bytes(model, int8):
    """About how many bytes the page will have (base64 is 4/3 of the raw bytes)."""
    n = getattr(model, "num_params", None) or sum(a.size for a in model.state_dict().values())
    per = 1.07 if (int8 or not hasattr(model, "state_dict")) else 4.0
    return int(n * per * 4 / 3)


def _check(model, max_mb):
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise TypeError("render_html needs a pyllm GPT or QuantizedGPT, got %s"
                        % type(model).__name__)
    if getattr(cfg, "attention", "softmax") != "softmax":
        raise ValueError("export-html supports softmax attention; this model has attention=%r"
                         % cfg.attention)
    if isinstance(max_mb, bool) or not isinstance(max_mb, (int, float)) or not max_mb > 0:
        raise ValueError("max_mb must be a number > 0, got %r" % (max_mb,))


def _too_big(nbytes, max_mb, int8):
    hint = "" if int8 else "; --int8 makes it about 3.7x smaller"
    return ValueError("the page would be %.1f MB, over the limit of %g MB (--max-mb)%s"
                      % (nbytes / MB, max_mb, hint))


def render_html(model, tokenizer, int8=False, max_mb=50, title=None, prompt="\n"):
    """The page as a str. ``int8`` embeds Q8_0 weights (dequantized in the page); a page over
    ``max_mb`` megabytes (10^6 bytes) raises ValueError before anything large is built."""
    _check(model, max_mb)
    est = _estimate_bytes(model, int8)
    if est > max_mb * MB:
        raise _too_big(est, max_mb, int8)
    cfg = model.config
    tensors, quant = _tensors(model, int8)
    data = {"format": "pyllm-webmodel", "version": 1, "quantization": quant,
            "config": {"vocab_size": cfg.vocab_size, "block_size": cfg.block_size,
                       "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd},
            "num_params": int(model.num_params),
            "tokenizer": _tokenizer_data(tokenizer, cfg.vocab_size), "tensors": tensors}
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    with open(os.path.join(WEB, "model.js"), encoding="utf-8") as f:
        js = f.read()
    with open(os.path.join(WEB, "page.html"), encoding="utf-8") as f:
        page = f.read()
    if title is None:
        title = "pyllm: %d-layer model, %.2fM parameters" % (cfg.n_layer, model.num_params / 1e6)
    parts = {"TITLE": html.escape(title), "PROMPT": html.escape(prompt), "DATA": text, "JS": js,
             "JS_HASH": base64.b64encode(hashlib.sha256(js.encode("utf-8")).digest()).decode()}
    doc = re.sub(r"\{\{(TITLE|PROMPT|DATA|JS_HASH|JS)\}\}", lambda m: parts[m.group(1)], page)
    size = len(doc.encode("utf-8"))
    if size > max_mb * MB:
        raise _too_big(size, max_mb, int8)
    return doc


def write_html(path, model, tokenizer, int8=False, max_mb=50, **kwargs):
    """Write :func:`render_html` to ``path`` atomically; returns the file's size in bytes."""
    from .tensorfile import atomic_write_text, check_output_file
    path = check_output_file(path, "model.html")
    doc = render_html(model, tokenizer, int8=int8, max_mb=max_mb, **kwargs)
    atomic_write_text(path, doc)
    return len(doc.encode("utf-8"))


# ---- command line -------------------------------------------------------------------------------

def add_parser(sub, add_model_source, add_backend_args):
    """Register ``pyllm export-html`` (called from ``pyllm.cli.build_parser``)."""
    p = sub.add_parser("export-html", help="write a model as one offline web page that "
                       "generates text in the browser (weights, tokenizer and a JS forward pass)")
    add_model_source(p)
    p.add_argument("--out", required=True, help="the HTML file to write, e.g. model.html")
    p.add_argument("--int8", action="store_true",
                   help="embed Q8_0 int8 weights (about 3.7x smaller; dequantized in the page)")
    p.add_argument("--max-mb", type=float, default=50,
                   help="refuse to write a page larger than this many MB (default: 50)")
    add_backend_args(p)
    p.set_defaults(func=cmd_export_html)
    return p


def cmd_export_html(args):
    from .cli import load_model_and_tokenizer
    model, tokenizer = load_model_and_tokenizer(args)
    n = write_html(args.out, model, tokenizer, int8=args.int8, max_mb=args.max_mb)
    print("wrote %s (%.1f MB, %s weights); open it in a browser, no server needed"
          % (args.out, n / MB, "int8" if args.int8 else "float32"))
    return 0
