"""The canonical manifest: the document whose sha256 is a version's identity.

It carries everything that identifies a version (files with sha256, PEFT facts and config,
tensor shapes, base model identity, dataset identity, training settings, input template, parent
digest) and nothing that changes with who published it or when, so re-publishing identical
content yields the identical digest. It travels to the Hub beside ``adapter_config.json`` so a
registry that pulls an adapter can rebuild its catalogue entry and check every byte.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from typing import Any

from registry.digest import PREFIX, canonical_json, sha256_bytes
from registry.errors import IntegrityError, InvalidAdapterError
from registry.types import AdapterFacts, BaseModelInfo, DatasetInfo, FileRecord, TensorFacts

SCHEMA = "softprompt-registry/manifest/v1"
MAX_MANIFEST_BYTES = 10_000_000
_SAFE_PATH = re.compile(r"^[A-Za-z0-9._-][A-Za-z0-9._/-]{0,199}\Z")


def build(
    facts: AdapterFacts,
    files: list[FileRecord],
    *,
    base_model: BaseModelInfo | None,
    dataset: DatasetInfo | None,
    training: dict[str, Any],
    template: str | None,
    parent_digest: str | None,
) -> dict[str, Any]:
    """The manifest of a version about to be published."""
    return {
        "schema": SCHEMA,
        "files": [asdict(f) for f in sorted(files, key=lambda f: f.path)],
        "peft": {
            "peft_type": facts.peft_type,
            "task_type": facts.task_type,
            "num_virtual_tokens": facts.num_virtual_tokens,
            "token_dim": facts.token_dim,
            "num_transformer_submodules": facts.num_transformer_submodules,
            "num_layers": facts.num_layers,
            "num_attention_heads": facts.num_attention_heads,
            "init_method": facts.init_method,
            "init_text": facts.init_text,
            "tokenizer": facts.tokenizer_name_or_path,
            "peft_version": facts.peft_version,
            "lora_r": facts.lora_r,
            "target_modules": list(facts.target_modules),
        },
        "peft_config": facts.config,
        "tensors": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in facts.tensors],
        "base_model": base_model.identity() if base_model else None,
        "dataset": {k: v for k, v in asdict(dataset).items() if v is not None} if dataset else None,
        "training": training,
        "template": template,
        "parent": parent_digest,
    }


def encode(manifest: dict[str, Any]) -> bytes:
    """Canonical bytes of a manifest (refuses NaN/Inf, which canonical JSON cannot carry)."""
    try:
        return canonical_json(manifest)
    except ValueError as exc:
        raise InvalidAdapterError(
            f"the version's metadata holds a value that JSON cannot carry ({exc})",
            hint="remove NaN or Infinity from the training settings",
        ) from None


def digest_of(manifest: dict[str, Any]) -> str:
    return PREFIX + sha256_bytes(encode(manifest))


def parse(data: bytes, *, expected_digest: str | None = None, where: str = "manifest") -> dict[str, Any]:
    """Parse and validate manifest bytes from an untrusted source (a Hub repo, a file).

    Raises :class:`IntegrityError` when ``expected_digest`` is given and the bytes' canonical
    form hashes differently, :class:`InvalidAdapterError` when the document is malformed.
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise InvalidAdapterError(f"{where} is {len(data)} bytes; a manifest is under {MAX_MANIFEST_BYTES}")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, ints over 4300 digits
        raise InvalidAdapterError(f"{where} is not valid JSON", hint="the remote copy is damaged; re-push it") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise InvalidAdapterError(
            f"{where}: expected a manifest with schema {SCHEMA!r}, found {str(doc.get('schema') if isinstance(doc, dict) else type(doc).__name__)[:60]!r}",
            hint="push it again with this version of spr",
        )
    files = doc.get("files")
    if not isinstance(files, list) or not files:
        raise InvalidAdapterError(f"{where}: 'files' must be a non-empty list")
    seen: set[str] = set()
    for entry in files:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("path"), str)
            or not isinstance(entry.get("sha256"), str)
            or not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
            or not isinstance(entry.get("size"), int)
            or entry["size"] < 0
        ):
            raise InvalidAdapterError(f"{where}: malformed file entry {str(entry)[:120]}")
        check_relative_path(entry["path"], where)
        if entry["path"] in seen:
            raise InvalidAdapterError(f"{where}: file {entry['path']!r} is listed twice")
        seen.add(entry["path"])
    for key in ("peft", "peft_config", "training"):
        if not isinstance(doc.get(key), dict):
            raise InvalidAdapterError(f"{where}: {key!r} must be an object")
    if not isinstance(doc.get("tensors"), list):
        raise InvalidAdapterError(f"{where}: 'tensors' must be a list")
    parent = doc.get("parent")
    if parent is not None and not (isinstance(parent, str) and re.fullmatch(r"sha256:[0-9a-f]{64}", parent)):
        raise InvalidAdapterError(f"{where}: 'parent' must be a sha256 digest")
    _check_sections(doc, where)
    if expected_digest is not None:
        actual = digest_of(doc)
        if actual != expected_digest:
            raise IntegrityError(
                f"{where} hashes to {actual}, not the expected {expected_digest}",
                hint="the remote copy was changed after it was pushed; do not use it",
                expected=expected_digest,
                found=actual,
            )
    return doc


