"""Verify, then load: a catalogued soft prompt (or an adapter directory) onto a base model.

:func:`verify` is the check ``spr verify`` runs: it never imports torch, reads no weights beyond
the safetensors headers and a sampled slice of the base's input embeddings, re-hashes every stored
file of a catalogued version, and returns a :class:`~registry.adapters.compat.CompatReport`.

:func:`load` and :func:`load_many` verify first (refusing with :class:`IncompatibleError`), export
the verified bytes to a temporary directory, load them with ``PeftModel.from_pretrained(...,
is_trainable=False)``, and then confirm that the adapter tensors inside the model equal the stored
ones, which catches an adapter that PEFT silently did not apply. torch, transformers and peft are
imported only inside those functions.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from registry.adapters import basemodel, compat
from registry.adapters.basemodel import BaseModelFacts
from registry.adapters.compat import CompatReport, finding
from registry.errors import (
    DigestMismatchError,
    IncompatibleError,
    InvalidBaseModelError,
    NotFoundError,
    UsageError,
)
from registry.types import AdapterFacts, BaseModelInfo, FileRecord, VersionInfo

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
) -> CompatReport:
    """Check that ``adapter`` (a catalogue ref or an adapter directory) fits ``base_model``.

    ``base_model`` is a directory, ``REPO[@REV]`` on the Hub, or a loaded transformers model.
    For a catalogued version every stored file is re-hashed (``file-digest-mismatch``,
    ``file-missing``); for a directory every tensor is scanned for NaN/Inf. Returns the report
    (it does not raise for an incompatible pair: read ``report.compatible``). When identity
    findings are accepted with ``allow_different_base=True``, the override is logged as a
    ``verify-override`` event (unless ``log_override=False``). Raises for what stops the check
    itself: an unknown ref, an unreadable adapter or base model, an unreachable Hub.
    """
    return _verify_subject(
        resolve_adapter(adapter, db=db), base_facts(base_model), db=db,
        allow_different_base=allow_different_base, actor=actor, log_override=log_override, via=via,
    )


def _verify_subject(
    subject: AdapterSubject,
    target: BaseModelFacts,
    *,
    db: str | None,
    allow_different_base: bool,
    actor: str | None,
    log_override: bool,
    via: str,
) -> CompatReport:
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
        extra += check_files(subject.version.files)
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


def check_files(files: Sequence[FileRecord]) -> list[compat.Finding]:
    """Re-hash every blob of a version; one finding per changed or missing file."""
    from registry.storage import open_store

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


# ---------------------------------------------------------------------------------------------
# Loading (torch, transformers and peft are imported inside these functions only)
# ---------------------------------------------------------------------------------------------


def adapter_name_for(ref: str | os.PathLike[str]) -> str:
    """A PEFT adapter name for ``ref``: letters, digits and ``_`` only (PEFT names cannot hold '.' or '/')."""
    text = os.fspath(ref)
    if is_adapter_directory(text):
        text = Path(text).name
    name = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")
    return name or "adapter"


_AUTO_CLASS = {
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "FEATURE_EXTRACTION": "AutoModel",
}


def _load_base(spec: str | os.PathLike[str], report: CompatReport, task_type: str | None) -> Any:
    """Load the verified base model from a directory or the Hub commit the report pinned."""
    import transformers

    cls = getattr(transformers, _AUTO_CLASS.get(task_type or "", "AutoModel"))
    path = Path(os.fspath(spec)).expanduser()
    if path.is_dir():
        from registry.adapters import basemodel

        basemodel.require_safetensors(path)  # a pickled checkpoint is refused, never unpickled
        return cls.from_pretrained(str(path), use_safetensors=True)
    from huggingface_hub import snapshot_download

    from registry import settings

    info = report.base_model
    local = snapshot_download(
        info.name,
        revision=info.revision,  # the commit sha the identity was measured at
        endpoint=settings.hub_endpoint(),
        token=settings.hub_token(),
        allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"],
    )
    return cls.from_pretrained(local, use_safetensors=True)  # only *.safetensors were downloaded; never a pickle


def _materialise(subject: AdapterSubject, into: Path) -> Path:
    """The adapter's files in a directory PEFT can read: verified blobs exported, or the directory itself."""
    if subject.version is None:
        assert subject.directory is not None
        return subject.directory
    from registry.adapters.manifest import check_relative_path
    from registry.storage import open_store

    store = open_store()
    for f in subject.version.files:
        # export() re-hashes on the way out, so bytes changed since verify() are refused too.
        store.export(f.sha256, into / check_relative_path(f.path, "catalogue"))
    return into


def _stored_tensors(directory: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(directory / WEIGHTS), device="cpu")


def confirm_applied(peft_model: Any, adapter_name: str, stored: dict[str, Any], label: str) -> None:
    """Raise :class:`IncompatibleError` (``adapter-not-applied``) unless the model holds exactly ``stored``.

    Compares PEFT's own view of the adapter (``get_peft_model_state_dict``, the dict that
    ``save_pretrained`` writes) with the stored tensors, at the lower of the two precisions.
    """
    import torch
    from peft.utils import get_peft_model_state_dict

    loaded = get_peft_model_state_dict(peft_model, adapter_name=adapter_name)
    problems: list[str] = []
    for key, want in stored.items():
        have = loaded.get(key)
        if have is None:
            problems.append(f"{key} is missing from the model")
            continue
        have = have.detach().cpu()
        if tuple(have.shape) != tuple(want.shape):
            problems.append(f"{key} has shape {list(have.shape)} in the model, {list(want.shape)} stored")
            continue
        # PEFT may up- or down-cast adapter weights to the model's dtype: compare at the lower precision.
        if have.dtype.itemsize <= want.dtype.itemsize:
            same = torch.equal(have, want.to(have.dtype))
        else:
            same = torch.equal(have.to(want.dtype), want)
        if not same:
            problems.append(f"{key} differs from the stored tensor")
    if problems:
        f = finding(
            "adapter-not-applied",
            f"after loading, {len(problems)} adapter tensor(s) in the model differ from the stored ones: {problems[0]}",
            expected="every stored tensor inside the model",
            found="; ".join(problems[:3]),
            hint="the adapter was not (fully) applied by PEFT; check the PEFT version and the base model, and do not serve this model",
        )
        raise IncompatibleError(
            f"{label}: {f.message}", hint=f.hint, findings=[asdict(f)], subject=label
        )


