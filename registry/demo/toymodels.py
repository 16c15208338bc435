"""Tiny real base models, tokenizers and PEFT adapters, built offline.

The demo (``spr demo``), the tests and the benchmarks all stand on these. Nothing here is a
mock: the tokenizer is a byte-level BPE trained with ``tokenizers``, the base models are real
``transformers`` models built from a config with seeded random weights, and the adapters are
made by real PEFT (``get_peft_model`` + ``save_pretrained``), optionally trained for a few steps.
Everything is small (hidden 64, 2 layers, a vocabulary of a few hundred tokens) so that a whole
set builds in seconds on two CPU cores.

There is one training loop, one encoder and one generator: the library's. Examples are encoded by
:func:`registry.ml.data.encode_examples`, trained by :func:`registry.ml.training.train_steps`
(the ``Trainer`` that ``spr train`` runs), scored by :func:`registry.ml.runtime.mean_token_loss`
and generated from by :func:`registry.ml.evaluation.generate_text`.

The built-in texts and the demo datasets live in :mod:`registry.demo.corpus` (re-exported here).

Importing this module is cheap: torch, transformers, peft and tokenizers are imported inside
the functions that need them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from registry.demo.bases import (
    ARCHITECTURES,
    SPECIAL_TOKENS,
    Example,
    _arch_of,
    _encode,
    _load_base,
    _require_ml,
    _staged_dir,
    _train,
    load_tokenizer,
    make_base_model,
    to_examples,
    train_tokenizer,
)
from registry.demo.corpus import (
    COACH_DIALOGUES,
    COACH_HELDOUT,
    COACH_PROMPTS,
    DEMO_PRETRAIN_TEXTS,
    DEMO_SENTENCES,
    PRETRAIN_SENTENCES,
    QUOTE_REPLIES,
    QUOTES,
    QUOTES_HELDOUT,
    REPLIES_HELDOUT,
    TEXT_INIT_PROMPT,
    coach_split,
    quotes_split,
    write_demo_datasets,
)
from registry.errors import InvalidAdapterError, UsageError
from registry.ml.runtime import quiet

__all__ = [
    "ARCHITECTURES",
    "COACH_DIALOGUES",
    "COACH_HELDOUT",
    "COACH_PROMPTS",
    "DEMO_PRETRAIN_TEXTS",
    "DEMO_SENTENCES",
    "PEFT_TYPES",
    "PRETRAIN_SENTENCES",
    "QUOTES",
    "QUOTES_HELDOUT",
    "QUOTE_REPLIES",
    "REPLIES_HELDOUT",
    "SPECIAL_TOKENS",
    "TEXT_INIT_PROMPT",
    "Example",
    "coach_split",
    "eval_loss",
    "generate",
    "load_model",
    "load_tokenizer",
    "make_adapter",
    "make_base_model",
    "quotes_split",
    "to_examples",
    "train_tokenizer",
    "write_demo_datasets",
]
PEFT_TYPES = ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "LORA")
"""PEFT types :func:`make_adapter` can make."""

# Default LoRA targets per architecture (the attention projections).
_LORA_TARGETS: dict[str, list[str]] = {
    "bloom": ["query_key_value"],
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "t5": ["q", "v"],
}


# ---------------------------------------------------------------------------------------------
# Adapters
# ---------------------------------------------------------------------------------------------


def _peft_config(
    peft_type: str,
    *,
    arch: str,
    base_dir: Path,
    task_type: str,
    num_virtual_tokens: int | None,
    init: str,
    init_text: str | None,
    lora_target_modules: Sequence[str] | None,
    lora_r: int,
    encoder_hidden_size: int | None,
    prefix_projection: bool,
    tokenizer: Any,
) -> Any:
    """Build the PEFT config object for one adapter, validating the toy-level arguments."""
    import peft

    base = str(base_dir)
    if peft_type != "PROMPT_TUNING" and peft_type != "LORA" and init != "RANDOM":
        raise UsageError(
            f"init {init!r} applies to PROMPT_TUNING only; {peft_type} starts from random weights",
            hint="leave init='RANDOM'",
        )
    if peft_type in ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING"):
        if num_virtual_tokens is None:
            if peft_type == "PROMPT_TUNING" and init == "TEXT" and init_text:
                # The tutorials' habit: as many virtual tokens as the init text has tokens.
                num_virtual_tokens = len(tokenizer(init_text)["input_ids"])
            else:
                raise UsageError(
                    "num_virtual_tokens=None is only meaningful for TEXT init",
                    hint="pass num_virtual_tokens=N",
                )
        if not isinstance(num_virtual_tokens, int) or num_virtual_tokens <= 0:
            raise UsageError(
                f"num_virtual_tokens must be a positive integer, got {num_virtual_tokens!r}",
                hint="e.g. num_virtual_tokens=4",
            )
    virtual = num_virtual_tokens or 0  # a positive int for the prompt-learning types (checked above)
    if peft_type == "PROMPT_TUNING":
        if init not in ("RANDOM", "TEXT", "SAMPLE_VOCAB"):
            raise UsageError(
                f"unknown prompt-tuning init {init!r}", hint="choose RANDOM, TEXT or SAMPLE_VOCAB"
            )
        if init == "TEXT" and not init_text:
            raise UsageError("TEXT init needs init_text", hint=f"e.g. init_text={TEXT_INIT_PROMPT!r}")
        if init != "TEXT" and init_text:
            raise UsageError(f"init_text is only used with TEXT init (init is {init})", hint="drop init_text")
        return peft.PromptTuningConfig(
            task_type=task_type,
            num_virtual_tokens=virtual,
            prompt_tuning_init=init,
            prompt_tuning_init_text=init_text if init == "TEXT" else None,
            tokenizer_name_or_path=base,
            base_model_name_or_path=base,
        )
    if peft_type == "P_TUNING":
        encoder = peft.PromptEncoderConfig(task_type=task_type, num_virtual_tokens=virtual, base_model_name_or_path=base)
        if encoder_hidden_size is not None:  # else PEFT uses the model width
            encoder.encoder_hidden_size = encoder_hidden_size
        return encoder
    if peft_type == "PREFIX_TUNING":
        prefix = peft.PrefixTuningConfig(
            task_type=task_type, num_virtual_tokens=virtual, prefix_projection=prefix_projection,
            base_model_name_or_path=base,
        )
        if encoder_hidden_size is not None:  # else PEFT uses the model width
            prefix.encoder_hidden_size = encoder_hidden_size
        return prefix
    if peft_type == "LORA":
        if init not in ("RANDOM", "DEFAULT"):
            raise UsageError(f"unknown LoRA init {init!r}", hint="choose RANDOM or DEFAULT")
        targets = list(lora_target_modules) if lora_target_modules else list(_LORA_TARGETS[arch])
        return peft.LoraConfig(
            task_type=task_type,
            r=lora_r,
            lora_alpha=lora_r * 2,
            lora_dropout=0.0,
            target_modules=targets,
            # PEFT's default starts B at zero (the adapter is a no-op until trained); "RANDOM"
            # makes both matrices random so an untrained toy adapter visibly changes outputs.
            init_lora_weights=(init == "DEFAULT"),
            base_model_name_or_path=base,
        )
    raise UsageError(f"unknown PEFT type {peft_type!r}", hint=f"choose one of {', '.join(PEFT_TYPES)}")


def make_adapter(
    base_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    peft_type: str = "PROMPT_TUNING",
    *,
    num_virtual_tokens: int | None = 4,
    init: str = "RANDOM",
    init_text: str | None = None,
    task_type: str | None = None,
    seed: int = 0,
    lora_target_modules: Sequence[str] | None = None,
    lora_r: int = 4,
    encoder_hidden_size: int | None = None,
    prefix_projection: bool = False,
    train_steps: int = 0,
    dataset: Sequence[Example] | None = None,
    lr: float = 0.03,
    batch_size: int = 8,
    max_length: int = 128,
) -> Path:
    """Make a real PEFT adapter on a saved base model and save it with ``save_pretrained``.

    ``peft_type`` is one of :data:`PEFT_TYPES`: ``PROMPT_TUNING`` (``PromptTuningConfig``, with
    ``init`` RANDOM, TEXT or SAMPLE_VOCAB; TEXT needs ``init_text``, and ``num_virtual_tokens=None``
    then means "as many as the init text has tokens"; ``tokenizer_name_or_path`` is the base
    directory), ``P_TUNING`` (``PromptEncoderConfig``, MLP encoder of ``encoder_hidden_size``,
    default the model width), ``PREFIX_TUNING`` (``PrefixTuningConfig``, ``prefix_projection``
    optional) or ``LORA`` (``LoraConfig`` with ``r=lora_r``, ``lora_alpha=2r`` on
    ``lora_target_modules``, default the attention projection of the architecture; ``init``
    RANDOM makes both LoRA matrices random so an untrained adapter changes outputs, DEFAULT is
    PEFT's own zero-B start). ``task_type`` defaults to ``SEQ_2_SEQ_LM`` for t5 and ``CAUSAL_LM``
    otherwise.

    Everything random is seeded by ``seed``. With ``train_steps > 0`` the adapter is trained for
    that many AdamW steps (``lr``, ``batch_size``) on ``dataset``: strings or ``{"text": ...}``
    (whole text learned, eos appended) or ``{"prompt", "completion"}`` / ``(prompt, completion)``
    (loss on the completion only). ``base_model_name_or_path`` in the saved config is
    ``str(base_dir)`` exactly as given.

    ``out_dir`` (created if missing) receives ``adapter_config.json``,
    ``adapter_model.safetensors`` and PEFT's ``README.md``. Returns ``out_dir`` as a ``Path``.

    Raises :class:`UsageError` for an unknown type or init, a bad token count, training without
    data or an unusable example; :class:`InvalidBaseModelError` if ``base_dir`` is not a toy base
    model; :class:`DependencyMissingError` without the ``[ml]`` extra.
    """
    _require_ml()
    import peft
    import torch

    base = Path(base_dir)
    arch = _arch_of(base)
    peft_type = peft_type.upper()
    init = init.upper()
    if peft_type not in PEFT_TYPES:
        raise UsageError(f"unknown PEFT type {peft_type!r}", hint=f"choose one of {', '.join(PEFT_TYPES)}")
    if train_steps < 0 or (train_steps > 0 and not dataset):
        raise UsageError(
            f"train_steps={train_steps} needs a non-negative count and, when > 0, a dataset",
            hint="pass dataset=[...texts...] or train_steps=0",
        )
    if task_type is None:
        task_type = "SEQ_2_SEQ_LM" if arch == "t5" else "CAUSAL_LM"
    tokenizer = load_tokenizer(base)
    config = _peft_config(
        peft_type,
        arch=arch,
        base_dir=base,
        task_type=task_type,
        num_virtual_tokens=num_virtual_tokens,
        init=init,
        init_text=init_text,
        lora_target_modules=lora_target_modules,
        lora_r=lora_r,
        encoder_hidden_size=encoder_hidden_size,
        prefix_projection=prefix_projection,
        tokenizer=tokenizer,
    )
    # Keep base_model_name_or_path exactly as the caller spelled it (Path() would normalise it).
    config.base_model_name_or_path = os.fspath(base_dir)
    if hasattr(config, "tokenizer_name_or_path") and config.tokenizer_name_or_path:
        config.tokenizer_name_or_path = os.fspath(base_dir)

    model = _load_base(base)
    torch.manual_seed(seed)
    with quiet():
        peft_model = peft.get_peft_model(model, config)
    if train_steps:
        _train(
            peft_model, dataset or [], tokenizer, seq2seq=arch == "t5", steps=train_steps, lr=lr,
            batch_size=batch_size, seed=seed, max_length=max_length,
        )
    with _staged_dir(out_dir) as tmp, quiet():
        peft_model.save_pretrained(str(tmp))
        if not (tmp / "adapter_model.safetensors").is_file():  # pragma: no cover - PEFT changed
            raise InvalidAdapterError("PEFT did not write adapter_model.safetensors")
    return Path(out_dir)


# ---------------------------------------------------------------------------------------------
# Using adapters
# ---------------------------------------------------------------------------------------------


def load_model(base_dir: str | os.PathLike[str], adapter_dir: str | os.PathLike[str] | None = None) -> Any:
    """Load a toy base model in eval mode, with ``adapter_dir`` attached when given.

    The adapter is loaded the ordinary way, ``PeftModel.from_pretrained(base, adapter_dir,
    is_trainable=False)``, with no checks at all: this is PEFT's own path, the one the
    registry's verified loading is compared against. Returns the transformers model or the
    ``PeftModel``. Raises :class:`InvalidBaseModelError` if ``base_dir`` is not a toy base
    model, and whatever PEFT raises for an adapter it cannot load.
    """
    _require_ml()
    base = Path(base_dir)
    model = _load_base(base)
    if adapter_dir is None:
        return model
    from peft import PeftModel

    with quiet():
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    peft_model.eval()
    return peft_model


def eval_loss(
    base_dir: str | os.PathLike[str],
    adapter_dir: str | os.PathLike[str] | None,
    texts: Sequence[Example],
    *,
    batch_size: int = 8,
    max_length: int = 128,
) -> float:
    """Mean token-level loss of the base model with an adapter (or alone) on held-out examples.

    Examples are encoded exactly as in training (see :func:`make_adapter`): the loss is the
    cross-entropy averaged over every target token of every example (not a mean of per-example
    means), so batching does not change it. ``adapter_dir=None`` scores the bare base model,
    which is the "before" figure. Runs under ``torch.no_grad()``. Returns a float (nats/token).

    Raises :class:`UsageError` for an empty or unusable example list,
    :class:`InvalidBaseModelError` for a base directory the toy helpers cannot load, and
    whatever PEFT raises for an adapter it cannot load.
    """
    _require_ml()
    from registry.ml.runtime import mean_token_loss

    base = Path(base_dir)
    seq2seq = _arch_of(base) == "t5"
    tokenizer = load_tokenizer(base)
    encoded = _encode(texts, tokenizer, seq2seq=seq2seq, max_length=max_length)
    model = load_model(base, adapter_dir)
    with quiet():
        loss, _ = mean_token_loss(model, encoded, pad_id=int(tokenizer.pad_token_id), seq2seq=seq2seq, batch_size=batch_size)
    return loss


def generate(
    base_dir: str | os.PathLike[str],
    adapter_dir: str | os.PathLike[str] | None,
    prompt: str,
    max_new_tokens: int = 16,
    *,
    repetition_penalty: float = 1.5,
) -> str:
    """Greedy generation from the base model with an adapter (or alone); returns the new text.

    The prompt is encoded without special tokens (an empty prompt becomes ``<s>``); for causal
    LMs only the generated continuation is decoded (special tokens skipped). ``repetition_penalty`` defaults to the
    tutorials' 1.5. Deterministic (no sampling). Raises :class:`InvalidBaseModelError` for a
    base directory the toy helpers cannot load and whatever PEFT raises for a bad adapter.
    """
    _require_ml()
    from registry.ml.evaluation import generate_text

    base = Path(base_dir)
    seq2seq = _arch_of(base) == "t5"
    tokenizer = load_tokenizer(base)
    model = load_model(base, adapter_dir)
    with quiet():
        return generate_text(
            model, tokenizer, prompt, seq2seq=seq2seq, max_new_tokens=max_new_tokens,
            repetition_penalty=repetition_penalty, device="cpu",
        )
