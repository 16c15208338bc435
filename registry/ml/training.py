"""Training soft prompts with ``transformers.Trainer`` + PEFT, recording every fact at the source.

``spr train`` runs the recipe of the prompt-tuning tutorials (``get_peft_model`` on a base model,
``Trainer`` with a seeded ``TrainingArguments``) and, on success, publishes the adapter with what the
run itself measured: the base model's identity (revision, embedding fingerprint), the training
data's digest, name, format and record count, the full PEFT config, the training settings and seed,
the library versions, the device, the loss curve, the held-out eval loss and perplexity tied to the
held-out data's digest, the input template and the parent. Nothing is typed by hand.

The room is split by job: :mod:`registry.ml.defaults` (the defaults, torch-free),
:mod:`registry.ml.data` (datasets, held-out splits, templates, tokenising; torch-free),
:mod:`registry.ml.config` (:class:`TrainConfig` and the checks before loading),
:mod:`registry.ml.runtime` (devices, base loading, the eval loss) and this module (the run
itself and publishing). The names users import from ``registry.ml.training`` are re-exported here.

Torch, transformers and peft are imported inside the functions that need them.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry import settings
from registry.digest import PREFIX, canonical_json, sha256_bytes
from registry.errors import InterruptedOperationError, UsageError
from registry.ml.config import Plan, TrainConfig, make_plan
from registry.ml.data import (
    IGNORE_INDEX,
    Encoded,
    Example,
    LoadedData,
    apply_template,
    check_template,
    encode_examples,
    examples_jsonl,
    heldout_split_name,
    load_examples,
    pad_batch,
    split_heldout,
    write_examples_jsonl,
)
from registry.ml.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_EVAL_SPLIT,
    DEFAULT_LR,
    DEFAULT_MAX_LENGTH,
    DEFAULT_SEED,
    DEFAULT_TEMPLATE,
    DEFAULT_VIRTUAL_TOKENS,
    INITS,
    MAX_CURVE_POINTS,
    METHODS,
)
from registry.ml.runtime import (
    _download_base,
    _require_ml,
    describe_device,
    library_versions,
    load_base_model,
    mean_token_loss,
    quiet,
    require_ml,
    select_device,
)
from registry.types import BaseModelInfo, DatasetInfo, PublishResult, VersionInfo

if TYPE_CHECKING:  # pragma: no cover - typing only
    from registry.catalogue import EvalInput

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_EPOCHS",
    "DEFAULT_EVAL_SPLIT",
    "DEFAULT_LR",
    "DEFAULT_MAX_LENGTH",
    "DEFAULT_SEED",
    "DEFAULT_TEMPLATE",
    "DEFAULT_VIRTUAL_TOKENS",
    "IGNORE_INDEX",
    "INITS",
    "MAX_CURVE_POINTS",
    "METHODS",
    "Encoded",
    "Example",
    "LoadedData",
    "ProgressCallback",
    "TrainConfig",
    "TrainResult",
    "TrainingLog",
    "_download_base",
    "_require_ml",
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
    "train_steps",
    "write_examples_jsonl",
]

ProgressCallback = Callable[[int, int, "float | None"], None]
"""Called after every optimizer step with ``(step, total_steps, latest logged loss)``."""


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
    require_ml()
    if output_dir is not None and output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise UsageError(f"output directory {output_dir} exists and is not empty", hint="choose a new directory")
    work = None
    try:
        plan = make_plan(config, db=db)
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


def _build_model(config: TrainConfig, plan: Plan, model: Any, tokenizer: Any, seq2seq: bool, work: Path) -> Any:
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
    lr_scheduler: str | None = None,
) -> tuple[Any, TrainingLog]:
    """The ``transformers.Trainer`` that ``spr train`` runs, and the log it fills.

    Seeded ``TrainingArguments`` (``use_cpu`` without a GPU, nothing saved or reported, a loss
    logged every step up to :data:`MAX_CURVE_POINTS` points), a padding collator that counts
    tokens, and a callback that records the loss curve and step times, reports progress and stops a
    diverged run (:class:`UsageError`). Exposed so the benchmark measures exactly this trainer.
    ``lr_scheduler`` overrides transformers' schedule (``"constant"`` for :func:`train_steps`).
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

    class Recorder(TrainerCallback):
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
        lr_scheduler_type=lr_scheduler or "linear",  # "linear" is transformers' default
    )
    train_set = [{"input_ids": e.input_ids, "labels": e.labels} for e in train_encoded]
    with quiet():
        trainer = Trainer(model=peft_model, args=args, train_dataset=train_set, data_collator=collate, callbacks=[Recorder(), *callbacks])
    # Our own progress bar and loss curve replace transformers' printing of every log line.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(HFProgress)
    return trainer, log


def train_steps(
    model: Any,
    encoded: Sequence[Encoded],
    *,
    pad_id: int,
    seq2seq: bool,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: str = "cpu",
    lr_scheduler: str = "constant",
) -> list[float]:
    """Train ``model`` (a PEFT model, or a whole base) for ``steps`` optimizer steps; returns the logged losses.

    The same seeded ``Trainer`` as ``spr train`` (:func:`make_trainer`), with a ``lr_scheduler``
    schedule (constant by default): the toy models of :mod:`registry.demo` are trained with it, so
    there is one training loop. Nothing is saved; the model is left in eval mode.
    """
    if steps < 1:
        raise UsageError(f"steps must be at least 1, got {steps}")
    config = TrainConfig(dataset=Path(os.devnull), lr=lr, batch_size=batch_size, seed=seed, max_steps=steps)
    with tempfile.TemporaryDirectory(prefix="spr-steps-") as work:
        trainer, log = make_trainer(
            model, encoded, config=config, pad_id=pad_id, seq2seq=seq2seq, device=device, output_dir=Path(work),
            total_steps=steps, lr_scheduler=lr_scheduler,
        )
        try:
            with quiet():
                trainer.train()
        finally:
            _current_step.clear()
    model.eval()
    return [value for _, value in log.curve]


def _train_in(
    config: TrainConfig, plan: Plan, work: Path, *, progress: ProgressCallback | None, callbacks: Sequence[Any]
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
