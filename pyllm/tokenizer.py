"""Tokenizers for pyllm: a character-level tokenizer and a GPT-2 style byte-level BPE.

This module is self-contained: it depends only on the Python standard library
and numpy (numpy is used only so that ``decode`` can accept numpy arrays).

Public names
------------
``CharTokenizer``
    One id per character; the vocabulary is the sorted set of characters of a
    training text.
``BPETokenizer``
    Byte-level byte-pair encoding as in GPT-2: text is pre-split with the GPT-2
    pattern (:func:`gpt2_split`), each chunk is turned into UTF-8 bytes and the
    learned merges are applied by rank.  One special token, ``<|endoftext|>``,
    is always present.  Tokenizers can be trained here
    (:meth:`BPETokenizer.train`) or read from GPT-2 files
    (:meth:`BPETokenizer.from_gpt2`).
``gpt2_split``
    The GPT-2 pre-tokenizer, rebuilt without the third-party ``regex`` module.
``bytes_to_unicode``
    GPT-2's reversible byte <-> printable character table (for its files).
``load_tokenizer``
    Load a tokenizer file written by either class, choosing the class from the
    file header.
``EOT_TOKEN``
    The special end-of-text string, ``"<|endoftext|>"``.

File format (version 1)
-----------------------
``save`` writes, and ``load`` / ``load_tokenizer`` read, a UTF-8 plain-text
file of ``\\n``-terminated lines.  Integers are written in plain decimal
(ASCII digits, no sign).  Fields on a line are separated by one space.

Line 1 is always the header::

    pyllm-tokenizer <version> <kind>

where ``<version>`` is ``1`` and ``<kind>`` is ``char`` or ``bpe``.

Kind ``char``::

    pyllm-tokenizer 1 char
    chars <N>                 number of characters in the vocabulary
    <code point>              N lines: the Unicode code point of the character
    ...                       with id 0, 1, ..., N-1 (decimal integers, so that
                              newlines, tabs, etc. survive unescaped)

Kind ``bpe``::

    pyllm-tokenizer 1 bpe
    vocab_size <V>            ids are exactly 0 .. V-1
    special <id> <json>       id of the special token and its text as a JSON
                              string literal, e.g. special 511 "<|endoftext|>"
    bytes <id_0> ... <id_255> 256 ids: the token id of each single byte value
                              0..255 (0 1 2 ... 255 for trained tokenizers)
    merges <M>                number of merges
    <a> <b> <new>             M lines in rank order (first line = highest
    ...                       priority): the pair of ids (a, b) merges into id
                              <new>

Validation on load: the header, every keyword and every count must be as
above; ``a`` and ``b`` must already be defined (a byte id or the result of an
earlier merge), no pair may appear twice, ``<new>`` must not be a byte id or
the special id (it may repeat an earlier result only if it denotes the same
bytes), all ids must lie in ``0 .. V-1``, and together the byte ids, merge
results and the special id must cover every id exactly.  Anything else -- a
wrong header or version, a non-integer, a short or long file -- raises
``ValueError`` naming the file.

``save`` is atomic: the file is written to a temporary file in the same
directory, flushed and fsync'ed, then moved over the target with
``os.replace``; a crash leaves either the old or the new file, never half of
one.
"""

from __future__ import annotations

import heapq
import json
import operator
import os
import re
import stat
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np

from .tensorfile import atomic_write_text

__all__ = [
    "EOT_TOKEN",
    "CharTokenizer",
    "BPETokenizer",
    "gpt2_split",
    "bytes_to_unicode",
    "load_tokenizer",
]

#: The special end-of-text token used by GPT-2 and by :class:`BPETokenizer`.
EOT_TOKEN = "<|endoftext|>"

_MAGIC = "pyllm-tokenizer"
_FORMAT_VERSION = 1
_UINT = re.compile(r"[0-9]+")


# ---------------------------------------------------------------------------
# GPT-2 pre-tokenizer
# ---------------------------------------------------------------------------
#
# GPT-2 splits text with the regular expression (third-party ``regex`` syntax)
#
#     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
#
# Python's ``re`` has no \p{L} / \p{N}.  Every alternative only asks which
# *class* a character belongs to (letter, number, whitespace, other), except
# that the contractions need the exact characters ' s t r e v m l d and that
# ' ?' needs a plain space.  So each character is replaced by a one-character
# class code -- keeping those special characters as themselves -- and the
# same alternation, rewritten over class codes, is run with ``re`` on the coded
# string.  Both engines are backtracking engines with leftmost-first
# alternation, so they pick the same chunks; the coded string has the same
# length as the text, so match spans index the original text directly.
#
# Class codes:
#   ' '            the plain space U+0020
#   'W'            any other whitespace
#   s t r e v m l d  these lowercase ASCII letters (contractions need them)
#   'L'            any other letter (Unicode category L*)
#   'N'            a number (Unicode category N*)
#   "'"            the apostrophe U+0027
#   'O'            anything else
_CODED_PATTERN = re.compile(
    r"'s|'t|'re|'ve|'m|'ll|'d"  # contractions (case-sensitive, as GPT-2)
    r"| ?[Lstrevmld]+"  # ' ?\p{L}+'
    r"| ?N+"  # ' ?\p{N}+'
    r"| ?[O']+"  # ' ?[^\s\p{L}\p{N}]+'
    r"|[ W]+(?![^ W])"  # '\s+(?!\S)'
    r"|[ W]+"  # '\s+'
)
_KEEP_LETTERS = frozenset("strevmld")
# str.isspace() is true for U+001C..U+001F (file/group/record/unit separator),
# but the `regex` module's \s (Unicode White_Space) is not; everything else
# agrees.  GPT-2 used `regex`, so these four are treated as "other" here.
_NOT_REGEX_SPACE = frozenset("\x1c\x1d\x1e\x1f")