_PEFT_INTS = ("num_virtual_tokens", "token_dim", "num_transformer_submodules", "num_layers", "num_attention_heads", "lora_r")
_PEFT_STRS = ("task_type", "init_method", "init_text", "tokenizer", "peft_version")
_BASE_INTS = ("hidden_size", "vocab_size", "num_layers", "num_heads")
_BASE_STRS = ("revision", "architecture", "model_type", "config_digest", "embedding_fingerprint", "tokenizer_digest", "source")
_MAX_INT = 2**31 - 1  # the catalogue's integer columns (PostgreSQL int4)
# The catalogue's column sizes (registry/models.py) for the text a manifest carries: a longer value
# would be a DataError on PostgreSQL (SQLite does not check), deep inside an import.
_PEFT_LIMITS = {"task_type": 32, "init_method": 32, "tokenizer": 1000, "peft_version": 100}
_BASE_LIMITS = {
    "name": 1000, "revision": 200, "architecture": 200, "model_type": 100, "config_digest": 71,
    "embedding_fingerprint": 71, "tokenizer_digest": 71, "source": 20,
}
_DATASET_LIMITS = {"name": 1000, "format": 20}


def _check_sections(doc: dict[str, Any], where: str) -> None:
    """Type-check what the catalogue reads from a manifest, so an accepted one can be imported.

    A manifest from a Hub is hostile until checked: a missing ``peft_type`` or a string where a
    number belongs would otherwise fail later, deep in an import, as something other than a
    registry error.
    """
    from registry.adapters.reader import SUPPORTED_TYPES

    def bad(what: str) -> InvalidAdapterError:
        return InvalidAdapterError(f"{where}: {what}", hint="the manifest is damaged or was not written by spr")

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_INT

    def check_lengths(section: dict[str, Any], prefix: str, limits: dict[str, int]) -> None:
        for key, limit in limits.items():
            value = section.get(key)
            if isinstance(value, str) and len(value) > limit:
                raise bad(f"malformed manifest: {prefix}.{key} is {len(value)} characters, longer than {limit}")

    peft = doc["peft"]
    if not isinstance(peft.get("peft_type"), str) or peft["peft_type"] not in SUPPORTED_TYPES:
        raise bad(f"peft.peft_type must be one of {', '.join(SUPPORTED_TYPES)}")
    for key in _PEFT_INTS:
        if peft.get(key) is not None and not is_int(peft[key]):
            raise bad(f"peft.{key} must be a non-negative integer or null")
    for key in _PEFT_STRS:
        if peft.get(key) is not None and not isinstance(peft[key], str):
            raise bad(f"peft.{key} must be a string or null")
    check_lengths(peft, "peft", _PEFT_LIMITS)
    targets = peft.get("target_modules")
    if targets is not None and not (isinstance(targets, list) and all(isinstance(t, str) for t in targets)):
        raise bad("peft.target_modules must be a list of strings")
    for t in doc["tensors"]:
        if (
            not isinstance(t, dict)
            or not isinstance(t.get("name"), str)
            or not isinstance(t.get("dtype"), str)
            or not isinstance(t.get("shape"), list)
            or len(t["shape"]) > 8
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in t["shape"])
        ):
            raise bad(f"malformed tensor entry {str(t)[:120]}")
    base = doc.get("base_model")
    if base is not None:
        if not isinstance(base, dict) or not isinstance(base.get("name"), str):
            raise bad("base_model must be null or an object with a 'name'")
        for key in _BASE_INTS:
            if base.get(key) is not None and not is_int(base[key]):
                raise bad(f"base_model.{key} must be a non-negative integer or null")
        for key in _BASE_STRS:
            if base.get(key) is not None and not isinstance(base[key], str):
                raise bad(f"base_model.{key} must be a string or null")
        check_lengths(base, "base_model", _BASE_LIMITS)
        if base.get("is_encoder_decoder") is not None and not isinstance(base["is_encoder_decoder"], bool):
            raise bad("base_model.is_encoder_decoder must be true, false or null")
    dataset = doc.get("dataset")
    if dataset is not None:
        if not isinstance(dataset, dict) or not (
            isinstance(dataset.get("digest"), str) and re.fullmatch(r"sha256:[0-9a-f]{64}", dataset["digest"])
        ):
            raise bad("dataset must be null or an object with a 'digest' (sha256:<hex>)")
        for key in ("name", "format"):
            if dataset.get(key) is not None and not isinstance(dataset[key], str):
                raise bad(f"dataset.{key} must be a string or null")
        check_lengths(dataset, "dataset", _DATASET_LIMITS)
        for key in ("records", "size"):
            if dataset.get(key) is not None and not (
                isinstance(dataset[key], int) and not isinstance(dataset[key], bool) and dataset[key] >= 0
            ):
                raise bad(f"dataset.{key} must be a non-negative integer or null")
    if doc.get("template") is not None and not isinstance(doc["template"], str):
        raise bad("template must be a string or null")


