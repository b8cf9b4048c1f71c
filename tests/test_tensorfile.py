"""Tests for pyllm.tensorfile: the safetensors format with numpy only."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from pyllm.tensorfile import (
    DTYPES,
    MAX_HEADER_SIZE,
    BF16Array,
    TensorFileError,
    atomic_write_bytes,
    atomic_write_text,
    bf16_bits_to_float32,
    float32_to_bf16_bits,
    load_safetensors,
    read_safetensors_header,
    save_safetensors,
)

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def build_file(header: dict | bytes | str, data: bytes = b"", length: int | None = None) -> bytes:
    """Assemble a file per the spec by hand: <u64 N> <header> <data>."""
    if isinstance(header, dict):
        raw = json.dumps(header).encode("utf-8")
    elif isinstance(header, str):
        raw = header.encode("utf-8")
    else:
        raw = header
    n = len(raw) if length is None else length
    return struct.pack("<Q", n) + raw + data


def write(tmp_path: Path, content: bytes, name: str = "f.safetensors") -> Path:
    p = tmp_path / name
    p.write_bytes(content)
    return p


# Example value generators per dtype code (numpy dtype, sample values).
SAMPLES = {
    "F64": np.array([[1.5, -2.25e300], [math.pi, -0.0]], dtype=np.float64),
    "F32": np.array([1.0, -3.5, 1e-40, np.inf, -np.inf], dtype=np.float32),
    "F16": np.array([[1.0, -2.0, 65504.0], [6e-8, 0.5, -0.0]], dtype=np.float16),
    "I64": np.array([-(2**63), 2**63 - 1, 0, -1], dtype=np.int64),
    "I32": np.array([[-(2**31)], [2**31 - 1], [7]], dtype=np.int32),
    "I16": np.array([-32768, 32767, 5], dtype=np.int16),
    "I8": np.array([-128, 127, 0], dtype=np.int8),
    "U64": np.array([0, 2**64 - 1, 12345], dtype=np.uint64),
    "U32": np.array([0, 2**32 - 1], dtype=np.uint32),
    "U16": np.array([[0, 65535], [1, 2]], dtype=np.uint16),
    "U8": np.array([0, 255, 17], dtype=np.uint8),
    "BOOL": np.array([[True, False, True]], dtype=np.bool_),
}


def assert_same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    assert a.dtype == b.dtype
    if a.dtype.kind == "f":
        np.testing.assert_array_equal(a, b)
        # Also compare bit patterns, so -0.0 and NaN payloads survive.
        assert a.tobytes() == b.astype(a.dtype).tobytes()
    else:
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------


def test_dtype_codes_cover_spec():
    assert set(DTYPES) == {
        "F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8",
        "U64", "U32", "U16", "U8", "BOOL",
    }


@pytest.mark.parametrize("code", sorted(SAMPLES))
def test_round_trip_every_dtype(tmp_path, code):
    arr = SAMPLES[code]
    tensors = {
        "full": arr,
        "empty": np.zeros((0,) + arr.shape[1:], dtype=arr.dtype),
        "scalar": np.array(arr.reshape(-1)[1]),
        "strided": arr.reshape(-1)[::2],
        "big_endian": arr.astype(arr.dtype.newbyteorder(">")),
        "transposed": np.atleast_2d(arr).T,
    }
    p = tmp_path / "t.safetensors"
    save_safetensors(p, tensors)
    header, _ = read_safetensors_header(p)
    loaded, meta = load_safetensors(p)
    assert meta == {}
    assert set(loaded) == set(tensors)
    for name, want in tensors.items():
        assert header[name]["dtype"] == code
        assert header[name]["shape"] == list(want.shape)
        got = loaded[name]
        assert got.dtype.isnative
        assert got.flags.writeable and got.flags.owndata
        assert_same(got, want.astype(want.dtype.newbyteorder("=")))
    # Arrays are independent of each other and of the file: changing every byte of one changes
    # no other array, nor the file, and a fresh load gives the saved values again.
    raw = p.read_bytes()
    snapshot = {name: a.copy() for name, a in loaded.items()}
    for name, a in loaded.items():
        if not a.size:
            continue
        a.reshape(-1).view(np.uint8)[...] ^= 1  # a different value in every element
        assert a.tobytes() != snapshot[name].tobytes()
        for other, b in loaded.items():
            if other != name:
                assert b.tobytes() == snapshot[other].tobytes(), (name, other)
        a[...] = snapshot[name]
    assert p.read_bytes() == raw
    again, _ = load_safetensors(p)
    for name, want in tensors.items():
        assert_same(again[name], want.astype(want.dtype.newbyteorder("=")))


def test_round_trip_bf16(tmp_path):
    bits = np.array([[0x3F80, 0xC040], [0x7F80, 0x0001]], dtype=np.uint16)
    p = tmp_path / "b.safetensors"
    save_safetensors(p, {"w": BF16Array(bits), "e": BF16Array(np.zeros((2, 0), np.uint16))})
    header, _ = read_safetensors_header(p)
    assert header["w"] == {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}
    loaded, _ = load_safetensors(p)
    want = np.array([[1.0, -3.0], [np.inf, 2.0**-133]], dtype=np.float32)
    assert loaded["w"].dtype == np.float32
    np.testing.assert_array_equal(loaded["w"], want)
    assert loaded["e"].shape == (2, 0) and loaded["e"].dtype == np.float32
    # Raw bytes are the little-endian bit patterns.
    raw = p.read_bytes()
    start = 8 + struct.unpack("<Q", raw[:8])[0]
    assert raw[start:start + 8] == struct.pack("<4H", 0x3F80, 0xC040, 0x7F80, 0x0001)


def test_metadata_round_trip_and_sorted_layout(tmp_path):
    meta = {"format": "pt", "config": json.dumps({"n_layer": 2}), "ünï": "cödé ✓", "": ""}
    p = tmp_path / "m.safetensors"
    tensors = {"zeta": np.ones(3, np.float32), "alpha": np.arange(2, dtype=np.int64), "mid": np.zeros(0, np.int8)}
    save_safetensors(p, tensors, metadata=meta)
    loaded, got_meta = load_safetensors(p)
    assert got_meta == meta
    header, data_start = read_safetensors_header(p)
    assert header["__metadata__"] == meta
    # Sorted-name order, back to back, no gaps.
    assert header["alpha"]["data_offsets"] == [0, 16]
    assert header["mid"]["data_offsets"] == [16, 16]
    assert header["zeta"]["data_offsets"] == [16, 28]
    assert os.path.getsize(p) == data_start + 28
    # Header length is a multiple of 8 and padded with spaces.
    raw = p.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    assert n % 8 == 0 and data_start == 8 + n
    text = raw[8:8 + n].decode("utf-8")
    stripped = text.rstrip(" ")
    assert stripped.endswith("}") and len(text) - len(stripped) < 8
    assert json.loads(text)["zeta"]["dtype"] == "F32"


def test_load_with_dtype_conversion(tmp_path):
    p = tmp_path / "c.safetensors"
    save_safetensors(p, {
        "h": np.array([1.0, -2.0, 0.5], np.float16),
        "b": BF16Array(np.array([0x4049], np.uint16)),
        "i": np.array([3, -4], np.int32),
    })
    loaded, _ = load_safetensors(p, dtype=np.float32)
    assert all(a.dtype == np.float32 for a in loaded.values())
    np.testing.assert_array_equal(loaded["h"], [1.0, -2.0, 0.5])
    np.testing.assert_array_equal(loaded["b"], [3.140625])
    np.testing.assert_array_equal(loaded["i"], [3.0, -4.0])


def test_hand_written_file_loads(tmp_path):
    """A file assembled byte for byte from the spec pins the format."""
    data = b"".join([
        struct.pack("<4f", 1.0, 2.0, -3.5, 0.25),        # a: F32 [2, 2]
        struct.pack("<3h", -1, 300, 32767),               # b: I16 [3]
        struct.pack("<2H", 0x3F80, 0xC2F7),               # c: BF16 [2] = 1.0, -123.5
        bytes([1, 0, 1]),                                 # d: BOOL [3]
        bytes([200]),                                     # e: U8 []
        struct.pack("<2e", 1.5, -0.125),                  # f: F16 [2, 1]
        b"\xde\xad",                                      # unused gap bytes
        struct.pack("<q", -(2**40)),                      # g: I64 [1]
    ])
    header = {
        "__metadata__": {"note": "hand made"},
        # Deliberately not in sorted order, with a gap before "g".
        "g": {"dtype": "I64", "shape": [1], "data_offsets": [36, 44]},
        "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "b": {"dtype": "I16", "shape": [3], "data_offsets": [16, 22]},
        "c": {"dtype": "BF16", "shape": [2], "data_offsets": [22, 26]},
        "d": {"dtype": "BOOL", "shape": [3], "data_offsets": [26, 29]},
        "e": {"dtype": "U8", "shape": [], "data_offsets": [29, 30]},
        "f": {"dtype": "F16", "shape": [2, 1], "data_offsets": [30, 34]},
        "z": {"dtype": "F64", "shape": [0, 5], "data_offsets": [44, 44]},
    }
    p = write(tmp_path, build_file(header, data))  # unpadded header: also valid
    loaded, meta = load_safetensors(p)
    assert meta == {"note": "hand made"}
    np.testing.assert_array_equal(loaded["a"], np.array([[1.0, 2.0], [-3.5, 0.25]], np.float32))
    assert loaded["a"].dtype == np.float32
    np.testing.assert_array_equal(loaded["b"], np.array([-1, 300, 32767], np.int16))
    assert loaded["b"].dtype == np.int16
    np.testing.assert_array_equal(loaded["c"], np.array([1.0, -123.5], np.float32))
    assert loaded["d"].dtype == np.bool_ and loaded["d"].tolist() == [True, False, True]
    assert loaded["e"].shape == () and loaded["e"].dtype == np.uint8 and int(loaded["e"]) == 200
    assert loaded["f"].dtype == np.float16 and loaded["f"].tolist() == [[1.5], [-0.125]]
    assert loaded["g"].dtype == np.int64 and loaded["g"].tolist() == [-(2**40)]
    assert loaded["z"].shape == (0, 5) and loaded["z"].dtype == np.float64
    header_back, data_start = read_safetensors_header(p)
    assert data_start == 8 + len(json.dumps(header).encode())
    assert header_back == header


def test_writer_bytes_match_spec(tmp_path):
    """The writer's bytes equal the spec layout built independently."""
    p = tmp_path / "w.safetensors"
    save_safetensors(p, {"b": np.array([7, -8], np.int16), "a": np.array([0.5], np.float32)}, {"k": "v"})
    raw = p.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    assert header == {
        "__metadata__": {"k": "v"},
        "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        "b": {"dtype": "I16", "shape": [2], "data_offsets": [4, 8]},
    }
    assert raw[8 + n:] == struct.pack("<f", 0.5) + struct.pack("<2h", 7, -8)


