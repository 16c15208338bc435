"""Adapter directories written with numpy and safetensors only: fast, torch-free, easy to corrupt.

They have exactly the layout PEFT 0.21 writes (checked against real PEFT in ``test_catalogue.py``).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file


def prompt_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "peft_type": "PROMPT_TUNING",
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": 4,
        "token_dim": 64,
        "num_transformer_submodules": 1,
        "num_attention_heads": 4,
        "num_layers": 2,
        "prompt_tuning_init": "RANDOM",
        "base_model_name_or_path": "bigscience/bloomz-560m",
        "peft_version": "0.21.2",
        "inference_mode": True,
    }
    config.update(overrides)
    return config


def write_prompt_adapter(
    directory: Path,
    *,
    seed: int = 0,
    rows: int = 4,
    dim: int = 64,
    config: dict[str, Any] | None = None,
    tensors: dict[str, np.ndarray] | None = None,
) -> Path:
    """A prompt-tuning adapter directory; ``seed`` varies the values (distinct content per seed)."""
    directory.mkdir(parents=True, exist_ok=True)
    cfg = config if config is not None else prompt_config(num_virtual_tokens=rows, token_dim=dim)
    (directory / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    if tensors is None:
        rng = np.random.default_rng(seed)
        tensors = {"prompt_embeddings": rng.standard_normal((rows, dim)).astype(np.float32)}
    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    return directory


def write_raw_safetensors(path: Path, header: bytes, data: bytes = b"", length: int | None = None) -> None:
    """A safetensors file with an arbitrary header (and header length field)."""
    n = len(header) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + header + data)