def check_relative_path(path: str, where: str) -> str:
    """Refuse a file path that could escape a directory (``..``, absolute, backslashes, control chars)."""
    parts = path.split("/")
    if (
        not _SAFE_PATH.fullmatch(path)
        or any(p in ("", ".", "..") for p in parts)
        or path.startswith("/")
    ):
        raise InvalidAdapterError(
            f"{where}: refusing unsafe file path {path[:100]!r}",
            hint="file paths must be relative, without '..', and use letters, digits, '.', '_', '-' and '/'",
        )
    return path


def facts_from_manifest(manifest: dict[str, Any]) -> AdapterFacts:
    """Rebuild an adapter's facts from its manifest (no file access), for compatibility checks."""
    peft = manifest["peft"]
    config = manifest["peft_config"]
    return AdapterFacts(
        peft_type=peft["peft_type"],
        task_type=peft.get("task_type"),
        num_virtual_tokens=peft.get("num_virtual_tokens"),
        token_dim=peft.get("token_dim"),
        num_transformer_submodules=peft.get("num_transformer_submodules"),
        num_layers=peft.get("num_layers"),
        num_attention_heads=peft.get("num_attention_heads"),
        encoder_hidden_size=config.get("encoder_hidden_size"),
        init_method=peft.get("init_method"),
        init_text=peft.get("init_text"),
        tokenizer_name_or_path=peft.get("tokenizer"),
        base_model_name_or_path=config.get("base_model_name_or_path"),
        base_model_revision=config.get("revision"),
        peft_version=peft.get("peft_version"),
        lora_r=peft.get("lora_r"),
        lora_alpha=config.get("lora_alpha"),
        target_modules=tuple(peft.get("target_modules") or ()),
        config=config,
        tensors=tuple(
            TensorFacts(t["name"], t["dtype"], tuple(t["shape"])) for t in manifest.get("tensors", [])
        ),
    )
