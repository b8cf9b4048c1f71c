"""Tensor files in the *safetensors* layout, read and written with numpy alone.

pyllm stores tensors (model weights, optimizer state) in the safetensors
format.  This module implements it from the specification with nothing but
the standard library and numpy: no pickle is ever involved, so loading a file
from an untrusted source cannot execute code, and every size in the file is
validated before anything large is allocated.

File layout
-----------
A file is three consecutive parts::

    +----------------+----------------------+---------------------------+
    | N (8 bytes)    | header (N bytes)     | data buffer (rest of file)|
    +----------------+----------------------+---------------------------+

``N``
    Unsigned 64-bit integer, **little-endian**: the byte length of the
    header.  Readers here refuse ``N`` larger than the rest of the file or
    larger than :data:`MAX_HEADER_SIZE` (100,000,000 bytes, the limit of the
    reference implementation).

header
    ``N`` bytes of **UTF-8 JSON** holding one object.  The writer pads the
    JSON on the right with ASCII spaces (``0x20``) so that ``N`` is a
    multiple of 8, which keeps the data buffer 8-byte aligned relative to
    the start of the file (the reference writer does the same; readers
    simply treat the padding as JSON whitespace).  The object maps

    * each tensor name (any non-empty string other than ``"__metadata__"``)
      to an object with exactly these fields (unknown extra fields are
      ignored by the reader, never written):

      ``"dtype"``
          a string code from the table below;
      ``"shape"``
          a list of non-negative integers (``[]`` for a 0-d scalar; at most
          :data:`MAX_NDIM` = 8 dimensions are accepted);
      ``"data_offsets"``
          ``[begin, end]``: integers with ``0 <= begin <= end``, byte
          offsets *relative to the start of the data buffer* (i.e. file
          offset ``8 + N + begin``).  ``end - begin`` must equal
          ``prod(shape) * itemsize``.

    * optionally the key ``"__metadata__"`` to an object mapping strings to
      strings (free-form, e.g. ``{"format": "pt"}`` or a JSON-encoded
      config).

data buffer
    The raw bytes of every tensor, each stored **C order (row-major),
    little-endian**, with no per-tensor framing.  Tensors must not overlap
    (half-open ranges ``[begin, end)``; a zero-size tensor overlaps
    nothing).  This writer lays tensors out back to back in sorted-name
    order with no gaps and emits the header keys as ``"__metadata__"``
    first, then the tensors in the same sorted order, in compact JSON
    (``","`` and ``":"`` separators, non-ASCII written as raw UTF-8).  The
    reader tolerates gaps and any order, as the format allows.

dtype codes
    ======== ============================ =========
    code     numpy (as stored)            itemsize
    ======== ============================ =========
    F64      ``<f8``                      8
    F32      ``<f4``                      4
    F16      ``<f2`` (IEEE half)          2
    BF16     bfloat16 (see below)         2
    I64      ``<i8``                      8
    I32      ``<i4``                      4
    I16      ``<i2``                      2
    I8       ``i1``                       1
    U64      ``<u8``                      8
    U32      ``<u4``                      4
    U16      ``<u2``                      2
    U8       ``u1``                       1
    BOOL     one byte, 0 = False          1
    ======== ============================ =========

    numpy has no bfloat16 type.  A BF16 value is the top 16 bits of the
    IEEE float32 with the same sign/exponent, so it is *loaded* as float32
    by shifting the 16 bits into the top of a uint32 (exact, lossless).  To
    *save* BF16, wrap the bit patterns in :class:`BF16Array` (e.g.
    ``BF16Array.from_float(x)``, which rounds to nearest-even); arrays
    whose numpy dtype is named ``"bfloat16"`` (the ``ml_dtypes`` package)
    are also written as BF16.  When loading BOOL, any non-zero byte reads
    as True.

Writes are atomic: the file is written to a temporary file in the same
directory, flushed and fsync'ed, moved onto the target with
:func:`os.replace` and the directory is fsync'ed (best effort).  A process
killed at any moment leaves either the complete old file or the complete
new one at the target path, plus, at worst, its temporary file
``.<name>.<host>.<pid>.<random>.tmp`` next to it (``<host>``: 8 hex digits
identifying the machine, ``<pid>``: the writer's process id).  Such leftovers
do not pile up: on POSIX systems each successful write removes the ones of
the same target whose writer, on this machine, is no longer running (a
live writer's file is never touched).  :func:`atomic_write_bytes` and
:func:`atomic_write_text` expose the same routine for other files (e.g.
JSON configs).

Public API: :func:`save_safetensors`, :func:`load_safetensors`,
:func:`read_safetensors_header`, :func:`atomic_write_bytes`,
:func:`atomic_write_text`, :class:`TensorFileError`, :class:`BF16Array`,
:func:`float32_to_bf16_bits`, :func:`bf16_bits_to_float32`,
:data:`DTYPES`, :data:`MAX_HEADER_SIZE`, :data:`MAX_NDIM`.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import zlib
from collections.abc import Mapping
from typing import Any, BinaryIO, Callable

import numpy as np

__all__ = [
    "DTYPES",
    "MAX_HEADER_SIZE",
    "MAX_NDIM",
    "BF16Array",
    "TensorFileError",
    "atomic_write_bytes",
    "atomic_write_text",
    "bf16_bits_to_float32",
    "float32_to_bf16_bits",
    "load_safetensors",
    "read_safetensors_header",
    "save_safetensors",
]

#: Largest header (in bytes) a reader accepts; same value as the reference.
MAX_HEADER_SIZE: int = 100_000_000

#: Largest number of dimensions a tensor may have (reader and writer).
MAX_NDIM: int = 8

_METADATA_KEY = "__metadata__"

# code -> little-endian numpy dtype of the stored bytes.  BF16 is stored as
# raw uint16 bit patterns; BOOL as one byte per element.
_STORAGE: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("u1"),
}

#: The supported dtype codes, in the order of the table in the module doc.
DTYPES: tuple[str, ...] = tuple(_STORAGE)

# (numpy kind, itemsize) -> code, for arrays handed to the writer.
_CODE_OF: dict[tuple[str, int], str] = {
    ("f", 8): "F64",
    ("f", 4): "F32",
    ("f", 2): "F16",
    ("i", 8): "I64",
    ("i", 4): "I32",
    ("i", 2): "I16",
    ("i", 1): "I8",
    ("u", 8): "U64",
    ("u", 4): "U32",
    ("u", 2): "U16",
    ("u", 1): "U8",
    ("b", 1): "BOOL",
}


class TensorFileError(ValueError):
    """A tensor file is malformed, truncated, inconsistent or hostile.

    Raised by :func:`load_safetensors` and :func:`read_safetensors_header`
    with a message of the form ``"<path>: <problem>"``.  It subclasses
    :class:`ValueError`, so ``except ValueError`` also catches it.
    """


# ---------------------------------------------------------------------------
# bfloat16 helpers
# ---------------------------------------------------------------------------


def float32_to_bf16_bits(x: Any) -> np.ndarray:
    """Convert floats to bfloat16 bit patterns (``uint16`` array, same shape).

    ``x`` is converted to float32 first, then rounded to the nearest
    bfloat16 with ties to even (the usual hardware rounding).  NaNs stay
    NaN (quiet NaN with the sign kept); infinities stay infinite; finite
    values too large for bfloat16 round to infinity as IEEE rounding does.
    """
    f = np.ascontiguousarray(x, dtype=np.float32)
    u = f.view(np.uint32).astype(np.uint64)  # room for the rounding carry
    rounding_bias = np.uint64(0x7FFF) + ((u >> np.uint64(16)) & np.uint64(1))
    bits = ((u + rounding_bias) >> np.uint64(16)).astype(np.uint16)
    nan = np.isnan(f)
    if nan.any():
        sign = (f.view(np.uint32) >> np.uint32(16)).astype(np.uint16) & np.uint16(0x8000)
        bits = np.where(nan, sign | np.uint16(0x7FC0), bits).astype(np.uint16)
    return bits.reshape(f.shape)


def bf16_bits_to_float32(bits: Any) -> np.ndarray:
    """Convert bfloat16 bit patterns (``uint16``) to a float32 array, exactly.

    Each 16-bit pattern becomes the top half of a 32-bit pattern whose low
    half is zero, which is precisely the float32 with the same value (NaN,
    infinities and subnormals included).  Returns a new, owned array.
    """
    b = np.asarray(bits)
    if b.dtype.kind != "u" or b.dtype.itemsize != 2:
        raise TypeError(f"bf16 bits must be a uint16 array, got dtype {b.dtype}")
    out = np.empty(b.shape, dtype=np.float32)
    wide = out.view(np.uint32)
    wide[...] = b
    wide <<= np.uint32(16)
    return out


class BF16Array:
    """A tensor to be saved with dtype ``BF16``: wraps raw bfloat16 bits.

    ``bits`` must be a ``uint16`` numpy array (any shape, any byte order,
    any strides) holding bfloat16 bit patterns.  Use
    :meth:`BF16Array.from_float` to round float data to bfloat16.  Pass the
    wrapper as a value in the ``tensors`` dict of :func:`save_safetensors`.
    """

    __slots__ = ("bits",)

    def __init__(self, bits: np.ndarray) -> None:
        """Wrap ``bits`` (a ``uint16`` ndarray of bfloat16 bit patterns)."""
        if not isinstance(bits, np.ndarray) or bits.dtype.kind != "u" or bits.dtype.itemsize != 2:
            raise TypeError("BF16Array needs a numpy uint16 array of bfloat16 bit patterns")
        self.bits = bits

    @classmethod
    def from_float(cls, x: Any) -> "BF16Array":
        """Round ``x`` (anything float-like) to bfloat16 and wrap the bits."""
        return cls(float32_to_bf16_bits(x))

    @property
    def shape(self) -> tuple[int, ...]:
        """The tensor shape (that of ``bits``)."""
        return self.bits.shape

    def to_float32(self) -> np.ndarray:
        """Return the values as a float32 array (exact)."""
        return bf16_bits_to_float32(self.bits)

    def __repr__(self) -> str:
        return f"BF16Array(shape={self.bits.shape})"


# ---------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------


def _default_file_mode() -> int:
    """Mode a freshly created regular file would get: 0o666 minus the umask."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o644


