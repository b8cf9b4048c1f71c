"""Training text, its token cache, and random batches.

Public names
------------
``default_corpus()``
    A built-in corpus that needs no download: text from the running Python's
    own standard library (pydoc topics + a fixed list of module sources).
``read_text(path)``
    One text file, or every text file under a directory, as one string.
``tokenize_cached(text, tokenizer, cache_path)``
    Encode ``text`` once and keep the token ids on disk; later calls with the
    same text and tokenizer load them instead of re-encoding.
``TokenDataset``
    Train/validation split of a token array and seeded random batches.

Token cache format (version 1)
------------------------------
``cache_path`` holds the ids as raw little-endian ``uint16`` when the
tokenizer's ``vocab_size <= 65536``, else ``uint32``, with no header.
``cache_path + ".json"`` (the sidecar) is a JSON object::

    {"format": "pyllm-tokens", "version": 1, "dtype": "uint16" | "uint32",
     "count": <number of tokens>, "text_sha256": <hex>,
     "tokenizer_sha256": <hex>, "tokens_sha256": <hex of the raw file bytes>}

The cache is used only if every field matches and the data file has exactly
``count * itemsize`` bytes with the recorded hash; otherwise the text is
re-encoded and both files are rewritten atomically (old sidecar removed first,
new sidecar written last), so a crash never leaves a cache that looks valid.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import re
import stat
import warnings

import numpy as np

from .tensorfile import atomic_write_bytes, atomic_write_text

__all__ = ["default_corpus", "read_text", "tokenize_cached", "TokenDataset", "TEXT_EXTENSIONS"]

#: Pure-Python standard library modules whose sources go into :func:`default_corpus`,
#: in this order.  All exist on CPython 3.9 .. 3.13; a missing one is skipped.
CORPUS_MODULES = (
    "textwrap", "string", "argparse", "json.decoder", "json.encoder", "difflib",
    "fractions", "heapq", "dataclasses", "enum", "functools", "pprint", "statistics",
    "tokenize", "ast", "inspect", "typing", "collections", "logging", "pathlib",
)

#: File name extensions that :func:`read_text` reads in directory mode (plus no extension).
TEXT_EXTENSIONS = (".txt", ".md", ".rst", ".py")

_CACHE_FORMAT = "pyllm-tokens"
_CACHE_VERSION = 1
_CHUNK_CHARS = 1 << 16
# A newline with a non-space character on each side.  Both CharTokenizer and
# GPT-2's pre-tokenizer always end a chunk before and after such a newline, so
# encoding the text piece by piece, cut right after it, gives the same ids as
# encoding it whole.  (Cutting inside a whitespace run would not: GPT-2 splits
# "\n\n\nx" differently from "\n" + "\n\nx".)
_SAFE_CUT = re.compile(r"(?<=\S)\n(?=\S)")


def _heading(title: str) -> str:
    return f"{title}\n{'=' * len(title)}\n\n"


def default_corpus() -> tuple[str, str]:
    """Return ``(text, description)``: a ~1.5 MB corpus from this Python's standard library.

    The text is, in order: every documentation topic of ``pydoc_data.topics``
    (sorted by key, each a heading line underlined with ``=`` then the topic
    text), then the source of each module in :data:`CORPUS_MODULES` (same
    heading style, titled ``<module> (source)``), joined with blank lines.
    Modules are located with ``importlib.util.find_spec(name).origin`` and read
    as UTF-8; modules that are missing, frozen or source-less are skipped, and
    so is ``pydoc_data`` if the distribution stripped it.  The result is the
    same on every call, but it differs between Python versions; the
    description names the version, e.g. ``"Python 3.11.7 standard library:
    79 pydoc topics + 20 module sources, 1.5 MB"``.

    Raises:
        RuntimeError: if neither the pydoc topics nor any module source exist.
    """
    parts = []
    n_topics = 0
    try:
        from pydoc_data.topics import topics
    except ImportError:
        topics = {}
    for key in sorted(topics):
        parts.append(_heading(str(key)) + str(topics[key]).strip("\n"))
        n_topics += 1
    n_modules = 0
    for name in CORPUS_MODULES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        origin = getattr(spec, "origin", None)
        if not origin or not origin.endswith(".py") or not os.path.isfile(origin):
            continue
        try:
            with open(origin, encoding="utf-8") as f:
                source = f.read()
        except (OSError, UnicodeDecodeError):
            continue
        parts.append(_heading(f"{name} (source)") + source.strip("\n"))
        n_modules += 1
    if not parts:
        raise RuntimeError(
            "no default corpus available: this Python has neither pydoc_data.topics nor the "
            f"sources of any of {', '.join(CORPUS_MODULES)}; pass a text file or directory instead"
        )
    text = "\n\n".join(parts) + "\n"
    size_mb = len(text.encode("utf-8")) / 1e6
    description = (
        f"Python {platform.python_version()} standard library: {n_topics} pydoc topics + "
        f"{n_modules} module sources, {size_mb:.1f} MB"
    )
    return text, description


def _decode_file(path: str) -> str:
    """Read ``path`` as UTF-8 text; ValueError naming the file if it is binary."""
    with open(path, "rb") as f:
        data = f.read()
    if b"\x00" in data:
        raise ValueError(f"{path}: binary file (contains NUL bytes), expected UTF-8 text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    return text[1:] if text.startswith("\ufeff") else text  # drop a byte-order mark


def read_text(path) -> str:
    """Return the text of a file, or of all text files under a directory.

    A file is read whatever its name, as UTF-8 (a leading byte-order mark is
    dropped; newlines are kept as they are).  For a directory, every file
    below it whose name ends in one of :data:`TEXT_EXTENSIONS` or has no
    extension is read, skipping hidden files and directories (names starting
    with ``.``), in sorted order of their relative paths compared component by
    component (so ``a/z.txt`` comes before ``b.txt``).  Empty files are
    skipped; binary files, files that cannot be read (a dangling link, no
    permission) and anything that is not a regular file (a named pipe, a
    device) are skipped with a :class:`UserWarning`.  The texts are joined
    with ``"\\n\\n"``.

    A single ``path`` may be a regular file or a named pipe (``--data
    <(zcat corpus.gz)``), but not a device such as ``/dev/zero``, which never ends.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: for an empty or binary file (naming it), a device or socket,
            or a directory in which no non-empty text file is found.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file or directory: {path}")
    if not os.path.isdir(path):
        mode = os.stat(path).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            raise ValueError(f"{path}: not a regular file (a device or socket), expected UTF-8 text")
        text = _decode_file(path)
        if not text:
            raise ValueError(f"{path}: the file is empty")
        return text
    found = []
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            ext = os.path.splitext(name)[1].lower()
            if not name.startswith(".") and (ext == "" or ext in TEXT_EXTENSIONS):
                rel = os.path.relpath(os.path.join(root, name), path)
                found.append(tuple(rel.split(os.sep)))
    texts = []
    for rel in sorted(found):
        file_path = os.path.join(path, *rel)
        try:
            if not stat.S_ISREG(os.stat(file_path).st_mode):  # opening a pipe would block
                warnings.warn(f"skipping {file_path}: not a regular file", UserWarning,
                              stacklevel=2)
                continue
            text = _decode_file(file_path)
        except ValueError as e:
            warnings.warn(f"skipping {e}", UserWarning, stacklevel=2)
            continue
        except OSError as e:  # a dangling link, no permission, removed meanwhile
            warnings.warn(f"skipping {file_path}: cannot be read ({e.strerror or e})",
                          UserWarning, stacklevel=2)
            continue
        if text:
            texts.append(text)
    if not texts:
        looked_for = ", ".join(TEXT_EXTENSIONS) + " and files without an extension"
        raise ValueError(f"no text files found in {path} (looked for {looked_for})")
    return "\n\n".join(texts)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tokenizer_hash(tokenizer, tokenizer_key) -> str:
    """Hash ``tokenizer_key``, or by default the class name, vocab size and every id's text."""
    if tokenizer_key is None:
        vocab = [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]
        tokenizer_key = f"{type(tokenizer).__name__} {tokenizer.vocab_size}\n{vocab!r}"
    return _sha256(tokenizer_key.encode("utf-8", "surrogatepass"))