@lru_cache(maxsize=65536)
def _char_class(ch: str) -> str:
    """Return the one-character class code of ``ch`` (see the comment above)."""
    if ch.isspace() and ch not in _NOT_REGEX_SPACE:
        return " " if ch == " " else "W"
    cat = unicodedata.category(ch)
    if cat[0] == "L":
        return ch if ch in _KEEP_LETTERS else "L"
    if cat[0] == "N":
        return "N"
    return "'" if ch == "'" else "O"


def gpt2_split(text: str) -> list[str]:
    """Split ``text`` into chunks exactly as GPT-2's pre-tokenizer does.

    Implements the GPT-2 pattern
    ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``
    with leftmost-first alternation, without the ``regex`` package.  Letters
    are Unicode categories ``L*`` and numbers ``N*`` (``unicodedata``);
    whitespace is ``str.isspace()`` minus U+001C..U+001F, which the ``regex``
    module's ``\\s`` does not match.  The chunks concatenate back to ``text``.

    Consequences worth knowing (all as in GPT-2):

    * Contractions are case-sensitive: ``"it's"`` -> ``["it", "'s"]`` but
      ``"IT'S"`` -> ``["IT", "'", "S"]``.
    * A single leading space joins the next letter/number/punctuation run:
      ``"a b"`` -> ``["a", " b"]``.
    * In a whitespace run followed by a non-space, the last whitespace char is
      split off: ``"a  b"`` -> ``["a", " ", " b"]`` (the last space joins
      ``b``), ``"a\\n\\nb"`` -> ``["a", "\\n", "\\n", "b"]`` (a newline cannot
      join a word, so it stands alone).  A run at the end of the text stays
      whole: ``"a\\n\\n"`` -> ``["a", "\\n\\n"]``.

    Known difference: Python's ``unicodedata`` may be a different Unicode
    version from the one compiled into a given ``regex`` release, so
    characters unassigned in Python's database (category ``Cn``) but assigned
    in the newer one can be classified differently.

    Raises:
        TypeError: if ``text`` is not a ``str``.
    """
    if not isinstance(text, str):
        raise TypeError(f"gpt2_split expects str, got {type(text).__name__}")
    if not text:
        return []
    table = {ord(ch): _char_class(ch) for ch in set(text)}
    coded = text.translate(table)
    return [text[m.start() : m.end()] for m in _CODED_PATTERN.finditer(coded)]


