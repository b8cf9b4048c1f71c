"""An offline, single-file HTML viewer of a GPT's attention heads.

:func:`render_html` turns the attention maps of one text, ``(L, NH, T, T)``, into one HTML document
whose data, script and style are all inline: it opens from disk in any current browser and fetches
nothing (a Content-Security-Policy in the page forbids every fetch, and the only script allowed to
run is the viewer's own, named by its SHA-256 hash).

The page shows a layer x head grid of small heatmaps (colour = attention weight, viridis; the
causal upper triangle left blank), each labelled ``L{l} H{h}`` (zero-based, as in the checkpoint
names ``h.{l}.attn``) with its scores, the strongest head of each score marked. Clicking a head
opens a large destination x source heatmap with token labels and a readout of the value under the
pointer (``dst 12 'tok' <- src 3 'tok': 0.1234``), a text view in which hovering a token shades the
tokens that this head attends to from it, and an "export SVG" button.

Data encoding (the ``<script type="application/json" id="pyllm-data">`` element; its JSON has every
``<``, ``>`` and ``&`` written as ``\\u003c``, ``\\u003e``, ``\\u0026``, so no token can end the
element or open a comment)::

    {"version": 1, "title": str, "tokens": [str] * T, "nLayer": L, "nHead": NH, "T": T,
     "info": [[key, value], ...],                   # strings, in the caller's order
     "scores": [[name, [[float] * NH] * L], ...],   # rounded to 4 decimals
     "encoding": "uint16le-tril-base64",
     "maps": base64 string}

``maps`` holds, for l in 0..L-1, h in 0..NH-1, dst in 0..T-1, src in 0..dst (in that order, the
causal lower triangle only: ``L * NH * T * (T + 1) / 2`` values), ``round(p * 65535)`` as an
unsigned 16-bit little-endian integer; the page decodes it byte by byte, so the result does not
depend on the machine's byte order. The error of a decoded value is at most ``0.5 / 65535``
(7.7e-6).

Size: about ``2.7 * L * NH * T * (T + 1) / 2`` bytes of HTML (1.5 MB for 4 x 4 heads over 256
tokens; 116 MB for GPT-2 small's 12 x 12 heads over 1024 tokens, which is over
:data:`MAX_CELLS`: show fewer layers, heads or tokens).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import numbers
import os
import re
from collections.abc import Mapping

import numpy as np

__all__ = ["MAX_CELLS", "decode_maps", "encode_maps", "render_html"]

#: Most lower-triangle values one page may hold (``L * NH * T * (T + 1) / 2``): 32M, a 86 MB page.
MAX_CELLS: int = 1 << 25

_HERE = os.path.dirname(os.path.abspath(__file__))
_TEMPLATE_FILES = ("viewer.html", "viewer.css", "viewer.js")
_template_cache: dict = {}


def _template():
    """(html skeleton, css, js, CSP hash of the js), read once from the package's files."""
    if not _template_cache:
        parts = []
        for name in _TEMPLATE_FILES:
            with open(os.path.join(_HERE, name), encoding="utf-8") as f:
                parts.append(f.read())
        skeleton, css, js = parts
        # the script and style go inside <script>/<style> elements: they must not close them
        assert "</" not in js and "</" not in css, "viewer.js/viewer.css must not contain '</'"
        js_hash = base64.b64encode(hashlib.sha256(js.encode("utf-8")).digest()).decode("ascii")
        _template_cache["parts"] = (skeleton, css, js, js_hash)
    return _template_cache["parts"]


def _json_for_script(obj) -> str:
    """JSON that is safe as the text of a <script> element: ASCII only, no '<', '>' or '&'."""
    text = json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _check_tokens(tokens) -> list:
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, (list, tuple)):
        raise TypeError("tokens must be a list of str, got %s" % type(tokens).__name__)
    for i, tok in enumerate(tokens):
        if not isinstance(tok, str):
            raise TypeError("tokens[%d] must be a str, got %s" % (i, type(tok).__name__))
    if not tokens:
        raise ValueError("tokens must not be empty")
    return list(tokens)


def _check_unit_array(name, arr, shape_doc):
    """arr as a float array; TypeError unless real numbers, ValueError unless finite and in [0, 1]."""
    a = np.asarray(arr)
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.floating)
                                   or np.issubdtype(a.dtype, np.integer)):
        raise TypeError("%s must be an array of real numbers %s, got dtype %s" % (name, shape_doc,
                                                                                   a.dtype))
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)         # floats are kept as they are: maps can be large
    if a.size and not np.all(np.isfinite(a)):
        raise ValueError("%s must be finite: found NaN or Inf" % name)
    if a.size and (a.min() < 0.0 or a.max() > 1.0 + 1e-6):
        raise ValueError("%s must lie in [0, 1]: found values in [%g, %g]"
                         % (name, a.min(), a.max()))
    return a