def _load_cache(cache_path: str, expected: dict):
    """Return the cached tokens if the sidecar matches ``expected`` and the data is intact."""
    try:
        with open(cache_path + ".json", encoding="utf-8") as f:
            meta = json.load(f)
        if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in expected.items()):
            return None
        count, dtype = meta["count"], np.dtype(expected["dtype"])
        if not isinstance(count, int) or os.path.getsize(cache_path) != count * dtype.itemsize:
            return None
        with open(cache_path, "rb") as f:
            data = f.read()
        if _sha256(data) != meta["tokens_sha256"]:
            return None
        return np.frombuffer(data, dtype=dtype.newbyteorder("<")).astype(dtype)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _encode_in_pieces(text: str, tokenizer, progress) -> list:
    """Encode ``text`` in ~64K-character pieces cut at :data:`_SAFE_CUT` newlines."""
    total = len(text.encode("utf-8", "surrogatepass"))
    ids, done, start = [], 0, 0
    while start < len(text):
        cut = None
        if len(text) - start > _CHUNK_CHARS:
            cut = _SAFE_CUT.search(text, start + _CHUNK_CHARS)
        end = cut.end() if cut else len(text)
        piece = text[start:end]
        ids.extend(tokenizer.encode(piece))
        done += len(piece.encode("utf-8", "surrogatepass"))
        start = end
        if progress is not None:
            progress(done, total)
    return ids


