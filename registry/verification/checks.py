"""Torch-free verification: does an adapter (a catalogued version or a directory) fit a base model?

:func:`verify` is the check ``spr verify`` runs and :func:`registry.ml.loading.load` runs before
loading: it never imports torch, reads no weights beyond the safetensors headers and a sampled slice
of the base's input embeddings, re-hashes every stored file of a catalogued version (through the
:class:`~registry.storage.BlobStore`), scans an adapter directory's tensors for NaN/Inf, and returns
a :class:`~registry.adapters.compat.CompatReport`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.adapters import basemodel, compat
from registry.adapters.basemodel import BaseModelFacts
from registry.adapters.compat import CompatReport, finding
from registry.errors import DigestMismatchError, InvalidBaseModelError, NotFoundError
from registry.storage import BlobStore, open_store
from registry.types import AdapterFacts, BaseModelInfo, FileRecord, VersionInfo

__all__ = [
    "ADAPTER_CONFIG",
    "WEIGHTS",
    "AdapterSubject",
    "adapter_name_for",
    "base_facts",
    "check_files",
    "is_adapter_directory",
    "resolve_adapter",
    "verify",
    "verify_subject",
]

ADAPTER_CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"


@dataclass(frozen=True)
class AdapterSubject:
    """The adapter being verified: a catalogued version or a directory on disk."""

    label: str  # "ns/name@N" or the directory's absolute path
    facts: AdapterFacts
    recorded: BaseModelInfo | None
    version: VersionInfo | None = None
    directory: Path | None = None


def is_adapter_directory(target: str | os.PathLike[str]) -> bool:
    """True when ``target`` names a directory holding ``adapter_config.json`` (it then wins over a ref)."""
    path = Path(target).expanduser()
    return path.is_dir() and (path / ADAPTER_CONFIG).is_file()


def resolve_adapter(target: str | os.PathLike[str], *, db: str | None = None) -> AdapterSubject:
    """Read the adapter named by ``target``: an adapter directory, else a catalogue reference.

    For a directory, the facts come from its files (torch-free); the recorded base is what its
    ``adapter_config.json`` claims, or, when that names a model directory that exists here, that
    directory's measured identity. For a reference, the facts and the base identity come from the
    version's manifest and catalogue record. Raises :class:`InvalidAdapterError` for an unreadable
    directory and :class:`NotFoundError` subclasses for an unknown reference.
    """
    if is_adapter_directory(target):
        from registry.adapters.reader import read_adapter

        directory = Path(target).expanduser().resolve()
        facts = read_adapter(directory, check_values=False)
        return AdapterSubject(
            label=str(directory), facts=facts, recorded=_claimed_base(facts), directory=directory
        )
    if isinstance(target, Path) or Path(str(target)).expanduser().is_dir():
        from registry.errors import InvalidAdapterError

        raise InvalidAdapterError(
            f"{target} is a directory without {ADAPTER_CONFIG}",
            hint="pass the folder that PEFT's save_pretrained() wrote, or a catalogue reference such as team/coach@prod",
        )
    from registry import catalogue
    from registry.adapters.manifest import facts_from_manifest

    version = catalogue.get_version(str(target), db=db)
    facts = facts_from_manifest(version.manifest)
    recorded = version.base_model
    if recorded is None or recorded.source == "adapter_config":
        recorded = _claimed_base(facts) if recorded is None else _upgrade_claim(recorded)
    return AdapterSubject(label=version.ref, facts=facts, recorded=recorded, version=version)


def _claimed_base(facts: AdapterFacts) -> BaseModelInfo | None:
    claim = basemodel.from_adapter(facts)
    return None if claim is None else _upgrade_claim(claim)


def _upgrade_claim(claim: BaseModelInfo) -> BaseModelInfo:
    # A claim naming a model directory that exists here can be measured: compare weights, not names.
    path = Path(claim.name).expanduser()
    if path.is_absolute() and (path / "config.json").is_file():
        try:
            return basemodel.from_directory(path)
        except InvalidBaseModelError:
            return claim
    return claim


def base_facts(base_model: Any) -> BaseModelFacts:
    """Facts of ``base_model``: a directory or ``REPO[@REV]`` (no weights read), or an in-memory model."""
    if isinstance(base_model, (str, os.PathLike)):
        return basemodel.inspect(os.fspath(base_model))
    if isinstance(base_model, BaseModelFacts):
        return base_model
    return basemodel.from_model(base_model)


def verify(
    adapter: str | os.PathLike[str],
    base_model: Any,
    *,
    db: str | None = None,
    allow_different_base: bool = False,
    actor: str | None = None,
    log_override: bool = True,
    via: str = "verify",
    store: BlobStore | None = None,
) -> CompatReport:
    """Check that ``adapter`` (a catalogue ref or an adapter directory) fits ``base_model``.

    ``base_model`` is a directory, ``REPO[@REV]`` on the Hub, or a loaded transformers model.
    For a catalogued version every stored file is re-hashed (``file-digest-mismatch``,
    ``file-missing``); for a directory every tensor is scanned for NaN/Inf. Returns the report
    (it does not raise for an incompatible pair: read ``report.compatible``). When identity
    findings are accepted with ``allow_different_base=True``, the override is logged as a
    ``verify-override`` event (unless ``log_override=False``). Raises for what stops the check
    itself: an unknown ref, an unreadable adapter or base model, an unreachable Hub.
    ``store`` is the blob store the version's files are re-hashed in (default: :func:`open_store`).
    """
    return verify_subject(
        resolve_adapter(adapter, db=db), base_facts(base_model), db=db,
        allow_different_base=allow_different_base, actor=actor, log_override=log_override, via=via, store=store,
    )


def verify_subject(
    subject: AdapterSubject,
    target: BaseModelFacts,
    *,
    db: str | None,
    allow_different_base: bool,
    actor: str | None,
    log_override: bool,
    via: str,
    store: BlobStore | None = None,
) -> CompatReport:
    """:func:`verify` of an adapter already resolved (:func:`resolve_adapter`) against known base facts."""
    report = compat.check(
        subject.facts,
        target,
        subject.recorded,
        subject=subject.label,
        installed_peft=compat.installed_peft_version(),
        allow_different_base=allow_different_base,
    )
    extra = []
    if subject.version is not None:
        extra += check_files(subject.version.files, store=store)
        extra += _status_findings(subject.version)
    elif subject.directory is not None:
        extra += _non_finite_findings(subject.directory)
    report = report.with_findings(extra)
    if report.overridden and log_override:
        from registry import catalogue

        catalogue.log_event(
            "verify-override",
            subject.label,
            {
                "via": via,
                "digest": subject.version.digest if subject.version else None,
                "base_model": report.base_model.identity(),
                "recorded_base_model": report.recorded.identity() if report.recorded else None,
                "accepted": [{"code": f.code, "expected": f.expected, "found": f.found} for f in report.identity],
            },
            db=db,
            actor=actor,
        )
    return report


def check_files(files: Sequence[FileRecord], *, store: BlobStore | None = None) -> list[compat.Finding]:
    """Re-hash every blob of a version in ``store`` (default: :func:`open_store`); one finding per changed or missing file."""
    if store is None:
        store = open_store()
    out: list[compat.Finding] = []
    for f in files:
        try:
            store.verify(f.sha256)
        except DigestMismatchError as exc:
            out.append(
                finding(
                    "file-digest-mismatch",
                    f"stored file {f.path} was changed after it was published",
                    expected=f"sha256:{f.sha256}",
                    found=f"sha256:{exc.fields.get('found')}",
                    hint="do not load it; run 'spr audit', then restore the blob from a backup or re-publish the adapter",
                )
            )
        except NotFoundError:
            out.append(
                finding(
                    "file-missing",
                    f"stored file {f.path} is missing from the blob store",
                    expected=f"sha256:{f.sha256}",
                    found="no blob",
                    hint="run 'spr audit'; restore the blob store from a backup or pull the version again",
                )
            )
    return out


def _status_findings(version: VersionInfo) -> list[compat.Finding]:
    if version.status == "active":
        return []
    code = "version-yanked" if version.status == "yanked" else "version-deprecated"
    return [
        finding(
            code,
            f"{version.ref} is {version.status}" + (f": {version.status_reason}" if version.status_reason else ""),
            expected="active",
            found=version.status,
            hint=f"see 'spr versions {version.full_name}' for a newer version",
        )
    ]


def _non_finite_findings(directory: Path) -> list[compat.Finding]:
    from registry.adapters.tensorfile import count_non_finite, read_header

    weights = directory / WEIGHTS
    header = read_header(weights)
    out = []
    for info in header.tensors.values():
        bad = count_non_finite(weights, info)
        if bad:
            out.append(
                finding(
                    "non-finite-values",
                    f"tensor {info.name} holds {bad} NaN/Inf values",
                    expected="finite values",
                    found=f"{bad} non-finite",
                    hint="training diverged; lower the learning rate or use an earlier checkpoint",
                )
            )
    return out


def adapter_name_for(ref: str | os.PathLike[str]) -> str:
    """A PEFT adapter name for ``ref``: letters, digits and ``_`` only (PEFT names cannot hold '.' or '/')."""
    text = os.fspath(ref)
    if is_adapter_directory(text):
        text = Path(text).name
    name = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")
    return name or "adapter"
