"""Fixtures that build tiny base models and adapters with real transformers and PEFT.

Everything is built once per test session under ``tmp_path_factory`` by
:mod:`registry.demo.toymodels` and handed out as a ``Path``; a fixture is only built when a test asks
for it (directly or through another fixture). Session fixtures are shared: **never modify them**.
A test that needs to damage an adapter asks :func:`adapter_factory` for a private copy.

Bases (all share :func:`tiny_tokenizer`, vocab 400, 2 layers, 4 heads, fp32):

==========================  ===========  ======  ====  ==========================================
fixture                     arch         width   seed  why
==========================  ===========  ======  ====  ==========================================
``tiny_bloom``              bloom        64      0     the base every adapter fixture is made on
``tiny_bloom_other``        bloom        64      1     same config, other weights (fingerprint)
``tiny_bloom_wide``         bloom        128     0     width mismatch
``tiny_gpt2_same_width``    gpt2         64      0     same width, different architecture
``tiny_llama_gqa``          llama        64      0     GQA (2 kv heads): prefix tensors are 32 wide
``tiny_t5``                 t5           64      0     encoder-decoder (causal adapter refused)
==========================  ===========  ======  ====  ==========================================

Adapters (untrained, seed 0): ``prompt_tuning_random``, ``prompt_tuning_text``, ``p_tuning``,
``prefix_tuning``, ``lora`` on ``tiny_bloom``; ``seq2seq_prompt_tuning`` on ``tiny_t5``. Their
tensor facts are in :data:`ADAPTER_FACTS`.

Helpers for corrupt-input tests: :func:`write_safetensors`, :func:`write_raw_safetensors`,
:func:`read_safetensors_header`.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from registry.demo import toymodels

__all__ = [
    "ADAPTER_FACTS",
    "ADAPTER_FIXTURES",
    "TEXT_INIT",
    "adapter_factory",
    "demo_datasets",
    "lora",
    "p_tuning",
    "prefix_tuning",
    "prompt_tuning_random",
    "prompt_tuning_text",
    "read_safetensors_header",
    "safetensors_data",
    "seq2seq_prompt_tuning",
    "tiny_bloom",
    "tiny_bloom_other",
    "tiny_bloom_wide",
    "tiny_gpt2_same_width",
    "tiny_llama_gqa",
    "tiny_t5",
    "tiny_tokenizer",
    "toy_root",
    "write_raw_safetensors",
    "write_safetensors",
]

TEXT_INIT = toymodels.TEXT_INIT_PROMPT
"""The init text of ``prompt_tuning_text`` (it has 11 tokens under the toy tokenizer)."""

ADAPTER_FIXTURES = (
    "prompt_tuning_random",
    "prompt_tuning_text",
    "p_tuning",
    "prefix_tuning",
    "lora",
    "seq2seq_prompt_tuning",
)
"""Names of the adapter fixtures, in the order tests usually parametrize over them."""

# What each adapter fixture holds in adapter_model.safetensors (all F32), as PEFT 0.21.2 writes it.
# Prompt learning: one tensor "prompt_embeddings". LoRA: per targeted module A (r x in) and B (out x r).
ADAPTER_FACTS: dict[str, dict[str, Any]] = {
    "prompt_tuning_random": {
        "peft_type": "PROMPT_TUNING",
        "task_type": "CAUSAL_LM",
        "base": "tiny_bloom",
        "num_virtual_tokens": 4,
        "num_transformer_submodules": 1,
        "tensors": {"prompt_embeddings": (4, 64)},
    },
    "prompt_tuning_text": {
        "peft_type": "PROMPT_TUNING",
        "task_type": "CAUSAL_LM",
        "base": "tiny_bloom",
        "num_virtual_tokens": 11,
        "num_transformer_submodules": 1,
        "tensors": {"prompt_embeddings": (11, 64)},
    },
    "p_tuning": {
        "peft_type": "P_TUNING",
        "task_type": "CAUSAL_LM",
        "base": "tiny_bloom",
        "num_virtual_tokens": 4,
        "num_transformer_submodules": 1,
        "tensors": {"prompt_embeddings": (4, 64)},
    },
    "prefix_tuning": {
        "peft_type": "PREFIX_TUNING",
        "task_type": "CAUSAL_LM",
        "base": "tiny_bloom",
        "num_virtual_tokens": 4,
        "num_transformer_submodules": 1,
        # rows = num_virtual_tokens (not x submodules); columns = num_layers * 2 * token_dim
        "tensors": {"prompt_embeddings": (4, 2 * 2 * 64)},
    },
    "lora": {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base": "tiny_bloom",
        "tensors": {
            f"base_model.model.transformer.h.{i}.self_attention.query_key_value.lora_{m}.weight": shape
            for i in range(2)
            for m, shape in (("A", (4, 64)), ("B", (192, 4)))
        },
    },
    "seq2seq_prompt_tuning": {
        "peft_type": "PROMPT_TUNING",
        "task_type": "SEQ_2_SEQ_LM",
        "base": "tiny_t5",
        "num_virtual_tokens": 4,
        "num_transformer_submodules": 2,
        "tensors": {"prompt_embeddings": (8, 64)},
    },
}
"""Expected facts per adapter fixture: config values and ``{tensor name: shape}`` (dtype F32)."""


# ---------------------------------------------------------------------------------------------
# safetensors writers for corrupt-input tests
# ---------------------------------------------------------------------------------------------


def write_safetensors(
    path: str | Path, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``tensors`` (name -> numpy array) as a valid safetensors file with safetensors' numpy API.

    Use it to make well-formed files with wrong content (NaN values, wrong shapes, missing or extra
    names, other dtypes). ``metadata`` goes into ``__metadata__`` (strings only). Returns ``path``.
    """
    from safetensors.numpy import save_file

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(out), metadata=dict(metadata or {}))
    return out


