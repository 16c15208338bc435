"""SQLAlchemy 2.0 ORM for the catalogue. Rows never leave the library (see ``types.py``).

The database enforces the invariants: unique adapter names, unique version numbers and digests
per adapter, foreign keys, and a linear event chain (``event.prev_hash`` is unique, so two writers
racing to append after the same event cannot both succeed; the loser retries).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class AdapterRow(Base):
    __tablename__ = "adapter"
    __table_args__ = (UniqueConstraint("namespace", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    namespace: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    versions: Mapped[list[VersionRow]] = relationship(back_populates="adapter")


class BaseModelRow(Base):
    __tablename__ = "base_model"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    identity_digest: Mapped[str] = mapped_column(String(71), unique=True)
    name: Mapped[str] = mapped_column(String(1000), index=True)
    revision: Mapped[str | None] = mapped_column(String(200))
    architecture: Mapped[str | None] = mapped_column(String(200))
    model_type: Mapped[str | None] = mapped_column(String(100))
    hidden_size: Mapped[int | None] = mapped_column(Integer)
    vocab_size: Mapped[int | None] = mapped_column(Integer)
    num_layers: Mapped[int | None] = mapped_column(Integer)
    num_heads: Mapped[int | None] = mapped_column(Integer)
    is_encoder_decoder: Mapped[bool | None] = mapped_column(Boolean)
    config_digest: Mapped[str | None] = mapped_column(String(71))
    embedding_fingerprint: Mapped[str | None] = mapped_column(String(71))
    tokenizer_digest: Mapped[str | None] = mapped_column(String(71))
    source: Mapped[str] = mapped_column(String(20))


class DatasetRow(Base):
    __tablename__ = "dataset"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(String(71), unique=True)
    name: Mapped[str | None] = mapped_column(String(1000), index=True)
    format: Mapped[str | None] = mapped_column(String(20))
    # 64-bit: datasets and weight files pass 2 GiB (PostgreSQL's INTEGER is 32-bit).
    records: Mapped[int | None] = mapped_column(BigInteger)
    size: Mapped[int | None] = mapped_column(BigInteger)


class VersionRow(Base):
    __tablename__ = "version"
    __table_args__ = (
        UniqueConstraint("adapter_id", "number"),
        UniqueConstraint("adapter_id", "digest"),
        Index("ix_version_created_at", "created_at"),
        # `spr list --base-model X` / `--dataset D`: walk one model's versions newest first, no sort.
        Index("ix_version_base_model_created", "base_model_id", "created_at"),
        Index("ix_version_dataset_created", "dataset_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapter.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(71), index=True)
    manifest: Mapped[str] = mapped_column(Text)
    peft_type: Mapped[str] = mapped_column(String(32), index=True)
    task_type: Mapped[str | None] = mapped_column(String(32))
    num_virtual_tokens: Mapped[int | None] = mapped_column(Integer)
    token_dim: Mapped[int | None] = mapped_column(Integer)
    num_transformer_submodules: Mapped[int | None] = mapped_column(Integer)
    init_method: Mapped[str | None] = mapped_column(String(32))
    init_text: Mapped[str | None] = mapped_column(Text)
    tokenizer: Mapped[str | None] = mapped_column(String(1000))
    template: Mapped[str | None] = mapped_column(Text)
    peft_version: Mapped[str | None] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(Text)
    tags_json: Mapped[str] = mapped_column(Text)
    training_json: Mapped[str] = mapped_column(Text)
    peft_config_json: Mapped[str] = mapped_column(Text)
    base_model_id: Mapped[int | None] = mapped_column(ForeignKey("base_model.id"))
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("dataset.id"))
    parent_digest: Mapped[str | None] = mapped_column(String(71), index=True)
    lineage_verified: Mapped[bool] = mapped_column(Boolean)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(20))
    status_reason: Mapped[str | None] = mapped_column(Text)

    adapter: Mapped[AdapterRow] = relationship(back_populates="versions")
    base_model: Mapped[BaseModelRow | None] = relationship()
    dataset: Mapped[DatasetRow | None] = relationship()
    files: Mapped[list[FileRow]] = relationship(order_by="FileRow.path")
    eval_scores: Mapped[list[EvalScoreRow]] = relationship(order_by="EvalScoreRow.id")
    hub_copies: Mapped[list[HubCopyRow]] = relationship(order_by="HubCopyRow.id")
    signatures: Mapped[list[SignatureRow]] = relationship(order_by="SignatureRow.id")


class FileRow(Base):
    __tablename__ = "file"
    __table_args__ = (UniqueConstraint("version_id", "path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("version.id"), index=True)
    path: Mapped[str] = mapped_column(String(1000))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)


class EvalScoreRow(Base):
    __tablename__ = "eval_score"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("version.id"), index=True)
    metric: Mapped[str] = mapped_column(String(100))
    value: Mapped[float] = mapped_column(Float)
    dataset_digest: Mapped[str | None] = mapped_column(String(71))
    dataset_name: Mapped[str | None] = mapped_column(String(1000))
    split: Mapped[str | None] = mapped_column(String(100))
    recorded_by: Mapped[str] = mapped_column(String(200))
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AliasRow(Base):
    __tablename__ = "alias"
    __table_args__ = (UniqueConstraint("adapter_id", "alias"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapter.id"), index=True)
    alias: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[int] = mapped_column(ForeignKey("version.id"), index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class HubCopyRow(Base):
    __tablename__ = "hub_copy"
    __table_args__ = (UniqueConstraint("version_id", "endpoint", "repo_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("version.id"), index=True)
    endpoint: Mapped[str] = mapped_column(String(1000))
    repo_id: Mapped[str] = mapped_column(String(300))
    commit_sha: Mapped[str] = mapped_column(String(64))
    tag: Mapped[str | None] = mapped_column(String(200))
    pushed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SignatureRow(Base):
    """A ``model-signing`` bundle over a version's files and manifest; append-only like the version.

    One per (version, key): several signers may sign a version, and signing again with the same key
    returns the stored signature.
    """

    __tablename__ = "signature"
    __table_args__ = (UniqueConstraint("version_id", "key_fingerprint"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("version.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))  # "key" or "certificate"
    signer: Mapped[str] = mapped_column(String(500))  # certificate identity, or "key sha256:…"
    key_fingerprint: Mapped[str] = mapped_column(String(71))  # sha256:<hex> of the PEM public key
    public_key: Mapped[str] = mapped_column(Text)  # PEM; a key bundle names its key only by hash
    bundle: Mapped[str] = mapped_column(Text)  # the Sigstore bundle JSON, as model-signing wrote it
    bundle_sha256: Mapped[str] = mapped_column(String(64))
    signed_by: Mapped[str] = mapped_column(String(200))
    signed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class EventRow(Base):
    __tablename__ = "event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(50), index=True)
    subject: Mapped[str] = mapped_column(String(500), index=True)
    details_json: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hash: Mapped[str] = mapped_column(String(64), unique=True)
