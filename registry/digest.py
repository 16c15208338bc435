"""Digests anyone can recompute with standard tools.

- A file's digest is the plain sha256 of its bytes (``sha256sum FILE``; also the Hub's LFS oid).
- A directory's digest is the sha256 of its canonical listing: one line per regular file,
  ``<sha256>  <relative/path>\\n``, sorted by path (bytewise, as ``LC_ALL=C sort``): exactly
  what ``sha256sum`` prints, so
  ``(cd DIR && find . -type f | sed 's|^./||' | LC_ALL=C sort | xargs -d '\\n' sha256sum) | sha256sum``
  gives the same hex.
- Canonical JSON: sorted keys, no whitespace, UTF-8, no NaN. A manifest's digest is the sha256 of it.

Digests are written ``sha256:<hex>`` wherever a prefix can appear.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from registry.errors import RegistryError, UsageError

CHUNK = 1 << 20  # 1 MiB: large enough for hashlib to run at full speed, small enough for constant memory
PREFIX = "sha256:"
_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")

ProgressCallback = Callable[[int], None]


def sha256_file(path: Path, progress: ProgressCallback | None = None) -> tuple[str, int]:
    """Stream ``path`` through sha256 in constant memory.

    Returns ``(hex digest, size in bytes)``. ``progress`` is called with each chunk's length.
    """
    h = hashlib.sha256()
    size = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
            size += n
            if progress is not None:
                progress(n)
    return h.hexdigest(), size


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, no whitespace, UTF-8, finite numbers only."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def parse_json_object(raw: bytes, what: str, error: type[RegistryError], hint: str) -> dict[str, Any]:
    """Parse untrusted bytes that must hold a JSON object; raise ``error`` naming ``what`` otherwise."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, ints over 4300 digits
        raise error(f"{what} is not valid JSON ({type(exc).__name__}: {str(exc)[:80]})", hint=hint) from None
    if not isinstance(doc, dict):
        raise error(f"{what}: expected a JSON object, found {type(doc).__name__}", hint=hint)
    return doc


def json_digest(value: Any) -> str:
    """``sha256:<hex>`` of the canonical JSON of ``value``."""
    return PREFIX + sha256_bytes(canonical_json(value))


def walk_files(root: Path) -> Iterator[tuple[str, Path]]:
    """Yield ``(relative posix path, path)`` of every regular file under ``root``, sorted bytewise.

    Symlinks are not followed (a dataset folder is what it holds, not what it points at).
    """
    entries: list[tuple[bytes, str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in filenames:
            full = Path(dirpath) / name
            if full.is_symlink() or not full.is_file():
                continue
            rel = full.relative_to(root).as_posix()
            entries.append((os.fsencode(rel), rel, full))
    entries.sort(key=lambda e: e[0])
    for _, rel, full in entries:
        yield rel, full


def directory_listing(root: Path, progress: ProgressCallback | None = None) -> str:
    """The ``sha256sum``-style listing of every regular file under ``root``."""
    lines = []
    for rel, full in walk_files(root):
        hexdigest, _ = sha256_file(full, progress)
        lines.append(f"{hexdigest}  {rel}\n")
    return "".join(lines)


def sha256_directory(root: Path, progress: ProgressCallback | None = None) -> str:
    """Hex sha256 of the canonical listing of ``root`` (see the module docstring)."""
    return sha256_bytes(directory_listing(root, progress).encode("utf-8"))


def parse_digest(text: str) -> str:
    """Return the 64-hex part of ``sha256:<hex>`` (or bare hex); raise :class:`UsageError` otherwise."""
    value = text.strip().lower()
    if value.startswith(PREFIX):
        value = value[len(PREFIX):]
    if not _HEX64.match(value):
        raise UsageError(
            f"expected a digest 'sha256:<64 hex digits>', found {text!r}",
            hint="copy the digest from 'spr show' or 'sha256sum'",
        )
    return value


def with_prefix(hexdigest: str) -> str:
    return hexdigest if hexdigest.startswith(PREFIX) else PREFIX + hexdigest
