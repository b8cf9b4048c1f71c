"""Tests for pyllm.data: default corpus, text reading, token cache, batches."""
import importlib.util
import json
import os
import platform
import struct
import sys

import numpy as np
import pytest

from pyllm import data
from pyllm.data import TokenDataset, default_corpus, read_text, tokenize_cached
from pyllm.rng import RNG
from pyllm.tokenizer import BPETokenizer, CharTokenizer

SHAKESPEARE = "/work/shared/data/tinyshakespeare.txt"


# --------------------------------------------------------------------------- default corpus


def test_default_corpus_deterministic_and_sizeable():
    text1, desc1 = default_corpus()
    text2, desc2 = default_corpus()
    assert text1 == text2 and desc1 == desc2
    assert len(text1.encode("utf-8")) > 200_000
    assert f"Python {platform.python_version()} " in desc1
    assert f"{len(text1.encode('utf-8')) / 1e6:.1f} MB" in desc1


def test_default_corpus_contents_and_order():
    topics = pytest.importorskip("pydoc_data.topics").topics  # some distros strip it
    text, desc = default_corpus()

    keys = sorted(topics)
    assert f"{len(keys)} pydoc topics" in desc
    first = keys[0] + "\n" + "=" * len(keys[0]) + "\n\n"
    assert text.startswith(first)
    # The textwrap source appears verbatim, after the last topic's text.
    with open(importlib.util.find_spec("textwrap").origin, encoding="utf-8") as f:
        src = f.read().strip("\n")
    pos = text.index("textwrap (source)\n")
    assert text.index(src) > pos > text.index(topics[keys[-1]].strip("\n"))