def tokenize_cached(text: str, tokenizer, cache_path, *, tokenizer_key: str | None = None,
                    progress=None) -> np.ndarray:
    """Encode ``text`` with ``tokenizer``, reusing the token cache at ``cache_path`` if valid.

    Returns a 1-D ``uint16`` array (``uint32`` if ``tokenizer.vocab_size >
    65536``) with the same contents as ``tokenizer.encode(text)``.  The cache
    (format in the module docstring) is keyed by the SHA-256 of the text and
    of the tokenizer: ``tokenizer_key`` if given, else the tokenizer's class
    name, ``vocab_size`` and ``repr`` of ``[decode([i]) for every id]`` -- two
    tokenizers that agree on all of these but encode differently (e.g. BPE
    merges of different rank) must be told apart by passing ``tokenizer_key``.
    A missing, stale, truncated or corrupt cache is rebuilt; parent
    directories are created.  Nothing is printed.

    Encoding runs in ~64K-character pieces cut only at a newline with a
    non-space character on both sides, which gives the same ids as encoding
    the whole text for :class:`~pyllm.tokenizer.CharTokenizer` and GPT-2 style
    BPE.  ``progress(done_bytes, total_bytes)``, if given, is called after
    each piece with UTF-8 byte counts (not called on a cache hit).

    Raises:
        ValueError: if the tokenizer returns an id outside ``0 .. vocab_size-1``.
    """
    cache_path = os.fspath(cache_path)
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 65536 else np.uint32)
    expected = {
        "format": _CACHE_FORMAT,
        "version": _CACHE_VERSION,
        "dtype": dtype.name,
        "text_sha256": _sha256(text.encode("utf-8", "surrogatepass")),
        "tokenizer_sha256": _tokenizer_hash(tokenizer, tokenizer_key),
    }
    tokens = _load_cache(cache_path, expected)
    if tokens is not None:
        return tokens
    ids = np.asarray(_encode_in_pieces(text, tokenizer, progress), dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= tokenizer.vocab_size):
        raise ValueError(f"tokenizer produced ids outside 0..{tokenizer.vocab_size - 1}")
    raw = ids.astype(dtype.newbyteorder("<")).tobytes()
    os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
    try:
        os.unlink(cache_path + ".json")  # never leave an old sidecar next to new data
    except FileNotFoundError:
        pass
    atomic_write_bytes(cache_path, raw)
    meta = dict(expected, count=int(ids.size), tokens_sha256=_sha256(raw))
    atomic_write_text(cache_path + ".json", json.dumps(meta, indent=1) + "\n")
    return ids.astype(dtype)


