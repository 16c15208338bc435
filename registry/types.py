"""Frozen dataclasses the library returns. Callers never see ORM rows or sessions."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TensorFacts:
    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class AdapterFileInfo:
    """A file of an adapter directory: its name inside the adapter, its size and where it is now."""

    path: str
    size: int
    source: str


@dataclass(frozen=True)
class AdapterFacts:
    """What :func:`registry.adapters.reader.read_adapter` learns from an adapter directory, without torch."""

    peft_type: str
    task_type: str | None
    num_virtual_tokens: int | None
    token_dim: int | None
    num_transformer_submodules: int | None
    num_layers: int | None
    num_attention_heads: int | None
    encoder_hidden_size: int | None
    init_method: str | None
    init_text: str | None
    tokenizer_name_or_path: str | None
    base_model_name_or_path: str | None
    base_model_revision: str | None
    peft_version: str | None
    lora_r: int | None
    lora_alpha: float | None
    target_modules: tuple[str, ...]
    config: dict[str, Any]
    tensors: tuple[TensorFacts, ...]
    files: tuple[AdapterFileInfo, ...] = ()
    header_metadata: dict[str, str] = field(default_factory=dict)

    def with_files(self, files: tuple[AdapterFileInfo, ...], header_metadata: dict[str, str]) -> AdapterFacts:
        return dataclasses.replace(self, files=files, header_metadata=header_metadata)

    @property
    def is_prompt_learning(self) -> bool:
        return self.peft_type in ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING")

    @property
    def trainable_parameters(self) -> int:
        total = 0
        for t in self.tensors:
            n = 1
            for d in t.shape:
                n *= d
            total += n
        return total


@dataclass(frozen=True)
class BaseModelInfo:
    """Identity of a base model, as recorded in the catalogue."""

    name: str
    revision: str | None = None
    architecture: str | None = None
    model_type: str | None = None
    hidden_size: int | None = None
    vocab_size: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    is_encoder_decoder: bool | None = None
    config_digest: str | None = None
    embedding_fingerprint: str | None = None
    tokenizer_digest: str | None = None
    source: str = "adapter_config"  # "local", "hub" or "adapter_config" (known only from the adapter)

    def identity(self) -> dict[str, Any]:
        """The fields that go into a version's manifest."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class DatasetInfo:
    digest: str  # sha256:<hex>
    name: str | None = None
    format: str | None = None
    records: int | None = None
    size: int | None = None


@dataclass(frozen=True)
class FileRecord:
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class EvalScore:
    metric: str
    value: float
    dataset: str | None  # dataset digest, sha256:<hex>
    dataset_name: str | None
    split: str | None
    recorded_by: str
    recorded_at: datetime


@dataclass(frozen=True)
class HubCopy:
    endpoint: str
    repo_id: str
    commit_sha: str
    tag: str | None
    pushed_at: datetime


@dataclass(frozen=True)
class VersionInfo:
    """A published version with everything recorded about it."""

    namespace: str
    name: str
    number: int
    digest: str  # sha256:<hex> of the canonical manifest
    status: str
    status_reason: str | None
    peft_type: str
    task_type: str | None
    num_virtual_tokens: int | None
    token_dim: int | None
    num_transformer_submodules: int | None
    init_method: str | None
    init_text: str | None
    tokenizer: str | None
    template: str | None
    peft_version: str | None
    description: str | None
    tags: dict[str, str]
    training: dict[str, Any]
    peft_config: dict[str, Any]
    base_model: BaseModelInfo | None
    dataset: DatasetInfo | None
    parent_digest: str | None
    parent_ref: str | None  # "ns/name@N" when the parent is in this catalogue
    lineage_verified: bool
    files: tuple[FileRecord, ...]
    aliases: tuple[str, ...]
    eval_scores: tuple[EvalScore, ...]
    hub_copies: tuple[HubCopy, ...]
    created_by: str
    created_at: datetime
    manifest: dict[str, Any]

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}@{self.number}"

    @property
    def full_name(self) -> str:
        return f"{self.namespace}/{self.name}"

    def latest_scores(self) -> dict[tuple[str, str | None], EvalScore]:
        """The newest score per (metric, eval dataset)."""
        latest: dict[tuple[str, str | None], EvalScore] = {}
        for s in sorted(self.eval_scores, key=lambda s: s.recorded_at):
            latest[(s.metric, s.dataset)] = s
        return latest


@dataclass(frozen=True)
class VersionSummary:
    """One row of ``spr list`` / ``spr versions``."""

    namespace: str
    name: str
    number: int
    digest: str
    status: str
    peft_type: str
    num_virtual_tokens: int | None
    base_model: str | None
    dataset: str | None
    aliases: tuple[str, ...]
    created_by: str
    created_at: datetime

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}@{self.number}"


@dataclass(frozen=True)
class PublishResult:
    version: VersionInfo
    created: bool  # False when identical content was already published (a safe retry)


@dataclass(frozen=True)
class Event:
    id: int
    at: datetime
    actor: str
    action: str
    subject: str
    details: dict[str, Any]
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class LineageNode:
    """One generation in a lineage: a version, or a parent known only by digest."""

    ref: str | None
    digest: str
    version: VersionInfo | None


@dataclass(frozen=True)
class Lineage:
    version: VersionInfo
    ancestors: tuple[LineageNode, ...]  # parent first, root last
    complete: bool  # False when an ancestor is known only by digest


@dataclass(frozen=True)
class SignatureInfo:
    """A stored signature of a version: who signed, with which key, and the bundle itself."""

    ref: str  # "ns/name@N"
    digest: str  # the signed version's digest
    kind: str  # "key" or "certificate"
    signer: str  # a certificate's identity (email, URI or CN), or "key sha256:…"
    key_fingerprint: str  # sha256:<hex> of the signer's PEM public key (model-signing's key hint)
    public_key: str  # PEM: the public key, or the signing certificate
    bundle: str  # the Sigstore bundle JSON written by model-signing
    bundle_sha256: str
    signed_by: str
    signed_at: datetime


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for what the API returns: dataclasses to objects, datetimes to ISO
    text, paths to strings, sets and tuples to lists. The CLI's ``--json`` and the web catalogue's
    JSON twins both use it, so they stay the same document."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
