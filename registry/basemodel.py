"""Base-model identity without loading weights.

A base model is named by ``--base-model DIR|REPO[@REV]``. From a local directory its identity
comes from ``config.json`` (architecture, widths, a digest of the config). Otherwise the facts
come from what the adapter itself says (``base_model_name_or_path`` and ``revision``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from registry.digest import PREFIX, canonical_json, sha256_bytes
from registry.errors import InvalidBaseModelError
from registry.types import AdapterFacts, BaseModelInfo

MAX_CONFIG_BYTES = 5_000_000


def identify(spec: str) -> BaseModelInfo:
    """Identify the base model named by ``spec``: a local directory, or ``REPO[@REV]``."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return from_directory(path)
    name, _, revision = spec.partition("@")
    if not name or name.count("/") > 1 or any(c in name for c in "\\ \t\n") or name.startswith((".", "/")):
        raise InvalidBaseModelError(
            f"base model {spec!r} is neither a local directory nor a Hub repo id 'ns/name[@revision]'",
            hint="pass the directory that holds config.json, or a repo id such as bigscience/bloomz-560m",
        )
    return BaseModelInfo(name=name, revision=revision or None, source="hub")


def from_directory(path: Path) -> BaseModelInfo:
    """Identity facts from ``path/config.json``."""
    config = read_config(path)
    return BaseModelInfo(
        name=str(path.resolve()),
        revision=None,
        source="local",
        **config_facts(config),
    )


def read_config(path: Path) -> dict[str, Any]:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise InvalidBaseModelError(
            f"base model directory {path} has no config.json",
            hint="pass the directory that save_pretrained() wrote for the base model",
        )
    if config_path.stat().st_size > MAX_CONFIG_BYTES:
        raise InvalidBaseModelError(f"{config_path} is too large to be a model config", hint="check the path")
    try:
        config = json.loads(config_path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise InvalidBaseModelError(f"{config_path} is not valid JSON", hint="re-save the base model") from None
    if not isinstance(config, dict):
        raise InvalidBaseModelError(f"{config_path} is not a JSON object", hint="re-save the base model")
    return config


def config_facts(config: dict[str, Any]) -> dict[str, Any]:
    """Architecture facts from a transformers config dict (any model family)."""
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else config

    def first(*keys: str) -> int | None:
        for key in keys:
            value = text_config.get(key, config.get(key))
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return None

    architectures = config.get("architectures")
    return {
        "architecture": architectures[0] if isinstance(architectures, list) and architectures else None,
        "model_type": config.get("model_type") if isinstance(config.get("model_type"), str) else None,
        "hidden_size": first("hidden_size", "n_embd", "d_model", "n_embed", "dim"),
        "vocab_size": first("vocab_size"),
        "num_layers": first("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
        "num_heads": first("num_attention_heads", "n_head", "num_heads", "n_heads"),
        "is_encoder_decoder": bool(config.get("is_encoder_decoder", False)),
        "config_digest": PREFIX + sha256_bytes(canonical_json(_identity_config(config))),
    }


def _identity_config(config: dict[str, Any]) -> dict[str, Any]:
    # Keys that change with the transformers version or the path it was saved from, not the model.
    volatile = {"transformers_version", "_name_or_path", "torch_dtype", "dtype", "_commit_hash", "use_cache"}
    return {k: v for k, v in config.items() if k not in volatile}


def from_adapter(facts: AdapterFacts) -> BaseModelInfo | None:
    """What the adapter itself says about its base model (unverified)."""
    if not facts.base_model_name_or_path:
        return None
    return BaseModelInfo(
        name=facts.base_model_name_or_path,
        revision=facts.base_model_revision,
        hidden_size=facts.token_dim,
        source="adapter_config",
    )