class TokenDataset:
    """A token array split into a training part and a validation part, with random batches.

    ``TokenDataset(tokens, val_fraction=0.1)``: ``tokens`` is a 1-D integer
    array (any integer dtype, e.g. from :func:`tokenize_cached`; it is not
    copied).  ``n_val = round(len(tokens) * val_fraction)``; the training split
    is the first ``len(tokens) - n_val`` tokens and the validation split the
    last ``n_val``.  ``val_fraction`` must lie in ``[0, 0.5]``; 0 means no
    validation split.  The splits are available as :attr:`train_tokens` and
    :attr:`val_tokens`.
    """

    def __init__(self, tokens, val_fraction: float = 0.1):
        tokens = np.asarray(tokens)
        if tokens.ndim != 1 or tokens.dtype.kind not in "iu":
            raise ValueError(
                f"tokens must be a 1-D integer array, got shape {tokens.shape} dtype {tokens.dtype}"
            )
        if tokens.size == 0:
            raise ValueError("tokens is empty: there is nothing to train on")
        val_fraction = float(val_fraction)
        if not 0.0 <= val_fraction <= 0.5:
            raise ValueError(f"val_fraction must be in [0, 0.5], got {val_fraction}")
        self.val_fraction = val_fraction
        n_val = int(round(tokens.size * val_fraction))
        #: The training split: the first ``n_train`` tokens.
        self.train_tokens = tokens[: tokens.size - n_val]
        #: The validation split: the last ``n_val`` tokens.
        self.val_tokens = tokens[tokens.size - n_val :]

    @property
    def n_train(self) -> int:
        """Number of tokens in the training split."""
        return int(self.train_tokens.size)

    @property
    def n_val(self) -> int:
        """Number of tokens in the validation split (0 when ``val_fraction == 0``)."""
        return int(self.val_tokens.size)

    def get_batch(self, split: str, batch_size: int, block_size: int, rng):
        """Return ``(x, y)``, two ``int32`` arrays of shape ``(batch_size, block_size)``.

        Exact sampling procedure (resuming training relies on it): with ``s``
        the split's tokens and ``T = block_size``, for each row ``b = 0, 1,
        ..., batch_size - 1`` in order, draw ``o = rng.randbelow(len(s) - T)``
        and set ``x[b] = s[o : o + T]``, ``y[b] = s[o + 1 : o + T + 1]``.
        Exactly ``batch_size`` ``randbelow`` calls are made, nothing else is
        drawn from ``rng`` (a :class:`pyllm.rng.RNG`).

        Raises:
            ValueError: for a split other than ``"train"``/``"val"``, sizes
                below 1, or a split with no more than ``block_size`` tokens.
        """
        if split == "train":
            data = self.train_tokens
        elif split == "val":
            data = self.val_tokens
        else:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if batch_size < 1 or block_size < 1:
            raise ValueError(
                f"batch_size and block_size must be >= 1, got {batch_size} and {block_size}"
            )
        if data.size <= block_size:
            hint = ("val_fraction is 0, so there is no validation split" if self.val_fraction == 0
                    else "use a smaller block_size, a larger val_fraction or more text")
            raise ValueError(
                f"the {split} split has {data.size} tokens, too few for block_size {block_size} "
                f"(needs at least {block_size + 1}); {hint}"
            )
        span = data.size - block_size
        offsets = np.array([rng.randbelow(span) for _ in range(batch_size)], dtype=np.int64)
        index = offsets[:, None] + np.arange(block_size + 1, dtype=np.int64)
        window = data[index].astype(np.int32)
        return np.ascontiguousarray(window[:, :-1]), np.ascontiguousarray(window[:, 1:])
