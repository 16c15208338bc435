"""Training and evaluation data, torch-free at module level: reading, held-out splits, templates, tokenising.

Data
----
A dataset is a JSONL/JSON/CSV/TXT/Parquet file, or a directory written by ``datasets``'
``save_to_disk`` (read with ``datasets.load_from_disk``, only when ``datasets`` is installed). Each
record is either

- a text record (column ``text``, or the column named by ``text_column``): the formatted text is
  learned whole, an end-of-sequence token appended; or
- a prompt/completion record (columns ``prompt`` and ``completion``): the input is
  ``template.replace("{prompt}", prompt)``, the target is ``completion`` + EOS, and the prompt's
  labels are -100, so the loss is taken on the completion only.

The template (default ``{prompt}``) formats the input of every example: the prompt of a
prompt/completion record, the text of a text record. It is recorded with the version, and
``spr eval`` and ``spr generate`` apply it, so a soft prompt is served with the format it was
trained on.

Held-out data
-------------
``eval_split=F`` holds out ``round(F * n)`` records (at least one) chosen by a permutation seeded by
``seed``; they are never trained on. Their identity is the sha256 of their canonical JSON lines (the
columns training used, sorted keys, no whitespace, UTF-8, one record per ``\\n``-terminated line, in
file order): :func:`write_examples_jsonl` writes exactly those bytes, so ``spr eval --dataset`` on
that file records scores under the same digest.

Only :func:`pad_batch` needs torch, and imports it when called.
"""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.adapters.dataset import FORMATS, describe_dataset, read_texts
from registry.digest import PREFIX, canonical_json, sha256_bytes
from registry.errors import DependencyMissingError, InvalidDatasetError, UsageError
from registry.storage import atomic_write_bytes
from registry.types import DatasetInfo

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

__all__ = [
    "IGNORE_INDEX",
    "Encoded",
    "Example",
    "LoadedData",
    "apply_template",
    "check_template",
    "encode_examples",
    "examples_jsonl",
    "heldout_split_name",
    "load_examples",
    "pad_batch",
    "split_heldout",
    "write_examples_jsonl",
]

IGNORE_INDEX = -100
"""The label of a position no loss is taken on (the prompt, padding, virtual tokens)."""


@dataclass(frozen=True)
class Example:
    """One training or eval example: a text (``prompt`` is None) or a prompt/completion pair."""

    target: str
    prompt: str | None = None

    def record(self) -> dict[str, str]:
        """The record as the columns training used (what held-out digests are computed over)."""
        if self.prompt is None:
            return {"text": self.target}
        return {"prompt": self.prompt, "completion": self.target}


@dataclass(frozen=True)
class LoadedData:
    """Examples read from a dataset, with the dataset's identity."""

    examples: tuple[Example, ...]
    kind: str  # "text" or "prompt-completion"
    columns: tuple[str, ...]  # the columns the examples were taken from
    info: DatasetInfo