def _check_maps(maps, T):
    a = np.asarray(maps)
    if a.ndim != 4:
        raise ValueError("maps must have 4 dimensions (L, NH, T, T), got shape %s" % (a.shape,))
    L, NH, T1, T2 = a.shape
    if T1 != T or T2 != T:
        raise ValueError("maps must have shape (L, NH, T, T) with T = len(tokens) = %d, got %s"
                         % (T, a.shape))
    if L < 1 or NH < 1:
        raise ValueError("maps must hold at least one layer and one head, got shape %s"
                         % (a.shape,))
    cells = L * NH * T * (T + 1) // 2
    if cells > MAX_CELLS:
        raise ValueError("maps is too large for one page: %d x %d heads over %d tokens is %d "
                         "values, the limit is %d (MAX_CELLS); show fewer layers, heads or tokens"
                         % (L, NH, T, cells, MAX_CELLS))
    a = _check_unit_array("maps", a, "(L, NH, T, T)")
    upper = np.triu(np.ones((T, T), dtype=bool), k=1)
    if upper.any():
        worst = max(float(a[l][:, upper].max()) for l in range(L))   # one layer's copy at a time
        if worst > 1e-6:
            raise ValueError("maps must be causal: weights above the diagonal (a destination "
                             "attending to a later source) must be 0, found %g" % worst)
    return a


def _check_scores(scores, L, NH) -> list:
    if scores is None:
        return []
    if not isinstance(scores, Mapping):
        raise TypeError("scores must be None or a dict of name -> (L, NH) array, got %s"
                        % type(scores).__name__)
    out = []
    for name, arr in scores.items():
        if not isinstance(name, str) or not name:
            raise TypeError("scores keys must be non-empty str, got %r" % (name,))
        a = np.asarray(arr)
        if a.shape != (L, NH):
            raise ValueError("scores[%r] must have shape (L, NH) = (%d, %d), got %s"
                             % (name, L, NH, a.shape))
        a = _check_unit_array("scores[%r]" % name, a, "(L, NH)")
        out.append([name, [[round(float(min(v, 1.0)), 4) for v in row] for row in a]])
    return out


def _check_info(info) -> list:
    if info is None:
        return []
    if not isinstance(info, Mapping):
        raise TypeError("info must be None or a dict of str -> str or number, got %s"
                        % type(info).__name__)
    out = []
    for key, value in info.items():
        if not isinstance(key, str):
            raise TypeError("info keys must be str, got %r" % (key,))
        if isinstance(value, str):
            text = value
        elif isinstance(value, numbers.Integral):
            text = str(int(value))
        elif isinstance(value, numbers.Real):
            text = format(float(value), ".6g")
        else:
            raise TypeError("info[%r] must be a str or a number, got %s"
                            % (key, type(value).__name__))
        out.append([key, text])
    return out


def encode_maps(maps: np.ndarray) -> str:
    """The page's ``maps`` string for checked maps (L, NH, T, T): lower triangles, uint16 LE, base64."""
    T = maps.shape[-1]
    dst, src = np.tril_indices(T)                      # row-major: (0,0), (1,0), (1,1), (2,0), ...
    q = np.empty((maps.shape[0], maps.shape[1], dst.size), dtype="<u2")   # (L, NH, T*(T+1)/2)
    for l in range(maps.shape[0]):                     # one layer at a time: bounded scratch memory
        tril = maps[l][:, dst, src].astype(np.float64)
        q[l] = np.rint(np.clip(tril, 0.0, 1.0) * 65535.0)
    return base64.b64encode(q.tobytes()).decode("ascii")


def decode_maps(data: str, L: int, NH: int, T: int) -> np.ndarray:
    """Inverse of the page encoding: the ``maps`` base64 string back to float64 (L, NH, T, T)."""
    q = np.frombuffer(base64.b64decode(data), dtype="<u2")
    n = T * (T + 1) // 2
    if q.size != L * NH * n:
        raise ValueError("maps data holds %d values, expected L*NH*T*(T+1)/2 = %d"
                         % (q.size, L * NH * n))
    out = np.zeros((L, NH, T, T))
    dst, src = np.tril_indices(T)
    out[:, :, dst, src] = q.reshape(L, NH, n) / 65535.0
    return out


def render_html(tokens, maps, scores=None, title="pyllm: attention heads", info=None) -> str:
    """One self-contained HTML document showing attention ``maps`` over ``tokens``.

    tokens: list of T str, the decoded tokens (any text: spaces, newlines, markup, emoji, "").
    maps: real array (L, NH, T, T); ``maps[l, h, t]`` is the attention of destination t over the
        sources 0..t (each row sums to 1; above the diagonal must be 0). Values in [0, 1].
    scores: None or a dict name -> (L, NH) array in [0, 1] (e.g. "previous_token", "induction");
        shown under each head, the strongest head of each name marked.
    title: str, the page title. info: None or a dict str -> str or number, shown in the header
        (e.g. model name, loss), in the dict's order.

    Raises TypeError / ValueError naming the argument. See the module docstring for the encoding.
    """
    tokens = _check_tokens(tokens)
    T = len(tokens)
    maps = _check_maps(maps, T)
    L, NH = maps.shape[:2]
    score_list = _check_scores(scores, L, NH)
    if not isinstance(title, str):
        raise TypeError("title must be a str, got %s" % type(title).__name__)
    info_list = _check_info(info)

    data = {"version": 1, "title": title, "tokens": tokens, "nLayer": L, "nHead": NH, "T": T,
            "info": info_list, "scores": score_list, "encoding": "uint16le-tril-base64",
            "maps": encode_maps(maps)}
    skeleton, css, js, js_hash = _template()
    parts = {"TITLE": html.escape(title), "CSS": css, "JS": js, "JS_HASH": js_hash,
             "DATA": _json_for_script(data)}
    return re.sub(r"\{\{([A-Z_]+)\}\}", lambda m: parts[m.group(1)], skeleton)
