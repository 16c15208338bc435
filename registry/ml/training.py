"""Training soft prompts with ``transformers.Trainer`` + PEFT, recording every fact at the source.

``spr train`` runs the recipe of the prompt-tuning tutorials (``get_peft_model`` on a base model,
``Trainer`` with a seeded ``TrainingArguments``) and, on success, publishes the adapter with what the
run itself measured: the base model's identity (revision, embedding fingerprint), the training
data's digest, name, format and record count, the full PEFT config, the training settings and seed,
the library versions, the device, the loss curve, the held-out eval loss and perplexity tied to the
held-out data's digest, the input template and the parent. Nothing is typed by hand.

Data
----
A dataset is a JSONL/JSON/CSV/TXT/Parquet file, or a directory written by ``datasets``'
``save_to_disk`` (read with ``datasets.load_from_disk``, only when ``datasets`` is installed). Each
record is either

- a text record (column ``text``, or the column named by ``text_column``): the formatted text is
  learned whole, an end-of-sequence token appended; or
- a prompt/completion record (columns ``prompt`` and ``completion``): the input is
  ``template.replace("{prompt}", prompt)``, the target is ``completion`` + EOS, and the prompt's
  labels are -100, so the loss is taken on the completion only.

The template (default ``{prompt}``) formats the input of every example: the prompt of a
prompt/completion record, the text of a text record. It is recorded with the version, and
``spr eval`` and ``spr generate`` apply it, so a soft prompt is served with the format it was
trained on.

Held-out data
-------------
``eval_split=F`` holds out ``round(F * n)`` records (at least one) chosen by a permutation seeded by
``seed``; they are never trained on. Their identity is the sha256 of their canonical JSON lines (the
columns training used, sorted keys, no whitespace, UTF-8, one record per ``\\n``-terminated line, in
file order): :func:`write_examples_jsonl` writes exactly those bytes, so ``spr eval --dataset`` on
that file records scores under the same digest. ``eval_dataset=PATH`` evaluates on a separate file
instead, identified by its own digest.

Torch, transformers and peft are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry import settings
from registry.adapters.dataset import FORMATS, describe_dataset, read_texts
from registry.digest import PREFIX, canonical_json, sha256_bytes
from registry.errors import (
    DependencyMissingError,
    HubError,
    InterruptedOperationError,
    InvalidBaseModelError,
    InvalidDatasetError,
    UsageError,
)
from registry.storage.local import atomic_write_bytes
from registry.types import BaseModelInfo, DatasetInfo, PublishResult, VersionInfo

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from registry.catalogue import EvalInput

__all__ = [
    "INITS",
    "METHODS",
    "Encoded",
    "Example",
    "LoadedData",
    "ProgressCallback",
    "TrainConfig",
    "TrainResult",
    "TrainingLog",
    "apply_template",
    "check_template",
    "describe_device",
    "encode_examples",
    "examples_jsonl",
    "heldout_split_name",
    "library_versions",
    "load_base_model",
    "load_examples",
    "make_trainer",
    "mean_token_loss",
    "pad_batch",
    "select_device",
    "split_heldout",
    "train",
    "train_and_publish",
    "write_examples_jsonl",
]

METHODS: dict[str, str] = {
    "prompt-tuning": "PROMPT_TUNING",
    "p-tuning": "P_TUNING",
    "prefix-tuning": "PREFIX_TUNING",
    "lora": "LORA",
}
"""``--method`` values and the PEFT type each makes."""

INITS: dict[str, str] = {"random": "RANDOM", "text": "TEXT", "sample-vocab": "SAMPLE_VOCAB"}
"""``--init`` values (prompt tuning only) and PEFT's ``PromptTuningInit`` names."""

DEFAULT_TEMPLATE = "{prompt}"
DEFAULT_VIRTUAL_TOKENS = 4  # the tutorials' RANDOM-init setting (4,096 parameters on bloomz-560m)
DEFAULT_EPOCHS = 6.0
DEFAULT_LR = 3e-3
DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_LENGTH = 256
DEFAULT_SEED = 42
DEFAULT_EVAL_SPLIT = 0.1
MAX_CURVE_POINTS = 1000  # a loss curve of a long run is thinned to about this many logged steps
IGNORE_INDEX = -100

ProgressCallback = Callable[[int, int, "float | None"], None]
"""Called after every optimizer step with ``(step, total_steps, latest logged loss)``."""


# ---------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class Example:
    """One training or eval example: a text (``prompt`` is None) or a prompt/completion pair."""

    target: str
    prompt: str | None = None

    def record(self) -> dict[str, str]:
        """The record as the columns training used (what held-out digests are computed over)."""
        if self.prompt is None:
            return {"text": self.target}
        return {"prompt": self.prompt, "completion": self.target}


@dataclass(frozen=True)
class LoadedData:
    """Examples read from a dataset, with the dataset's identity."""

    examples: tuple[Example, ...]
    kind: str  # "text" or "prompt-completion"
    columns: tuple[str, ...]  # the columns the examples were taken from
    info: DatasetInfo


