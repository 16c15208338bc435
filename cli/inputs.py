"""Parsers for command-line input: eval scores, tags and training-argument files.

They turn what a user typed into the library's values (:class:`registry.catalogue.EvalInput`,
dicts) and raise :class:`~registry.errors.UsageError` with a hint for anything malformed. Library
modules are imported inside the functions: importing the CLI must not load SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.digest import parse_json_object
from registry.errors import UsageError

if TYPE_CHECKING:
    from registry.catalogue import EvalInput
    from registry.types import DatasetInfo


def parse_eval(text: str, *, split: str | None = None) -> EvalInput:
    """Parse ``METRIC=VALUE[@DATASET]``; DATASET is a path (digested), ``sha256:…``, or a name."""
    from registry.adapters.dataset import dataset_from_digest, describe_dataset
    from registry.catalogue import EvalInput

    metric, sep, rest = text.partition("=")
    metric = metric.strip()
    value_text, _, dataset_text = rest.partition("@")
    if not sep or not metric or len(metric) > 100 or not value_text.strip():
        raise UsageError(
            f"invalid eval score {text!r}: expected METRIC=VALUE[@DATASET]",
            hint="for example --eval eval_loss=2.31@data/heldout.jsonl",
        )
    try:
        value = float(value_text)
    except ValueError:
        raise UsageError(f"invalid eval score {text!r}: {value_text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise UsageError(f"invalid eval score {text!r}: the value must be finite")
    dataset: DatasetInfo | None = None
    name: str | None = None
    if dataset_text:
        if dataset_text.lower().startswith("sha256:"):
            dataset = dataset_from_digest(dataset_text)
        elif Path(dataset_text).exists():
            dataset = describe_dataset(Path(dataset_text))
            name = dataset.name
        else:
            name = dataset_text
    return EvalInput(metric=metric, value=value, dataset=dataset, dataset_name=name, split=split)


def parse_tags(items: Iterable[str]) -> dict[str, str]:
    """``k=v`` strings -> dict; raise :class:`UsageError` on a malformed one."""
    from registry.catalogue import MAX_TAGS

    tags: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or len(key) > 100 or len(value) > 1000:
            raise UsageError(f"invalid tag {item!r}: expected KEY=VALUE", hint="for example --tag team=search")
        tags[key.strip()] = value
    if len(tags) > MAX_TAGS:
        raise UsageError(f"too many tags ({len(tags)}); at most {MAX_TAGS}")
    return tags


def read_training_args(path: Path) -> dict[str, Any]:
    """Load ``--training-args FILE.json`` (an object)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read training arguments {path}: {exc.strerror}") from None
    return parse_json_object(raw, f"training arguments {path}", UsageError, hint="pass a JSON object")
