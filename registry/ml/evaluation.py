"""Evaluating and generating with a published soft prompt: a verified load, then scores or text.

:func:`evaluate` (``spr eval``) verifies the version against a base model and loads it with
:func:`registry.ml.loading.load`, scores a dataset and records each score in the catalogue with the
dataset's digest, the split and who ran it. :func:`generate` (``spr generate``) does the same load
and a greedy generation, optionally next to the bare base model's output, as the tutorials compare
by hand. Both apply the input template recorded with the version.

Metrics (recorded names in brackets):

- ``loss`` [``eval_loss``]: mean cross-entropy per target token, in nats, computed exactly as in
  training (:func:`registry.ml.training.mean_token_loss`): on the whole text of a text record, on the
  completion only of a prompt/completion record.
- ``perplexity`` [``perplexity``]: ``exp(eval_loss)``.
- ``exact-match`` [``exact_match``]: the share of prompt/completion records whose greedy
  generation equals the completion after normalisation (lower case, punctuation removed,
  whitespace collapsed).
- ``rouge-l`` [``rouge_l``]: the mean ROUGE-L F1 (longest common subsequence of word tokens, as
  ``\\w+`` after lower-casing) between generation and completion.

Torch, transformers and peft are imported inside the functions that need them.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.errors import UsageError
from registry.ml.defaults import (
    DEFAULT_EVAL_BATCH_SIZE,
    DEFAULT_EVAL_NEW_TOKENS,
    DEFAULT_GENERATE_NEW_TOKENS,
    DEFAULT_MAX_LENGTH,
    GENERATION_METRICS,
    METRICS,
    TUTORIAL_REPETITION_PENALTY,
)
from registry.types import DatasetInfo, VersionInfo

if TYPE_CHECKING:  # pragma: no cover - typing only
    from registry.storage import BlobStore

__all__ = [
    "GENERATION_METRICS",
    "METRICS",
    "EvalReport",
    "Generation",
    "LoadedAdapter",
    "Prediction",
    "evaluate",
    "exact_match",
    "generate",
    "generate_text",
    "load_adapter",
    "normalize_answer",
    "resolve_base_model",
    "rouge_l",
]


SAMPLES_KEPT = 5


@dataclass(frozen=True)
class Prediction:
    """One generation made for a generation metric."""

    prompt: str
    reference: str
    prediction: str
    exact_match: float
    rouge_l: float


@dataclass(frozen=True)
class EvalReport:
    """What ``spr eval`` computed and recorded."""

    ref: str  # ns/name@N of the evaluated version
    digest: str
    base_model: str
    dataset: DatasetInfo
    split: str | None
    template: str | None
    scores: dict[str, float]  # recorded metric name -> value
    examples: int
    target_tokens: int | None
    samples: tuple[Prediction, ...]  # the first few generations, for people to look at
    recorded: bool
    version: VersionInfo  # after recording (its eval_scores include the new ones)


@dataclass(frozen=True)
class Generation:
    """What ``spr generate`` produced."""

    ref: str
    digest: str
    base_model: str
    prompt: str  # as given
    formatted: str  # with the recorded template applied
    template: str | None
    output: str
    base_output: str | None  # the bare base model's output on the same input (``compare_base``)


@dataclass
class LoadedAdapter:
    """A verified version loaded onto its base model, ready to score or generate."""

    version: VersionInfo
    base_spec: str
    model: Any  # peft.PeftModel, in eval mode, on ``device``
    tokenizer: Any
    seq2seq: bool
    device: str


def resolve_base_model(version: VersionInfo, base_model: str | None) -> str:
    """``base_model`` when given; else the recorded base when it is a local directory that exists.

    Raises :class:`UsageError` naming the recorded base when neither is usable.
    """
    if base_model:
        return base_model
    recorded = version.base_model
    if recorded is not None and recorded.source == "local" and Path(recorded.name).is_dir():
        return recorded.name
    described = "no base model" if recorded is None else f"base model {recorded.name!r}" + (
        f"@{recorded.revision}" if recorded.revision else "") + f" ({recorded.source})"
    raise UsageError(
        f"{version.ref} was recorded with {described}, which is not a local directory here",
        hint="pass --base-model DIR or REPO[@REV]",
    )


def load_adapter(
    ref: str,
    base_model: str | None = None,
    *,
    db: str | None = None,
    allow_different_base: bool = False,
    device: str = "auto",
    actor: str | None = None,
    store: BlobStore | None = None,
) -> LoadedAdapter:
    """Resolve ``ref``, verify it against the base model and load it (:func:`registry.ml.loading.load`).

    ``base_model`` defaults as in :func:`resolve_base_model`. The version is pinned by digest
    before loading, so an alias moved meanwhile cannot swap what is loaded. Raises
    :class:`IncompatibleError` when verification refuses the pair, the errors of
    :func:`registry.catalogue.get_version` for an unknown ref, and :class:`UsageError`. ``store`` is
    the blob store the files are verified in and read from (default: :func:`registry.storage.open_store`).
    """
    from registry import catalogue
    from registry.ml import loading, training

    training._require_ml()
    version = catalogue.get_version(ref, db=db)
    spec = resolve_base_model(version, base_model)
    device = training.select_device(device)
    pinned = f"{version.full_name}@{version.digest}"
    with training.quiet():
        model = loading.load(pinned, spec, db=db, allow_different_base=allow_different_base, actor=actor, store=store)
        tokenizer = _load_tokenizer(spec, version)
    model.to(device)
    model.eval()
    seq2seq = bool(getattr(model.get_base_model().config, "is_encoder_decoder", False))
    return LoadedAdapter(version=version, base_spec=spec, model=model, tokenizer=tokenizer, seq2seq=seq2seq, device=device)


def _load_tokenizer(spec: str, version: VersionInfo) -> Any:
    from transformers import AutoTokenizer

    path = Path(spec).expanduser()
    if path.is_dir():
        tokenizer = AutoTokenizer.from_pretrained(str(path.resolve()))
    else:
        name, _, revision = spec.partition("@")
        tokenizer = AutoTokenizer.from_pretrained(name, **({"revision": revision} if revision else {}))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def evaluate(
    ref: str,
    dataset: Path | str,
    *,
    base_model: str | None = None,
    metrics: Sequence[str] | None = None,
    split: str | None = None,
    text_column: str | None = None,
    db: str | None = None,
    actor: str | None = None,
    allow_different_base: bool = False,
    batch_size: int = DEFAULT_EVAL_BATCH_SIZE,
    max_length: int | None = None,
    max_new_tokens: int = DEFAULT_EVAL_NEW_TOKENS,
    device: str = "auto",
    record: bool = True,
    store: BlobStore | None = None,
) -> EvalReport:
    """Score version ``ref`` on ``dataset`` and record each score (``spr eval``).

    ``metrics`` are keys of :data:`METRICS`; by default ``loss`` and ``perplexity``, plus
    ``exact-match`` and ``rouge-l`` for prompt/completion data. The recorded template is applied
    to every input; ``max_length`` defaults to the one training used. Each score is recorded with
    :func:`registry.catalogue.add_eval`: the dataset's digest and name, ``split`` and ``actor``
    (default: the current actor). ``record=False`` computes without recording.

    Raises :class:`UsageError` for an unknown metric or a generation metric on text-only data,
    :class:`InvalidDatasetError` for unusable data, and what :func:`load_adapter` raises.
    """
    from registry import catalogue
    from registry.ml import training

    data = training.load_examples(Path(dataset), text_column=text_column)
    chosen = list(dict.fromkeys(metrics)) if metrics else (
        ["loss", "perplexity", *GENERATION_METRICS] if data.kind == "prompt-completion" else ["loss", "perplexity"]
    )
    unknown = [m for m in chosen if m not in METRICS]
    if unknown:
        raise UsageError(f"unknown metric {unknown[0]!r}", hint=f"choose from {', '.join(METRICS)}")
    if data.kind != "prompt-completion" and any(m in GENERATION_METRICS for m in chosen):
        raise UsageError(
            f"{', '.join(m for m in chosen if m in GENERATION_METRICS)} compare a generation with a reference: "
            "they need prompt/completion records",
            hint="use a dataset with 'prompt' and 'completion' columns, or --metric loss / perplexity",
        )
    if batch_size < 1 or max_new_tokens < 1:
        raise UsageError("--batch-size and --max-new-tokens must be at least 1")

    loaded = load_adapter(
        ref, base_model, db=db, allow_different_base=allow_different_base, device=device, actor=actor, store=store
    )
    version = loaded.version
    template = version.template
    length = max_length or int(version.training.get("max_length") or DEFAULT_MAX_LENGTH)
    scores: dict[str, float] = {}
    tokens: int | None = None
    samples: list[Prediction] = []
    pad_id = int(loaded.tokenizer.pad_token_id)
    with training.quiet():
        if "loss" in chosen or "perplexity" in chosen:
            encoded, _ = training.encode_examples(
                data.examples, loaded.tokenizer, template=template, max_length=length, seq2seq=loaded.seq2seq
            )
            if not encoded:
                raise UsageError("no eval example has a target token within --max-length", hint="raise --max-length")
            loss, tokens = training.mean_token_loss(
                loaded.model, encoded, pad_id=pad_id, seq2seq=loaded.seq2seq, batch_size=batch_size, device=loaded.device
            )
            if "loss" in chosen:
                scores[METRICS["loss"]] = loss
            if "perplexity" in chosen:
                scores[METRICS["perplexity"]] = math.exp(loss) if loss < 700 else sys.float_info.max
        if any(m in GENERATION_METRICS for m in chosen):
            predictions = []
            for ex in data.examples:
                assert ex.prompt is not None
                text = generate_text(
                    loaded.model, loaded.tokenizer, training.apply_template(template, ex.prompt), seq2seq=loaded.seq2seq,
                    max_new_tokens=max_new_tokens, repetition_penalty=1.0, device=loaded.device,
                )
                predictions.append(Prediction(ex.prompt, ex.target, text, exact_match(text, ex.target), rouge_l(text, ex.target)))
            if "exact-match" in chosen:
                scores[METRICS["exact-match"]] = sum(p.exact_match for p in predictions) / len(predictions)
            if "rouge-l" in chosen:
                scores[METRICS["rouge-l"]] = sum(p.rouge_l for p in predictions) / len(predictions)
            samples = predictions[:SAMPLES_KEPT]
    # Record in the order asked for, against the exact version that was loaded.
    pinned = f"{version.full_name}@{version.number}"
    after = version
    if record:
        after = catalogue.add_evals(
            pinned,
            [catalogue.EvalInput(METRICS[m], scores[METRICS[m]], data.info, data.info.name, split) for m in chosen],
            db=db, actor=actor,
        )
    return EvalReport(
        ref=version.ref, digest=version.digest, base_model=loaded.base_spec, dataset=data.info, split=split,
        template=template, scores={METRICS[m]: scores[METRICS[m]] for m in chosen}, examples=len(data.examples),
        target_tokens=tokens, samples=tuple(samples), recorded=record, version=after,
    )


def generate(
    ref: str,
    prompt: str,
    *,
    base_model: str | None = None,
    max_new_tokens: int = DEFAULT_GENERATE_NEW_TOKENS,
    compare_base: bool = False,
    use_template: bool = True,
    repetition_penalty: float = TUTORIAL_REPETITION_PENALTY,
    db: str | None = None,
    allow_different_base: bool = False,
    device: str = "auto",
    actor: str | None = None,
    store: BlobStore | None = None,
) -> Generation:
    """Greedy generation from version ``ref`` on ``prompt`` with its recorded template (``spr generate``).

    With ``compare_base`` the same formatted input also goes through the bare base model (the
    adapter disabled on the same loaded copy). ``repetition_penalty`` defaults to the tutorials'
    1.5. Raises :class:`UsageError` for ``max_new_tokens < 1`` and what :func:`load_adapter` raises.
    """
    from registry.ml import training

    if max_new_tokens < 1:
        raise UsageError("--max-new-tokens must be at least 1")
    loaded = load_adapter(
        ref, base_model, db=db, allow_different_base=allow_different_base, device=device, actor=actor, store=store
    )
    template = loaded.version.template if use_template else None
    formatted = training.apply_template(template, prompt)
    kwargs: dict[str, Any] = {
        "seq2seq": loaded.seq2seq, "max_new_tokens": max_new_tokens, "repetition_penalty": repetition_penalty, "device": loaded.device,
    }
    with training.quiet():
        output = generate_text(loaded.model, loaded.tokenizer, formatted, **kwargs)
        base_output = None
        if compare_base:
            with loaded.model.disable_adapter():
                base_output = generate_text(loaded.model, loaded.tokenizer, formatted, **kwargs)
    return Generation(
        ref=loaded.version.ref, digest=loaded.version.digest, base_model=loaded.base_spec, prompt=prompt,
        formatted=formatted, template=template, output=output, base_output=base_output,
    )


def generate_text(
    model: Any, tokenizer: Any, text: str, *, seq2seq: bool, max_new_tokens: int, repetition_penalty: float, device: str
) -> str:
    """Greedy generation; returns only the new text (special tokens skipped, not stripped)."""
    import torch

    enc = tokenizer(text, return_tensors="pt")
    input_ids, attention = enc["input_ids"], enc["attention_mask"]
    if input_ids.shape[1] == 0:
        # A causal LM needs one input position; start an empty input from BOS (or EOS).
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        input_ids, attention = torch.tensor([[start]]), torch.tensor([[1]])
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            repetition_penalty=repetition_penalty,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    new = out[0] if seq2seq else out[0, input_ids.shape[1] :]
    return str(tokenizer.decode(new, skip_special_tokens=True))


# ---------------------------------------------------------------------------------------------
# Generation metrics (no dependency: the LCS is computed here)

_PUNCT = re.compile(r"[^\w\s]")
_WORD = re.compile(r"\w+")


def normalize_answer(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed: what exact match compares."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised prediction equals the normalised reference, else 0.0."""
    return 1.0 if normalize_answer(prediction) == normalize_answer(reference) else 0.0


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 between word tokens (``\\w+`` of the lower-cased texts).

    Precision is LCS / prediction length, recall LCS / reference length; F1 their harmonic
    mean. Two empty texts score 1.0; one empty text scores 0.0.
    """
    pred = _WORD.findall(prediction.lower())
    ref = _WORD.findall(reference.lower())
    if not pred and not ref:
        return 1.0
    if not pred or not ref:
        return 0.0
    lcs = _lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)