def write_raw_safetensors(
    path: str | Path,
    header: bytes | str | Mapping[str, Any],
    data: bytes = b"",
    *,
    header_len: int | None = None,
) -> Path:
    """Write a safetensors-shaped file byte by byte: ``u64 LE length``, ``header``, ``data``.

    ``header`` may be bytes (written as is, e.g. ``b"not json"``), a string (UTF-8 encoded) or a
    mapping (JSON-encoded, compact). ``header_len`` overrides the 8-byte length prefix, so a test
    can claim an absurd header size (``2**40``) or one past the end of the file. Nothing is
    validated: that is the point. Returns ``path``.
    """
    if isinstance(header, Mapping):
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    elif isinstance(header, str):
        raw = header.encode("utf-8")
    else:
        raw = bytes(header)
    length = len(raw) if header_len is None else header_len
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(struct.pack("<Q", length) + raw + bytes(data))
    return out


def read_safetensors_header(path: str | Path) -> dict[str, Any]:
    """Return the parsed JSON header of a safetensors file (tensor entries and ``__metadata__``).

    For tests that rewrite a real file: read the header, change a shape or an offset, and write it
    back with :func:`write_raw_safetensors` and the original data bytes (see
    :func:`safetensors_data`).
    """
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return dict(json.loads(raw[8 : 8 + n]))


def safetensors_data(path: str | Path) -> bytes:
    """Return the data section (everything after the header) of a safetensors file."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return raw[8 + n :]


# ---------------------------------------------------------------------------------------------
# Session fixtures: tokenizer, bases, adapters
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session folder all toy models and adapters are built under."""
    return tmp_path_factory.mktemp("toymodels")


@pytest.fixture(scope="session")
def demo_datasets(toy_root: Path) -> dict[str, Path]:
    """The demo datasets as JSONL files (keys as in :func:`registry.demo.toymodels.write_demo_datasets`)."""
    return toymodels.write_demo_datasets(toy_root / "datasets")


@pytest.fixture(scope="session")
def tiny_tokenizer(toy_root: Path) -> Path:
    """A byte-level BPE tokenizer (vocab 400) trained on the demo sentences."""
    return toymodels.train_tokenizer(toy_root / "tokenizer")


def _base(root: Path, name: str, tokenizer: Path, **kwargs: Any) -> Path:
    return toymodels.make_base_model(root / name, tokenizer_dir=tokenizer, **kwargs)


@pytest.fixture(scope="session")
def tiny_bloom(toy_root: Path, tiny_tokenizer: Path) -> Path:
    """BLOOM, hidden 64, 2 layers, 4 heads, seed 0: the base of the adapter fixtures."""
    return _base(toy_root, "bloom", tiny_tokenizer, arch="bloom", hidden_size=64, seed=0)


@pytest.fixture(scope="session")
def tiny_bloom_other(toy_root: Path, tiny_tokenizer: Path) -> Path:
    """Same config as ``tiny_bloom`` (same config.json) but seed 1: different weights."""
    return _base(toy_root, "bloom-other", tiny_tokenizer, arch="bloom", hidden_size=64, seed=1)