def bytes_to_unicode() -> dict[int, str]:
    """Return GPT-2's table mapping each byte value 0..255 to a printable character.

    GPT-2's vocabulary files store tokens as strings in which every byte is
    written as one visible, non-space character.  The 188 bytes ``!``..``~``,
    ``¡``..``¬`` and ``®``..``ÿ`` stand for themselves; the remaining 68 bytes
    (controls, space, DEL, NBSP, soft hyphen, ...) are given the characters
    ``chr(256)``, ``chr(257)``, ... in increasing byte order, so e.g. byte 0 is
    ``"Ā"``, the newline 10 is ``"Ċ"`` and the space 32 is ``"Ġ"``.

    The dict's insertion order is GPT-2's order of byte tokens in its
    vocabulary (the 188 printable bytes first), which is the order of ids 0..255
    in GPT-2's ``encoder.json``.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


# ---------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------


def _ids_to_list(ids: Iterable[int], vocab_size: int) -> list[int]:
    """Validate token ids for ``decode`` and return them as a list of ints.

    Accepts any iterable of integers, including 1-D numpy integer arrays.
    Raises TypeError for non-integers and ValueError for ids outside
    ``0 .. vocab_size-1``.
    """
    if isinstance(ids, (str, bytes, bytearray)):
        raise TypeError(f"decode expects an iterable of ints, got {type(ids).__name__}")
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1:
            raise ValueError(f"decode expects a 1-D array of ids, got shape {ids.shape}")
        if ids.dtype.kind not in "iu":
            raise TypeError(f"decode expects an integer array, got dtype {ids.dtype}")
        values = ids.tolist()
    else:
        items = list(ids)
        try:
            values = [operator.index(i) for i in items]
        except TypeError:
            bad = next(i for i in items if not _is_index(i))
            raise TypeError(f"token ids must be integers, got {bad!r}") from None
    if values and (min(values) < 0 or max(values) >= vocab_size):
        pos, bad = next((p, i) for p, i in enumerate(values) if not 0 <= i < vocab_size)
        raise ValueError(
            f"token id {bad} at position {pos} is out of range for vocab_size {vocab_size}"
        )
    return values


def _is_index(x) -> bool:
    try:
        operator.index(x)
    except TypeError:
        return False
    return True


class _Reader:
    """Line-by-line parser for the tokenizer file format, with clear errors."""

    def __init__(self, path):
        self.path = os.fspath(path)
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            mode = os.stat(self.path).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):  # /dev/zero would never end
                raise ValueError(f"{self.path}: not a regular file (a device or socket)")
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError as e:
            raise ValueError(f"{self.path}: not a UTF-8 text file ({e})") from None
        if text.startswith("\ufeff"):
            text = text[1:]  # a byte-order mark, added by some editors
        self.lines = text.split("\n")
        if self.lines and self.lines[-1] == "":
            self.lines.pop()  # the final newline
        self.pos = 0

    def error(self, message: str) -> ValueError:
        return ValueError(f"{self.path}: line {self.pos}: {message}")

    def next_line(self, what: str) -> str:
        if self.pos >= len(self.lines):
            self.pos += 1
            raise self.error(f"unexpected end of file, expected {what}")
        line = self.lines[self.pos]
        self.pos += 1
        return line

    def header(self) -> str:
        """Read the header line and return the kind (``"char"`` or ``"bpe"``)."""
        line = self.next_line("header")
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != _MAGIC:
            raise self.error(f"not a pyllm tokenizer file (header {line[:60]!r})")
        if parts[1] != str(_FORMAT_VERSION):
            raise self.error(
                f"unsupported format version {parts[1][:20]!r} (expected {_FORMAT_VERSION})"
            )
        if parts[2] not in ("char", "bpe"):
            raise self.error(f"unknown tokenizer kind {parts[2][:20]!r}")
        return parts[2]

    def expect_kind(self, kind: str) -> None:
        found = self.header()
        if found != kind:
            raise self.error(f"this is a {found!r} tokenizer file, expected {kind!r}")

    def uint(self, token: str) -> int:
        if not _UINT.fullmatch(token):
            raise self.error(f"expected a non-negative integer, got {token[:30]!r}")
        try:
            return int(token)
        except ValueError:  # more digits than int() converts (Python 3.11+: 4300)
            raise self.error(f"integer of {len(token)} digits is too long") from None

    def ints(self, count: int | None = None, keyword: str | None = None) -> list[int]:
        """Read a line of integers, optionally preceded by ``keyword``."""
        what = f"'{keyword}' line" if keyword else "a line of integers"
        parts = self.next_line(what).split(" ")
        if keyword is not None:
            if parts[0] != keyword:
                raise self.error(f"expected {what}, got {parts[0][:30]!r}")
            parts = parts[1:]
        if count is not None and len(parts) != count:
            raise self.error(f"expected {count} integers, got {len(parts)}")
        return [self.uint(p) for p in parts]

    def end(self) -> None:
        if self.pos < len(self.lines):
            self.pos += 1
            raise self.error("unexpected extra data after the end of the tokenizer")


# ---------------------------------------------------------------------------
# Character tokenizer
# ---------------------------------------------------------------------------


class CharTokenizer:
    """Character-level tokenizer: token id ``i`` is the character ``chars[i]``.

    Args:
        chars: the vocabulary, a string or an iterable of one-character
            strings, in id order.  Characters must be distinct.

    Example:
        >>> tok = CharTokenizer.train("hello")
        >>> tok.encode("hole")
        [1, 3, 2, 0]
        >>> tok.decode([1, 3, 2, 0])
        'hole'
    """

    def __init__(self, chars: Iterable[str]):
        chars = list(chars)
        for i, ch in enumerate(chars):
            if not isinstance(ch, str) or len(ch) != 1:
                raise ValueError(f"vocabulary entry {i} is not a single character: {ch!r}")
        stoi: dict[str, int] = {}
        for i, ch in enumerate(chars):
            if ch in stoi:
                raise ValueError(
                    f"duplicate character {ch!r} (U+{ord(ch):04X}) at ids {stoi[ch]} and {i}"
                )
            stoi[ch] = i
        self._chars = chars
        self._stoi = stoi

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        """Build a tokenizer whose vocabulary is the sorted set of characters in ``text``."""
        if not isinstance(text, str):
            raise TypeError(f"train expects str, got {type(text).__name__}")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        """Number of distinct characters (= number of token ids)."""
        return len(self._chars)

    @property
    def chars(self) -> list[str]:
        """The vocabulary in id order (a copy)."""
        return list(self._chars)

    def encode(self, text: str) -> list[int]:
        """Return the id of every character of ``text``.

        Raises:
            TypeError: if ``text`` is not a ``str``.
            ValueError: naming the first character not in the vocabulary and
                its position.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        stoi = self._stoi
        try:
            return [stoi[ch] for ch in text]
        except KeyError:
            pos, ch = next((p, c) for p, c in enumerate(text) if c not in stoi)
            raise ValueError(
                f"unknown character {ch!r} (U+{ord(ch):04X}) at position {pos}"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        """Return the text for token ``ids`` (any iterable of ints, e.g. a numpy array).

        Raises:
            TypeError: for non-integer ids.
            ValueError: for ids outside ``0 .. vocab_size-1``.
        """
        chars = self._chars
        return "".join([chars[i] for i in _ids_to_list(ids, len(chars))])

    def save(self, path) -> None:
        """Atomically write the tokenizer to ``path`` (format in the module docstring)."""
        lines = [f"{_MAGIC} {_FORMAT_VERSION} char", f"chars {len(self._chars)}"]
        lines += [str(ord(ch)) for ch in self._chars]
        atomic_write_text(path, "\n".join(lines) + "\n")

    @classmethod
    def load(cls, path) -> "CharTokenizer":
        """Read a tokenizer written by :meth:`save`; ``ValueError`` if the file is invalid."""
        r = _Reader(path)
        r.expect_kind("char")
        return cls._parse_body(r)

    @classmethod
    def _parse_body(cls, r: _Reader) -> "CharTokenizer":
        (n,) = r.ints(1, "chars")
        chars = []
        seen: dict[str, int] = {}
        for i in range(n):
            (cp,) = r.ints(1)
            if cp > 0x10FFFF:
                raise r.error(f"code point {cp} is out of the Unicode range")
            ch = chr(cp)
            if ch in seen:
                raise r.error(f"duplicate character U+{cp:04X} (ids {seen[ch]} and {i})")
            seen[ch] = i
            chars.append(ch)
        r.end()
        return cls(chars)

    def __eq__(self, other):
        if not isinstance(other, CharTokenizer):
            return NotImplemented
        return self._chars == other._chars

    __hash__ = None  # compared by value; not hashable

    def __repr__(self) -> str:
        preview = "".join(self._chars[:20])
        more = "..." if len(self._chars) > 20 else ""
        return f"CharTokenizer(vocab_size={self.vocab_size}, chars={preview!r}{more})"


# ---------------------------------------------------------------------------
# Byte-level BPE tokenizer
# ---------------------------------------------------------------------------


def _merge_pair(ids: list[int], a: int, b: int, new: int) -> list[int]:
    """Replace every non-overlapping occurrence of ``(a, b)`` (left to right) by ``new``."""
    out = []
    i = 0
    n = len(ids)
    while i < n:
        if i + 1 < n and ids[i] == a and ids[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


class BPETokenizer:
    """Byte-level BPE tokenizer in the style of GPT-2.

    Encoding: the text is split at the special token (when allowed), each
    piece is pre-split with :func:`gpt2_split`, each chunk becomes its UTF-8
    bytes (one token per byte), and then -- repeatedly -- the adjacent pair
    with the lowest merge rank is found and all its occurrences are merged,
    until no mergeable pair is left.  Decoding concatenates the tokens' bytes
    and decodes them as UTF-8 with ``errors="replace"``, so
    ``decode(encode(s)) == s`` for every string without lone surrogates.

    Usually built with :meth:`train`, :meth:`from_gpt2` or :meth:`load`.

    Args:
        merges: the merges in rank order, each a pair ``(a, b)`` or a triple
            ``(a, b, new)``.  For pairs, merge ``i`` creates id ``256 + i``.
        byte_ids: the id of each byte value 0..255 (default: the byte value).
        eot_id: the id of the special token (default: the last id).
        special_token: the special token's text (default ``"<|endoftext|>"``).

    The ids must be exactly ``0 .. vocab_size-1``: byte ids, merge results
    and the special id together, each merge using only ids already defined.

    Raises:
        ValueError: if the merges or ids are inconsistent.
    """

    #: Maximum number of pre-split chunks whose encodings are cached.
    CACHE_SIZE = 1 << 16

    def __init__(
        self,
        merges: Iterable[Sequence[int]],
        *,
        byte_ids: Sequence[int] | None = None,
        eot_id: int | None = None,
        special_token: str = EOT_TOKEN,
    ):
        if not isinstance(special_token, str) or not special_token:
            raise ValueError("special_token must be a non-empty string")
        try:
            special_bytes = special_token.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"special_token {special_token!r} is not encodable as UTF-8") from None
        byte_ids = list(range(256)) if byte_ids is None else [operator.index(i) for i in byte_ids]
        if len(byte_ids) != 256:
            raise ValueError(f"byte_ids must have 256 entries, got {len(byte_ids)}")
        triples = []
        for rank, m in enumerate(merges):
            m = tuple(operator.index(x) for x in m)
            if len(m) == 2:
                m = (m[0], m[1], 256 + rank)
            elif len(m) != 3:
                raise ValueError(f"merge {rank} must be (a, b) or (a, b, new), got {m!r}")
            triples.append(m)

        vocab: dict[int, bytes] = {}
        for b, i in enumerate(byte_ids):
            if i < 0:
                raise ValueError(f"byte {b} has a negative id {i}")
            if i in vocab:
                raise ValueError(f"id {i} is used for two bytes ({vocab[i][0]} and {b})")
            vocab[i] = bytes([b])
        byte_id_set = set(byte_ids)
        ranks: dict[tuple[int, int], int] = {}
        for rank, (a, b, new) in enumerate(triples):
            for part in (a, b):
                if part not in vocab:
                    raise ValueError(
                        f"merge {rank} ({a}, {b}) -> {new} uses id {part}, which is not "
                        f"a byte or the result of an earlier merge"
                    )
            if (a, b) in ranks:
                raise ValueError(
                    f"merge {rank}: pair ({a}, {b}) already merged at rank {ranks[(a, b)]}"
                )
            if new < 0 or new in byte_id_set or new == eot_id:
                raise ValueError(f"merge {rank} ({a}, {b}) -> {new}: invalid result id {new}")
            joined = vocab[a] + vocab[b]
            if new in vocab and vocab[new] != joined:
                raise ValueError(
                    f"merge {rank} ({a}, {b}) -> {new}: id {new} already denotes different bytes"
                )
            vocab[new] = joined
            ranks[(a, b)] = rank

        if eot_id is None:
            eot_id = len(vocab)
        eot_id = operator.index(eot_id)
        if eot_id < 0 or eot_id in vocab:
            raise ValueError(f"special token id {eot_id} is negative or already used")
        vocab_size = len(vocab) + 1
        if max(vocab) >= vocab_size or eot_id >= vocab_size:
            top = max(max(vocab), eot_id)
            raise ValueError(
                f"ids are not contiguous: {vocab_size} tokens but the largest id is {top}"
            )
        table: list[bytes] = [b""] * vocab_size
        for i, bs in vocab.items():
            table[i] = bs
        table[eot_id] = special_bytes

        self._byte_ids = byte_ids
        self._merges = triples
        self._ranks = ranks
        self._eot_id = eot_id
        self._special = special_token
        self._vocab = table
        self._cache: dict[str, list[int]] = {}

    # -- training -----------------------------------------------------------

    @classmethod
    def train(cls, text: str, vocab_size: int, verbose: bool = False) -> "BPETokenizer":
        """Learn a byte-level BPE vocabulary of ``vocab_size`` tokens from ``text``.

        The vocabulary is the 256 byte tokens (ids 0..255), then one token per
        merge (ids 256, 257, ...), then the special token ``<|endoftext|>``
        (the last id).  Merges are learned within the chunks produced by
        :func:`gpt2_split` (never across chunk boundaries); occurrences of the
        literal special token in ``text`` are treated as boundaries and not
        learned.  Each step merges the most frequent adjacent pair; ties go to
        the smallest pair ``(a, b)``.  Training is incremental (pair counts
        and a pair -> words index are updated after each merge), so a 1 MB
        text trains in seconds.

        If the text runs out of pairs before ``vocab_size`` is reached,
        training stops early and the tokenizer's ``vocab_size`` is smaller
        than requested.

        Args:
            text: the training text.
            vocab_size: total number of tokens including the 256 bytes and the
                special token; must be at least 257.
            verbose: print each merge as it is learned.

        Raises:
            TypeError: if ``text`` is not a ``str``.
            ValueError: if ``vocab_size < 257``.
        """
        if not isinstance(text, str):
            raise TypeError(f"train expects str, got {type(text).__name__}")
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
            raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
        if vocab_size < 257:
            raise ValueError(
                f"vocab_size must be >= 257 (256 bytes + <|endoftext|>), got {vocab_size}"
            )
        num_merges = vocab_size - 257

        # Unique pre-split chunks ("words") with their frequencies.
        word_counts: Counter[str] = Counter()
        for piece in text.split(EOT_TOKEN):
            word_counts.update(gpt2_split(piece))
        words = [list(w.encode("utf-8")) for w in word_counts]
        freqs = list(word_counts.values())

        # Pair counts and, for each pair, the set of words containing it.
        pair_counts: dict[tuple[int, int], int] = {}
        where: dict[tuple[int, int], set[int]] = {}
        for wi, (w, f) in enumerate(zip(words, freqs)):
            for p in zip(w, w[1:]):
                pair_counts[p] = pair_counts.get(p, 0) + f
                where.setdefault(p, set()).add(wi)
        # Max-heap by (count desc, pair asc) with lazy deletion: an entry is
        # valid only while its count equals the pair's current count.
        heap = [(-c, a, b) for (a, b), c in pair_counts.items()]
        heapq.heapify(heap)

        merges: list[tuple[int, int]] = []
        vocab = [bytes([i]) for i in range(256)]
        while len(merges) < num_merges and heap:
            neg, a, b = heapq.heappop(heap)
            if pair_counts.get((a, b)) != -neg:
                continue  # stale entry
            new = 256 + len(merges)
            merges.append((a, b))
            vocab.append(vocab[a] + vocab[b])
            if verbose:
                print(
                    f"merge {len(merges)}/{num_merges}: ({a}, {b}) -> {new} "
                    f"{vocab[new]!r} count {-neg}"
                )

            delta: dict[tuple[int, int], int] = {}
            for wi in where.pop((a, b)):
                old = words[wi]
                upd = _merge_pair(old, a, b, new)
                words[wi] = upd
                f = freqs[wi]
                old_pairs = list(zip(old, old[1:]))
                new_pairs = list(zip(upd, upd[1:]))
                for p in old_pairs:
                    delta[p] = delta.get(p, 0) - f
                for p in new_pairs:
                    delta[p] = delta.get(p, 0) + f
                new_set = set(new_pairs)
                for p in set(old_pairs) - new_set:
                    s = where.get(p)
                    if s is not None:
                        s.discard(wi)
                for p in new_set:
                    where.setdefault(p, set()).add(wi)
            for p, d in delta.items():
                if d == 0:
                    continue
                c = pair_counts.get(p, 0) + d
                if c > 0:
                    pair_counts[p] = c
                    heapq.heappush(heap, (-c, p[0], p[1]))
                else:
                    pair_counts.pop(p, None)
                    where.pop(p, None)
        if verbose and len(merges) < num_merges:
            print(f"ran out of pairs after {len(merges)} merges; vocab_size {257 + len(merges)}")
        return cls(merges)

    # -- reading GPT-2 files --------------------------------------------------

    @classmethod
    def from_gpt2(cls, path) -> "BPETokenizer":
        """Read a GPT-2 tokenizer from its vocabulary and merges files.

        ``path`` may be a directory containing ``vocab.json`` + ``merges.txt``
        (Hugging Face layout) or ``encoder.json`` + ``vocab.bpe`` (OpenAI
        layout), or the path of any one of those files (its partner is looked
        up in the same directory).  Tokens in these files are strings over
        :func:`bytes_to_unicode` characters; the merges file lists one merge
        ``"<left> <right>"`` per line in rank order, optionally after a
        ``#version`` line.  Token ids come from the JSON vocabulary, including
        the id of ``<|endoftext|>`` (50256 in GPT-2), so ``encode`` returns the
        same ids as GPT-2.

        Raises:
            FileNotFoundError: naming a missing file.
            ValueError: naming the file for malformed content (bad JSON, a
                merge line without two tokens, tokens missing from the
                vocabulary, non-contiguous ids, no ``<|endoftext|>``, ...).
        """
        vocab_path, merges_path = _find_gpt2_files(os.fspath(path))
        try:
            with open(vocab_path, encoding="utf-8") as f:
                vocab = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{vocab_path}: not valid UTF-8 JSON ({e})") from None
        if not isinstance(vocab, dict):
            raise ValueError(f"{vocab_path}: expected a JSON object mapping tokens to ids")
        for tok, i in vocab.items():
            if isinstance(i, bool) or not isinstance(i, int) or i < 0:
                raise ValueError(f"{vocab_path}: token {tok!r} has invalid id {i!r}")
        if len(set(vocab.values())) != len(vocab):
            raise ValueError(f"{vocab_path}: two tokens share an id")
        if EOT_TOKEN not in vocab:
            raise ValueError(f"{vocab_path}: no {EOT_TOKEN} token")

        encoder = bytes_to_unicode()
        byte_ids = []
        for b in range(256):
            if encoder[b] not in vocab:
                raise ValueError(f"{vocab_path}: no token for byte {b} ({encoder[b]!r})")
            byte_ids.append(vocab[encoder[b]])

        try:
            with open(merges_path, encoding="utf-8") as f:
                lines = f.read().split("\n")
        except UnicodeDecodeError as e:
            raise ValueError(f"{merges_path}: not a UTF-8 text file ({e})") from None
        triples = []
        for lineno, line in enumerate(lines, start=1):
            line = line.rstrip("\r")
            if not line.strip() or (lineno == 1 and line.startswith("#version")):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(
                    f"{merges_path}: line {lineno}: expected two tokens, got {line[:60]!r}"
                )
            left, right = parts
            for tok in (left, right, left + right):
                if tok not in vocab:
                    raise ValueError(
                        f"{merges_path}: line {lineno}: token {tok!r} is not in {vocab_path}"
                    )
            triples.append((vocab[left], vocab[right], vocab[left + right]))

        merged = set(byte_ids) | {t[2] for t in triples} | {vocab[EOT_TOKEN]}
        stray = [tok for tok, i in vocab.items() if i not in merged]
        if stray:
            raise ValueError(
                f"{vocab_path}: {len(stray)} token(s) are neither bytes, merge results nor "
                f"{EOT_TOKEN}, e.g. {stray[0]!r}"
            )
        try:
            return cls(triples, byte_ids=byte_ids, eot_id=vocab[EOT_TOKEN])
        except ValueError as e:
            raise ValueError(f"{merges_path}: {e}") from None

    # -- properties -----------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Total number of token ids (bytes + merges + the special token)."""
        return len(self._vocab)

    @property
    def eot_token(self) -> int:
        """The id of the special ``<|endoftext|>`` token."""
        return self._eot_id

    @property
    def merges(self) -> list[tuple[int, int, int]]:
        """The merges in rank order as ``(a, b, new_id)`` triples (a copy)."""
        return list(self._merges)

    def token_bytes(self, token_id: int) -> bytes:
        """Return the bytes of one token (the special token's UTF-8 text for ``eot_token``)."""
        return self._vocab[_ids_to_list([token_id], len(self._vocab))[0]]

    # -- encoding -------------------------------------------------------------

    def encode(self, text: str, allowed_special: bool = True) -> list[int]:
        """Encode ``text`` to token ids.

        Args:
            text: the text to encode.
            allowed_special: if true (default, like Hugging Face's GPT-2
                tokenizer), each literal ``<|endoftext|>`` in ``text`` becomes
                :attr:`eot_token`; if false it is encoded as ordinary text.

        Raises:
            TypeError: if ``text`` is not a ``str``.
            UnicodeEncodeError (a ValueError): if ``text`` contains a lone
                surrogate code point, which has no UTF-8 encoding.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        out: list[int] = []
        if allowed_special and self._special in text:
            for k, piece in enumerate(text.split(self._special)):
                if k:
                    out.append(self._eot_id)
                self._encode_ordinary(piece, out)
        else:
            self._encode_ordinary(text, out)
        return out

    def _encode_ordinary(self, text: str, out: list[int]) -> None:
        cache = self._cache
        for chunk in gpt2_split(text):
            ids = cache.get(chunk)
            if ids is None:
                ids = self._bpe(chunk)
                if len(cache) >= self.CACHE_SIZE:
                    del cache[next(iter(cache))]  # evict the oldest entry
                cache[chunk] = ids
            out.extend(ids)

    def _bpe(self, chunk: str) -> list[int]:
        """Apply the merges to one pre-split chunk, lowest rank first.

        Like GPT-2: find the adjacent pair with the lowest rank, merge all its
        occurrences left to right, repeat.  This simple loop is quadratic, so
        long chunks go to the equivalent O(n log n) :meth:`_bpe_long`.
        """
        byte_ids = self._byte_ids
        ids = [byte_ids[b] for b in chunk.encode("utf-8")]
        if len(ids) > self._LONG_CHUNK:
            return self._bpe_long(ids)
        ranks = self._ranks
        never = len(self._merges)
        while len(ids) >= 2:
            pair = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, never))
            rank = ranks.get(pair)
            if rank is None:
                break
            ids = _merge_pair(ids, pair[0], pair[1], self._merges[rank][2])
        return ids

    _LONG_CHUNK = 64

    def _bpe_long(self, ids: list[int]) -> list[int]:
        """Heap-based BPE for long chunks; same result as the loop in :meth:`_bpe`.

        The tokens form a linked list; a heap holds (rank, position) of every
        mergeable adjacent pair.  Popping in (rank, position) order merges the
        lowest-rank pair's occurrences left to right, exactly as GPT-2 does,
        because a merge only creates pairs containing the new token, and those
        always rank later than the merge that made it.  Entries made stale by
        earlier merges are skipped.
        """
        ranks = self._ranks
        merges = self._merges
        n = len(ids)
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        heap = []
        for i in range(n - 1):
            r = ranks.get((ids[i], ids[i + 1]))
            if r is not None:
                heap.append((r, i))
        heapq.heapify(heap)
        dead = -1
        while heap:
            r, i = heapq.heappop(heap)
            a, b, new = merges[r]
            j = nxt[i]
            if j < 0 or ids[i] != a or ids[j] != b:
                continue  # stale: one of the two tokens has changed since the push
            ids[i] = new
            ids[j] = dead
            k = nxt[j]
            nxt[i] = k
            if k >= 0:
                prv[k] = i
                r2 = ranks.get((new, ids[k]))
                if r2 is not None:
                    heapq.heappush(heap, (r2, i))
            p = prv[i]
            if p >= 0:
                r2 = ranks.get((ids[p], new))
                if r2 is not None:
                    heapq.heappush(heap, (r2, p))
        return [t for t in ids if t != dead]

    def decode(self, ids: Iterable[int]) -> str:
        """Decode token ids (any iterable of ints, e.g. a numpy array) to text.

        Bytes are decoded as UTF-8 with ``errors="replace"``: a sequence of
        ids that splits a multi-byte character yields U+FFFD.

        Raises:
            TypeError: for non-integer ids.
            ValueError: for ids outside ``0 .. vocab_size-1``.
        """
        vocab = self._vocab
        data = b"".join([vocab[i] for i in _ids_to_list(ids, len(vocab))])
        return data.decode("utf-8", errors="replace")

    # -- persistence ----------------------------------------------------------

    def save(self, path) -> None:
        """Atomically write the tokenizer to ``path`` (format in the module docstring)."""
        lines = [
            f"{_MAGIC} {_FORMAT_VERSION} bpe",
            f"vocab_size {self.vocab_size}",
            f"special {self._eot_id} {json.dumps(self._special)}",
            "bytes " + " ".join(map(str, self._byte_ids)),
            f"merges {len(self._merges)}",
        ]
        lines += [f"{a} {b} {new}" for a, b, new in self._merges]
        atomic_write_text(path, "\n".join(lines) + "\n")

    @classmethod
    def load(cls, path) -> "BPETokenizer":
        """Read a tokenizer written by :meth:`save`; ``ValueError`` if the file is invalid."""
        r = _Reader(path)
        r.expect_kind("bpe")
        return cls._parse_body(r)

    @classmethod
    def _parse_body(cls, r: _Reader) -> "BPETokenizer":
        (vocab_size,) = r.ints(1, "vocab_size")
        line = r.next_line("'special' line")
        parts = line.split(" ", 2)
        if len(parts) != 3 or parts[0] != "special":
            raise r.error("expected 'special <id> <json string>'")
        eot_id = r.uint(parts[1])
        try:
            special = json.loads(parts[2])
        except (ValueError, RecursionError):  # not JSON, or nested too deeply
            special = None
        if not isinstance(special, str) or not special:
            raise r.error(f"special token must be a non-empty JSON string, got {parts[2][:40]!r}")
        byte_ids = r.ints(256, "bytes")
        (n,) = r.ints(1, "merges")
        first_merge_line = r.pos + 1
        triples = [r.ints(3) for _ in range(n)]
        r.end()
        ids = byte_ids + [t for m in triples for t in m] + [eot_id]
        bad = next((i for i in ids if i >= vocab_size), None)
        if bad is not None:
            raise ValueError(f"{r.path}: id {bad} is out of range for vocab_size {vocab_size}")
        try:
            tok = cls(triples, byte_ids=byte_ids, eot_id=eot_id, special_token=special)
        except ValueError as e:
            raise ValueError(f"{r.path}: {e} (merges start at line {first_merge_line})") from None
        if tok.vocab_size != vocab_size:
            raise ValueError(
                f"{r.path}: vocab_size says {vocab_size} but the file defines {tok.vocab_size} ids"
            )
        return tok

    # -- dunder ---------------------------------------------------------------

    def __eq__(self, other):
        if not isinstance(other, BPETokenizer):
            return NotImplemented
        return (
            self._byte_ids == other._byte_ids
            and self._merges == other._merges
            and self._eot_id == other._eot_id
            and self._special == other._special
        )

    __hash__ = None

    def __repr__(self) -> str:
        return (
            f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self._merges)}, "
            f"eot_token={self._eot_id})"
        )


def _find_gpt2_files(path: str) -> tuple[str, str]:
    """Resolve ``path`` to the (vocabulary json, merges) file pair of a GPT-2 tokenizer."""
    layouts = [("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")]
    if os.path.isdir(path):
        for vocab_name, merges_name in layouts:
            v = os.path.join(path, vocab_name)
            m = os.path.join(path, merges_name)
            if os.path.isfile(v) or os.path.isfile(m):
                for p in (v, m):
                    if not os.path.isfile(p):
                        raise FileNotFoundError(f"GPT-2 tokenizer file not found: {p}")
                return v, m
        raise FileNotFoundError(
            f"{path}: no GPT-2 tokenizer files (expected vocab.json + merges.txt "
            f"or encoder.json + vocab.bpe)"
        )
    if not os.path.exists(path):
        raise FileNotFoundError(f"GPT-2 tokenizer file not found: {path}")
    directory, name = os.path.split(path)
    for vocab_name, merges_name in layouts:
        if name in (vocab_name, merges_name):
            v = os.path.join(directory, vocab_name)
            m = os.path.join(directory, merges_name)
            for p in (v, m):
                if not os.path.isfile(p):
                    raise FileNotFoundError(f"GPT-2 tokenizer file not found: {p}")
            return v, m
    raise ValueError(
        f"{path}: not a GPT-2 tokenizer file (expected vocab.json, merges.txt, "
        f"encoder.json or vocab.bpe)"
    )


def load_tokenizer(path) -> CharTokenizer | BPETokenizer:
    """Load a tokenizer file written by either class, choosing the class from its header.

    Raises:
        ValueError: if the file is not a valid tokenizer file.
    """
    r = _Reader(path)
    kind = r.header()
    if kind == "char":
        return CharTokenizer._parse_body(r)
    return BPETokenizer._parse_body(r)
