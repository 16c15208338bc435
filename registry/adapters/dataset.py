"""Dataset identity: a streamed digest plus name, format and record count where knowable.

A file's digest is its plain sha256; a directory's is the digest of its canonical listing
(see :mod:`registry.digest`). Record counts are computed while streaming, never by loading the
whole file: JSONL and TXT count non-empty lines, CSV counts rows (headers excluded, quoted
newlines respected), JSON counts the elements of a top-level array, Parquet reads the footer.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from registry.digest import PREFIX, ProgressCallback, parse_digest, sha256_directory, sha256_file
from registry.errors import InvalidDatasetError
from registry.types import DatasetInfo

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "txt"}
MAX_JSON_COUNT_BYTES = 256 * 1024 * 1024  # beyond this a .json array is not parsed just to count it


def describe_dataset(path: Path, progress: ProgressCallback | None = None) -> DatasetInfo:
    """Digest ``path`` (a file or a directory) and learn its name, format and record count.

    Raises :class:`InvalidDatasetError` when the path is missing or unreadable.
    """
    path = Path(path)
    if not path.exists():
        raise InvalidDatasetError(
            f"dataset {path} does not exist",
            hint="pass a file (jsonl, json, csv, parquet, txt) or a directory, or --dataset-digest sha256:…",
        )
    try:
        if path.is_dir():
            digest = sha256_directory(path, progress)
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
            fmt, records = _directory_format(path)
        else:
            digest, size = sha256_file(path, progress)
            fmt = FORMATS.get(path.suffix.lower())
            records = count_records(path, fmt)
    except OSError as exc:
        raise InvalidDatasetError(f"cannot read dataset {path}: {exc.strerror or exc}", hint="check the path and its permissions") from None
    return DatasetInfo(digest=PREFIX + digest, name=path.name, format=fmt, records=records, size=size)


def dataset_from_digest(digest: str, name: str | None = None) -> DatasetInfo:
    """A dataset known only by a digest computed elsewhere (``--dataset-digest``)."""
    return DatasetInfo(digest=PREFIX + parse_digest(digest), name=name)


def _directory_format(path: Path) -> tuple[str | None, int | None]:
    # A `datasets` directory saved with save_to_disk: dataset_info.json + *.arrow shards.
    if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
        return "arrow", _arrow_records(path)
    formats = {FORMATS.get(p.suffix.lower()) for p in path.rglob("*") if p.is_file()}
    formats.discard(None)
    if len(formats) == 1:
        fmt = formats.pop()
        total = 0
        for p in sorted(path.rglob("*")):
            if p.is_file() and FORMATS.get(p.suffix.lower()) == fmt:
                n = count_records(p, fmt)
                if n is None:
                    return fmt, None
                total += n
        return fmt, total
    return None, None


def _arrow_records(path: Path) -> int | None:
    state = path / "state.json"
    try:
        info = json.loads((path / "dataset_info.json").read_text("utf-8")) if (path / "dataset_info.json").is_file() else {}
        splits = info.get("splits") or {}
        if isinstance(splits, dict) and splits:
            total = sum(int(s.get("num_examples", 0)) for s in splits.values() if isinstance(s, dict))
            if total:
                return total
        if state.is_file():
            import pyarrow as pa  # optional: only for counting rows of saved `datasets`

            files = json.loads(state.read_text("utf-8")).get("_data_files", [])
            total = 0
            for f in files:
                with pa.memory_map(str(path / os.path.basename(f["filename"]))) as source:
                    total += pa.ipc.open_stream(source).read_all().num_rows
            return total
    except Exception:
        return None
    return None


def count_records(path: Path, fmt: str | None) -> int | None:
    """Number of records in one file of a known format, streamed; None when unknowable."""
    if fmt in ("jsonl", "txt"):
        count = 0
        with open(path, "rb") as f:
            for line in f:
                if line.strip():
                    count += 1
        return count
    if fmt == "csv":
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            rows = sum(1 for row in csv.reader(f) if row)
        return max(rows - 1, 0)
    if fmt == "json":
        if path.stat().st_size > MAX_JSON_COUNT_BYTES:
            return None
        try:
            doc = json.loads(path.read_bytes())
        except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, huge ints
            return None
        if isinstance(doc, list):
            return len(doc)
        if isinstance(doc, dict) and isinstance(doc.get("data"), list):
            return len(doc["data"])
        return None
    if fmt == "parquet":
        try:
            import pyarrow.parquet as pq  # optional dependency

            return int(pq.ParquetFile(path).metadata.num_rows)
        except Exception:
            return None
    return None


def read_texts(path: Path) -> list[dict[str, object]]:
    """Load the records of a small jsonl/json/csv/txt file as dicts (used by training and eval)."""
    fmt = FORMATS.get(path.suffix.lower())
    raw = path.read_text("utf-8")
    if fmt == "jsonl":
        return [json.loads(line) for line in raw.splitlines() if line.strip()]
    if fmt == "json":
        doc = json.loads(raw)
        return list(doc if isinstance(doc, list) else doc.get("data", []))
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(raw)))
    if fmt == "txt":
        return [{"text": line} for line in raw.splitlines() if line.strip()]
    raise InvalidDatasetError(
        f"cannot read records from {path}: unsupported format {path.suffix!r}",
        hint="use jsonl, json, csv or txt",
    )
