"""Reading and validating a PEFT adapter directory without torch.

:func:`read_adapter` parses ``adapter_config.json`` and the safetensors header directly and checks
that the config and the tensors agree: known PEFT type, integer fields in range, tensor names,
shapes and dtypes consistent with the config, offsets consistent with the file size, finite values.
It never unpickles anything: a directory holding only ``adapter_model.bin`` is refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from registry.adapters.tensorfile import count_non_finite, read_header
from registry.digest import parse_json_object
from registry.errors import InvalidAdapterError
from registry.types import AdapterFacts, AdapterFileInfo, TensorFacts

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAMES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth", "pytorch_model.bin")
MAX_CONFIG_BYTES = 1_000_000
# Files that travel with an adapter besides config and weights (a tokenizer saved next to it, a card).
COMPANION_FILES = (
    "README.md",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)
PROMPT_LEARNING_TYPES = ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING")
SUPPORTED_TYPES = (*PROMPT_LEARNING_TYPES, "LORA")
TASK_TYPES = (
    "CAUSAL_LM", "SEQ_2_SEQ_LM", "SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION",
)
INIT_METHODS = ("RANDOM", "TEXT", "SAMPLE_VOCAB")
_LIMITS = {
    "num_virtual_tokens": (1, 100_000),
    "token_dim": (1, 1_000_000),
    "num_transformer_submodules": (1, 2),
    "num_attention_heads": (1, 10_000),
    "num_layers": (1, 10_000),
    "encoder_hidden_size": (1, 1_000_000),
    "r": (1, 1_000_000),
}


def read_adapter(directory: Path, *, check_values: bool = True) -> AdapterFacts:
    """Read the adapter in ``directory`` and return its validated facts.

    ``check_values`` scans every floating-point tensor for NaN/Inf (bounded memory).
    Raises :class:`InvalidAdapterError` naming the file, what was expected and what was found.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InvalidAdapterError(
            f"adapter directory {directory} does not exist or is not a directory",
            hint="pass the folder that PEFT's save_pretrained() wrote",
        )
    root = directory.resolve()
    config_path = _member(root, CONFIG_NAME, required=True)
    assert config_path is not None
    config = _read_config(config_path)
    weights_path = _member(root, WEIGHTS_NAME, required=False)
    if weights_path is None:
        pickled = [n for n in PICKLE_NAMES if (root / n).exists()]
        if pickled:
            raise InvalidAdapterError(
                f"{directory}: found {pickled[0]} (a pickle) but no {WEIGHTS_NAME}; "
                "pickles are never loaded because unpickling runs arbitrary code",
                hint="re-save the adapter with save_pretrained(..., safe_serialization=True)",
            )
        raise InvalidAdapterError(
            f"{directory}: expected {WEIGHTS_NAME} next to {CONFIG_NAME}, found no weights file",
            hint="save the adapter with PEFT's save_pretrained()",
        )

    peft_type = _peft_type(config, config_path)
    header = read_header(weights_path, where=str(weights_path))
    tensors = {
        name: TensorFacts(name=name, dtype=t.dtype, shape=t.shape) for name, t in header.tensors.items()
    }
    if not tensors:
        raise InvalidAdapterError(
            f"{weights_path}: holds no tensors", hint="save the trained adapter with save_pretrained()"
        )
    facts = _facts_from_config(config, config_path, peft_type, tensors)
    _check_tensors(facts, weights_path)
    if check_values:
        for info in header.tensors.values():
            bad = count_non_finite(weights_path, info)
            if bad:
                raise InvalidAdapterError(
                    f"{weights_path}: tensor {info.name!r} holds {bad} non-finite values (NaN or Inf)",
                    hint="training diverged; lower the learning rate or restore an earlier checkpoint",
                )

    files = [AdapterFileInfo(CONFIG_NAME, config_path.stat().st_size, str(config_path))]
    files.append(AdapterFileInfo(WEIGHTS_NAME, weights_path.stat().st_size, str(weights_path)))
    for name in COMPANION_FILES:
        path = _member(root, name, required=False)
        if path is not None:
            files.append(AdapterFileInfo(name, path.stat().st_size, str(path)))
    return facts.with_files(tuple(files), header_metadata=header.metadata)


