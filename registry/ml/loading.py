"""Verify, then load: a catalogued soft prompt (or an adapter directory) onto a base model.

Verification lives in the torch-free room :mod:`registry.verification`; :func:`verify`,
:func:`adapter_name_for` and the other verification names are re-exported here for users
(``from registry.ml import loading; loading.verify(...)``).

:func:`load` and :func:`load_many` verify first (refusing with :class:`IncompatibleError`), export
the verified bytes from the :class:`~registry.storage.BlobStore` to a temporary directory, load them
with ``PeftModel.from_pretrained(..., is_trainable=False)``, and then confirm that the adapter tensors
inside the model equal the stored ones, which catches an adapter that PEFT silently did not apply.
torch, transformers and peft are imported only inside those functions.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from registry.adapters.compat import CompatReport, finding
from registry.errors import IncompatibleError, UsageError
from registry.storage import BlobStore, open_store
from registry.verification import (
    ADAPTER_CONFIG,
    WEIGHTS,
    AdapterSubject,
    adapter_name_for,
    base_facts,
    check_files,
    is_adapter_directory,
    resolve_adapter,
    verify,
    verify_subject,
)

_verify_subject = verify_subject  # the former private name


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


def _materialise(subject: AdapterSubject, into: Path, store: BlobStore) -> Path:
    """The adapter's files in a directory PEFT can read: verified blobs exported, or the directory itself."""
    if subject.version is None:
        assert subject.directory is not None
        return subject.directory
    from registry.adapters.manifest import check_relative_path

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
    store: BlobStore | None = None,
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
                     adapter_names=[adapter_name] if adapter_name else None, actor=actor, store=store)


def load_many(
    refs: Sequence[str | os.PathLike[str]],
    base_model: Any,
    *,
    db: str | None = None,
    allow_different_base: bool = False,
    adapter_names: Sequence[str] | None = None,
    actor: str | None = None,
    store: BlobStore | None = None,
) -> Any:
    """Attach several verified adapters to one copy of ``base_model``; return the ``PeftModel``.

    Every adapter is verified before anything is loaded. Each is loaded under
    :func:`adapter_name_for(ref)` (or the matching ``adapter_names`` entry); switch between them with
    ``model.set_adapter(name)``. The first one is active on return. The adapters must share a
    task type and be all prompt-learning or all LoRA (PEFT cannot mix the two in one model).
    Raises as :func:`load`, and :class:`UsageError` for an empty list or duplicate names.
    ``store`` is the blob store the files are verified in and exported from (default: :func:`open_store`).
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
    if store is None:
        store = open_store()
    in_memory = not isinstance(base_model, (str, os.PathLike))
    target = base_facts(base_model)
    subjects: list[AdapterSubject] = []
    reports: list[CompatReport] = []
    for ref in refs:
        subject = resolve_adapter(ref, db=db)
        report = verify_subject(
            subject, target, db=db, allow_different_base=allow_different_base, actor=actor, log_override=True,
            via="load", store=store,
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
            for i, (subject, name) in enumerate(zip(subjects, names, strict=True)):
                directory = _materialise(subject, workdir / str(i), store)
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
    "ADAPTER_CONFIG",
    "WEIGHTS",
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
    "verify_subject",
]  # verification names re-exported from registry.verification
