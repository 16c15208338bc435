"""The toy bases: a byte-level BPE tokenizer and tiny seeded ``transformers`` models (bloom, gpt2, llama, qwen2, t5).

Part of :mod:`registry.demo.toymodels` (which re-exports everything public here). Toy examples are
turned into the library's (:func:`to_examples`) and trained with the library's loop
(:func:`registry.ml.training.train_steps`): there is no second training loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

from registry.demo.corpus import DEMO_SENTENCES, PRETRAIN_SENTENCES
from registry.errors import DependencyMissingError, InvalidBaseModelError, UsageError
from registry.ml import data
from registry.ml.runtime import quiet

__all__ = [
    "ARCHITECTURES",
    "SPECIAL_TOKENS",
    "Example",
    "load_tokenizer",
    "make_base_model",
    "to_examples",
    "train_tokenizer",
]

SPECIAL_TOKENS: dict[str, str] = {
    "pad_token": "<pad>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
}
"""Special tokens of the toy tokenizer; they get ids 0, 1, 2, 3 in this order."""

ARCHITECTURES = ("bloom", "gpt2", "llama", "qwen2", "t5")
"""Architectures :func:`make_base_model` can build; ``t5`` is the encoder-decoder one."""

# A training/eval example: plain text, or a prompt/completion pair (loss on the completion only).
Example: TypeAlias = "str | Mapping[str, str] | tuple[str, str]"

# Weight-init scale per architecture (``initializer_range``; ``initializer_factor`` for t5).
# The library defaults (0.02) give a random tiny model whose output ignores its context: every
# soft prompt then yields the same greedy text, and tests could not tell adapters apart. These
# values were measured to make the next-token argmax depend on the soft prompt while training
# stays stable. Dropout is off everywhere: a few training steps on a toy should not be noise.
_INIT_RANGE: dict[str, float] = {"bloom": 0.3, "gpt2": 0.1, "llama": 0.1, "qwen2": 0.1, "t5": 2.0}


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _staged_dir(out_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp folder next to ``out_dir``; on success move its files into ``out_dir``.

    Each file lands with ``os.replace`` (atomic per file), so a failure half-way (bad argument
    found late, interrupted training, a library error) leaves ``out_dir`` untouched: no
    half-written model or adapter that a later step might pick up.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        out.mkdir(exist_ok=True)
        for item in sorted(tmp.iterdir()):
            if item.is_file():
                with open(item, "rb") as fh:
                    os.fsync(fh.fileno())
                os.replace(item, out / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------


def _require_ml() -> None:
    try:
        import peft  # noqa: F401
        import tokenizers  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DependencyMissingError(
            f"building toy models needs torch, transformers, peft and tokenizers ({exc})",
            hint="install the ML extra: pip install 'softprompt-registry[ml]'",
        ) from exc


def train_tokenizer(
    out_dir: str | os.PathLike[str],
    sentences: Sequence[str] | None = None,
    vocab_size: int = 400,
) -> Path:
    """Train a byte-level BPE tokenizer on ``sentences`` and save it as a transformers tokenizer.

    The tokenizer is a ``tokenizers`` BPE with a byte-level pre-tokenizer and decoder (so any
    text round-trips), wrapped in ``PreTrainedTokenizerFast`` with ``<pad>``=0, ``<s>``=1,
    ``</s>``=2, ``<unk>``=3. It does not add special tokens when encoding (like BLOOM's): callers
    append ``eos`` themselves. ``save_pretrained`` writes ``tokenizer.json`` and
    ``tokenizer_config.json`` into ``out_dir`` (created if missing). Training is deterministic:
    the same sentences and vocab size give the same files byte for byte.

    ``sentences`` defaults to :data:`DEMO_SENTENCES`. ``vocab_size`` must be at least 260 (the
    256 byte symbols plus the four special tokens); the result may be smaller than asked when
    the sentences have few distinct pairs. Returns ``out_dir`` as a ``Path``.

    Raises :class:`UsageError` for an empty sentence list or a too-small vocabulary, and
    :class:`DependencyMissingError` without the ``[ml]`` extra.
    """
    _require_ml()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(DEMO_SENTENCES if sentences is None else sentences)
    if not texts:
        raise UsageError("train_tokenizer needs at least one sentence", hint="pass sentences=[...]")
    specials = list(SPECIAL_TOKENS.values())
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(specials):
        raise UsageError(
            f"vocab_size {vocab_size} is too small for a byte-level BPE tokenizer",
            hint=f"use at least {len(alphabet) + len(specials)}",
        )
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=alphabet,
        min_frequency=1,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=512, **SPECIAL_TOKENS)
    with _staged_dir(out_dir) as tmp:
        fast.save_pretrained(str(tmp))
    return Path(out_dir)


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    """Load the tokenizer saved in ``path`` (a tokenizer or base-model folder) with ``AutoTokenizer``.

    Returns a transformers fast tokenizer. Raises whatever transformers raises for a folder
    without tokenizer files (``OSError``/``ValueError``), and :class:`DependencyMissingError`
    without the ``[ml]`` extra.
    """
    _require_ml()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


# ---------------------------------------------------------------------------------------------
# Base models
# ---------------------------------------------------------------------------------------------


def _model_config(
    arch: str,
    *,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    vocab_size: int,
    special_ids: Mapping[str, int],
    init_range: float | None = None,
    num_kv_heads: int | None = None,
) -> Any:
    """Build a transformers config for ``arch`` with the given shape and special token ids."""
    scale = _INIT_RANGE[arch] if init_range is None else init_range
    bos, eos, pad = special_ids["bos"], special_ids["eos"], special_ids["pad"]
    if arch == "bloom":
        from transformers import BloomConfig

        return BloomConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            n_layer=num_layers,
            n_head=num_heads,
            initializer_range=scale,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=pad,
        )
    if arch == "gpt2":
        from transformers import GPT2Config

        return GPT2Config(
            vocab_size=vocab_size,
            n_embd=hidden_size,
            n_layer=num_layers,
            n_head=num_heads,
            n_positions=256,
            initializer_range=scale,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=pad,
        )
    if arch in ("llama", "qwen2"):
        # Both RoPE with grouped-query attention and tied embeddings; the seeds use
        # Qwen2.5-0.5B-Instruct, so qwen2 has its own config class and model type.
        from transformers import LlamaConfig, Qwen2Config

        config_class = LlamaConfig if arch == "llama" else Qwen2Config
        return config_class(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 2,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads or num_heads,
            max_position_embeddings=256,
            tie_word_embeddings=True,
            initializer_range=scale,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=pad,
        )
    if arch == "t5":
        from transformers import T5Config

        t5 = T5Config(
            vocab_size=vocab_size,
            d_model=hidden_size,
            d_kv=hidden_size // num_heads,
            d_ff=hidden_size * 2,
            num_layers=num_layers,
            num_decoder_layers=num_layers,
            num_heads=num_heads,
            # T5 scales its init by ``initializer_factor``. At the usual 1.0 the tiny model (whose
            # LM head is tied to its input embedding) greedily emits <pad> forever whatever the
            # prompt; 2.0 makes its output depend on the input and the soft prompt. Note that
            # transformers 5 always ties T5's embeddings: ``tie_word_embeddings=False`` there only
            # turns off the decoder-output scaling, so it is not used.
            initializer_factor=scale,
            dropout_rate=0.0,
            eos_token_id=eos,
            pad_token_id=pad,
        )
        # Not in T5Config's signature (PretrainedConfig takes them): set as attributes, saved alike.
        t5.bos_token_id = bos
        t5.decoder_start_token_id = pad
        return t5
    raise UsageError(
        f"unknown toy architecture {arch!r}", hint=f"choose one of {', '.join(ARCHITECTURES)}"
    )


def _model_class(arch: str) -> Any:
    import transformers

    names = {
        "bloom": "BloomForCausalLM",
        "gpt2": "GPT2LMHeadModel",
        "llama": "LlamaForCausalLM",
        "qwen2": "Qwen2ForCausalLM",
        "t5": "T5ForConditionalGeneration",
    }
    return getattr(transformers, names[arch])


def make_base_model(
    out_dir: str | os.PathLike[str],
    arch: str = "bloom",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    vocab_size: int | None = None,
    seed: int = 0,
    tokenizer_dir: str | os.PathLike[str] | None = None,
    init_range: float | None = None,
    num_kv_heads: int | None = None,
    pretrain_steps: int = 0,
    pretrain_texts: Sequence[Example] | None = None,
    pretrain_lr: float = 3e-3,
    pretrain_batch_size: int = 16,
    progress: Callable[[int, int, float | None], None] | None = None,
) -> Path:
    """Build a tiny base model with seeded random weights and save it with its tokenizer.

    ``arch`` is one of :data:`ARCHITECTURES`: ``bloom`` (``BloomForCausalLM``), ``gpt2``
    (``GPT2LMHeadModel``), ``llama`` (``LlamaForCausalLM``, tied embeddings), ``qwen2``
    (``Qwen2ForCausalLM``: RoPE, tied embeddings, the shape of the seeds' Qwen2.5) or ``t5``
    (``T5ForConditionalGeneration``, the encoder-decoder). The weights come from the model's own
    initialisation under ``torch.manual_seed(seed)``: the same arguments give the same tensors
    (and the same ``model.safetensors`` bytes); another seed gives the same shapes with different
    values, which is what embedding-fingerprint tests need. ``init_range`` is the init scale
    (``initializer_range``, or ``initializer_factor`` for t5); the default is a per-architecture
    value larger than the library's 0.02, so that the untrained model's output depends on its
    context and different soft prompts give different greedy generations. ``num_kv_heads``
    (llama and qwen2) makes a grouped-query-attention model; PEFT sizes prefix-tuning tensors by the
    key/value heads, not the width, on such models.

    ``pretrain_steps > 0`` trains the whole model (AdamW at ``pretrain_lr``, batches of
    ``pretrain_batch_size``, seeded) on ``pretrain_texts`` (default :data:`PRETRAIN_SENTENCES`,
    which leaves out the held-out rows) before saving, so that it writes readable, memorised
    English instead of byte noise: useful for a demo that prints generations (``spr demo``: 200
    steps at lr 1e-2, batch 32, init range 0.02 on :data:`DEMO_PRETRAIN_TEXTS`, loss about 0.1).
    Training runs through :func:`registry.ml.training.train_steps`, the ``Trainer`` of ``spr
    train``, at a constant learning rate, on one CPU thread (a 64-wide model gains nothing from
    more, and on a loaded 2-core machine two spinning threads made each step 10x slower);
    ``progress(step, total, loss)`` is called after every step. The fixtures leave it at 0.

    The tokenizer is copied from ``tokenizer_dir`` when given, else trained with
    :func:`train_tokenizer` on :data:`DEMO_SENTENCES`. ``vocab_size`` defaults to the tokenizer's
    length and may not be smaller. ``out_dir`` receives ``config.json``,
    ``generation_config.json``, ``model.safetensors`` (fp32, tied embeddings stored once) and the
    tokenizer files; it is created if missing. Returns ``out_dir`` as a ``Path``.

    Files are built in a temp folder and moved into ``out_dir`` only on success.

    Raises :class:`UsageError` for an unknown architecture, a width not divisible by the number
    of heads, a vocabulary smaller than the tokenizer's, a ``tokenizer_dir`` without
    ``tokenizer.json`` or a bad ``num_kv_heads``; :class:`DependencyMissingError` without the
    ``[ml]`` extra.
    """
    _require_ml()
    import torch

    if arch not in ARCHITECTURES:
        raise UsageError(
            f"unknown toy architecture {arch!r}", hint=f"choose one of {', '.join(ARCHITECTURES)}"
        )
    if hidden_size <= 0 or num_layers <= 0 or num_heads <= 0 or hidden_size % num_heads:
        raise UsageError(
            f"hidden_size {hidden_size} must be a positive multiple of num_heads {num_heads}",
            hint="e.g. hidden_size=64, num_heads=4",
        )
    if num_kv_heads is not None and (arch not in ("llama", "qwen2") or num_kv_heads <= 0 or num_heads % num_kv_heads):
        raise UsageError(
            f"num_kv_heads={num_kv_heads} needs arch='llama' or 'qwen2' and must divide num_heads {num_heads}",
            hint="e.g. arch='llama', num_heads=4, num_kv_heads=2",
        )
    if pretrain_steps < 0:
        raise UsageError(f"pretrain_steps must be >= 0, got {pretrain_steps}", hint="e.g. pretrain_steps=200")
    if tokenizer_dir is not None and not (Path(tokenizer_dir) / "tokenizer.json").is_file():
        raise UsageError(
            f"{tokenizer_dir} has no tokenizer.json", hint="make one with registry.demo.toymodels.train_tokenizer"
        )
    with _staged_dir(out_dir) as tmp:
        if tokenizer_dir is None:
            train_tokenizer(tmp)
        else:
            for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                src = Path(tokenizer_dir) / name
                if src.is_file():
                    shutil.copyfile(src, tmp / name)
        tokenizer = load_tokenizer(tmp)
        n_tokens = len(tokenizer)
        if vocab_size is None:
            vocab_size = n_tokens
        if vocab_size < n_tokens:
            raise UsageError(
                f"vocab_size {vocab_size} is smaller than the tokenizer's {n_tokens} tokens",
                hint=f"use vocab_size >= {n_tokens} or leave it unset",
            )
        config = _model_config(
            arch,
            hidden_size=hidden_size,
            num_layers=num_layers,
            num_heads=num_heads,
            vocab_size=vocab_size,
            init_range=init_range,
            num_kv_heads=num_kv_heads,
            special_ids={
                "pad": tokenizer.pad_token_id,
                "bos": tokenizer.bos_token_id,
                "eos": tokenizer.eos_token_id,
            },
        )
        torch.manual_seed(seed)
        model = _model_class(arch)(config)
        if pretrain_steps:
            texts = PRETRAIN_SENTENCES if pretrain_texts is None else pretrain_texts
            with _one_thread():
                _train(
                    model, texts, tokenizer, seq2seq=arch == "t5", steps=pretrain_steps, lr=pretrain_lr,
                    batch_size=pretrain_batch_size, seed=seed, max_length=128, progress=progress,
                )
        model.eval()
        with quiet():
            model.save_pretrained(str(tmp))
        if not (tmp / "model.safetensors").is_file():  # pragma: no cover - transformers changed
            raise InvalidBaseModelError("transformers did not write model.safetensors")
    return Path(out_dir)


def _arch_of(base_dir: Path) -> str:
    """The toy architecture name of a saved base model, from its ``config.json``."""
    try:
        model_type = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))["model_type"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidBaseModelError(
            f"{base_dir} is not a saved transformers model (config.json unreadable: {exc})",
            hint="build one with registry.demo.toymodels.make_base_model",
        ) from exc
    if model_type not in ARCHITECTURES:
        raise InvalidBaseModelError(
            f"{base_dir} has model_type {model_type!r}; the toy helpers know {', '.join(ARCHITECTURES)}"
        )
    return str(model_type)


def _load_base(base_dir: Path) -> Any:
    arch = _arch_of(base_dir)
    with quiet():
        model = _model_class(arch).from_pretrained(str(base_dir))
    model.eval()
    return model


def to_examples(examples: Sequence[Example]) -> list[data.Example]:
    """The library's examples for toy ones: a string or ``{"text": ...}`` is learned whole, a
    ``{"prompt", "completion"}`` mapping or ``(prompt, completion)`` pair on the completion only.

    Raises :class:`UsageError` for an empty list or an example of another shape.
    """
    out: list[data.Example] = []
    for ex in examples:
        if isinstance(ex, str):
            out.append(data.Example(target=ex))
        elif isinstance(ex, tuple) and len(ex) == 2:
            out.append(data.Example(prompt=ex[0], target=ex[1]))
        elif isinstance(ex, Mapping) and "text" in ex:
            out.append(data.Example(target=ex["text"]))
        elif isinstance(ex, Mapping) and "prompt" in ex and "completion" in ex:
            out.append(data.Example(prompt=ex["prompt"], target=ex["completion"]))
        else:
            raise UsageError(
                f"cannot use example {ex!r:.80}",
                hint="give a string, {'text': ...}, {'prompt': ..., 'completion': ...} or (prompt, completion)",
            )
    if not out:
        raise UsageError("no examples given", hint="pass at least one text")
    return out


def _encode(examples: Sequence[Example], tokenizer: Any, *, seq2seq: bool, max_length: int) -> list[data.Encoded]:
    """Toy examples encoded exactly as ``spr train`` encodes them (no template)."""
    encoded, _ = data.encode_examples(to_examples(examples), tokenizer, template=None, max_length=max_length, seq2seq=seq2seq)
    if not encoded:
        raise UsageError("the examples have no target tokens left", hint="pass longer texts or a larger max_length")
    return encoded


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread for the block (tiny models), then restore the setting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(
    model: Any, examples: Sequence[Example], tokenizer: Any, *, seq2seq: bool, steps: int, lr: float, batch_size: int,
    seed: int, max_length: int, progress: Callable[[int, int, float | None], None] | None = None,
) -> list[float]:
    """Train with the library's loop (:func:`registry.ml.training.train_steps`, constant learning rate)."""
    from registry.ml import training

    encoded = _encode(examples, tokenizer, seq2seq=seq2seq, max_length=max_length)
    return training.train_steps(
        model, encoded, pad_id=int(tokenizer.pad_token_id), seq2seq=seq2seq, steps=steps, lr=lr,
        batch_size=batch_size, seed=seed, progress=progress,
    )