def test_default_corpus_without_pydoc_data(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydoc_data.topics", None)  # import now fails
    text, desc = default_corpus()
    assert "0 pydoc topics" in desc
    assert text.startswith("textwrap (source)\n=================\n\n")


def test_default_corpus_nothing_found(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydoc_data.topics", None)
    monkeypatch.setattr(data, "CORPUS_MODULES", ("no_such_module_pyllm_xyz", "nor.this_one"))
    with pytest.raises(RuntimeError, match="no default corpus"):
        default_corpus()


# --------------------------------------------------------------------------- read_text


def _write(path, content):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mode = "wb" if isinstance(content, bytes) else "w"
    with open(path, mode, **({} if mode == "wb" else {"encoding": "utf-8", "newline": ""})) as f:
        f.write(content)


def test_read_text_file(tmp_path):
    p = tmp_path / "x.dat"  # a named file is read whatever its extension
    _write(str(p), "héllo\r\nworld\n")
    assert read_text(p) == "héllo\r\nworld\n"
    _write(str(p), b"\xef\xbb\xbfbom text")
    assert read_text(str(p)) == "bom text"


def test_read_text_directory_order_and_join(tmp_path):
    d = str(tmp_path)
    _write(f"{d}/b.txt", "B")
    _write(f"{d}/a/z.md", "AZ")
    _write(f"{d}/a/y", "AY\n")
    _write(f"{d}/c.py", "C")
    _write(f"{d}/d.rst", "D")
    _write(f"{d}/empty.txt", "")  # skipped
    _write(f"{d}/.hidden.txt", "HIDDEN")
    _write(f"{d}/.git/config.txt", "GIT")
    _write(f"{d}/image.png", "PNG")  # wrong extension
    _write(f"{d}/notes.json", "{}")
    assert read_text(d) == "AY\n" + "\n\n" + "AZ" + "\n\n" + "B" + "\n\n" + "C" + "\n\n" + "D"


def test_read_text_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_text(tmp_path / "missing.txt")
    _write(str(tmp_path / "empty.txt"), "")
    with pytest.raises(ValueError, match="empty"):
        read_text(tmp_path / "empty.txt")
    _write(str(tmp_path / "nul.txt"), b"abc\x00def")
    with pytest.raises(ValueError, match="nul.txt"):
        read_text(tmp_path / "nul.txt")
    _write(str(tmp_path / "latin1.txt"), "caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt.*UTF-8"):
        read_text(tmp_path / "latin1.txt")


def test_read_text_directory_errors(tmp_path):
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    _write(str(empty / "image.png"), "not looked at")
    with pytest.raises(ValueError, match="no text files found in .*empty_dir"):
        read_text(empty)
    binary = tmp_path / "binary_dir"
    _write(str(binary / "a.txt"), b"\x00\x01")
    _write(str(binary / "b"), b"\xff\xfe\xfd")
    with pytest.warns(UserWarning) as record:
        with pytest.raises(ValueError, match="no text files found"):
            read_text(binary)
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 2 and "a.txt" in messages[0] and "NUL" in messages[0]
    assert messages[1].endswith("not UTF-8 text ('utf-8' codec can't decode byte 0xff in "
                                "position 0: invalid start byte)") and "binary_dir" in messages[1]
    _write(str(binary / "c.md"), "good")
    with pytest.warns(UserWarning):
        assert read_text(binary) == "good"


# --------------------------------------------------------------------------- tokenize_cached


def _meta(cache):
    with open(str(cache) + ".json", encoding="utf-8") as f:
        return json.load(f)


class CountingChar(CharTokenizer):
    """CharTokenizer that counts encode calls (and can forbid them)."""

    calls = 0
    forbid = False

    def encode(self, text):
        if self.forbid:
            raise AssertionError("encode called although the cache is valid")
        self.calls += 1
        return super().encode(text)


def test_tokenize_cached_round_trip_and_format(tmp_path):
    text = "hello world\nthe quick brown fox\n" * 50
    tok = CharTokenizer.train(text)
    cache = tmp_path / "sub" / "tokens.bin"
    ids = tokenize_cached(text, tok, cache)
    assert ids.dtype == np.uint16 and ids.ndim == 1
    assert ids.tolist() == tok.encode(text)
    assert tok.decode(ids) == text
    raw = cache.read_bytes()
    assert raw == struct.pack("<%dH" % len(text), *tok.encode(text))
    meta = _meta(cache)
    assert meta["format"] == "pyllm-tokens" and meta["version"] == 1
    assert meta["dtype"] == "uint16" and meta["count"] == len(text)
    import hashlib

    assert meta["text_sha256"] == hashlib.sha256(text.encode()).hexdigest()


def test_tokenize_cached_reuses_cache(tmp_path):
    text = "abcabc\nxyz\n" * 100
    tok = CountingChar.train(text)
    cache = tmp_path / "t.bin"
    first = tokenize_cached(text, tok, cache)
    assert tok.calls >= 1
    tok.forbid = True
    second = tokenize_cached(text, tok, str(cache))
    assert second.dtype == np.uint16 and np.array_equal(first, second)
    # A different tokenizer (other vocabulary) does not reuse it.
    tok2 = CharTokenizer.train(text + "Q")
    third = tokenize_cached(text, tok2, cache)
    assert third.tolist() == tok2.encode(text) != first.tolist()


def test_tokenize_cached_rebuilds_on_text_change(tmp_path):
    tok = CharTokenizer.train("abcd\n")
    cache = tmp_path / "t.bin"
    tokenize_cached("abc\n" * 10, tok, cache)
    new = tokenize_cached("dcba\n" * 7, tok, cache)
    assert tok.decode(new) == "dcba\n" * 7
    assert _meta(cache)["count"] == 35 and len(cache.read_bytes()) == 70


@pytest.mark.parametrize("damage", ["truncate", "flip", "sidecar", "no_sidecar", "extend"])
def test_tokenize_cached_rebuilds_damaged_cache(tmp_path, damage):
    text = "the cat sat on the mat\n" * 40
    tok = CountingChar.train(text)
    cache = tmp_path / "t.bin"
    good = tokenize_cached(text, tok, cache).copy()
    raw = cache.read_bytes()
    if damage == "truncate":
        cache.write_bytes(raw[:-2])
    elif damage == "flip":
        cache.write_bytes(raw[:10] + bytes([raw[10] ^ 1]) + raw[11:])
    elif damage == "sidecar":
        (tmp_path / "t.bin.json").write_text('{"format": "pyllm-tok')
    elif damage == "no_sidecar":
        os.unlink(str(cache) + ".json")
    else:
        cache.write_bytes(raw + b"\x00\x00")
    calls = tok.calls
    again = tokenize_cached(text, tok, cache)
    assert tok.calls > calls  # re-encoded
    assert np.array_equal(again, good)
    assert cache.read_bytes() == raw and _meta(cache)["count"] == len(text)
    tok.forbid = True  # and the rewritten cache is valid again
    assert np.array_equal(tokenize_cached(text, tok, cache), good)


class BigVocab:
    """A toy tokenizer with a vocabulary too large for uint16: id = 66000 + byte value."""

    vocab_size = 66256

    def encode(self, text):
        return [66000 + b for b in text.encode("utf-8")]

    def decode(self, ids):
        return bytes(i - 66000 for i in ids).decode("utf-8", "replace")


def test_tokenize_cached_uint32(tmp_path):
    cache = tmp_path / "t.bin"
    ids = tokenize_cached("hi!", BigVocab(), cache, tokenizer_key="bigvocab-v1")
    assert ids.dtype == np.uint32 and ids.tolist() == [66104, 66105, 66033]
    assert cache.read_bytes() == struct.pack("<3I", 66104, 66105, 66033)
    assert _meta(cache)["dtype"] == "uint32"
    again = tokenize_cached("hi!", BigVocab(), cache, tokenizer_key="bigvocab-v1")
    assert again.dtype == np.uint32 and np.array_equal(again, ids)


def test_tokenize_cached_rejects_out_of_range_ids(tmp_path):
    class Bad(BigVocab):
        vocab_size = 300

    with pytest.raises(ValueError, match="outside"):
        tokenize_cached("x", Bad(), tmp_path / "t.bin", tokenizer_key="bad")


def test_tokenize_cached_pieces_and_progress(tmp_path):
    # > 64K characters with awkward whitespace everywhere: chunked encoding must equal whole.
    unit = "word  word\n\n\nNext line\t \n indented\n  \nx\n\r\nend. \nplain\nline's\n"
    text = unit * 4000
    tok = BPETokenizer.train(unit * 3, 300)
    calls = []
    ids = tokenize_cached(text, tok, tmp_path / "t.bin",
                          progress=lambda done, total: calls.append((done, total)))
    assert ids.tolist() == tok.encode(text)
    total = len(text.encode("utf-8"))
    assert len(calls) >= 3 and calls[-1] == (total, total)
    assert all(a[0] < b[0] for a, b in zip(calls, calls[1:]))


@pytest.mark.skipif(not os.path.exists(SHAKESPEARE), reason="tinyshakespeare.txt not available")
def test_tinyshakespeare_round_trip(tmp_path):
    text = read_text(SHAKESPEARE)
    tok = CharTokenizer.train(text)
    ids = tokenize_cached(text, tok, tmp_path / "t.bin")
    assert len(ids) == len(text) and tok.decode(ids) == text


# --------------------------------------------------------------------------- TokenDataset


def test_dataset_split_sizes():
    ds = TokenDataset(np.arange(1000))
    assert (ds.n_train, ds.n_val) == (900, 100)
    assert ds.train_tokens.tolist() == list(range(900))
    assert ds.val_tokens.tolist() == list(range(900, 1000))
    assert (TokenDataset(np.arange(1000), val_fraction=0.0).n_val) == 0
    ds = TokenDataset(np.arange(10, dtype=np.uint16), val_fraction=0.5)
    assert (ds.n_train, ds.n_val) == (5, 5)
    ds = TokenDataset(np.arange(37), val_fraction=0.2)  # 7.4 rounds to 7
    assert (ds.n_train, ds.n_val) == (30, 7)


@pytest.mark.parametrize("bad", [np.arange(12.0), np.zeros((3, 4), dtype=np.int64),
                                 np.array([], dtype=np.int64), np.array([True, False])])
def test_dataset_rejects_bad_tokens(bad):
    with pytest.raises(ValueError):
        TokenDataset(bad)


@pytest.mark.parametrize("frac", [-0.1, 0.51, 1.0])
def test_dataset_rejects_bad_fraction(frac):
    with pytest.raises(ValueError, match="val_fraction"):
        TokenDataset(np.arange(100), val_fraction=frac)


def test_get_batch_offsets_are_pinned():
    """The offsets are pinned, not replayed: PCG32 with seed 7 (stream 54) gives the raw outputs
    0xa454b9c3 0x6c327fbc 0x198bc4fd 0xb7666de2 | 0xb92c3a58 0x7d8e9eef 0xd090758e 0xc3b0fe85.
    The train split holds 900 tokens, so with T = 8 each train row draws randbelow(892):
    the rejection threshold (2**32 - 892) % 892 = 676 rejects none of the first four, and their
    residues mod 892 are 103, 284, 389, 34. The val split holds 100: randbelow(92), threshold
    (2**32 - 92) % 92 = 12, residues 64, 7, 22, 85 (worked out with a calculator from the hex)."""
    tokens = (np.arange(1000) * 7 % 65521).astype(np.uint16)  # distinct values
    ds = TokenDataset(tokens)
    B, T = 4, 8
    rng = RNG(7)
    x, y = ds.get_batch("train", B, T, rng)
    assert x.dtype == np.int32 and y.dtype == np.int32 and x.shape == y.shape == (B, T)
    for b, o in enumerate([103, 284, 389, 34]):
        assert x[b].tolist() == [(o + t) * 7 for t in range(T)]
        assert y[b].tolist() == [(o + 1 + t) * 7 for t in range(T)]
    check = RNG(7)
    for _ in range(B):
        check.next_u32()
    assert rng.get_state() == check.get_state()  # exactly B draws, none rejected
    xv, yv = ds.get_batch("val", B, T, rng)
    for b, o in enumerate([64, 7, 22, 85]):
        assert xv[b].tolist() == [(900 + o + t) * 7 for t in range(T)]
        assert yv[b].tolist() == [(901 + o + t) * 7 for t in range(T)]


def test_get_batch_seeds():
    ds = TokenDataset(np.arange(5000))
    a = ds.get_batch("train", 8, 16, RNG(1))
    b = ds.get_batch("train", 8, 16, RNG(1))
    c = ds.get_batch("train", 8, 16, RNG(2))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_get_batch_errors():
    ds = TokenDataset(np.arange(100))  # 90 train, 10 val
    x, y = ds.get_batch("train", 3, 89, RNG(0))  # the largest block that fits: offset 0
    assert x[0].tolist() == list(range(89)) and y[2].tolist() == list(range(1, 90))
    with pytest.raises(ValueError, match="train split has 90 tokens.*block_size 90"):
        ds.get_batch("train", 1, 90, RNG(0))
    with pytest.raises(ValueError, match="val split has 10 tokens"):
        ds.get_batch("val", 1, 10, RNG(0))
    with pytest.raises(ValueError, match="split must be"):
        ds.get_batch("test", 1, 4, RNG(0))
    with pytest.raises(ValueError):
        ds.get_batch("train", 0, 4, RNG(0))
    no_val = TokenDataset(np.arange(100), val_fraction=0)
    with pytest.raises(ValueError, match="no validation split"):
        no_val.get_batch("val", 1, 4, RNG(0))


def test_pcg32_known_answers():
    """PCG32 against the published reference: pcg-c-basic's pcg32-demo seeds pcg32 (XSH-RR) with
    initstate 42, initseq 54 and prints these six outputs, then 65 coin flips
    (pcg32_boundedrand(2)) and 33 dice rolls (pcg32_boundedrand(6) + 1), which randbelow must
    reproduce since it uses the same rejection rule."""
    r = RNG(42, stream=54)
    assert [r.next_u32() for _ in range(6)] == [0xa15c02b7, 0x7b47f409, 0xba1d3330,
                                                0x83d2f293, 0xbfa4784b, 0xcbed606e]
    coins = "".join("H" if r.randbelow(2) else "T" for _ in range(65))
    assert coins == "HHTTTHTHHHTHTTTHHHHHTTTHHHTHTHTHTTHTTTHHHHHHTTTTHHTTTTTHTTTTTTTHT"
    rolls = [r.randbelow(6) + 1 for _ in range(33)]
    assert rolls == [3, 4, 1, 1, 2, 2, 3, 2, 4, 3, 2, 4, 3, 3, 5, 2, 3, 1, 3, 1, 5, 1, 4, 1, 5,
                     6, 4, 6, 6, 2, 6, 3, 3]