def _member(root: Path, name: str, *, required: bool) -> Path | None:
    """A regular file directly in ``root``; a symlink that leaves ``root`` is refused."""
    path = root / name
    if not os.path.lexists(path):
        if required:
            raise InvalidAdapterError(
                f"{root}: expected {name}, found no such file",
                hint="pass the folder that PEFT's save_pretrained() wrote",
            )
        return None
    resolved = path.resolve()
    if resolved.parent != root and root not in resolved.parents:
        raise InvalidAdapterError(
            f"{path} is a symlink that points outside the adapter directory (to {resolved})",
            hint="copy the real file into the directory instead of linking to it",
        )
    if not resolved.is_file():
        raise InvalidAdapterError(f"{path} is not a regular file", hint="replace it with the real file")
    return resolved


def _read_config(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise InvalidAdapterError(
            f"{path} is {size} bytes; an adapter config is expected to be under {MAX_CONFIG_BYTES} bytes",
            hint="this is not a PEFT adapter_config.json; re-save the adapter",
        )
    return parse_json_object(
        path.read_bytes(), str(path), InvalidAdapterError, hint="re-save the adapter with PEFT's save_pretrained()"
    )


def _peft_type(config: dict[str, Any], path: Path) -> str:
    value = config.get("peft_type")
    if not isinstance(value, str) or value.upper() not in SUPPORTED_TYPES:
        raise InvalidAdapterError(
            f"{path}: unknown or unsupported peft_type {str(value)[:40]!r}; "
            f"expected one of {', '.join(SUPPORTED_TYPES)}",
            hint="spr catalogues prompt tuning, p-tuning, prefix tuning and LoRA adapters",
        )
    return value.upper()


def _int_field(config: dict[str, Any], key: str, path: Path, *, required: bool) -> int | None:
    value = config.get(key)
    if value is None:
        if required:
            raise InvalidAdapterError(
                f"{path}: {key} is missing", hint=f"set {key} in the PEFT config and save the adapter again"
            )
        return None
    low, high = _LIMITS[key]
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidAdapterError(
            f"{path}: expected {key} to be an integer from {low} to {high}, found {str(value)[:40]!r}",
            hint=f"fix {key} in the PEFT config and save the adapter again",
        )
    return value


def _str_field(config: dict[str, Any], key: str, path: Path, max_len: int = 10_000) -> str | None:
    value = config.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise InvalidAdapterError(
            f"{path}: expected {key} to be a string of at most {max_len} characters",
            hint=f"fix {key} in the PEFT config",
        )
    return value


def _facts_from_config(
    config: dict[str, Any], path: Path, peft_type: str, tensors: dict[str, TensorFacts]
) -> AdapterFacts:
    prompt_learning = peft_type in PROMPT_LEARNING_TYPES
    task_type = _str_field(config, "task_type", path, 64)
    if task_type is not None and task_type not in TASK_TYPES:
        raise InvalidAdapterError(
            f"{path}: unknown task_type {task_type!r}; expected one of {', '.join(TASK_TYPES)}",
            hint="fix task_type in the PEFT config",
        )
    init = _str_field(config, "prompt_tuning_init", path, 32)
    if init is not None:
        init = init.upper()
        if init not in INIT_METHODS:
            raise InvalidAdapterError(
                f"{path}: unknown prompt_tuning_init {init!r}; expected one of {', '.join(INIT_METHODS)}",
                hint="fix prompt_tuning_init in the PEFT config",
            )
    target = config.get("target_modules")
    if isinstance(target, str):
        target_modules: tuple[str, ...] = (target,)
    elif isinstance(target, list) and all(isinstance(t, str) for t in target):
        target_modules = tuple(sorted(target))
    elif target is None:
        target_modules = ()
    else:
        raise InvalidAdapterError(
            f"{path}: expected target_modules to be a string or a list of strings",
            hint="fix target_modules in the LoRA config",
        )
    return AdapterFacts(
        peft_type=peft_type,
        task_type=task_type,
        num_virtual_tokens=_int_field(config, "num_virtual_tokens", path, required=prompt_learning),
        token_dim=_int_field(config, "token_dim", path, required=prompt_learning),
        num_transformer_submodules=_int_field(config, "num_transformer_submodules", path, required=False),
        num_layers=_int_field(config, "num_layers", path, required=peft_type == "PREFIX_TUNING"),
        num_attention_heads=_int_field(config, "num_attention_heads", path, required=False),
        encoder_hidden_size=_int_field(config, "encoder_hidden_size", path, required=False),
        init_method=init if peft_type == "PROMPT_TUNING" else None,
        init_text=_str_field(config, "prompt_tuning_init_text", path),
        tokenizer_name_or_path=_str_field(config, "tokenizer_name_or_path", path, 1000),
        base_model_name_or_path=_str_field(config, "base_model_name_or_path", path, 1000),
        base_model_revision=_str_field(config, "revision", path, 200),
        peft_version=_str_field(config, "peft_version", path, 100),
        lora_r=_int_field(config, "r", path, required=peft_type == "LORA"),
        lora_alpha=config.get("lora_alpha") if isinstance(config.get("lora_alpha"), (int, float)) else None,
        target_modules=target_modules,
        config=config,
        tensors=tuple(sorted(tensors.values(), key=lambda t: t.name)),
    )


def _check_tensors(facts: AdapterFacts, weights_path: Path) -> None:
    tensors = {t.name: t for t in facts.tensors}

    def bad(message: str, hint: str) -> InvalidAdapterError:
        return InvalidAdapterError(f"{weights_path}: {message}", hint=hint)

    if facts.peft_type in PROMPT_LEARNING_TYPES:
        emb = tensors.get("prompt_embeddings")
        if emb is None:
            raise bad(
                f"expected a tensor 'prompt_embeddings' for {facts.peft_type}, found {sorted(tensors)[:5]}",
                "save the adapter with PEFT's save_pretrained()",
            )
        if emb.dtype not in ("F16", "BF16", "F32", "F64"):
            raise bad(f"expected a floating-point prompt_embeddings, found {emb.dtype}", "re-save the adapter")
        if len(emb.shape) != 2:
            raise bad(f"expected prompt_embeddings to be 2-D, found shape {list(emb.shape)}", "re-save the adapter")
        assert facts.num_virtual_tokens is not None and facts.token_dim is not None
        rows, width = emb.shape
        if facts.peft_type == "PREFIX_TUNING":
            assert facts.num_layers is not None
            exp_rows, exp_width = facts.num_virtual_tokens, facts.num_layers * 2 * facts.token_dim
            formula = "(num_virtual_tokens, num_layers x 2 x token_dim)"
        else:
            exp_rows = facts.num_virtual_tokens * (facts.num_transformer_submodules or 1)
            exp_width = facts.token_dim
            formula = "(num_virtual_tokens x num_transformer_submodules, token_dim)"
        if width != exp_width:
            raise bad(
                f"prompt_embeddings is {width} wide but the config implies {exp_width} {formula}",
                "the config and the weights come from different adapters; re-save the adapter",
            )
        if rows != exp_rows:
            raise bad(
                f"prompt_embeddings has {rows} rows but the config implies {exp_rows} {formula}",
                "the config and the weights come from different adapters; re-save the adapter",
            )
        return

    # LoRA: A is (r, in), B is (out, r) for every adapted module.
    lora = [t for t in facts.tensors if ".lora_A." in t.name or ".lora_B." in t.name]
    if not lora:
        raise bad(
            "expected LoRA tensors named '*.lora_A.weight' / '*.lora_B.weight', found none",
            "save the adapter with PEFT's save_pretrained()",
        )
    rank_pattern = facts.config.get("rank_pattern") or {}
    for t in lora:
        if len(t.shape) < 2:
            raise bad(f"LoRA tensor {t.name!r} has shape {list(t.shape)}; expected 2-D", "re-save the adapter")
        if not rank_pattern:
            rank = t.shape[0] if ".lora_A." in t.name else t.shape[1]
            if rank != facts.lora_r:
                raise bad(
                    f"LoRA tensor {t.name!r} has rank {rank} but the config says r={facts.lora_r}",
                    "the config and the weights come from different adapters; re-save the adapter",
                )
    if facts.target_modules and len(facts.target_modules) and facts.config.get("target_modules") != "all-linear":
        adapted = {t.name.split(".lora_")[0].rsplit(".", 1)[-1] for t in lora}
        if not any(m in adapted for m in facts.target_modules) and not any(
            any(m in t.name for m in facts.target_modules) for t in lora
        ):
            raise bad(
                f"LoRA tensors adapt {sorted(adapted)} but target_modules is {list(facts.target_modules)}",
                "the config and the weights come from different adapters; re-save the adapter",
            )