def load_examples(path: Path | str, *, text_column: str | None = None, describe: bool = True) -> LoadedData:
    """Read the examples of a dataset file or ``save_to_disk`` directory.

    Records with ``prompt`` and ``completion`` become prompt/completion examples; otherwise the
    column ``text_column`` (default ``text``) is used. Every value used must be a string. The
    dataset is digested with :func:`registry.adapters.dataset.describe_dataset` (``describe=False`` skips
    that and leaves only the name).

    Raises :class:`InvalidDatasetError` for a missing, unreadable or malformed dataset, a missing
    column or an empty one; :class:`DependencyMissingError` for a ``datasets`` directory when the
    ``datasets`` package is not installed.
    """
    path = Path(path)
    if not path.exists():
        raise InvalidDatasetError(
            f"dataset {path} does not exist",
            hint="pass a .jsonl, .json, .csv, .txt or .parquet file, or a directory saved with datasets' save_to_disk",
        )
    records = _read_records(path)
    if not records:
        raise InvalidDatasetError(f"dataset {path} has no records", hint="add at least two records")
    first_bad = next((i for i, r in enumerate(records) if not isinstance(r, Mapping)), None)
    if first_bad is not None:
        raise InvalidDatasetError(
            f"dataset {path}: record {first_bad + 1} is a {type(records[first_bad]).__name__}, not an object",
            hint="each record must be an object such as {\"text\": ...} or {\"prompt\": ..., \"completion\": ...}",
        )
    columns: set[str] = set()
    for r in records:
        columns.update(str(k) for k in r)
    if text_column is None and {"prompt", "completion"} <= columns:
        used: tuple[str, ...] = ("prompt", "completion")
        kind = "prompt-completion"
    else:
        used = (text_column or "text",)
        kind = "text"
        if used[0] not in columns:
            found = ", ".join(sorted(columns)[:12]) or "none"
            raise InvalidDatasetError(
                f"dataset {path} has no column {used[0]!r} (found: {found})",
                hint="use a 'text' column, or 'prompt' and 'completion' columns, or name the text column with --text-column",
            )
    examples: list[Example] = []
    for i, r in enumerate(records):
        values = []
        for col in used:
            value = r.get(col)
            if not isinstance(value, str):
                raise InvalidDatasetError(
                    f"dataset {path}: record {i + 1} has {col}={_short(value)}, expected a string",
                    hint="every record needs a text value in each column training uses",
                )
            values.append(value)
        if kind == "text":
            examples.append(Example(target=values[0]))
        else:
            examples.append(Example(prompt=values[0], target=values[1]))
    info = describe_dataset(path) if describe else DatasetInfo(digest="", name=path.name)
    return LoadedData(examples=tuple(examples), kind=kind, columns=used, info=info)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _read_records(path: Path) -> list[Any]:
    if path.is_dir():
        return _read_saved_dataset(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt == "parquet":
        try:
            import pyarrow.parquet as pq  # optional: only for parquet files
        except ImportError:
            raise DependencyMissingError(
                f"reading {path.name} needs pyarrow", hint="pip install pyarrow, or convert the data to JSONL"
            ) from None
        try:
            return list(pq.read_table(path).to_pylist())
        except Exception as exc:
            raise InvalidDatasetError(f"cannot read parquet dataset {path}: {exc}") from None
    if fmt is None:
        raise InvalidDatasetError(
            f"cannot read records from {path}: unsupported format {path.suffix or '(no suffix)'!r}",
            hint="use .jsonl, .json, .csv, .txt or .parquet, or a directory saved with datasets' save_to_disk",
        )
    try:
        return list(read_texts(path))
    except UnicodeDecodeError:
        raise InvalidDatasetError(f"dataset {path} is not UTF-8 text", hint="re-encode it as UTF-8") from None
    except (ValueError, RecursionError) as exc:  # json.JSONDecodeError is a ValueError
        raise InvalidDatasetError(f"dataset {path} is malformed: {str(exc)[:200]}", hint="fix the file and retry") from None
    except OSError as exc:
        raise InvalidDatasetError(f"cannot read dataset {path}: {exc.strerror or exc}") from None


def _read_saved_dataset(path: Path) -> list[Any]:
    if not ((path / "dataset_info.json").is_file() or (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
        raise InvalidDatasetError(
            f"directory {path} is not a dataset saved with datasets' save_to_disk (no state.json or dataset_dict.json)",
            hint="pass a data file (.jsonl, .json, .csv, .txt, .parquet) or a save_to_disk directory",
        )
    if importlib.util.find_spec("datasets") is None:
        raise DependencyMissingError(
            f"{path} is a Hugging Face `datasets` directory, and reading it needs the `datasets` package",
            hint="pip install datasets, or export the data to JSONL (Dataset.to_json)",
        )
    import datasets  # optional, checked above

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise InvalidDatasetError(f"cannot load the saved dataset {path}: {exc}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise InvalidDatasetError(
                f"{path} holds the splits {', '.join(loaded)} but no 'train' split",
                hint="pass the directory of one split (DatasetDict[...].save_to_disk)",
            )
        loaded = loaded["train"]
    return list(loaded.to_list())


def split_heldout(examples: Sequence[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Split ``examples`` into ``(train, held_out)``; ``round(fraction * n)`` held out (at least 1).

    The held-out rows are picked by a permutation seeded by ``seed`` and kept in file order. Raises
    :class:`UsageError` for a fraction outside [0, 1) or data too small to split.
    """
    if not 0 <= fraction < 1:
        raise UsageError(f"--eval-split must be in [0, 1), got {fraction}", hint="for example --eval-split 0.1")
    if fraction == 0:
        return list(examples), []
    n = len(examples)
    k = max(1, round(fraction * n))
    if n - k < 1:
        raise UsageError(
            f"cannot hold out {fraction:.0%} of {n} record(s) and still train on one",
            hint="add records, or pass --eval-split 0 or --eval-dataset PATH",
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:k])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


def examples_jsonl(examples: Sequence[Example]) -> bytes:
    """The canonical JSON-lines bytes of ``examples`` (their digest identifies a held-out split)."""
    return b"".join(canonical_json(e.record()) + b"\n" for e in examples)


def write_examples_jsonl(examples: Sequence[Example], path: Path | str) -> DatasetInfo:
    """Write ``examples`` as canonical JSON lines to ``path`` (atomically); return its identity."""
    data = examples_jsonl(examples)
    path = Path(path)
    atomic_write_bytes(path, data)
    return DatasetInfo(digest=PREFIX + sha256_bytes(data), name=path.name, format="jsonl", records=len(examples), size=len(data))


def heldout_split_name(fraction: float) -> str:
    """``heldout-10%`` for 0.1: the split name recorded with held-out eval scores."""
    pct = f"{fraction * 100:.4f}".rstrip("0").rstrip(".")
    return f"heldout-{pct}%"


def check_template(template: str | None) -> None:
    """Raise :class:`UsageError` unless ``template`` is None or contains ``{prompt}``."""
    if template is not None and "{prompt}" not in template:
        raise UsageError(
            f"invalid template {template[:60]!r}: it must contain the placeholder {{prompt}}",
            hint="for example --template 'Human: {prompt}\\n\\nAssistant: '",
        )


def apply_template(template: str | None, text: str) -> str:
    """Format ``text`` with ``template`` (``{prompt}`` replaced; other braces are left alone)."""
    if not template:
        return text
    return template.replace("{prompt}", text)


@dataclass(frozen=True)
class Encoded:
    """Token ids of one example and its labels (-100 where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]


def encode_examples(
    examples: Sequence[Example],
    tokenizer: Any,
    *,
    template: str | None,
    max_length: int,
    seq2seq: bool,
) -> tuple[list[Encoded], int]:
    """Tokenize examples for training or evaluation; returns ``(encoded, dropped)``.

    Causal LM: a text example is ``tokens(template(text)) + eos``, all learned; a prompt/completion
    example is ``tokens(template(prompt)) + tokens(completion) + eos`` with the prompt's labels -100.
    Seq2seq: the input is ``template(prompt or text)``, the labels ``completion or text`` (+ eos).
    Sequences are truncated to ``max_length``; an example left without a target token is dropped
    and counted in ``dropped``.
    """
    eos = tokenizer.eos_token_id
    out: list[Encoded] = []
    dropped = 0
    for ex in examples:
        source = apply_template(template, ex.prompt if ex.prompt is not None else ex.target)
        if seq2seq:
            ids = _with_eos(tokenizer(source)["input_ids"], eos)[:max_length]
            labels = _with_eos(tokenizer(ex.target)["input_ids"], eos)[:max_length]
        elif ex.prompt is None:
            ids = _with_eos(tokenizer(source)["input_ids"], eos)[:max_length]
            labels = list(ids)
        else:
            head = list(tokenizer(source)["input_ids"])
            tail = _with_eos(tokenizer(ex.target, add_special_tokens=False)["input_ids"], eos)
            ids = (head + tail)[:max_length]
            labels = ([IGNORE_INDEX] * len(head) + tail)[:max_length]
        if not ids or all(t == IGNORE_INDEX for t in labels):
            dropped += 1
            continue
        out.append(Encoded(list(ids), list(labels)))
    return out, dropped


def _with_eos(ids: Sequence[int], eos: int | None) -> list[int]:
    ids = list(ids)
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    return ids


def pad_batch(items: Sequence[Encoded | Mapping[str, Sequence[int]]], pad_id: int, *, seq2seq: bool) -> dict[str, torch.Tensor]:
    """Right-pad examples into ``input_ids``, ``attention_mask`` and ``labels`` tensors."""
    import torch

    pairs = [(list(i.input_ids), list(i.labels)) if isinstance(i, Encoded) else (list(i["input_ids"]), list(i["labels"])) for i in items]
    n_in = max(len(ids) for ids, _ in pairs)
    n_out = max(len(lab) for _, lab in pairs) if seq2seq else n_in
    return {
        "input_ids": torch.tensor([ids + [pad_id] * (n_in - len(ids)) for ids, _ in pairs], dtype=torch.long),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (n_in - len(ids)) for ids, _ in pairs], dtype=torch.long),
        "labels": torch.tensor([lab + [IGNORE_INDEX] * (n_out - len(lab)) for _, lab in pairs], dtype=torch.long),
    }