def load_examples(path: Path | str, *, text_column: str | None = None, describe: bool = True) -> LoadedData:
    """Read the examples of a dataset file or ``save_to_disk`` directory.

    Records with ``prompt`` and ``completion`` become prompt/completion examples; otherwise the
    column ``text_column`` (default ``text``) is used. Every value used must be a string. The
    dataset is digested with :func:`registry.adapters.dataset.describe_dataset` (``describe=False`` skips
    that and leaves only the name).

    Raises :class:`InvalidDatasetError` for a missing, unreadable or malformed dataset, a missing
    column or an empty one; :class:`DependencyMissingError` for a ``datasets`` directory when the
    ``datasets`` package is not installed.
    """
    path = Path(path)
    if not path.exists():
        raise InvalidDatasetError(
            f"dataset {path} does not exist",
            hint="pass a .jsonl, .json, .csv, .txt or .parquet file, or a directory saved with datasets' save_to_disk",
        )
    records = _read_records(path)
    if not records:
        raise InvalidDatasetError(f"dataset {path} has no records", hint="add at least two records")
    first_bad = next((i for i, r in enumerate(records) if not isinstance(r, Mapping)), None)
    if first_bad is not None:
        raise InvalidDatasetError(
            f"dataset {path}: record {first_bad + 1} is a {type(records[first_bad]).__name__}, not an object",
            hint="each record must be an object such as {\"text\": ...} or {\"prompt\": ..., \"completion\": ...}",
        )
    columns: set[str] = set()
    for r in records:
        columns.update(str(k) for k in r)
    if text_column is None and {"prompt", "completion"} <= columns:
        used: tuple[str, ...] = ("prompt", "completion")
        kind = "prompt-completion"
    else:
        used = (text_column or "text",)
        kind = "text"
        if used[0] not in columns:
            found = ", ".join(sorted(columns)[:12]) or "none"
            raise InvalidDatasetError(
                f"dataset {path} has no column {used[0]!r} (found: {found})",
                hint="use a 'text' column, or 'prompt' and 'completion' columns, or name the text column with --text-column",
            )
    examples: list[Example] = []
    for i, r in enumerate(records):
        values = []
        for col in used:
            value = r.get(col)
            if not isinstance(value, str):
                raise InvalidDatasetError(
                    f"dataset {path}: record {i + 1} has {col}={_short(value)}, expected a string",
                    hint="every record needs a text value in each column training uses",
                )
            values.append(value)
        if kind == "text":
            examples.append(Example(target=values[0]))
        else:
            examples.append(Example(prompt=values[0], target=values[1]))
    info = describe_dataset(path) if describe else DatasetInfo(digest="", name=path.name)
    return LoadedData(examples=tuple(examples), kind=kind, columns=used, info=info)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _read_records(path: Path) -> list[Any]:
    if path.is_dir():
        return _read_saved_dataset(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt == "parquet":
        try:
            import pyarrow.parquet as pq  # type: ignore[import-untyped]  # optional: only for parquet files
        except ImportError:
            raise DependencyMissingError(
                f"reading {path.name} needs pyarrow", hint="pip install pyarrow, or convert the data to JSONL"
            ) from None
        try:
            return list(pq.read_table(path).to_pylist())
        except Exception as exc:
            raise InvalidDatasetError(f"cannot read parquet dataset {path}: {exc}") from None
    if fmt is None:
        raise InvalidDatasetError(
            f"cannot read records from {path}: unsupported format {path.suffix or '(no suffix)'!r}",
            hint="use .jsonl, .json, .csv, .txt or .parquet, or a directory saved with datasets' save_to_disk",
        )
    try:
        return list(read_texts(path))
    except UnicodeDecodeError:
        raise InvalidDatasetError(f"dataset {path} is not UTF-8 text", hint="re-encode it as UTF-8") from None
    except (ValueError, RecursionError) as exc:  # json.JSONDecodeError is a ValueError
        raise InvalidDatasetError(f"dataset {path} is malformed: {str(exc)[:200]}", hint="fix the file and retry") from None
    except OSError as exc:
        raise InvalidDatasetError(f"cannot read dataset {path}: {exc.strerror or exc}") from None


def _read_saved_dataset(path: Path) -> list[Any]:
    if not ((path / "dataset_info.json").is_file() or (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
        raise InvalidDatasetError(
            f"directory {path} is not a dataset saved with datasets' save_to_disk (no state.json or dataset_dict.json)",
            hint="pass a data file (.jsonl, .json, .csv, .txt, .parquet) or a save_to_disk directory",
        )
    if importlib.util.find_spec("datasets") is None:
        raise DependencyMissingError(
            f"{path} is a Hugging Face `datasets` directory, and reading it needs the `datasets` package",
            hint="pip install datasets, or export the data to JSONL (Dataset.to_json)",
        )
    import datasets  # type: ignore[import-not-found]  # optional, checked above

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise InvalidDatasetError(f"cannot load the saved dataset {path}: {exc}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise InvalidDatasetError(
                f"{path} holds the splits {', '.join(loaded)} but no 'train' split",
                hint="pass the directory of one split (DatasetDict[...].save_to_disk)",
            )
        loaded = loaded["train"]
    return list(loaded.to_list())


def split_heldout(examples: Sequence[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Split ``examples`` into ``(train, held_out)``; ``round(fraction * n)`` held out (at least 1).

    The held-out rows are picked by a permutation seeded by ``seed`` and kept in file order. Raises
    :class:`UsageError` for a fraction outside [0, 1) or data too small to split.
    """
    if not 0 <= fraction < 1:
        raise UsageError(f"--eval-split must be in [0, 1), got {fraction}", hint="for example --eval-split 0.1")
    if fraction == 0:
        return list(examples), []
    n = len(examples)
    k = max(1, round(fraction * n))
    if n - k < 1:
        raise UsageError(
            f"cannot hold out {fraction:.0%} of {n} record(s) and still train on one",
            hint="add records, or pass --eval-split 0 or --eval-dataset PATH",
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:k])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


def examples_jsonl(examples: Sequence[Example]) -> bytes:
    """The canonical JSON-lines bytes of ``examples`` (their digest identifies a held-out split)."""
    return b"".join(canonical_json(e.record()) + b"\n" for e in examples)


def write_examples_jsonl(examples: Sequence[Example], path: Path | str) -> DatasetInfo:
    """Write ``examples`` as canonical JSON lines to ``path`` (atomically); return its identity."""
    data = examples_jsonl(examples)
    path = Path(path)
    atomic_write_bytes(path, data)
    return DatasetInfo(digest=PREFIX + sha256_bytes(data), name=path.name, format="jsonl", records=len(examples), size=len(data))


def heldout_split_name(fraction: float) -> str:
    """``heldout-10%`` for 0.1: the split name recorded with held-out eval scores."""
    pct = f"{fraction * 100:.4f}".rstrip("0").rstrip(".")
    return f"heldout-{pct}%"


def check_template(template: str | None) -> None:
    """Raise :class:`UsageError` unless ``template`` is None or contains ``{prompt}``."""
    if template is not None and "{prompt}" not in template:
        raise UsageError(
            f"invalid template {template[:60]!r}: it must contain the placeholder {{prompt}}",
            hint="for example --template 'Human: {prompt}\\n\\nAssistant: '",
        )


def apply_template(template: str | None, text: str) -> str:
    """Format ``text`` with ``template`` (``{prompt}`` replaced; other braces are left alone)."""
    if not template:
        return text
    return template.replace("{prompt}", text)


@dataclass(frozen=True)
class Encoded:
    """Token ids of one example and its labels (-100 where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]


def encode_examples(
    examples: Sequence[Example],
    tokenizer: Any,
    *,
    template: str | None,
    max_length: int,
    seq2seq: bool,
) -> tuple[list[Encoded], int]:
    """Tokenize examples for training or evaluation; returns ``(encoded, dropped)``.

    Causal LM: a text example is ``tokens(template(text)) + eos``, all learned; a prompt/completion
    example is ``tokens(template(prompt)) + tokens(completion) + eos`` with the prompt's labels -100.
    Seq2seq: the input is ``template(prompt or text)``, the labels ``completion or text`` (+ eos).
    Sequences are truncated to ``max_length``; an example left without a target token is dropped
    and counted in ``dropped``.
    """
    eos = tokenizer.eos_token_id
    out: list[Encoded] = []
    dropped = 0
    for ex in examples:
        source = apply_template(template, ex.prompt if ex.prompt is not None else ex.target)
        if seq2seq:
            ids = _with_eos(tokenizer(source)["input_ids"], eos)[:max_length]
            labels = _with_eos(tokenizer(ex.target)["input_ids"], eos)[:max_length]
        elif ex.prompt is None:
            ids = _with_eos(tokenizer(source)["input_ids"], eos)[:max_length]
            labels = list(ids)
        else:
            head = list(tokenizer(source)["input_ids"])
            tail = _with_eos(tokenizer(ex.target, add_special_tokens=False)["input_ids"], eos)
            ids = (head + tail)[:max_length]
            labels = ([IGNORE_INDEX] * len(head) + tail)[:max_length]
        if not ids or all(t == IGNORE_INDEX for t in labels):
            dropped += 1
            continue
        out.append(Encoded(list(ids), list(labels)))
    return out, dropped


def _with_eos(ids: Sequence[int], eos: int | None) -> list[int]:
    ids = list(ids)
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    return ids


def pad_batch(items: Sequence[Encoded | Mapping[str, Sequence[int]]], pad_id: int, *, seq2seq: bool) -> dict[str, torch.Tensor]:
    """Right-pad examples into ``input_ids``, ``attention_mask`` and ``labels`` tensors."""
    import torch

    pairs = [(list(i.input_ids), list(i.labels)) if isinstance(i, Encoded) else (list(i["input_ids"]), list(i["labels"])) for i in items]
    n_in = max(len(ids) for ids, _ in pairs)
    n_out = max(len(lab) for _, lab in pairs) if seq2seq else n_in
    return {
        "input_ids": torch.tensor([ids + [pad_id] * (n_in - len(ids)) for ids, _ in pairs], dtype=torch.long),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (n_in - len(ids)) for ids, _ in pairs], dtype=torch.long),
        "labels": torch.tensor([lab + [IGNORE_INDEX] * (n_out - len(lab)) for _, lab in pairs], dtype=torch.long),
    }


def mean_token_loss(
    model: Any, encoded: Sequence[Encoded], *, pad_id: int, seq2seq: bool, batch_size: int = 8,
    device: Any = None,
) -> tuple[float, int]:
    """Mean cross-entropy per target token (nats) of ``model`` on ``encoded``; returns ``(loss, tokens)``.

    Batches go to ``device``, by default the device the model's weights are on.

    Computed from the logits, summed over every target token of every example and divided once,
    so batching does not change it. For causal prompt-learning models the virtual-token positions
    are label -100, as in PEFT's training loss: the last virtual token predicts the first real one.
    Raises :class:`UsageError` when no example has a target token.
    """
    import torch
    import torch.nn.functional as F

    if device is None:
        device = next(model.parameters()).device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(encoded), batch_size):
                batch = {k: v.to(device) for k, v in pad_batch(encoded[start : start + batch_size], pad_id, seq2seq=seq2seq).items()}
                labels = batch["labels"]
                if seq2seq:
                    logits = model(**batch).logits
                else:
                    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                    extra = logits.shape[1] - labels.shape[1]
                    if extra > 0:  # virtual tokens prepended by prompt tuning / p-tuning
                        pad = torch.full((labels.shape[0], extra), IGNORE_INDEX, dtype=labels.dtype, device=labels.device)
                        labels = torch.cat([pad, labels], dim=1)
                    logits, labels = logits[:, :-1], labels[:, 1:]
                n = int(labels.ne(IGNORE_INDEX).sum())
                if n == 0:
                    continue
                loss = F.cross_entropy(
                    logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
                )
                total += float(loss)
                count += n
    finally:
        model.train(was_training)
    if count == 0:
        raise UsageError("the eval examples have no target tokens to score", hint="pass longer texts or a larger --max-length")
    return total / count, count


# ---------------------------------------------------------------------------------------------
# Environment


def _require_ml() -> None:
    missing = [m for m in ("torch", "transformers", "peft") if importlib.util.find_spec(m) is None]
    if missing:
        raise DependencyMissingError(
            f"training and evaluation need {', '.join(missing)}",
            hint="install the ML extra: pip install 'softprompt-registry[ml]'",
        )


def select_device(requested: str = "auto") -> str:
    """``cuda`` when requested or (for ``auto``) available, else ``cpu``. Raises :class:`UsageError`."""
    import torch

    if requested not in ("auto", "cpu", "cuda"):
        raise UsageError(f"unknown device {requested!r}", hint="choose auto, cpu or cuda")
    if requested == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is available", hint="use --device auto or cpu")
    if requested == "cpu":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def describe_device(device: str) -> str:
    """``cpu (2 threads)`` or ``cuda:0 (NVIDIA H100 80GB HBM3)``: what the run is recorded to have used."""
    import torch

    if device.startswith("cuda"):
        index = torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def library_versions() -> dict[str, str]:
    """Versions of python, torch, transformers, peft (and accelerate when installed)."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "accelerate"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence transformers' per-load progress bars, info logs and known library warnings."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            # PEFT 0.21 calls a transformers method deprecated in 5.x; not ours to fix.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            warnings.filterwarnings("ignore", message="Position ids are not supported.*", category=UserWarning)
            warnings.filterwarnings("ignore", message="Passing `repetition_penalty` with `inputs_embeds`.*")
            hf_logging.set_verbosity(max(verbosity, hf_logging.ERROR))
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_base_model(spec: str, info: BaseModelInfo | None = None) -> tuple[Any, Any, bool]:
    """Load the base model and tokenizer named by ``spec`` (a directory or ``REPO[@REV]``) in float32.

    Returns ``(model, tokenizer, is_encoder_decoder)``. ``trust_remote_code`` is never set: a base
    that needs its own code is refused by transformers. The tokenizer gets a pad token (its eos)
    when it has none. Raises :class:`InvalidBaseModelError` when either cannot be loaded.
    """
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
    )

    from registry.adapters import basemodel

    path = Path(spec).expanduser()
    if path.is_dir():
        # Outside the try below: InvalidBaseModelError is a ValueError and would be re-worded there.
        basemodel.require_safetensors(path)  # a pickled checkpoint is refused, never unpickled
    try:
        if path.is_dir():
            source = str(path.resolve())
        else:
            source = _download_base(spec, info)
        with quiet():
            config = AutoConfig.from_pretrained(source)
            seq2seq = bool(getattr(config, "is_encoder_decoder", False))
            cls = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
            model = cls.from_pretrained(source, dtype=torch.float32, use_safetensors=True)
            tokenizer = AutoTokenizer.from_pretrained(source)
        if not path.is_dir():
            # Name the model as the repo it came from (PEFT records this as base_model_name_or_path).
            model.config._name_or_path = model.name_or_path = spec.partition("@")[0]
    except (OSError, ValueError, KeyError) as exc:
        raise InvalidBaseModelError(
            f"cannot load base model {spec!r} with transformers: {str(exc).splitlines()[0][:300]}",
            hint="pass a directory saved with save_pretrained (config, weights, tokenizer) or a Hub repo you can reach",
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.pad_token_id is None:
        raise InvalidBaseModelError(f"the tokenizer of {spec!r} has neither a pad nor an eos token", hint="use a tokenizer with an eos token")
    return model, tokenizer, seq2seq


def _download_base(spec: str, info: BaseModelInfo | None) -> str:
    """Fetch a Hub base at the commit its identity was measured at; return the local snapshot."""
    from huggingface_hub import snapshot_download

    name, _, revision = spec.partition("@")
    pinned = info.revision if info is not None and info.revision else (revision or None)
    try:
        with quiet():
            return str(snapshot_download(
                name, revision=pinned, endpoint=settings.hub_endpoint(), token=settings.hub_token(),
                allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"],
            ))
    except Exception as exc:
        raise HubError(
            # Redact before truncating: a server may echo the Authorization header it was sent.
            f"cannot download base model {name}@{pinned or 'main'} from {settings.hub_endpoint()}: "
            f"{settings.redact_token(str(exc))[:200]}",
            hint="check the network, HF_ENDPOINT and HF_TOKEN, or pass a local directory",
        ) from None


# ---------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainConfig:
    """What to train. ``None`` means "the default", or, with ``parent``, "as the parent"."""

    dataset: Path
    base_model: str | None = None  # default with a parent: its recorded base, if a local dir that exists
    method: str | None = None  # prompt-tuning (default) | p-tuning | prefix-tuning | lora
    virtual_tokens: int | None = None  # default 4, or the init text's token count for TEXT init
    init: str | None = None  # random (default) | text | sample-vocab (prompt tuning only)
    init_text: str | None = None
    epochs: float = DEFAULT_EPOCHS
    lr: float = DEFAULT_LR
    batch_size: int = DEFAULT_BATCH_SIZE
    max_length: int = DEFAULT_MAX_LENGTH
    seed: int = DEFAULT_SEED
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs)
    eval_split: float | None = None  # default 0.1 (unless eval_dataset is given)
    eval_dataset: Path | None = None
    text_column: str | None = None
    parent: str | None = None
    template: str | None = None  # default "{prompt}", or the parent's template
    lora_r: int = 8
    lora_alpha: int | None = None  # default 2 * r
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] = ()  # default: PEFT's choice for the architecture
    device: str = "auto"
    allow_different_base: bool = False  # a parent recorded on another base (logged)


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced and recorded."""

    training: dict[str, Any]  # the settings recorded with the version (the manifest's "training")
    base_model: BaseModelInfo
    dataset: DatasetInfo
    evals: tuple[EvalInput, ...]
    template: str
    parent: VersionInfo | None
    loss_curve: tuple[tuple[int, float], ...]
    eval_loss_before: float | None
    train_tokens: int
    steps: int
    # Seconds: load, train (wall), train_cpu (CPU time of this process while training), eval,
    # identify, dataset, heldout, parent, publish, lineage (the sum of the last five), total.
    timings: dict[str, float]
    step_seconds: tuple[float, ...] = ()  # wall seconds of each optimizer step (not recorded: it varies)
    adapter_dir: Path | None = None  # where the adapter was written (``output_dir``), else None
    published: PublishResult | None = None
    heldout: tuple[Example, ...] = ()

    @property
    def tokens_per_second(self) -> float:
        """Training throughput: non-padding input tokens of the trained batches per second of training."""
        seconds = self.timings.get("train", 0.0)
        return self.train_tokens / seconds if seconds > 0 else 0.0


def train(
    config: TrainConfig,
    output_dir: Path | str,
    *,
    db: str | None = None,
    progress: ProgressCallback | None = None,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Train and write the adapter to ``output_dir`` without publishing (``spr train --no-publish``).

    ``output_dir`` must not exist or be empty; it receives the PEFT files and ``spr_training.json``
    (the settings ``spr publish --training-args`` would record). Raises as :func:`train_and_publish`.
    """
    return _run(config, name=None, output_dir=Path(output_dir), db=db, progress=progress, callbacks=callbacks)


def train_and_publish(
    config: TrainConfig,
    name: str,
    *,
    db: str | None = None,
    output_dir: Path | str | None = None,
    description: str | None = None,
    tags: Mapping[str, str] | None = None,
    author: str | None = None,
    progress: ProgressCallback | None = None,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Train a soft prompt and publish it as a new version of ``name`` with every fact recorded.

    Inputs are checked before any training (dataset columns, template, name, parent, base model
    identity and, with a parent, compatibility). The adapter is staged in a temporary folder under
    ``$SPR_HOME/tmp`` (or written to ``output_dir`` as well, when given) and published with
    :func:`registry.catalogue.publish`; the temporary folder is always removed.

    ``callbacks`` are extra ``transformers.TrainerCallback`` objects (tests use one to look at the
    weights before the first step).

    Raises :class:`UsageError` for bad settings, :class:`InvalidDatasetError`,
    :class:`InvalidBaseModelError`, :class:`IncompatibleError` (parent on another base),
    :class:`NotFoundError` (parent), :class:`DependencyMissingError` (no torch/peft), and
    :class:`InterruptedOperationError` on Ctrl-C, in which case nothing is published.
    """
    from registry.refs import split_name

    split_name(name)  # a bad name fails now, not after training
    return _run(
        config, name=name, output_dir=Path(output_dir) if output_dir else None, db=db, progress=progress,
        callbacks=callbacks, description=description, tags=dict(tags or {}), author=author,
    )


@dataclass
class _Plan:
    """Everything decided before the model is loaded."""

    peft_type: str
    method: str
    init: str | None
    virtual_tokens: int | None
    template: str
    base_spec: str
    base_info: BaseModelInfo
    data: LoadedData
    train_examples: list[Example]
    eval_examples: list[Example]
    eval_info: DatasetInfo | None
    eval_split_name: str | None
    eval_fraction: float | None
    parent: VersionInfo | None
    db: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


def _run(
    config: TrainConfig,
    *,
    name: str | None,
    output_dir: Path | None,
    db: str | None,
    progress: ProgressCallback | None,
    callbacks: Sequence[Any],
    description: str | None = None,
    tags: dict[str, str] | None = None,
    author: str | None = None,
) -> TrainResult:
    started = time.perf_counter()
    _require_ml()
    if output_dir is not None and output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise UsageError(f"output directory {output_dir} exists and is not empty", hint="choose a new directory")
    work = None
    try:
        plan = _plan(config, db=db)
        work = Path(tempfile.mkdtemp(prefix="train-", dir=_tmp_root()))
        outcome = _train_in(config, plan, work, progress=progress, callbacks=callbacks)
        adapter_dir = work / "adapter"
        if output_dir is not None:
            _write_training_json(adapter_dir, outcome["training"])
            _move_into_place(adapter_dir, output_dir)
            adapter_dir = output_dir
        published = None
        if name is not None:
            from registry import catalogue

            t0 = time.perf_counter()
            published = catalogue.publish(
                adapter_dir,
                name,
                db=db,
                options=catalogue.PublishOptions(
                    base_model_info=plan.base_info,
                    dataset_info=plan.data.info,
                    evals=outcome["evals"],
                    parent_digest=plan.parent.digest if plan.parent else None,
                    training=outcome["training"],
                    template=plan.template,
                    description=description,
                    tags=tags or {},
                    author=author,
                ),
            )
            plan.timings["publish"] = time.perf_counter() - t0
    except KeyboardInterrupt:
        step = _current_step.get("step")
        raise InterruptedOperationError(
            "training interrupted" + (f" at step {step}" if step else "") + "; nothing was published",
            hint="run the same 'spr train' command again to start over",
        ) from None
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        _current_step.clear()
    timings = dict(plan.timings)
    timings["lineage"] = sum(timings.get(k, 0.0) for k in ("identify", "dataset", "parent", "heldout", "publish"))
    timings["total"] = time.perf_counter() - started
    return TrainResult(
        training=outcome["training"],
        base_model=plan.base_info,
        dataset=plan.data.info,
        evals=tuple(outcome["evals"]),
        template=plan.template,
        parent=plan.parent,
        loss_curve=tuple(outcome["curve"]),
        eval_loss_before=outcome["before"],
        train_tokens=outcome["tokens"],
        steps=outcome["steps"],
        timings=timings,
        step_seconds=tuple(outcome["step_seconds"]),
        adapter_dir=output_dir,
        published=published,
        heldout=tuple(plan.eval_examples) if plan.eval_split_name else (),
    )


# The step the running training has reached, for the interruption message.
_current_step: dict[str, int] = {}


def _tmp_root() -> Path:
    root = settings.home() / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _plan(config: TrainConfig, *, db: str | None) -> _Plan:
    """Check every input and measure the identities before anything heavy is loaded."""
    from registry import catalogue
    from registry.adapters import basemodel

    timings: dict[str, float] = {}
    for label, value, low in (("--epochs", config.epochs, 0), ("--lr", config.lr, 0)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > low):
            raise UsageError(f"{label} must be a positive number, got {value}")
    for label, ivalue in (("--batch-size", config.batch_size), ("--max-length", config.max_length)):
        if ivalue < 1:
            raise UsageError(f"{label} must be at least 1, got {ivalue}")
    if config.max_steps is not None and config.max_steps < 0:
        raise UsageError(f"--max-steps must be >= 0, got {config.max_steps}")
    if config.eval_split is not None and config.eval_dataset is not None:
        raise UsageError("give --eval-split or --eval-dataset, not both")
    if config.template is not None:
        check_template(config.template)

    parent = None
    if config.parent:
        t0 = time.perf_counter()
        parent = catalogue.get_version(config.parent, db=db)
        timings["parent"] = time.perf_counter() - t0
    method, peft_type, init, virtual_tokens = _resolve_method(config, parent)
    template = config.template if config.template is not None else (parent.template if parent and parent.template else DEFAULT_TEMPLATE)

    base_spec = config.base_model or _recorded_local_base(parent)
    t0 = time.perf_counter()
    base_facts = basemodel.inspect(base_spec)
    timings["identify"] = time.perf_counter() - t0
    if parent is not None:
        _check_parent_fits(parent, base_facts, allow_different_base=config.allow_different_base, db=db)

    t0 = time.perf_counter()
    data = load_examples(config.dataset, text_column=config.text_column)
    timings["dataset"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    eval_info: DatasetInfo | None = None
    split_name: str | None = None
    fraction: float | None = None
    if config.eval_dataset is not None:
        eval_data = load_examples(config.eval_dataset, text_column=config.text_column)
        if eval_data.kind != data.kind:
            raise UsageError(
                f"the eval dataset has {eval_data.kind} records but the training data has {data.kind} records",
                hint="use the same columns in both",
            )
        train_examples, eval_examples = list(data.examples), list(eval_data.examples)
        eval_info = eval_data.info
    else:
        fraction = DEFAULT_EVAL_SPLIT if config.eval_split is None else config.eval_split
        train_examples, eval_examples = split_heldout(data.examples, fraction, config.seed)
        if eval_examples:
            raw = examples_jsonl(eval_examples)
            split_name = heldout_split_name(fraction)
            eval_info = DatasetInfo(
                digest=PREFIX + sha256_bytes(raw), name=f"{data.info.name}#{split_name}", format="jsonl",
                records=len(eval_examples), size=len(raw),
            )
    timings["heldout"] = time.perf_counter() - t0
    return _Plan(
        peft_type=peft_type, method=method, init=init, virtual_tokens=virtual_tokens, template=template,
        base_spec=base_spec, base_info=base_facts.info, data=data, train_examples=train_examples,
        eval_examples=eval_examples, eval_info=eval_info, eval_split_name=split_name, eval_fraction=fraction,
        parent=parent, db=db, timings=timings,
    )


def _resolve_method(config: TrainConfig, parent: VersionInfo | None) -> tuple[str, str, str | None, int | None]:
    """(method, PEFT type, init, virtual tokens) from the options, or from the parent."""
    if config.method is not None and config.method not in METHODS:
        raise UsageError(f"unknown method {config.method!r}", hint=f"choose one of {', '.join(METHODS)}")
    if config.init is not None and config.init not in INITS:
        raise UsageError(f"unknown init {config.init!r}", hint=f"choose one of {', '.join(INITS)}")
    if parent is not None:
        by_type = {v: k for k, v in METHODS.items()}
        method = by_type.get(parent.peft_type)
        if method is None:
            raise UsageError(f"cannot continue training a {parent.peft_type} adapter", hint="train a new one without --parent")
        if config.method is not None and config.method != method:
            raise UsageError(
                f"--method {config.method} differs from the parent {parent.ref}, which is {method}",
                hint="drop --method: a continued run keeps the parent's method",
            )
        if config.virtual_tokens is not None and config.virtual_tokens != parent.num_virtual_tokens:
            raise UsageError(
                f"--virtual-tokens {config.virtual_tokens} differs from the parent's {parent.num_virtual_tokens}",
                hint="drop --virtual-tokens: a continued run keeps the parent's shape",
            )
        if config.init is not None or config.init_text is not None:
            raise UsageError("--init and --init-text do not apply with --parent: training starts from the parent's weights")
        if parent.peft_type == "P_TUNING" or (parent.peft_type == "PREFIX_TUNING" and parent.peft_config.get("prefix_projection")):
            raise UsageError(
                f"cannot continue training {parent.ref}: PEFT saves a {parent.peft_type} adapter's encoder output, "
                "not its encoder, so the parent's trainable weights are not in the published files",
                hint="continue from a prompt-tuning, prefix-tuning (without projection) or LoRA parent, or train anew",
            )
        return method, parent.peft_type, parent.init_method, parent.num_virtual_tokens
    method = config.method or "prompt-tuning"
    peft_type = METHODS[method]
    init = config.init
    if peft_type == "PROMPT_TUNING":
        init_name = INITS[init or ("text" if config.init_text else "random")]
        if init_name == "TEXT" and not config.init_text:
            raise UsageError("--init text needs --init-text TEXT", hint="for example --init-text 'You are a warm motivational coach.'")
        if init_name != "TEXT" and config.init_text:
            raise UsageError(f"--init-text is used only with --init text (init is {init})", hint="add --init text")
    else:
        if init not in (None, "random") or config.init_text:
            raise UsageError(f"--init/--init-text apply to prompt tuning only; {method} starts from random weights")
        init_name = None
    if peft_type == "LORA":
        if config.virtual_tokens is not None:
            raise UsageError("--virtual-tokens does not apply to LoRA", hint="use --lora-r")
        return method, peft_type, None, None
    if config.virtual_tokens is not None and config.virtual_tokens < 1:
        raise UsageError(f"--virtual-tokens must be at least 1, got {config.virtual_tokens}")
    virtual = config.virtual_tokens
    if virtual is None and init_name != "TEXT":
        virtual = DEFAULT_VIRTUAL_TOKENS
    return method, peft_type, init_name, virtual


def _recorded_local_base(parent: VersionInfo | None) -> str:
    recorded = parent.base_model if parent is not None else None
    if recorded is not None and recorded.source == "local" and Path(recorded.name).is_dir():
        return recorded.name
    raise UsageError(
        "--base-model is required" + (" (the parent's recorded base is not a local directory here)" if parent else ""),
        hint="pass --base-model DIR or REPO[@REV]",
    )


def _check_parent_fits(parent: VersionInfo, base_facts: Any, *, allow_different_base: bool, db: str | None) -> None:
    """Refuse a parent that does not fit the base (or whose stored bytes changed), before training."""
    from registry.ml import loading

    report = loading.verify(
        f"{parent.full_name}@{parent.digest}", base_facts, db=db, allow_different_base=allow_different_base,
        via="train --parent",
    )
    report.raise_if_incompatible()


def _build_model(config: TrainConfig, plan: _Plan, model: Any, tokenizer: Any, seq2seq: bool, work: Path) -> Any:
    """The PEFT model to train: fresh from the options, or started from the parent's weights."""
    import peft

    task_type = "SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM"
    base_name = plan.base_info.name
    revision = plan.base_info.revision
    if plan.parent is not None:
        from registry import catalogue

        # By digest: an alias moved while we trained must not change what we started from.
        parent_dir = catalogue.export(f"{plan.parent.full_name}@{plan.parent.digest}", work / "parent", db=plan.db)
        if plan.peft_type == "LORA":
            with quiet():
                return peft.PeftModel.from_pretrained(model, str(parent_dir), is_trainable=True)
        # PEFT refuses is_trainable=True for prompt-learning adapters, so the model is built from
        # the parent's config and its saved embedding is loaded into the fresh prompt encoder
        # (exact for prompt tuning and projection-free prefix tuning: that embedding is the weight).
        peft_config = peft.PeftConfig.from_pretrained(str(parent_dir))
        peft_config.inference_mode = False
        original_init = getattr(peft_config, "prompt_tuning_init", None)
        original_kwargs = getattr(peft_config, "tokenizer_kwargs", None)
        if original_init is not None:
            # Build without re-running the init (a TEXT init would re-read the recorded tokenizer path).
            peft_config.prompt_tuning_init = peft.PromptTuningInit.RANDOM
            peft_config.tokenizer_kwargs = None
        with quiet():
            peft_model = peft.get_peft_model(model, peft_config)
        if original_init is not None:
            peft_model.peft_config["default"].prompt_tuning_init = original_init
            peft_model.peft_config["default"].tokenizer_kwargs = original_kwargs
        from safetensors.torch import load_file

        state = load_file(str(parent_dir / "adapter_model.safetensors"))
        peft.set_peft_model_state_dict(peft_model, state)
        return peft_model

    common: dict[str, Any] = {"task_type": task_type, "base_model_name_or_path": base_name}
    if revision:
        common["revision"] = revision
    if plan.peft_type == "PROMPT_TUNING":
        assert plan.init is not None  # _resolve_method always sets it for prompt tuning
        init_text = config.init_text if plan.init == "TEXT" else None
        virtual = plan.virtual_tokens
        if virtual is None and init_text:
            # The tutorials' habit: as many virtual tokens as the init text has tokens.
            virtual = len(tokenizer(init_text)["input_ids"])
        assert virtual is not None  # RANDOM/SAMPLE_VOCAB default to 4; TEXT has an init text to count
        tokenizer_kwargs = {"revision": revision} if revision and plan.init == "TEXT" else None  # PEFT: TEXT only
        peft_config = peft.PromptTuningConfig(
            num_virtual_tokens=virtual, prompt_tuning_init=plan.init, prompt_tuning_init_text=init_text,
            tokenizer_name_or_path=base_name, tokenizer_kwargs=tokenizer_kwargs, **common,
        )
        plan.virtual_tokens = virtual
    elif plan.peft_type == "P_TUNING":
        assert plan.virtual_tokens is not None
        peft_config = peft.PromptEncoderConfig(num_virtual_tokens=plan.virtual_tokens, **common)
    elif plan.peft_type == "PREFIX_TUNING":
        assert plan.virtual_tokens is not None
        peft_config = peft.PrefixTuningConfig(num_virtual_tokens=plan.virtual_tokens, **common)
    else:
        peft_config = peft.LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha if config.lora_alpha is not None else 2 * config.lora_r,
            lora_dropout=config.lora_dropout, target_modules=list(config.lora_target_modules) or None, **common,
        )
    try:
        with quiet():
            return peft.get_peft_model(model, peft_config)
    except ValueError as exc:
        raise UsageError(f"PEFT cannot build a {plan.method} adapter on this base: {str(exc)[:300]}",
                         hint="check --lora-target or choose another --method") from None


@dataclass
class TrainingLog:
    """What a :func:`make_trainer` trainer records while it runs."""

    log_every: int
    batch_tokens: list[int] = field(default_factory=list)  # per collated batch (one may be collated ahead)
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, loss) as logged
    step_seconds: list[float] = field(default_factory=list)

    def tokens(self, steps: int) -> int:
        """Non-padding input tokens of the first ``steps`` batches (input + target tokens for seq2seq)."""
        return sum(self.batch_tokens[:steps])


def make_trainer(
    peft_model: Any,
    train_encoded: Sequence[Encoded],
    *,
    config: TrainConfig,
    pad_id: int,
    seq2seq: bool,
    device: str,
    output_dir: Path,
    total_steps: int,
    progress: ProgressCallback | None = None,
    callbacks: Sequence[Any] = (),
) -> tuple[Any, TrainingLog]:
    """The ``transformers.Trainer`` that ``spr train`` runs, and the log it fills.

    Seeded ``TrainingArguments`` (``use_cpu`` without a GPU, nothing saved or reported, a loss
    logged every step up to :data:`MAX_CURVE_POINTS` points), a padding collator that counts
    tokens, and a callback that records the loss curve and step times, reports progress and stops a
    diverged run (:class:`UsageError`). Exposed so the benchmark measures exactly this trainer.
    """
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback
    from transformers.trainer_callback import ProgressCallback as HFProgress

    log = TrainingLog(log_every=max(1, math.ceil(total_steps / MAX_CURVE_POINTS)))

    def collate(features: list[dict[str, list[int]]]) -> dict[str, Any]:
        batch = pad_batch(features, pad_id, seq2seq=seq2seq)
        n = int(batch["attention_mask"].sum())
        if seq2seq:
            n += int(batch["labels"].ne(IGNORE_INDEX).sum())
        log.batch_tokens.append(n)
        return batch

    class Recorder(TrainerCallback):  # type: ignore[misc]
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                value = float(logs["loss"])
                if not math.isfinite(value):
                    raise UsageError(
                        f"training diverged: the loss is {value} at step {state.global_step}; nothing was published",
                        hint="lower --lr",
                    )
                log.curve.append((int(state.global_step), value))
                if progress is not None:
                    progress(int(state.global_step), int(state.max_steps), value)

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.step_started = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            log.step_seconds.append(time.perf_counter() - self.step_started)
            _current_step["step"] = int(state.global_step)
            if progress is not None and state.global_step % log.log_every:
                # Steps that are not logged still move the bar; logged ones report from on_log.
                progress(int(state.global_step), int(state.max_steps), log.curve[-1][1] if log.curve else None)

    args = TrainingArguments(
        output_dir=str(output_dir),
        use_cpu=device == "cpu",
        per_device_train_batch_size=config.batch_size,
        num_train_epochs=config.epochs,
        max_steps=total_steps if config.max_steps is not None else -1,
        learning_rate=config.lr,
        seed=config.seed,
        data_seed=config.seed,
        logging_strategy="steps",
        logging_steps=log.log_every,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_pin_memory=False,
        dataloader_num_workers=0,
    )
    train_set = [{"input_ids": e.input_ids, "labels": e.labels} for e in train_encoded]
    with quiet():
        trainer = Trainer(model=peft_model, args=args, train_dataset=train_set, data_collator=collate, callbacks=[Recorder(), *callbacks])
    # Our own progress bar and loss curve replace transformers' printing of every log line.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(HFProgress)
    return trainer, log


def _train_in(
    config: TrainConfig, plan: _Plan, work: Path, *, progress: ProgressCallback | None, callbacks: Sequence[Any]
) -> dict[str, Any]:
    """Load, train, evaluate and save into ``work/adapter``; returns what is recorded."""
    import transformers

    from registry.catalogue import EvalInput

    t0 = time.perf_counter()
    device = select_device(config.device)
    transformers.set_seed(config.seed)
    model, tokenizer, seq2seq = load_base_model(plan.base_spec, plan.base_info)
    # Seed again right before the soft prompt is initialised, so its first weights depend on the
    # seed alone (not on how much randomness loading the base consumed).
    transformers.set_seed(config.seed)
    peft_model = _build_model(config, plan, model, tokenizer, seq2seq, work)
    pad_id = int(tokenizer.pad_token_id)
    train_encoded, dropped = encode_examples(
        plan.train_examples, tokenizer, template=plan.template, max_length=config.max_length, seq2seq=seq2seq
    )
    if not train_encoded:
        raise UsageError(
            f"no training example has a target token left after truncation to {config.max_length} tokens",
            hint="raise --max-length",
        )
    eval_encoded, eval_dropped = encode_examples(
        plan.eval_examples, tokenizer, template=plan.template, max_length=config.max_length, seq2seq=seq2seq
    )
    peft_model.to(device)
    load_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    before = None
    if eval_encoded:
        with quiet():
            before, _ = mean_token_loss(peft_model, eval_encoded, pad_id=pad_id, seq2seq=seq2seq, batch_size=config.batch_size, device=device)
    eval_seconds = time.perf_counter() - t0

    steps_per_epoch = math.ceil(len(train_encoded) / config.batch_size)
    total_steps = config.max_steps if config.max_steps is not None else math.ceil(config.epochs * steps_per_epoch)
    trainer, log = make_trainer(
        peft_model, train_encoded, config=config, pad_id=pad_id, seq2seq=seq2seq, device=device,
        output_dir=work / "trainer", total_steps=total_steps, progress=progress, callbacks=callbacks,
    )
    steps = 0
    with quiet():
        t0, cpu0 = time.perf_counter(), time.process_time()
        if total_steps > 0:
            output = trainer.train()
            steps = int(output.global_step)
        train_seconds = time.perf_counter() - t0
        train_cpu_seconds = time.process_time() - cpu0
    args = trainer.args
    curve, step_seconds, log_every = log.curve, log.step_seconds, log.log_every
    tokens = log.tokens(steps)

    t0 = time.perf_counter()
    evals: list[EvalInput] = []
    after = None
    if eval_encoded:
        with quiet():
            after, _ = mean_token_loss(peft_model, eval_encoded, pad_id=pad_id, seq2seq=seq2seq, batch_size=config.batch_size, device=device)
        dataset_name = plan.eval_info.name if plan.eval_info else None
        evals = [
            EvalInput("eval_loss", after, plan.eval_info, dataset_name, plan.eval_split_name),
            EvalInput("perplexity", _perplexity(after), plan.eval_info, dataset_name, plan.eval_split_name),
        ]
    eval_seconds += time.perf_counter() - t0

    adapter_dir = work / "adapter"
    peft_model.to("cpu")
    with quiet():
        peft_model.save_pretrained(str(adapter_dir))
    plan.timings.update(load=load_seconds, train=train_seconds, train_cpu=train_cpu_seconds, eval=eval_seconds)

    training: dict[str, Any] = {
        "trainer": "transformers.Trainer",
        "method": plan.method,
        "peft_type": plan.peft_type,
        "task_type": "SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM",
        "init": plan.init,
        "num_virtual_tokens": plan.virtual_tokens,
        "epochs": config.epochs,
        "max_steps": config.max_steps,
        "learning_rate": config.lr,
        "batch_size": config.batch_size,
        "max_length": config.max_length,
        "seed": config.seed,
        "optimizer": str(getattr(args.optim, "value", args.optim)),
        "lr_scheduler": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "weight_decay": args.weight_decay,
        "warmup_steps": args.warmup_steps,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "precision": "float32",
        "device": describe_device(device),
        "libraries": library_versions(),
        "data_kind": plan.data.kind,
        "data_columns": list(plan.data.columns),
        "train_examples": len(train_encoded),
        "train_records_digest": PREFIX + sha256_bytes(examples_jsonl(plan.train_examples)),
        "dropped_examples": dropped + eval_dropped,
        "eval_split": plan.eval_fraction,
        "eval_split_name": plan.eval_split_name,
        "eval_dataset": plan.eval_info.digest if plan.eval_info else None,
        "eval_examples": len(eval_encoded),
        "steps": steps,
        "train_tokens": tokens,
        "logging_steps": log_every,
        "loss_curve": [[s, v] for s, v in curve],
        "eval_loss_before": before,
        "eval_loss": after,
        "parent": plan.parent.ref if plan.parent else None,
    }
    if plan.peft_type == "LORA":
        training.update(lora_r=config.lora_r, lora_alpha=peft_model.peft_config["default"].lora_alpha, lora_dropout=config.lora_dropout)
    return {
        "training": training, "evals": evals, "curve": curve, "before": before, "tokens": tokens, "steps": steps,
        "step_seconds": step_seconds,
    }


def _perplexity(loss: float) -> float:
    # exp overflows past ~709 nats; a loss that high means "no idea", recorded as the float max.
    return math.exp(loss) if loss < 700 else sys.float_info.max


def _write_training_json(adapter_dir: Path, training: dict[str, Any]) -> None:
    (adapter_dir / "spr_training.json").write_bytes(canonical_json(training) + b"\n")


def _move_into_place(staging: Path, destination: Path) -> None:
    """Move ``staging`` to ``destination`` (missing or empty) via a sibling temp folder and a rename."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    sibling = Path(tempfile.mkdtemp(prefix=".spr-train-", dir=destination.parent))
    try:
        shutil.copytree(staging, sibling, dirs_exist_ok=True)
        for p in sibling.iterdir():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
        if destination.exists():
            destination.rmdir()
        os.replace(sibling, destination)
    except BaseException:
        shutil.rmtree(sibling, ignore_errors=True)
        raise