def test_every_bf16_bit_pattern_widens_exactly_and_rounds_back():
    """All 65,536 bfloat16 patterns: widened to float32, each equals the value decoded from its
    sign, exponent and mantissa fields in float64; rounding that float32 gives the same pattern
    back (a NaN gives a NaN of the same sign)."""
    p = np.arange(65536, dtype=np.uint32)
    sign = np.where(p >> 15, -1.0, 1.0)
    e, mant = (p >> 7) & 0xFF, (p & 0x7F).astype(np.float64)
    with np.errstate(over="ignore"):
        val = np.where(e == 0, mant * 2.0 ** -133, (1 + mant / 128) * 2.0 ** (e.astype(np.float64) - 127))
    val = np.where(e == 255, np.where(mant == 0, np.inf, np.nan), val) * sign
    got = bf16_bits_to_float32(p.astype(np.uint16))
    nan = np.isnan(val)
    assert np.array_equal(np.isnan(got), nan) and np.array_equal(got[~nan], val[~nan])
    back = float32_to_bf16_bits(got)
    assert np.array_equal(back[~nan], p[~nan].astype(np.uint16))
    assert np.all((back[nan] & 0x7FC0) == 0x7FC0) and np.array_equal(back[nan] >> 15, p[nan] >> 15)


def test_bf16_conversions_agree_with_ml_dtypes():
    """ml_dtypes (an independent implementation; skipped where it is not installed) agrees both
    ways: on all 65,536 patterns widened, and on random float32 values rounded (to nearest, ties
    to even)."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    p = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    got = bf16_bits_to_float32(p)
    ref = p.view(ml_dtypes.bfloat16).astype(np.float32)
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(got), nan) and np.array_equal(ref[~nan], got[~nan])
    x = np.random.default_rng(0).standard_normal(200_000).astype(np.float32)
    with np.errstate(over="ignore"):                  # some overflow to +-inf: kept as cases
        x *= np.float32(2.0) ** np.random.default_rng(1).integers(-130, 128, x.size).astype(
            np.float32)
    assert np.array_equal(float32_to_bf16_bits(x), x.astype(ml_dtypes.bfloat16).view(np.uint16))


def test_bf16_and_f16_conversion_hand_computed():
    bits = np.array([0x3F80, 0x4049, 0xC2F7, 0x7F80, 0xFF80, 0x0001, 0x8000, 0x0080], np.uint16)
    want = [1.0, 3.140625, -123.5, math.inf, -math.inf, 2.0**-133, -0.0, 2.0**-126]
    got = bf16_bits_to_float32(bits)
    assert got.dtype == np.float32
    assert got.tolist() == want
    assert math.copysign(1.0, got[6]) == -1.0
    assert math.isnan(bf16_bits_to_float32(np.array([0x7FC0], np.uint16))[0])
    # float32 -> bf16 rounds to nearest, ties to even.
    x = np.array([1.0, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 3.140625, -123.5, 1.0 + 2.0**-8 + 2.0**-20], np.float32)
    assert float32_to_bf16_bits(x).tolist() == [0x3F80, 0x3F80, 0x3F82, 0x4049, 0xC2F7, 0x3F81]
    assert float32_to_bf16_bits(np.float32(np.nan)) & 0x7FC0 == 0x7FC0
    # F16 via the file format.
    f16 = np.array([0x3C00, 0xC000, 0x7BFF, 0x0001, 0x7C00, 0x3555], np.uint16).view(np.float16)
    assert f16.astype(np.float32).tolist() == [1.0, -2.0, 65504.0, 2.0**-24, math.inf, 0.333251953125]


def test_f16_loads_to_float32_exactly(tmp_path):
    data = struct.pack("<3H", 0x3C00, 0x0001, 0xFBFF)
    p = write(tmp_path, build_file({"h": {"dtype": "F16", "shape": [3], "data_offsets": [0, 6]}}, data))
    loaded, _ = load_safetensors(p, dtype=np.float32)
    assert loaded["h"].tolist() == [1.0, 2.0**-24, -65504.0]


# ---------------------------------------------------------------------------
# safetensors package cross-check (only when installed)
# ---------------------------------------------------------------------------


def test_cross_check_with_safetensors_package(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    tensors = {k: v for k, v in SAMPLES.items()}
    ours = tmp_path / "ours.safetensors"
    theirs = tmp_path / "theirs.safetensors"
    save_safetensors(ours, tensors, {"a": "b"})
    back = st.load_file(str(ours))
    for k, v in tensors.items():
        np.testing.assert_array_equal(back[k], v)
    st.save_file(tensors, str(theirs), metadata={"c": "d"})
    loaded, meta = load_safetensors(theirs)
    assert meta == {"c": "d"}
    for k, v in tensors.items():
        assert_same(loaded[k], v)


# ---------------------------------------------------------------------------
# writer validation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tensors, metadata, exc, needle",
    [
        ({"": np.zeros(1)}, None, ValueError, "''"),
        ({"__metadata__": np.zeros(1)}, None, ValueError, "__metadata__"),
        ({3: np.zeros(1)}, None, TypeError, "3"),
        ({"x": [1.0, 2.0]}, None, TypeError, "'x'"),
        ({"c": np.zeros(2, np.complex64)}, None, TypeError, "'c'"),
        ({"o": np.array([None])}, None, TypeError, "'o'"),
        ({"s": np.array(["a"])}, None, TypeError, "'s'"),
        ({"deep": np.zeros((1,) * 9)}, None, ValueError, "'deep'"),
        ({"ok": np.zeros(1)}, {"k": 1}, TypeError, "'k'"),
        ({"ok": np.zeros(1)}, {2: "v"}, TypeError, "2"),
        ({"ok": np.zeros(1)}, ["k"], TypeError, "metadata"),
        ({"bad\udcff": np.zeros(1)}, None, ValueError, "UTF-8"),
    ],
)
def test_save_rejects_bad_input(tmp_path, tensors, metadata, exc, needle):
    p = tmp_path / "x.safetensors"
    with pytest.raises(exc) as info:
        save_safetensors(p, tensors, metadata)
    assert needle in str(info.value)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temp file left


def test_save_failure_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    p = tmp_path / "x.safetensors"
    save_safetensors(p, {"a": np.arange(3, dtype=np.int32)})
    before = p.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk on fire"):
        save_safetensors(p, {"a": np.arange(5, dtype=np.int32)})
    assert p.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["x.safetensors"]


def test_atomic_write_helpers(tmp_path):
    p = tmp_path / "cfg.json"
    atomic_write_text(p, '{"a": 1}\n')
    assert p.read_bytes() == b'{"a": 1}\n'
    os.chmod(p, 0o600)
    atomic_write_bytes(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    assert (os.stat(p).st_mode & 0o777) == 0o600  # permissions preserved
    atomic_write_text(p, "héllo\r\n")
    assert p.read_bytes() == "héllo\r\n".encode()
    with pytest.raises((IsADirectoryError, ValueError), match="directory"):
        atomic_write_bytes(tmp_path, b"x")
    with pytest.raises(TypeError):
        atomic_write_bytes(p, "text")
    with pytest.raises(TypeError):
        atomic_write_text(p, b"bytes")
    with pytest.raises(IsADirectoryError):
        save_safetensors(tmp_path, {"a": np.zeros(1)})
    assert sorted(x.name for x in tmp_path.iterdir()) == ["cfg.json"]


# ---------------------------------------------------------------------------
# hostile input
# ---------------------------------------------------------------------------

GOOD_ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
DATA8 = b"\x00" * 8


def _entry(**kw):
    e = dict(GOOD_ENTRY)
    e.update(kw)
    return e


HOSTILE = {
    "empty_file": b"",
    "short_file": b"\x01\x02\x03",
    "seven_bytes": b"\x00" * 7,
    "header_len_past_eof": struct.pack("<Q", 1000) + b"{}",
    "header_len_huge": struct.pack("<Q", 2**63 + 5) + b"{}",
    "header_len_all_ones": b"\xff" * 8 + b"{}",
    "not_utf8": build_file(b'{"a\xff": 1}'),
    "not_json": build_file("{not json"),
    "truncated_json": build_file('{"a": {"dtype": "F32"'),
    "json_array": build_file("[1, 2, 3]"),
    "json_string": build_file('"hello"'),
    "json_null": build_file("null"),
    "deep_nesting": build_file("[" * 100000 + "]" * 100000),
    "huge_int_literal": build_file('{"a": {"dtype": "F32", "shape": [' + "9" * 5000 + '], "data_offsets": [0, 8]}}'),
    "duplicate_key": build_file('{"a": ' + json.dumps(GOOD_ENTRY) + ', "a": ' + json.dumps(GOOD_ENTRY) + "}", DATA8),
    "entry_not_object": build_file({"a": [1, 2]}, DATA8),
    "entry_null": build_file({"a": None}, DATA8),
    "missing_dtype": build_file({"a": {"shape": [2], "data_offsets": [0, 8]}}, DATA8),
    "missing_shape": build_file({"a": {"dtype": "F32", "data_offsets": [0, 8]}}, DATA8),
    "missing_offsets": build_file({"a": {"dtype": "F32", "shape": [2]}}, DATA8),
    "unknown_dtype": build_file({"a": _entry(dtype="F8")}, DATA8),
    "dtype_not_str": build_file({"a": _entry(dtype=4)}, DATA8),
    "dtype_lowercase": build_file({"a": _entry(dtype="f32")}, DATA8),
    "shape_not_list": build_file({"a": _entry(shape=2)}, DATA8),
    "shape_dict": build_file({"a": _entry(shape={"0": 2})}, DATA8),
    "shape_negative": build_file({"a": _entry(shape=[-2])}, DATA8),
    "shape_neg_pair": build_file({"a": _entry(shape=[-1, -2])}, DATA8),
    "shape_float": build_file({"a": _entry(shape=[2.0])}, DATA8),
    "shape_bool": build_file({"a": _entry(shape=[True, True])}, DATA8),
    "shape_string": build_file({"a": _entry(shape=["2"])}, DATA8),
    "shape_too_many_dims": build_file({"a": _entry(shape=[1] * 9, data_offsets=[0, 4])}, DATA8),
    "shape_gigantic": build_file({"a": _entry(shape=[2**40, 2**40])}, DATA8),
    "shape_gigantic_zero": build_file({"a": _entry(shape=[0, 2**70], data_offsets=[0, 0])}, DATA8),
    "shape_mismatch": build_file({"a": _entry(shape=[3])}, DATA8),
    "offsets_not_list": build_file({"a": _entry(data_offsets="0,8")}, DATA8),
    "offsets_one": build_file({"a": _entry(data_offsets=[8])}, DATA8),
    "offsets_three": build_file({"a": _entry(data_offsets=[0, 8, 8])}, DATA8),
    "offsets_float": build_file({"a": _entry(data_offsets=[0.0, 8.0])}, DATA8),
    "offsets_bool": build_file({"a": _entry(shape=[], dtype="U8", data_offsets=[False, True])}, DATA8),
    "offsets_negative": build_file({"a": _entry(data_offsets=[-8, 0])}, DATA8),
    "offsets_reversed": build_file({"a": _entry(data_offsets=[8, 0])}, DATA8),
    "offsets_past_end": build_file({"a": _entry(data_offsets=[4, 12])}, DATA8),
    "offsets_huge": build_file({"a": _entry(shape=[2**61], data_offsets=[0, 2**63])}, DATA8),
    "overlap": build_file({"a": _entry(), "b": _entry(data_offsets=[4, 12])}, DATA8 * 2),
    "overlap_contained": build_file(
        {"a": _entry(shape=[4], data_offsets=[0, 16]), "b": _entry(shape=[1], data_offsets=[4, 8])}, DATA8 * 2
    ),
    "overlap_same": build_file({"a": _entry(), "b": _entry()}, DATA8),
    "metadata_not_object": build_file({"__metadata__": ["x"], "a": GOOD_ENTRY}, DATA8),
    "metadata_int_value": build_file({"__metadata__": {"k": 1}, "a": GOOD_ENTRY}, DATA8),
    "metadata_nested": build_file({"__metadata__": {"k": {"x": "y"}}}, DATA8),
    "metadata_null_value": build_file({"__metadata__": {"k": None}}),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_raises_tensorfileerror(tmp_path, name):
    p = write(tmp_path, HOSTILE[name])
    with pytest.raises(TensorFileError) as info:
        load_safetensors(p)
    assert str(p) in str(info.value)
    with pytest.raises(TensorFileError):
        read_safetensors_header(p)
    assert issubclass(TensorFileError, ValueError)


def test_truncated_data_raises(tmp_path):
    content = build_file({"a": GOOD_ENTRY, "b": _entry(data_offsets=[8, 16])}, DATA8 * 2)
    p = write(tmp_path, content[:-1])
    with pytest.raises(TensorFileError, match="beyond"):
        load_safetensors(p)


def test_header_over_limit_rejected_without_reading(tmp_path):
    # A sparse file large enough to "contain" a 150 MB header.
    p = tmp_path / "sparse.safetensors"
    with open(p, "wb") as f:
        f.write(struct.pack("<Q", MAX_HEADER_SIZE + 1))
        f.truncate(MAX_HEADER_SIZE + 1024)
    tracemalloc.start()
    try:
        with pytest.raises(TensorFileError, match="limit"):
            load_safetensors(p)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_gigantic_shape_fails_fast_without_allocating(tmp_path):
    content = build_file({"a": _entry(shape=[2**40, 2**40])}, DATA8)
    p = write(tmp_path, content)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(TensorFileError, match="'a'"):
            load_safetensors(p)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 1.0
    assert peak < 1_000_000


def test_zero_size_tensors_may_share_offsets(tmp_path):
    header = {
        "a": _entry(),
        "e1": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]},
        "e2": {"dtype": "I8", "shape": [3, 0], "data_offsets": [8, 8]},
    }
    loaded, _ = load_safetensors(write(tmp_path, build_file(header, DATA8)))
    assert loaded["e1"].shape == (0,) and loaded["e2"].shape == (3, 0)


def test_nonzero_bool_bytes_read_as_true(tmp_path):
    p = write(tmp_path, build_file({"m": {"dtype": "BOOL", "shape": [3], "data_offsets": [0, 3]}}, b"\x00\x02\xff"))
    loaded, _ = load_safetensors(p)
    assert loaded["m"].tolist() == [False, True, True]
    assert np.logical_not(loaded["m"]).tolist() == [True, False, False]


# ---------------------------------------------------------------------------
# leftovers of killed writers
# ---------------------------------------------------------------------------
# (Fuzzing of the loaders: tests/test_fuzz.py. Saves killed with SIGKILL: tests/test_atomic_save.py.)


@pytest.mark.skipif(os.name != "posix", reason="the clean-up of dead writers' files is POSIX only")
def test_save_removes_temp_files_of_dead_writers_only(tmp_path, monkeypatch):
    from pyllm.tensorfile import _host_tag

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)  # exited and reaped: no such process now
    host = _host_tag()
    name = "m.safetensors"
    files = {
        ".%s.%s.%d.abc123.tmp" % (name, host, dead_pid): False,       # dead writer: removed
        ".%s.%s.%d.def456.tmp" % (name, host, os.getpid()): True,     # this process: kept
        ".%s.%s.%d.ghi789.tmp" % (name, host, os.getppid()): True,    # a live process: kept
        ".%s.%s.%d.jkl000.tmp" % (name, "0badc0de" if host != "0badc0de" else "0badc0df",
                                  dead_pid): True,                    # another machine: kept
        ".%s.x1y2z3.tmp" % name: True,                                # other naming: kept
        ".other.safetensors.%s.%d.abc.tmp" % (host, dead_pid): True,  # another target: kept
    }
    for f in files:
        (tmp_path / f).write_bytes(b"partial")
    save_safetensors(tmp_path / name, {"a": np.arange(3, dtype=np.int32)})
    left = set(os.listdir(tmp_path))
    assert left == {name} | {f for f, keep in files.items() if keep}
    # the temp file of a save has the documented name: .<name>.<host>.<pid>.<random>.tmp
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(os.path.basename(src))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    save_safetensors(tmp_path / name, {"a": np.arange(2, dtype=np.int32)})
    assert len(seen) == 1 and seen[0].startswith(".%s.%s.%d." % (name, host, os.getpid()))
    assert seen[0].endswith(".tmp")
