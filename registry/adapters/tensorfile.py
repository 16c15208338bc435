"""Reading safetensors files without torch, treating every byte as hostile.

The format: 8 bytes little-endian header length N, N bytes of JSON header
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``),
then the data buffer. Offsets are relative to the start of the data buffer.

Every limit is checked before anything is allocated, so a hostile header (length 2^40, offsets past
the end, shapes whose product overflows) is an :class:`InvalidAdapterError`, never a crash or a huge
allocation.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

import itertools

from registry.digest import parse_json_object
from registry.errors import InvalidAdapterError

# The huggingface_hub client caps remote headers at 25 MB; so do we.
MAX_HEADER_BYTES = 25_000_000
MAX_DIMS = 8

ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2"}
# numpy dtype strings (little-endian); numpy itself is imported only when values are read,
# so metadata commands start fast.
_NUMPY = {
    "F16": "<f2", "F32": "<f4", "F64": "<f8", "I8": "i1", "U8": "u1", "I16": "<i2", "U16": "<u2",
    "I32": "<i4", "U32": "<u4", "I64": "<i8", "U64": "<u8", "BOOL": "?",
}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor entry of a safetensors header."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsHeader:
    """A parsed, validated header."""

    header_length: int
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int


def parse_header_bytes(raw: bytes, header_length: int, file_size: int | None, where: str) -> SafetensorsHeader:
    """Validate a header's JSON text. ``file_size`` None means unknown (remote, header only)."""
    doc = parse_json_object(
        raw, f"{where}: the safetensors header", InvalidAdapterError,
        hint="the file is corrupt or not a safetensors file; re-save it with safetensors",
    )
    data_start = 8 + header_length
    data_size = None if file_size is None else file_size - data_start
    metadata_raw = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata_raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata_raw.items()
    ):
        raise InvalidAdapterError(
            f"{where}: safetensors '__metadata__' must map strings to strings",
            hint="re-save the file with safetensors",
        )
    tensors: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in doc.items():
        tensors[name] = info = _tensor_info(name, entry, data_start, data_size, where)
        spans.append((info.begin, info.end, name))
    spans.sort()
    for (_b1, e1, n1), (b2, _e2, n2) in itertools.pairwise(spans):
        if b2 < e1:
            raise InvalidAdapterError(
                f"{where}: tensors {n1!r} and {n2!r} overlap in the data buffer",
                hint="the file is corrupt; re-save it with safetensors",
            )
    return SafetensorsHeader(header_length, tensors, dict(metadata_raw), data_start)


def _tensor_info(name: str, entry: object, data_start: int, data_size: int | None, where: str) -> TensorInfo:
    def bad(what: str) -> InvalidAdapterError:
        return InvalidAdapterError(
            f"{where}: tensor {name[:200]!r}: {what}",
            hint="the file is corrupt or truncated; re-save it with safetensors",
        )

    if not isinstance(entry, dict):
        raise bad("expected an object with dtype, shape and data_offsets")
    dtype = entry.get("dtype")
    shape = entry.get("shape")
    offsets = entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in ITEMSIZE:  # a list or object here is unhashable
        raise bad(f"unknown dtype {str(dtype)[:40]!r}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in shape)
    ):
        raise bad(f"invalid shape {str(shape)[:80]}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise bad(f"invalid data_offsets {str(offsets)[:80]}")
    begin, end = offsets
    if data_size is not None and end > data_size:
        raise bad(f"data_offsets end at byte {end} but the data buffer holds only {data_size} bytes")
    expected = math.prod(shape) * ITEMSIZE[dtype]
    if end - begin != expected:
        raise bad(f"shape {shape} of {dtype} needs {expected} bytes but data_offsets span {end - begin}")
    return TensorInfo(name, dtype, tuple(shape), data_start + begin, data_start + end)


def read_header(path: Path, where: str | None = None) -> SafetensorsHeader:
    """Read and validate the header of a local safetensors file (reads only the header bytes)."""
    where = where or str(path)
    file_size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise InvalidAdapterError(
                f"{where}: truncated safetensors file ({file_size} bytes; the 8-byte header length is missing)",
                hint="the file is incomplete; copy or save it again",
            )
        (header_length,) = struct.unpack("<Q", prefix)
        if header_length > MAX_HEADER_BYTES or header_length > file_size - 8:
            raise InvalidAdapterError(
                f"{where}: safetensors header length {header_length} is impossible for a "
                f"{file_size}-byte file (limit {MAX_HEADER_BYTES})",
                hint="the file is truncated or not a safetensors file; save it again",
            )
        raw = f.read(header_length)
    return parse_header_bytes(raw, header_length, file_size, where)


def read_tensor(path: Path, info: TensorInfo) -> np.ndarray:
    """Read one tensor as a numpy array (BF16 comes back as its raw uint16 bits; F8 as uint8)."""
    import numpy as np

    dtype: np.dtype[Any]
    if info.dtype == "BF16":
        dtype = np.dtype("<u2")
    elif info.dtype.startswith("F8"):
        dtype = np.dtype("u1")
    else:
        dtype = np.dtype(_NUMPY[info.dtype])
    with open(path, "rb") as f:
        f.seek(info.begin)
        raw = f.read(info.nbytes)
    if len(raw) != info.nbytes:
        raise InvalidAdapterError(
            f"{path}: tensor {info.name!r} is truncated", hint="the file is incomplete; save it again"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(info.shape)


def count_non_finite(path: Path, info: TensorInfo, chunk_elems: int = 1 << 22) -> int:
    """Number of NaN/Inf values in a floating-point tensor, read in bounded chunks."""
    if info.dtype not in FLOAT_DTYPES or info.nbytes == 0:
        return 0
    itemsize = ITEMSIZE[info.dtype]
    total = info.nbytes // itemsize
    bad = 0
    with open(path, "rb") as f:
        f.seek(info.begin)
        remaining = total
        while remaining:
            n = min(remaining, chunk_elems)
            raw = f.read(n * itemsize)
            if len(raw) != n * itemsize:
                raise InvalidAdapterError(
                    f"{path}: tensor {info.name!r} is truncated", hint="the file is incomplete; save it again"
                )
            bad += _non_finite_in(raw, info.dtype)
            remaining -= n
    return bad


def _non_finite_in(raw: bytes, dtype: str) -> int:
    import numpy as np

    if dtype == "BF16":
        bits = np.frombuffer(raw, dtype="<u2")
        return int(np.count_nonzero((bits & 0x7F80) == 0x7F80))
    if dtype == "F8_E5M2":
        bits = np.frombuffer(raw, dtype="u1")
        return int(np.count_nonzero((bits & 0x7C) == 0x7C))
    if dtype == "F8_E4M3":
        bits = np.frombuffer(raw, dtype="u1")
        return int(np.count_nonzero((bits & 0x7F) == 0x7F))  # E4M3 has NaN only
    arr = np.frombuffer(raw, dtype=np.dtype(_NUMPY[dtype]))
    return int(arr.size - np.count_nonzero(np.isfinite(arr)))