def _fsync_dir(directory: str) -> None:
    """fsync a directory so a rename inside it is durable (best effort)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(directory, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _host_tag() -> str:
    """8 hex digits naming this machine in temp-file names (no dots, unlike host names)."""
    return "%08x" % (zlib.crc32(socket.gethostname().encode("utf-8", "replace")) & 0xFFFFFFFF)


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a zombie counts); when in doubt, True. POSIX only."""
    try:
        os.kill(pid, 0)  # signal 0: only the existence and permission checks
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # e.g. EPERM: it exists, owned by someone else
        return True
    return True


def _remove_dead_writers_temps(directory: str, basename: str) -> None:
    """Remove the temp files of ``basename`` left by writers on this host that are gone (a
    process killed mid-write cannot clean up). Best effort; POSIX only."""
    if os.name != "posix":
        return
    prefix = "." + basename + "." + _host_tag() + "."
    me = os.getpid()
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(prefix):].split(".", 1)[0]
        if not (pid.isascii() and pid.isdigit() and len(pid) <= 10):
            continue
        if int(pid) == me or _pid_alive(int(pid)):
            continue
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:
            pass


def _atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Write a file atomically: temp file in the same dir, fsync, replace.

    ``write`` receives the open binary temp file.  On any exception
    (including KeyboardInterrupt) the temp file is removed and the target
    is left untouched.  The new file keeps the permission bits of the file
    it replaces, or gets the umask default when the target is new.  A
    symlink at ``path`` is replaced by the regular file (not followed).
    """
    target = os.fspath(path)
    if isinstance(target, bytes):
        target = os.fsdecode(target)
    if os.path.isdir(target):
        raise IsADirectoryError(f"{target}: refusing to write a file over an existing directory")
    directory = os.path.dirname(os.path.abspath(target))
    try:
        mode = os.stat(target).st_mode & 0o7777
    except OSError:
        mode = _default_file_mode()
    basename = os.path.basename(target)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp",
                               prefix=".%s.%s.%d." % (basename, _host_tag(), os.getpid()))
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)
    _remove_dead_writers_temps(directory, basename)


def atomic_write_bytes(path: str | os.PathLike, data: bytes | bytearray | memoryview) -> None:
    """Atomically replace (or create) the file at ``path`` with ``data``.

    Writes a temp file in the target's directory, flushes and fsyncs it,
    ``os.replace``-s it onto ``path`` and fsyncs the directory (best
    effort).  Readers and crash survivors see either the old or the new
    complete file, never a partial one.  Raises :class:`IsADirectoryError`
    if ``path`` is an existing directory and :class:`TypeError` if ``data``
    is not bytes-like.
    """
    if isinstance(data, str) or not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes-like, got {type(data).__name__}")
    _atomic_write(path, lambda f: f.write(data))


def check_output_file(path, example):
    """Refuse, before any work, an output file path that is a directory or whose folder does not
    exist; ``example`` is a file name to suggest (e.g. ``model.html``). Returns the path."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError("%s is a directory; give a file name such as %s" % (path, example))
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError("the folder %s does not exist" % parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Atomically replace (or create) ``path`` with ``text`` encoded as ``encoding``.

    The text is written exactly (no newline translation).  Same guarantees
    and errors as :func:`atomic_write_bytes`; :class:`TypeError` if ``text``
    is not a str.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    atomic_write_bytes(path, text.encode(encoding))


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------


def _prepare_tensor(name: str, value: Any) -> tuple[str, np.ndarray]:
    """Validate one writer input; return (dtype code, C-contiguous LE array)."""
    if isinstance(value, BF16Array):
        code, arr = "BF16", value.bits
    elif isinstance(value, np.ndarray):
        arr = value
        if arr.dtype.name == "bfloat16" and arr.dtype.itemsize == 2:  # ml_dtypes
            code, arr = "BF16", arr.view(np.uint16)
        else:
            code = _CODE_OF.get((arr.dtype.kind, arr.dtype.itemsize))
            if code is None:
                raise TypeError(
                    f"tensor {name!r}: unsupported dtype {arr.dtype} "
                    f"(supported codes: {', '.join(DTYPES)})"
                )
    else:
        raise TypeError(f"tensor {name!r}: expected a numpy ndarray or BF16Array, got {type(value).__name__}")
    if arr.ndim > MAX_NDIM:
        raise ValueError(f"tensor {name!r}: {arr.ndim} dimensions, at most {MAX_NDIM} are supported")
    # Copies only when needed (non-contiguous, big-endian, or bool -> u1).
    # (np.asarray keeps 0-d arrays 0-d, unlike np.ascontiguousarray.)
    return code, np.asarray(arr, dtype=_STORAGE[code], order="C")


def save_safetensors(
    path: str | os.PathLike,
    tensors: Mapping[str, np.ndarray | BF16Array],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``tensors`` (and optional string ``metadata``) to ``path`` atomically.

    ``tensors`` maps names to numpy arrays (any shape up to 8-d, any
    strides or byte order; dtypes float64/32/16, int64/32/16/8,
    uint64/32/16/8, bool) or :class:`BF16Array`.  Names must be non-empty
    strings other than ``"__metadata__"``; ``metadata`` must map str to
    str.  Invalid input raises :class:`TypeError` / :class:`ValueError`
    naming the offending key, before any file is created.

    Tensors are stored in sorted-name order, C order, little-endian; see
    the module docstring for the exact layout.  The write is atomic (temp
    file + fsync + ``os.replace`` + directory fsync): a crash at any point
    leaves either the previous file or the complete new one.  A zero-size
    tensor is fine.
    """
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a dict of name -> ndarray, got {type(tensors).__name__}")
    prepared: list[tuple[str, str, np.ndarray]] = []
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor name {name!r}: names must be str, got {type(name).__name__}")
        if not name:
            raise ValueError("tensor name '': names must be non-empty")
        if name == _METADATA_KEY:
            raise ValueError(f"tensor name {name!r} is reserved for the metadata block")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"tensor name {name!r} is not encodable as UTF-8: {e}") from None
        code, arr = _prepare_tensor(name, value)
        prepared.append((name, code, arr))
    prepared.sort(key=lambda t: t[0])

    header: dict[str, Any] = {}
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise TypeError(f"metadata must be a dict of str -> str, got {type(metadata).__name__}")
        meta: dict[str, str] = {}
        for k, v in metadata.items():
            if not isinstance(k, str):
                raise TypeError(f"metadata key {k!r}: keys must be str, got {type(k).__name__}")
            if not isinstance(v, str):
                raise TypeError(f"metadata key {k!r}: values must be str, got {type(v).__name__}")
            try:
                k.encode("utf-8")
                v.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(f"metadata key {k!r}: not encodable as UTF-8: {e}") from None
            meta[k] = v
        header[_METADATA_KEY] = meta

    offset = 0
    for name, code, arr in prepared:
        nbytes = arr.nbytes
        header[name] = {
            "dtype": code,
            "shape": [int(d) for d in arr.shape],
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes

    raw = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    if len(raw) > MAX_HEADER_SIZE:
        raise ValueError(f"header would be {len(raw)} bytes, more than the {MAX_HEADER_SIZE} a reader accepts")

    def write(f: BinaryIO) -> None:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for _, _, arr in prepared:
            if arr.size:
                f.write(arr.reshape(-1).view(np.uint8).data)

    _atomic_write(path, write)


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


class _Entry:
    """A validated header entry."""

    __slots__ = ("name", "code", "shape", "begin", "end")

    def __init__(self, name: str, code: str, shape: tuple[int, ...], begin: int, end: int) -> None:
        self.name, self.code, self.shape, self.begin, self.end = name, code, shape, begin, end


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _parse_header(
    f: BinaryIO, where: str
) -> tuple[dict[str, Any], list[_Entry], dict[str, str], int]:
    """Read and fully validate the header of the open file ``f``.

    Returns (raw header dict, entries, metadata, data_start).  Raises
    TensorFileError for anything malformed; reads at most the header.
    """

    def fail(msg: str) -> TensorFileError:
        return TensorFileError(f"{where}: {msg}")

    file_size = os.fstat(f.fileno()).st_size
    prefix = f.read(8)
    if len(prefix) < 8:
        raise fail(f"file is {len(prefix)} bytes, too short for the 8-byte header length")
    n = int.from_bytes(prefix, "little")
    if n > MAX_HEADER_SIZE:
        raise fail(f"header length {n} exceeds the limit of {MAX_HEADER_SIZE} bytes "
                   "(not a safetensors file?)")
    if n > file_size - 8:
        raise fail(f"header length {n} is larger than the rest of the file ({file_size - 8} bytes;"
                   " not a safetensors file?)")
    raw = f.read(n)
    if len(raw) != n:
        raise fail(f"file truncated while reading the {n}-byte header")
    data_start = 8 + n
    data_len = file_size - data_start

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise fail(f"header is not valid UTF-8 ({e})") from None
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise fail("header JSON is nested too deeply") from None
    except ValueError as e:  # includes json.JSONDecodeError and int-size limits
        raise fail(f"header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise fail(f"header must be a JSON object, got {type(header).__name__}")

    metadata: dict[str, str] = {}
    entries: list[_Entry] = []
    for name, info in header.items():
        if name == _METADATA_KEY:
            if not isinstance(info, dict):
                raise fail(f"__metadata__ must be an object, got {type(info).__name__}")
            for k, v in info.items():
                if not isinstance(v, str):
                    raise fail(f"__metadata__ value for {k!r} must be a string, got {type(v).__name__}")
            metadata = dict(info)
            continue
        if not isinstance(info, dict):
            raise fail(f"tensor {name!r}: entry must be an object, got {type(info).__name__}")
        for field in ("dtype", "shape", "data_offsets"):
            if field not in info:
                raise fail(f"tensor {name!r}: missing field {field!r}")
        code = info["dtype"]
        if not isinstance(code, str) or code not in _STORAGE:
            raise fail(f"tensor {name!r}: unknown dtype {code!r} (supported: {', '.join(DTYPES)})")
        shape = info["shape"]
        if not isinstance(shape, list):
            raise fail(f"tensor {name!r}: shape must be a list, got {type(shape).__name__}")
        if len(shape) > MAX_NDIM:
            raise fail(f"tensor {name!r}: shape has {len(shape)} dimensions, at most {MAX_NDIM} allowed")
        for d in shape:
            if not _is_int(d) or d < 0:
                raise fail(f"tensor {name!r}: shape {shape!r} must contain non-negative integers only")
        offsets = info["data_offsets"]
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_int(o) for o in offsets)
        ):
            raise fail(f"tensor {name!r}: data_offsets must be a list of two integers, got {offsets!r}")
        begin, end = offsets
        if not 0 <= begin <= end:
            raise fail(f"tensor {name!r}: data_offsets {offsets!r} must satisfy 0 <= begin <= end")
        if end > data_len:
            raise fail(
                f"tensor {name!r}: data_offsets end {end} is beyond the {data_len}-byte data buffer"
            )
        itemsize = _STORAGE[code].itemsize
        count = 1
        span = 1  # product of the non-zero dims: what numpy must be able to index
        for d in shape:
            count *= d
            span *= max(d, 1)
        if span * itemsize > sys.maxsize:
            raise fail(f"tensor {name!r}: shape {shape!r} is too large to represent")
        if end - begin != count * itemsize:
            raise fail(
                f"tensor {name!r}: data_offsets span {end - begin} bytes but shape {shape!r} "
                f"of {code} needs {count * itemsize}"
            )
        entries.append(_Entry(name, code, tuple(shape), begin, end))

    spans = sorted((e.begin, e.end, e.name) for e in entries if e.end > e.begin)
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise fail(f"tensors {n0!r} [{b0}, {e0}) and {n1!r} [{b1}, {e1}) overlap")
    return header, entries, metadata, data_start


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, Any], int]:
    """Read and validate only the header of a safetensors file.

    Returns ``(header, data_start)``: the header's JSON object as a dict
    (tensor name -> ``{"dtype", "shape", "data_offsets"}``, plus
    ``"__metadata__"`` when present) and the absolute file offset where the
    data buffer begins (``8 + N``).  The header is validated exactly as
    :func:`load_safetensors` does, so a header that passes here describes
    tensors that fit in the file.  Raises :class:`TensorFileError`.
    """
    where = os.fspath(path)
    with open(path, "rb") as f:
        header, _, _, data_start = _parse_header(f, str(where))
    return header, data_start


def load_safetensors(
    path: str | os.PathLike, dtype: Any = None, mmap: bool = False
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Load every tensor of a safetensors file; return ``(tensors, metadata)``.

    ``tensors`` maps names to new, writable, owned, native-endian numpy
    arrays of the stored shape.  With ``dtype=None`` each array has the
    stored type (F16 -> float16, BOOL -> bool, ...), except BF16 which
    numpy lacks and which is returned as float32 (exact).  With ``dtype``
    given (e.g. ``np.float32``) every tensor is converted to it (BF16 and
    F16 convert exactly to float32).  ``metadata`` is the ``__metadata__``
    dict (empty if absent).

    ``mmap=True`` maps the file instead of reading it: a tensor whose stored type is already
    the one asked for (native byte order, offset aligned for its type) is a read-only view of
    the file's pages, read from disk only when touched; any other tensor (BF16, a conversion,
    a misaligned offset) is copied as without mmap. The header is checked against the file's
    size before anything is mapped, so a truncated file raises here; a file truncated or
    rewritten *while* mapped is the caller's risk (reading a page past its new end raises
    SIGBUS on POSIX, as for any mapped file).

    The whole header is validated before any tensor memory is allocated,
    and the total allocation is bounded by the file size; malformed or
    hostile files raise :class:`TensorFileError` naming the file and the
    problem.  Data is read with plain file reads; nothing is unpickled.
    """
    where = str(os.fspath(path))
    target = None if dtype is None else np.dtype(dtype)
    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        _, entries, metadata, data_start = _parse_header(f, where)
        mapped = None
        if mmap and any(e.end > e.begin for e in entries):
            import mmap as _mmap
            mapped = np.frombuffer(_mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_READ),
                                   dtype=np.uint8)
        for e in entries:
            storage = _STORAGE[e.code]
            if (mapped is not None and e.code not in ("BF16", "BOOL") and storage.isnative
                    and (target is None or target == storage)
                    and (data_start + e.begin) % storage.itemsize == 0):
                n = e.end - e.begin
                view = mapped[data_start + e.begin:data_start + e.end].view(storage)
                out[e.name] = view.reshape(e.shape) if n else np.empty(e.shape, storage)
                continue
            arr = np.empty(e.shape, dtype=storage)
            nbytes = e.end - e.begin
            if nbytes:
                f.seek(data_start + e.begin)
                got = f.readinto(arr.reshape(-1).view(np.uint8).data)
                if got != nbytes:
                    raise TensorFileError(
                        f"{where}: tensor {e.name!r}: file truncated ({got} of {nbytes} bytes read)"
                    )
            if not storage.isnative:
                arr = arr.astype(storage.newbyteorder("="))
            if e.code == "BF16":
                arr = bf16_bits_to_float32(arr)
            elif e.code == "BOOL":
                arr = np.not_equal(arr, 0, out=np.empty(arr.shape, dtype=np.bool_))  # stays 0-d
            if target is not None and arr.dtype != target:
                arr = arr.astype(target)
            out[e.name] = arr
    return out, metadata