@pytest.fixture(scope="session")
def tiny_bloom_wide(toy_root: Path, tiny_tokenizer: Path) -> Path:
    """BLOOM, hidden 128: a soft prompt made for ``tiny_bloom`` does not fit it."""
    return _base(toy_root, "bloom-wide", tiny_tokenizer, arch="bloom", hidden_size=128, seed=0)


@pytest.fixture(scope="session")
def tiny_gpt2_same_width(toy_root: Path, tiny_tokenizer: Path) -> Path:
    """GPT-2, hidden 64: same width as ``tiny_bloom``, another architecture (no query_key_value)."""
    return _base(toy_root, "gpt2", tiny_tokenizer, arch="gpt2", hidden_size=64, seed=0)


@pytest.fixture(scope="session")
def tiny_llama_gqa(toy_root: Path, tiny_tokenizer: Path) -> Path:
    """Llama, hidden 64, 4 heads, 2 key/value heads (grouped-query attention), tied embeddings."""
    return _base(toy_root, "llama-gqa", tiny_tokenizer, arch="llama", hidden_size=64, num_kv_heads=2, seed=0)


@pytest.fixture(scope="session")
def tiny_t5(toy_root: Path, tiny_tokenizer: Path) -> Path:
    """T5 encoder-decoder, d_model 64, 2+2 layers, 4 heads."""
    return _base(toy_root, "t5", tiny_tokenizer, arch="t5", hidden_size=64, seed=0)


@pytest.fixture(scope="session")
def prompt_tuning_random(toy_root: Path, tiny_bloom: Path) -> Path:
    """Prompt tuning on ``tiny_bloom``: RANDOM init, 4 virtual tokens, CAUSAL_LM."""
    return toymodels.make_adapter(tiny_bloom, toy_root / "adapters" / "pt-random", "PROMPT_TUNING")


@pytest.fixture(scope="session")
def prompt_tuning_text(toy_root: Path, tiny_bloom: Path) -> Path:
    """Prompt tuning on ``tiny_bloom``: TEXT init from :data:`TEXT_INIT`, one virtual token per text token (11)."""
    return toymodels.make_adapter(
        tiny_bloom,
        toy_root / "adapters" / "pt-text",
        "PROMPT_TUNING",
        init="TEXT",
        init_text=TEXT_INIT,
        num_virtual_tokens=None,
    )


@pytest.fixture(scope="session")
def p_tuning(toy_root: Path, tiny_bloom: Path) -> Path:
    """P-tuning (PromptEncoder, MLP, encoder_hidden_size 64) on ``tiny_bloom``, 4 virtual tokens."""
    return toymodels.make_adapter(tiny_bloom, toy_root / "adapters" / "p-tuning", "P_TUNING")


@pytest.fixture(scope="session")
def prefix_tuning(toy_root: Path, tiny_bloom: Path) -> Path:
    """Prefix tuning on ``tiny_bloom``, 4 virtual tokens, no projection."""
    return toymodels.make_adapter(tiny_bloom, toy_root / "adapters" / "prefix", "PREFIX_TUNING")


@pytest.fixture(scope="session")
def lora(toy_root: Path, tiny_bloom: Path) -> Path:
    """LoRA r=4 on ``tiny_bloom``'s ``query_key_value``; both matrices random (changes outputs)."""
    return toymodels.make_adapter(tiny_bloom, toy_root / "adapters" / "lora", "LORA")


@pytest.fixture(scope="session")
def seq2seq_prompt_tuning(toy_root: Path, tiny_t5: Path) -> Path:
    """Prompt tuning on ``tiny_t5``: SEQ_2_SEQ_LM, 4 virtual tokens x 2 submodules = 8 rows."""
    return toymodels.make_adapter(tiny_t5, toy_root / "adapters" / "t5-pt", "PROMPT_TUNING")


@pytest.fixture
def adapter_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    """Return ``copy(name) -> Path``: a private copy of the adapter fixture ``name``.

    ``name`` is one of :data:`ADAPTER_FIXTURES`. Each call returns a new directory that the test
    may change or break freely (the shared session adapter stays intact). Its
    ``base_model_name_or_path`` still points at the session base model.
    """

    def copy(name: str) -> Path:
        if name not in ADAPTER_FIXTURES:
            raise ValueError(f"unknown adapter fixture {name!r}; choose one of {ADAPTER_FIXTURES}")
        source: Path = request.getfixturevalue(name)
        target = tmp_path_factory.mktemp(f"copy-{name}") / name
        shutil.copytree(source, target)
        return target

    return copy
