"""The embedding fingerprint of a base model, and its on-disk cache.

The fingerprint (:func:`embedding_fingerprint`) is sha256 over a scheme tag, the input-embedding
matrix's shape, and a fixed strided sample of :data:`FINGERPRINT_ROWS` rows, read by byte offset
(about 1 MB of a 1 GB matrix). The rows are hashed as little-endian float32: fp16 and bf16 values
widen to float32 exactly, so a checkpoint stored in bf16 and the same model loaded into memory as
float32 have the same fingerprint, while any change of a sampled value changes it. ``read`` is any
``(offset, length) -> bytes``: a local file (:func:`cached_local_fingerprint`) or HTTP range
requests (:mod:`registry.hub.remote_base`).

Local fingerprints and file digests are cached under ``$SPR_HOME/cache/<kind>/``, keyed by
``(path, size, mtime)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

from registry import settings
from registry.adapters.tensorfile import ITEMSIZE, TensorInfo
from registry.digest import PREFIX, sha256_bytes, sha256_file
from registry.errors import InvalidBaseModelError
from registry.storage.local import atomic_write_bytes

FINGERPRINT_ROWS = 256
FINGERPRINT_SCHEME = "spr-embedding-fingerprint/v1"
CACHE_VERSION = 1
# Dtypes whose rows can be fingerprinted.
ROW_DTYPES = {"F16", "BF16", "F32", "F64"}


def sample_row_indices(n_rows: int, k: int = FINGERPRINT_ROWS) -> list[int]:
    """The fixed strided sample: ``k`` rows spread evenly from row 0 (all rows when fewer)."""
    if n_rows <= k:
        return list(range(n_rows))
    return [i * n_rows // k for i in range(k)]


def fingerprint_of_rows(shape: tuple[int, int], rows: np.ndarray | Any) -> str:
    """``sha256:<hex>`` over the scheme, the matrix shape and the sampled rows as little-endian float32."""
    import numpy as np

    data = np.ascontiguousarray(rows, dtype="<f4")
    return _fingerprint_of_f32_bytes(shape, len(data), data.tobytes())


def _fingerprint_of_f32_bytes(shape: tuple[int, int], n_rows: int, data: bytes) -> str:
    h = hashlib.sha256()
    h.update(f"{FINGERPRINT_SCHEME}\nshape={shape[0]}x{shape[1]}\nrows={n_rows}\ndtype=F32\n".encode())
    h.update(data)
    return PREFIX + h.hexdigest()


def rows_to_f32_bytes(raw: bytes, dtype: str) -> bytes:
    """Row bytes of a safetensors dtype as little-endian float32 bytes (exact for F16 and BF16).

    F32 and BF16 need no numpy (F32 is already the target; a BF16 value is the upper half of a
    float32), which keeps numpy's import out of ``spr verify`` for most checkpoints.
    """
    if dtype == "F32":
        return raw
    if dtype == "BF16":
        out = bytearray(len(raw) * 2)
        out[2::4] = raw[0::2]
        out[3::4] = raw[1::2]
        return bytes(out)
    import numpy as np

    if dtype == "F16":
        return np.frombuffer(raw, dtype="<f2").astype("<f4").tobytes()
    if dtype == "F64":
        return np.frombuffer(raw, dtype="<f8").astype("<f4").tobytes()
    raise InvalidBaseModelError(f"cannot fingerprint an embedding of dtype {dtype}", hint="re-save the model in float")


def embedding_fingerprint(
    read: Callable[[int, int], bytes], info: TensorInfo, *, threads: int = 1, max_gap: int = 0
) -> str:
    """Fingerprint the embedding ``info``, reading the sampled rows with ``read(offset, length)``.

    Rows closer than ``max_gap`` bytes are fetched in one read (worth it over HTTP, where each
    request costs a round trip; a small vocabulary then takes a handful of requests instead of 256).
    """
    n_rows, width = info.shape
    row_bytes = width * ITEMSIZE[info.dtype]
    offsets = [info.begin + i * row_bytes for i in sample_row_indices(n_rows)]
    spans: list[list[int]] = []  # [start, end] of each read
    for off in offsets:
        if spans and off - spans[-1][1] <= max_gap:
            spans[-1][1] = off + row_bytes
        else:
            spans.append([off, off + row_bytes])

    def fetch(span: list[int]) -> bytes:
        data = read(span[0], span[1] - span[0])
        if len(data) != span[1] - span[0]:
            raise InvalidBaseModelError(
                f"the embedding tensor {info.name!r} is truncated (a read returned {len(data)} of {span[1] - span[0]} bytes)",
                hint="the weight file is incomplete; download it again",
            )
        return data

    if threads > 1 and len(spans) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=threads) as pool:
            blocks = list(pool.map(fetch, spans))
    else:
        blocks = [fetch(span) for span in spans]
    chunks = []
    k = 0
    for (start, end), block in zip(spans, blocks, strict=True):
        while k < len(offsets) and offsets[k] + row_bytes <= end:
            rel = offsets[k] - start
            chunks.append(block[rel : rel + row_bytes])
            k += 1
    return _fingerprint_of_f32_bytes((n_rows, width), len(chunks), rows_to_f32_bytes(b"".join(chunks), info.dtype))


def _local_fingerprint(path: Path, info: TensorInfo, count: Callable[[int], None]) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        def read_row(offset: int, length: int) -> bytes:
            data = os.pread(fd, length, offset)
            count(len(data))
            return data

        return embedding_fingerprint(read_row, info)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# Cache: $SPR_HOME/cache/<kind>/<sha256 of key>.json, keyed by (path, size, mtime)
# ---------------------------------------------------------------------------------------------


def _cache_dir(kind: str) -> Path:
    return settings.home() / "cache" / kind


def _stat_key(path: Path, extra: str) -> str:
    st = path.stat()
    return f"v{CACHE_VERSION}\0{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{extra}"


def _cache_get(kind: str, key: str, pattern: str) -> str | None:
    entry = _cache_dir(kind) / (sha256_bytes(key.encode()) + ".json")
    try:
        doc = json.loads(entry.read_bytes()[:10_000])
    except (OSError, ValueError):
        return None
    value = doc.get("value") if isinstance(doc, dict) and doc.get("key") == key else None
    return value if isinstance(value, str) and re.fullmatch(pattern, value) else None


def _cache_put(kind: str, key: str, value: str) -> None:
    directory = _cache_dir(kind)
    try:
        atomic_write_bytes(
            directory / (sha256_bytes(key.encode()) + ".json"), json.dumps({"key": key, "value": value}).encode()
        )
    except OSError:
        pass  # a read-only home only costs the next call a re-read


def cached_local_fingerprint(path: Path, info: TensorInfo, count: Callable[[int], None]) -> str:
    """The fingerprint of the embedding ``info`` in the local file ``path``, cached per (path, size, mtime).

    ``count`` is told how many bytes were read (nothing on a cache hit).
    """
    key = _stat_key(path, f"{FINGERPRINT_SCHEME}\0{info.name}\0{info.begin}")
    cached = _cache_get("embedding-fingerprint", key, r"sha256:[0-9a-f]{64}")
    if cached is not None:
        return cached
    value = _local_fingerprint(path, info, count)
    _cache_put("embedding-fingerprint", key, value)
    return value


def cached_file_sha256(path: Path) -> str:
    """The sha256 hex of a local file, cached per (path, size, mtime)."""
    key = _stat_key(path, "sha256")
    cached = _cache_get("file-sha256", key, r"[0-9a-f]{64}")
    if cached is not None:
        return cached
    value, _ = sha256_file(path)
    _cache_put("file-sha256", key, value)
    return value
