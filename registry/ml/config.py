"""What to train (:class:`TrainConfig`) and every check made before anything heavy is loaded.

:func:`make_plan` validates the settings, resolves the method/init/virtual tokens (from the options
or the parent), identifies the base model, reads the dataset and splits off the held-out examples:
a bad input fails here, in seconds, not after a model was loaded. Torch-free.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.digest import PREFIX, sha256_bytes
from registry.errors import UsageError
from registry.ml.data import (
    Example,
    LoadedData,
    check_template,
    examples_jsonl,
    heldout_split_name,
    load_examples,
    split_heldout,
)
from registry.ml.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DEVICE,
    DEFAULT_EPOCHS,
    DEFAULT_EVAL_SPLIT,
    DEFAULT_LORA_DROPOUT,
    DEFAULT_LORA_R,
    DEFAULT_LR,
    DEFAULT_MAX_LENGTH,
    DEFAULT_METHOD,
    DEFAULT_SEED,
    DEFAULT_TEMPLATE,
    DEFAULT_VIRTUAL_TOKENS,
    INITS,
    METHODS,
)
from registry.types import BaseModelInfo, DatasetInfo, VersionInfo

__all__ = ["Plan", "TrainConfig", "make_plan", "resolve_method"]


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
    lora_r: int = DEFAULT_LORA_R
    lora_alpha: int | None = None  # default 2 * r
    lora_dropout: float = DEFAULT_LORA_DROPOUT
    lora_target_modules: tuple[str, ...] = ()  # default: PEFT's choice for the architecture
    device: str = DEFAULT_DEVICE
    allow_different_base: bool = False  # a parent recorded on another base (logged)


@dataclass
class Plan:
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


def make_plan(config: TrainConfig, *, db: str | None) -> Plan:
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
    method, peft_type, init, virtual_tokens = resolve_method(config, parent)
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
    return Plan(
        peft_type=peft_type, method=method, init=init, virtual_tokens=virtual_tokens, template=template,
        base_spec=base_spec, base_info=base_facts.info, data=data, train_examples=train_examples,
        eval_examples=eval_examples, eval_info=eval_info, eval_split_name=split_name, eval_fraction=fraction,
        parent=parent, db=db, timings=timings,
    )


def resolve_method(config: TrainConfig, parent: VersionInfo | None) -> tuple[str, str, str | None, int | None]:
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
    method = config.method or DEFAULT_METHOD
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
    from registry import verification

    report = verification.verify(
        f"{parent.full_name}@{parent.digest}", base_facts, db=db, allow_different_base=allow_different_base,
        via="train --parent",
    )
    report.raise_if_incompatible()