def load(
    ref: str | os.PathLike[str],
    base_model: Any,
    *,
    db: str | None = None,
    allow_different_base: bool = False,
    adapter_name: str | None = None,
    actor: str | None = None,
) -> Any:
    """Verify ``ref`` against ``base_model``, then load it and return the ``PeftModel``.

    ``ref`` is a catalogue reference (or an adapter directory). ``base_model`` is a loaded
    transformers model (wrapped in place by PEFT, as ``PeftModel.from_pretrained`` does) or a
    directory / ``REPO[@REV]`` to load it from, with the auto class that fits the adapter's task
    type. The adapter is named ``adapter_name`` or :func:`adapter_name_for(ref)`. Raises
    :class:`IncompatibleError` with the findings when verification refuses the pair (identity
    findings are accepted with ``allow_different_base=True``, logged as an event) or when the
    loaded model does not hold the stored tensors; :class:`DigestMismatchError` when a blob
    changes between verification and export.
    """
    return load_many([ref], base_model, db=db, allow_different_base=allow_different_base,
                     adapter_names=[adapter_name] if adapter_name else None, actor=actor)


def load_many(
    refs: Sequence[str | os.PathLike[str]],
    base_model: Any,
    *,
    db: str | None = None,
    allow_different_base: bool = False,
    adapter_names: Sequence[str] | None = None,
    actor: str | None = None,
) -> Any:
    """Attach several verified adapters to one copy of ``base_model``; return the ``PeftModel``.

    Every adapter is verified before anything is loaded. Each is loaded under
    :func:`adapter_name_for(ref)` (or the matching ``adapter_names`` entry); switch between them with
    ``model.set_adapter(name)``. The first one is active on return. The adapters must share a
    task type and be all prompt-learning or all LoRA (PEFT cannot mix the two in one model).
    Raises as :func:`load`, and :class:`UsageError` for an empty list or duplicate names.
    """
    if not refs:
        raise UsageError("load_many needs at least one adapter reference", hint="pass refs=['team/coach@prod', ...]")
    names = list(adapter_names) if adapter_names else [adapter_name_for(r) for r in refs]
    if len(names) != len(refs):
        raise UsageError("give one adapter name per reference", hint="or leave adapter_names out")
    if len(set(names)) != len(names):
        raise UsageError(
            f"two adapters would get the same name ({', '.join(sorted({n for n in names if names.count(n) > 1}))})",
            hint="pass distinct adapter_names=[...]",
        )
    for name in names:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,100}", name):
            raise UsageError(f"adapter name {name!r} is not allowed", hint="use letters, digits, '_' and '-'")
    in_memory = not isinstance(base_model, (str, os.PathLike))
    target = base_facts(base_model)
    subjects: list[AdapterSubject] = []
    reports: list[CompatReport] = []
    for ref in refs:
        subject = resolve_adapter(ref, db=db)
        report = _verify_subject(
            subject, target, db=db, allow_different_base=allow_different_base, actor=actor, log_override=True, via="load"
        )
        report.raise_if_incompatible()
        subjects.append(subject)
        reports.append(report)
    _check_combinable(subjects)

    import peft
    import torch  # noqa: F401  (peft needs it; imported here so the failure names torch)

    model = base_model if in_memory else _load_base(base_model, reports[0], subjects[0].facts.task_type)
    workdir = Path(tempfile.mkdtemp(prefix="spr-load-"))
    try:
        with warnings.catch_warnings():
            # PEFT 0.21 calls a transformers method deprecated in 5.x on every load; not the caller's concern.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = None
            for i, (subject, name) in enumerate(zip(subjects, names)):
                directory = _materialise(subject, workdir / str(i))
                stored = _stored_tensors(directory)
                if peft_model is None:
                    peft_model = peft.PeftModel.from_pretrained(model, str(directory), adapter_name=name, is_trainable=False)
                else:
                    peft_model.load_adapter(str(directory), adapter_name=name, is_trainable=False)
                confirm_applied(peft_model, name, stored, subject.label)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    assert peft_model is not None
    peft_model.set_adapter(names[0])
    peft_model.eval()
    return peft_model


def _check_combinable(subjects: Sequence[AdapterSubject]) -> None:
    if len(subjects) < 2:
        return
    kinds = {s.facts.is_prompt_learning for s in subjects}
    tasks = {s.facts.task_type for s in subjects}
    if len(kinds) > 1 or len(tasks) > 1:
        described = ", ".join(f"{s.label} ({s.facts.peft_type}, {s.facts.task_type})" for s in subjects)
        raise IncompatibleError(
            f"these adapters cannot share one model: {described}",
            hint="load prompt-learning adapters and LoRA adapters (or different task types) onto separate copies of the base",
        )


__all__ = [
    "AdapterSubject",
    "adapter_name_for",
    "base_facts",
    "check_files",
    "confirm_applied",
    "is_adapter_directory",
    "load",
    "load_many",
    "resolve_adapter",
    "verify",
]
