"""Look inside attention: attention maps, head scores, head ablation, embedding neighbours, and an
offline HTML viewer.

Every function takes a :class:`pyllm.GPT` (trained with pyllm, loaded with ``pyllm.load`` or with
``pyllm.load_gpt2``) and works on either backend::

    maps = attention_maps(model, idx)           # (n_layer, n_head, T, T) float32
    scores = head_scores(model)                 # {"previous_token": (L, NH), "induction": ..., ...}
    with ablate(model, [(1, 3)]):               # head 3 of layer 1 switched off
        model.loss(idx, targets)
    nearest_tokens(model, tok, " king")         # [(id, token, similarity), ...]
    write_html("heads.html", model, tok, text)  # one offline page

The maps are the probabilities the model's own forward pass used: the forward runs as usual, and
``ops.attention_probs`` (``csrc/attention.c`` on the C backend) turns each layer's saved q, k and
log-sum-exp into rows ``p_ts = exp(q_t . k_s / sqrt(hd) - lse_t)``. Nothing is recorded unless a
map is asked for, so training and sampling cost the same as without this module.
"""
import contextlib
import numbers
import os

import numpy as np

from .backend import ops
from .model import GPT

SCORE_NAMES = ("previous_token", "induction", "duplicate")
ABLATION_MODES = ("zero", "mean")
METRICS = ("cosine", "dot")
DEFAULT_MAX_BYTES = 2 * 2**30


def _check_model(model):
    if not isinstance(model, GPT):
        raise TypeError("model must be a pyllm.GPT, got %s" % type(model).__name__)


def _is_int(x):
    return isinstance(x, (numbers.Integral, np.integer)) and not isinstance(x, (bool, np.bool_))


def _available_memory():
    """Bytes of physical memory free for new allocations, or None where the OS does not say."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def maps_bytes(model, batch, T):
    """Bytes that ``attention_maps`` returns for ``batch`` sequences of ``T`` tokens (float32):
    ``batch * n_layer * n_head * T * T * 4``."""
    cfg = model.config
    return int(batch) * cfg.n_layer * cfg.n_head * int(T) * int(T) * 4


def _check_max_bytes(model, B, T, max_bytes):
    need = maps_bytes(model, B, T)
    if max_bytes is None:
        free = _available_memory()
        limit = DEFAULT_MAX_BYTES if free is None else min(DEFAULT_MAX_BYTES, free // 2)
    else:
        if not _is_int(max_bytes) or max_bytes < 1:
            raise ValueError("max_bytes must be None or an int >= 1, got %r" % (max_bytes,))
        limit = int(max_bytes)
    if need > limit:
        raise MemoryError(
            "attention maps for %d sequence(s) of %d tokens take %.1f MiB (batch x n_layer %d x "
            "n_head %d x T x T float32), over the limit of %.1f MiB; pass fewer or shorter "
            "sequences, or raise max_bytes=" % (B, T, need / 2**20, model.config.n_layer,
                                                  model.config.n_head, limit / 2**20))


def attention_maps(model, idx, max_bytes=None):
    """The attention probabilities of every head for token ids ``idx``.

    ``idx`` of shape (T,) gives a float32 array (n_layer, n_head, T, T); (B, T) gives
    (B, n_layer, n_head, T, T). ``maps[..., l, h, t, s]`` is the weight that head ``h`` of layer
    ``l`` put on source position ``s`` when computing destination ``t``: each row sums to 1 over
    ``s <= t`` and the upper triangle is 0. They are the probabilities of the model's own forward
    pass (recomputed from the saved log-sum-exp, equal to within float32 rounding), so they
    include the effect of any :func:`ablate` in force. For a favor or linear model they are the
    normalised causal kernel weights phi(q_t) . phi(k_s) / sum_{s' <= t} phi(q_t) . phi(k_s')
    its prefix sums used, materialised.

    The result takes ``B * n_layer * n_head * T * T * 4`` bytes (:func:`maps_bytes`); more than
    ``max_bytes`` (default: 2 GiB or half the free memory, whichever is less) is refused with a
    ``MemoryError`` before anything is computed.
    """
    _check_model(model)
    one = np.ndim(idx) == 1
    idx = model._check_idx(idx)
    B, T = idx.shape
    _check_max_bytes(model, B, T, max_bytes)
    L, NH = model.config.n_layer, model.config.n_head
    out = np.zeros((B, L, NH, T, T), dtype=np.float32)
    probs = out if model.dtype == np.float32 else np.zeros((1, NH, T, T), dtype=model.dtype)
    a = model._forward(idx)
    for b in range(B):
        for i, layer in enumerate(a["layers"]):
            dst = out[b, i][None] if probs is out else probs
            if model._kattn is not None:   # favor / linear: qf_t . kf_s / den_t
                model._kattn.probs(dst[0], layer["kattn"], b)
            else:
                ops.attention_probs(dst, layer["qkv"][b:b + 1], layer["lse"][b:b + 1], NH)
            if dst is probs:
                out[b, i] = probs[0]
    return out[0] if one else out


# ---- head scores ------------------------------------------------------------------------------

def repeated_tokens(model, seq_len, n_seqs, seed=0):
    """``n_seqs`` sequences r + r of random token ids (int32, shape (n_seqs, 2 seq_len)), each
    r drawn uniformly from the vocabulary -- without replacement when the vocabulary has at least
    ``seq_len`` tokens, so within r no token repeats."""
    V = model.config.vocab_size
    rng = np.random.default_rng(seed)
    if V >= seq_len:
        r = np.stack([rng.choice(V, size=seq_len, replace=False) for _ in range(n_seqs)])
    else:
        r = rng.integers(0, V, size=(n_seqs, seq_len))
    return np.concatenate([r, r], axis=1).astype(np.int32)


def offset_attention(maps, offset, first):
    """Mean attention ``offset`` positions back: the mean over destinations t >= ``first`` of
    ``maps[..., t, t - offset]``, for maps (..., T, T) -> (...) float64. The head scores are
    such means (offset 1 from t = 1; S - 1 and S from t = S on r + r); other offsets show where
    a head looks instead."""
    maps = np.asarray(maps)
    offset, first = int(offset), int(first)
    T = maps.shape[-1]
    if maps.ndim < 2 or maps.shape[-2] != T or not 0 <= offset <= first < T:
        raise ValueError("offset_attention needs maps (..., T, T) and 0 <= offset <= first < T, "
                         "got shape %s, offset %d, first %d" % (maps.shape, offset, first))
    t = np.arange(first, T)
    return maps[..., t, t - offset].mean(axis=-1, dtype=np.float64)


def scores_from_maps(maps, seq_len):
    """Head scores of attention maps (B, L, NH, 2 seq_len, 2 seq_len) taken on repeated
    sequences r + r with ``len(r) = seq_len``; see :func:`head_scores` for the definitions."""
    maps = np.asarray(maps)
    S = int(seq_len)
    if maps.ndim != 5 or maps.shape[-1] != 2 * S or maps.shape[-2] != 2 * S:
        raise ValueError("maps must have shape (B, L, NH, 2*seq_len, 2*seq_len) with seq_len=%d, "
                         "got %s" % (S, maps.shape))
    return {"previous_token": offset_attention(maps, 1, 1).mean(axis=0),
            "induction": offset_attention(maps, S - 1, S).mean(axis=0),
            "duplicate": offset_attention(maps, S, S).mean(axis=0)}


def head_scores(model, seq_len=None, n_seqs=8, seed=0):
    """Score every head on how much it behaves as a previous-token, induction or duplicate-token
    head.

    The model reads ``n_seqs`` sequences r + r: ``seq_len`` random token ids (no token twice in
    r when the vocabulary allows), then the same ids again, as in Elhage et al. 2021 and Olsson et
    al. 2022. With ``A`` a head's attention map (rows: destinations t, columns: sources) and
    ``S = seq_len``, averaged over the sequences:

    - ``previous_token``: mean of ``A[t, t-1]`` over t = 1 .. 2S-1 (every position but the first);
    - ``induction``: mean of ``A[t, t-S+1]`` over the second half t = S .. 2S-1: the token right
      after the earlier copy of the current token, the one an induction head copies;
    - ``duplicate``: mean of ``A[t, t-S]`` over t = S .. 2S-1: the earlier copy itself.

    Each score is in [0, 1]: an exact previous-token head scores 1.0 on ``previous_token``, an
    exact induction head 1.0 on ``induction``; uniform causal attention scores about
    ``ln(2S)/(2S)`` or less on each. Returns ``{name: float64 array (n_layer, n_head)}``.
    ``seq_len`` defaults to ``min(64, block_size // 2)``; it must be at least 2 with
    ``2 seq_len <= block_size``.
    """
    _check_model(model)
    bs = model.config.block_size
    if seq_len is None:
        seq_len = min(64, bs // 2)
    if not _is_int(seq_len):
        raise TypeError("seq_len must be an int, got %r" % (seq_len,))
    if seq_len < 2 or 2 * seq_len > bs:
        raise ValueError("seq_len must be in [2, block_size // 2 = %d], got %d (the repeated "
                         "sequence is 2 * seq_len tokens)" % (bs // 2, seq_len))
    if not _is_int(n_seqs) or n_seqs < 1:
        raise ValueError("n_seqs must be an int >= 1, got %r" % (n_seqs,))
    if not _is_int(seed):
        raise TypeError("seed must be an int, got %r" % (seed,))
    idx = repeated_tokens(model, int(seq_len), int(n_seqs), int(seed))
    L, NH = model.config.n_layer, model.config.n_head
    totals = {name: np.zeros((L, NH)) for name in SCORE_NAMES}
    # a few sequences at a time keeps the maps small (a GPT-2 small map of 2x128 tokens: 9 MiB)
    per = max(1, min(len(idx), (64 * 2**20) // max(1, maps_bytes(model, 1, 2 * seq_len))))
    for b0 in range(0, len(idx), per):
        chunk = idx[b0:b0 + per]
        s = scores_from_maps(attention_maps(model, chunk), seq_len)
        for name in SCORE_NAMES:
            totals[name] += s[name] * len(chunk)
    return {name: np.clip(v / len(idx), 0.0, 1.0) for name, v in totals.items()}


# ---- ablation ---------------------------------------------------------------------------------

def parse_heads(heads, config):
    """Check a list of ``(layer, head)`` pairs against a model config; returns a sorted list of
    int pairs without repeats. Accepts "L.H" strings too (``"1.3"``)."""
    if isinstance(heads, (str, bytes)) or not hasattr(heads, "__iter__"):
        raise TypeError("heads must be a list of (layer, head) pairs, got %r" % (heads,))
    out = set()
    for item in heads:
        if isinstance(item, str):
            parts = item.strip().split(".")
            if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
                raise ValueError("a head is written LAYER.HEAD (e.g. 1.3), got %r" % item)
            item = (int(parts[0]), int(parts[1]))
        if not isinstance(item, (tuple, list)) or len(item) != 2 \
                or not all(_is_int(x) for x in item):
            raise TypeError("each head must be a (layer, head) pair of ints, got %r" % (item,))
        layer, head = int(item[0]), int(item[1])
        if not 0 <= layer < config.n_layer:
            raise ValueError("layer %d of head (%d, %d) is out of range: the model has layers "
                             "0..%d" % (layer, layer, head, config.n_layer - 1))
        if not 0 <= head < config.n_head:
            raise ValueError("head %d of head (%d, %d) is out of range: each layer has heads "
                             "0..%d" % (head, layer, head, config.n_head - 1))
        out.add((layer, head))
    return sorted(out)


class _HeadAblation:
    """The model's attention-output hook for :func:`ablate`: per layer, the heads whose slice of
    the attention output (.., C) is replaced by a constant (0 or a mean), and whose gradient is
    therefore 0. Runs the hook it replaced first, so ablations nest."""

    def __init__(self, n_head, head_size, values, prev):
        self.n_head, self.hd, self.values, self.prev = n_head, head_size, values, prev

    def forward(self, layer, atty):
        if self.prev is not None:
            self.prev.forward(layer, atty)
        for head, value in self.values.get(layer, ()):
            atty[..., head * self.hd:(head + 1) * self.hd] = value

    def backward(self, layer, d_atty):
        if self.prev is not None:
            self.prev.backward(layer, d_atty)
        for head, _ in self.values.get(layer, ()):
            d_atty[..., head * self.hd:(head + 1) * self.hd] = 0.0


def head_means(model, heads, reference):
    """The mean attention output of each head in ``heads`` over every position of the reference
    batch ``reference`` (B, T): ``{(layer, head): (head_size,) array}``. These are the values
    ``ablate(..., mode="mean")`` puts in place of the heads' outputs."""
    _check_model(model)
    heads = parse_heads(heads, model.config)
    ref = model._check_idx(reference, "reference")
    a = model._forward(ref)
    hd = model.config.n_embd // model.config.n_head
    C = model.config.n_embd
    return {(l, h): a["layers"][l]["atty"].reshape(-1, C)[:, h * hd:(h + 1) * hd]
            .mean(axis=0, dtype=np.float64).astype(model.dtype) for l, h in heads}


@contextlib.contextmanager
def ablate(model, heads, mode="zero", reference=None):
    """Switch attention heads off inside a ``with`` block.

    ``heads`` lists ``(layer, head)`` pairs (or ``"layer.head"`` strings). ``mode="zero"`` makes
    each listed head contribute nothing: its slice of the attention output, before the output
    projection ``attn.c_proj``, is 0. ``mode="mean"`` puts the head's mean output there instead,
    averaged over every position of the batch ``reference`` (token ids (B, T) or (T,)), which
    keeps the typical size of the residual stream and removes only what the head says about the
    current context. ``model.forward``, ``model.loss``, ``model.loss_and_grads`` (the ablated
    outputs get no gradient) and ``model.generate`` all see the ablation, on both backends;
    :func:`attention_maps` still shows the ablated heads' patterns.

    On exit, also when the block raises, the model is as before: no weight is touched at any
    time. Ablations nest: an inner ``ablate`` adds its heads to the outer one's.
    """
    _check_model(model)
    if not isinstance(mode, str) or mode not in ABLATION_MODES:
        raise ValueError("mode must be one of %s, got %r" % (", ".join(map(repr, ABLATION_MODES)),
                                                             mode))
    heads = parse_heads(heads, model.config)
    if mode == "mean":
        if reference is None:
            raise ValueError("mode='mean' needs reference=token ids (B, T) to average each head's "
                             "output over")
        means = head_means(model, heads, reference)
    elif reference is not None:
        raise ValueError("reference is used only with mode='mean'")
    values = {}
    for l, h in heads:
        values.setdefault(l, []).append((h, means[(l, h)] if mode == "mean" else 0.0))
    prev = model._attn_hook
    hd = model.config.n_embd // model.config.n_head
    model._attn_hook = _HeadAblation(model.config.n_head, hd, values, prev)
    try:
        yield model
    finally:
        model._attn_hook = prev


# ---- embeddings -------------------------------------------------------------------------------

def _token_text(tokenizer, i):
    return tokenizer.decode([int(i)])


def nearest_tokens(model, tokenizer, token_or_text, k=10, metric="cosine"):
    """The ``k`` tokens whose embeddings (rows of ``wte``) are closest to one token's.

    ``token_or_text`` is a token id or a string that the tokenizer encodes as exactly one token
    (GPT-2 words usually carry their leading space: ``" king"``). ``metric="cosine"`` ranks by
    the cosine of the angle between embeddings, which ignores their lengths; ``"dot"`` by the dot
    product, which also rewards long vectors (frequent tokens often have them), so the two lists
    differ. Returns ``[(token_id, token_text, score), ...]``, best first, the token itself
    left out.
    """
    _check_model(model)
    V = model.config.vocab_size
    if not isinstance(metric, str) or metric not in METRICS:
        raise ValueError("metric must be 'cosine' or 'dot', got %r" % (metric,))
    if not _is_int(k) or k < 1:
        raise ValueError("k must be an int >= 1, got %r" % (k,))
    if tokenizer.vocab_size > V:
        raise ValueError("the tokenizer has %d tokens but the model's embedding only %d: they do "
                         "not belong together" % (tokenizer.vocab_size, V))
    if _is_int(token_or_text):
        tid = int(token_or_text)
        if not 0 <= tid < tokenizer.vocab_size:
            raise ValueError("token id %d is outside the vocabulary [0, %d)"
                             % (tid, tokenizer.vocab_size))
    elif isinstance(token_or_text, str):
        if not token_or_text:
            raise ValueError("token_or_text is empty: give a word or a token id")
        try:
            ids = tokenizer.encode(token_or_text)
        except (ValueError, KeyError) as exc:
            raise ValueError("%r is not in the vocabulary: %s" % (token_or_text, exc)) from None
        if len(ids) != 1:
            pieces = [_token_text(tokenizer, i) for i in ids]
            hint = ""
            try:
                if len(tokenizer.encode(" " + token_or_text)) == 1:
                    hint = " (with its leading space, %r is one token)" % (" " + token_or_text)
            except (ValueError, KeyError):
                pass
            raise ValueError("%r is not one token of this vocabulary: it encodes to %d tokens %r; "
                             "pass one of them, or a token id%s"
                             % (token_or_text, len(ids), pieces, hint))
        tid = ids[0]
    else:
        raise TypeError("token_or_text must be a token id or a str, got %s"
                        % type(token_or_text).__name__)
    W = model.state_dict()["wte.weight"][:tokenizer.vocab_size].astype(np.float64)  # (V,C)
    w = W[tid]
    sims = W @ w
    if metric == "cosine":
        norms = np.linalg.norm(W, axis=1) * np.linalg.norm(w)
        sims = np.divide(sims, norms, out=np.zeros_like(sims), where=norms > 0)
    sims[tid] = -np.inf
    k = min(int(k), len(sims) - 1)
    top = np.argsort(-sims, kind="stable")[:k]
    return [(int(i), _token_text(tokenizer, i), float(sims[i])) for i in top]


# ---- the viewer -------------------------------------------------------------------------------

def write_html(path, model, tokenizer, text, scores=True, max_tokens=512, **score_args):
    """Write the attention viewer for ``text`` to ``path``: one self-contained HTML file (data,
    script and style inside; no network) with a layer x head grid of heatmaps, an enlarged,
    token-labelled view of the head clicked, a text view that highlights what a head attends to,
    and SVG export.

    ``text`` is a str, or a sequence of token ids. ``scores=True`` adds each head's
    :func:`head_scores` (``score_args`` go there), a dict of such arrays is shown as given, and
    ``False`` leaves them out. The text is cut to its first ``block_size`` or ``max_tokens``
    tokens, whichever is less, and to what one page carries (``pyllm.viewer.MAX_CELLS`` weights:
    about 500 tokens of GPT-2 small); a warning says so. The numbers in the page are
    :func:`attention_maps` of those tokens (stored to 1/65535). The file is written atomically:
    an existing file at ``path`` is replaced whole or not at all. Returns the number of tokens
    shown.
    """
    import warnings

    from .tensorfile import atomic_write_text, check_output_file
    from .viewer import MAX_CELLS, render_html

    _check_model(model)
    path = check_output_file(path, "heads.html")
    if not _is_int(max_tokens) or max_tokens < 1:
        raise ValueError("max_tokens must be an int >= 1, got %r" % (max_tokens,))
    if isinstance(text, str):
        if not text:
            raise ValueError("text must not be empty")
        ids = list(tokenizer.encode(text))
    elif isinstance(text, (list, tuple, np.ndarray)):
        ids = [int(i) for i in np.asarray(text).reshape(-1)] \
            if np.asarray(text).dtype.kind in "iu" else None
        if ids is None or np.ndim(text) != 1:
            raise TypeError("text must be a str or a 1-D sequence of token ids")
    else:
        raise TypeError("text must be a str or a sequence of token ids, got %s"
                        % type(text).__name__)
    if not ids:
        raise ValueError("text encodes to no tokens")
    if max(ids) >= tokenizer.vocab_size or min(ids) < 0:
        raise ValueError("token ids must be in [0, %d) (the tokenizer's vocabulary)"
                         % tokenizer.vocab_size)
    limit = min(model.config.block_size, int(max_tokens))
    heads = model.config.n_layer * model.config.n_head
    while limit > 1 and heads * limit * (limit + 1) // 2 > MAX_CELLS:
        limit -= 1                                         # what one page can carry
    if len(ids) > limit:
        warnings.warn("the viewer shows the first %d of %d tokens (block_size %d, max_tokens %d, "
                      "%d heads in one page)" % (limit, len(ids), model.config.block_size,
                                                 max_tokens, heads), stacklevel=2)
        ids = ids[:limit]
    idx = np.asarray(ids, dtype=np.int64)
    maps = attention_maps(model, idx)
    tokens = [_token_text(tokenizer, i) for i in ids]
    info = {"layers": model.config.n_layer, "heads": model.config.n_head,
            "n_embd": model.config.n_embd, "tokens": len(ids)}
    if len(ids) > 1:
        info["loss"] = round(model.loss(idx[:-1], idx[1:]), 4)
    if isinstance(scores, dict):
        sc = scores
    elif scores is True:
        sc = head_scores(model, **score_args)
    elif scores is False or scores is None:
        sc = None
    else:
        raise TypeError("scores must be True, False or a dict of (n_layer, n_head) arrays")
    atomic_write_text(path, render_html(tokens, maps, scores=sc, info=info))
    return len(ids)


def format_table(scores, names=SCORE_NAMES):
    """A layer x head text table of the scores, the strongest head of each kind marked ``*``."""
    L, NH = np.shape(scores[names[0]])
    best = {n: np.unravel_index(np.argmax(scores[n]), (L, NH)) for n in names}
    short = {"previous_token": "prev", "induction": "ind", "duplicate": "dup"}
    cols = ["%s" % short.get(n, n) for n in names]
    lines = ["layer.head  " + "  ".join("%7s" % c for c in cols)]
    for l in range(L):
        for h in range(NH):
            cells = ["%6.3f%s" % (scores[n][l, h], "*" if best[n] == (l, h) else " ")
                     for n in names]
            lines.append("%5d.%-4d  " % (l, h) + "  ".join(cells))
    lines.append("* the strongest head of each kind; scores on random tokens repeated twice")
    return "\n".join(lines)
