"""Tiny real base models, tokenizers, datasets and PEFT adapters, built offline.

The demo (``spr demo``), the tests and the benchmarks all stand on these. Nothing here is a
mock: the tokenizer is a byte-level BPE trained with ``tokenizers``, the base models are real
``transformers`` models built from a config with seeded random weights, and the adapters are
made by real PEFT (``get_peft_model`` + ``save_pretrained``), optionally trained for a few steps
with a plain torch loop. Everything is small (hidden 64, 2 layers, a vocabulary of a few hundred
tokens) so that a whole set builds in seconds on two CPU cores.

Importing this module is cheap: torch, transformers, peft and tokenizers are imported inside
the functions that need them.

Datasets
--------
Two small datasets in the spirit of the prompt-tuning tutorials (see ``shared/SEEDS.md``), written
by us: :data:`COACH_PROMPTS` (motivational-coach requests, column ``prompt``) and :data:`QUOTES`
(short sayings, column ``quote``), plus :data:`COACH_DIALOGUES` (prompt/completion pairs).
:func:`write_demo_datasets` writes them as JSONL in the shapes ``spr`` accepts:

==================  =============================  ======================================
key                 file                           record
==================  =============================  ======================================
``coach``           ``coach_prompts.jsonl``        ``{"prompt": ...}`` (all rows)
``quotes``          ``quotes.jsonl``               ``{"quote": ...}`` (all rows)
``coach_train``     ``coach_train.jsonl``          ``{"text": ...}`` (training rows)
``coach_eval``      ``coach_eval.jsonl``           ``{"text": ...}`` (held-out rows)
``quotes_train``    ``quotes_train.jsonl``         ``{"text": ...}`` (training rows)
``quotes_eval``     ``quotes_eval.jsonl``          ``{"text": ...}`` (held-out rows)
``coach_dialogues`` ``coach_dialogues.jsonl``      ``{"prompt": ..., "completion": ...}``
==================  =============================  ======================================

The ``text`` files are what training reads (one example per record); the held-out rows are the
last :data:`COACH_HELDOUT` / :data:`QUOTES_HELDOUT` rows of each list and never appear in the
training files.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from registry.errors import (
    DependencyMissingError,
    InvalidAdapterError,
    InvalidBaseModelError,
    UsageError,
)
from registry.ml.training import quiet
from registry.storage.local import atomic_write_bytes

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

__all__ = [
    "ARCHITECTURES",
    "COACH_DIALOGUES",
    "COACH_HELDOUT",
    "COACH_PROMPTS",
    "DEMO_SENTENCES",
    "PEFT_TYPES",
    "PRETRAIN_SENTENCES",
    "QUOTES",
    "QUOTES_HELDOUT",
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
    "train_tokenizer",
    "write_demo_datasets",
]

# ---------------------------------------------------------------------------------------------
# Data (our own wording)
# ---------------------------------------------------------------------------------------------

COACH_PROMPTS: list[str] = [
    "I want you to act as a motivational coach. I will tell you about my goals and you will help me keep going. My first request is: I need help getting up early to run.",
    "I want you to act as a motivational coach. My first request is: I keep putting off studying for my exams.",
    "I want you to act as a motivational coach. Give me a plan and a push. My first request is: I want to write a page every day.",
    "I want you to act as a motivational coach. My first request is: I lost my job and I feel stuck.",
    "I want you to act as a motivational coach who speaks plainly. My first request is: I need the courage to ask for a raise.",
    "I want you to act as a motivational coach. Help me stay positive. My first request is: my startup had a bad month.",
    "I want you to act as a motivational coach. My first request is: I want to learn to play the piano at forty.",
    "I want you to act as a motivational coach. My first request is: I feel tired every evening and skip the gym.",
    "I want you to act as a motivational coach. Keep it short. My first request is: I am nervous about a talk tomorrow.",
    "I want you to act as a motivational coach. My first request is: I want to read twelve books this year.",
    "I want you to act as a motivational coach for a student. My first request is: maths feels too hard for me.",
    "I want you to act as a motivational coach. My first request is: I want to cook at home instead of ordering food.",
    "I want you to act as a motivational coach. My first request is: I gave up on my diet after two days.",
    "I want you to act as a motivational coach and give me one small step for today. My first request is: my room is a mess.",
    "I want you to act as a motivational coach. My first request is: I am afraid of failing my driving test again.",
    "I want you to act as a motivational coach. My first request is: I want to save money for a trip.",
    "I want you to act as a motivational coach. Use simple words. My first request is: I want to be kinder to myself.",
    "I want you to act as a motivational coach. My first request is: I want to finish the marathon I signed up for.",
    "I want you to act as a motivational coach. My first request is: I spend too many hours on my phone.",
    "I want you to act as a motivational coach for a team lead. My first request is: my team feels low after a failed launch.",
    "I want you to act as a motivational coach. My first request is: I want to learn a new language in six months.",
    "I want you to act as a motivational coach. My first request is: I cannot stop comparing myself to others.",
    "I want you to act as a motivational coach. My first request is: I want to change careers and become a nurse.",
    "I want you to act as a motivational coach. Be warm but honest. My first request is: I missed my deadline again.",
    "I want you to act as a motivational coach. My first request is: I want to meditate for ten minutes a day.",
    "I want you to act as a motivational coach. My first request is: I am starting a new job on Monday.",
    "I want you to act as a motivational coach. My first request is: I want to sleep before midnight.",
    "I want you to act as a motivational coach. My first request is: my painting never looks the way I imagine.",
    "I want you to act as a motivational coach. My first request is: I want to drink more water and less coffee.",
    "I want you to act as a motivational coach. Ask me one question first. My first request is: I feel lost after school.",
    "I want you to act as a motivational coach. My first request is: I want to get back to climbing after an injury.",
    "I want you to act as a motivational coach. My first request is: I need to finish my thesis this spring.",
    "I want you to act as a motivational coach. My first request is: I want to call my family more often.",
    "I want you to act as a motivational coach. My first request is: I am scared to share my music online.",
    "I want you to act as a motivational coach. My first request is: I want to walk ten thousand steps a day.",
    "I want you to act as a motivational coach. Give me three reasons to keep going. My first request is: my garden keeps dying.",
    "I want you to act as a motivational coach. My first request is: I want to stop saying yes to everything.",
    "I want you to act as a motivational coach. My first request is: I want to pass my coding interview.",
    "I want you to act as a motivational coach. My first request is: I feel alone in a new city.",
    "I want you to act as a motivational coach. My first request is: I want to finish what I start.",
]
"""Forty motivational-coach requests (the ``prompt`` column of the coach dataset)."""

QUOTES: list[str] = [
    "Small steps every day add up to a long road walked.",
    "The best time to plant a tree was years ago; the second best time is today.",
    "A calm sea never made a skilled sailor.",
    "Fall seven times, stand up eight.",
    "What you do today is the shape of your tomorrow.",
    "The river cuts the rock not by force but by staying.",
    "Well begun is half done.",
    "Courage is being afraid and going on anyway.",
    "A journey of a thousand miles begins with a single step.",
    "Done is better than perfect, and started is better than planned.",
    "Every expert was once a beginner who did not quit.",
    "Rest if you must, but do not turn back.",
    "The light you look for is already in your hands.",
    "Practice makes progress, not perfection.",
    "Kind words cost nothing and buy a great deal.",
    "Where there is a will, there is a way.",
    "Be patient with the seed; the roots grow first.",
    "The only way out is through.",
    "Little strokes fell great oaks.",
    "Your pace is your own; keep it.",
    "Hope is a good breakfast but a bad supper.",
    "Knowledge grows when it is shared.",
    "A smooth road never taught anyone to drive.",
    "Make the next hour count, and the day will follow.",
    "Stars cannot shine without darkness.",
    "Start where you are, use what you have, do what you can.",
    "Doubt kills more dreams than failure ever will.",
    "Slow and steady wins the race.",
    "Tomorrow is a blank page; write something good.",
    "The harder the climb, the wider the view.",
]
"""Thirty short quotes and proverbs (the ``quote`` column of the quotes dataset)."""

COACH_DIALOGUES: list[tuple[str, str]] = [
    ("I need help getting up early to run.", "Put your shoes by the door tonight and run for ten minutes tomorrow."),
    ("I keep putting off studying.", "Study for twenty minutes now, then take a short break."),
    ("I am nervous about a talk tomorrow.", "Practice it once out loud tonight; you know more than you think."),
    ("I gave up on my diet.", "One meal does not decide the week; make the next one a good one."),
    ("My room is a mess.", "Pick up ten things, then stop and look at what you did."),
    ("I want to read more books.", "Read five pages before bed every night."),
    ("I missed my deadline again.", "Tell them today, set a new date, and split the work in small parts."),
    ("I feel alone in a new city.", "Say yes to one invitation this week."),
    ("I want to save money.", "Move a small amount to savings on every payday."),
    ("I am scared to share my music.", "Share one song with one friend first."),
    ("I want to sleep earlier.", "Put the phone in another room an hour before bed."),
    ("I want to learn a language.", "Learn ten words a day and say them out loud."),
    ("I cannot finish what I start.", "Choose one project and finish a small part today."),
    ("My team feels low.", "Name one thing that went well and thank the people who did it."),
    ("I want to walk more.", "Take a walk after lunch every day this week."),
    ("I want to meditate.", "Sit still and breathe for two minutes after you wake up."),
]
"""Prompt/completion pairs: a short request and a coach's reply (loss on the reply only)."""

COACH_HELDOUT = 8
"""How many coach prompts (the last ones) are held out for evaluation."""

QUOTES_HELDOUT = 6
"""How many quotes (the last ones) are held out for evaluation."""

TEXT_INIT_PROMPT = "You are a warm motivational coach."
"""The init text the demo and fixtures use for TEXT-initialised prompt tuning."""

DEMO_SENTENCES: list[str] = [
    "The following is a dialog between a human and a robot.",
    TEXT_INIT_PROMPT,
    "Human: ",
    "Assistant: ",
    "Soft prompts are small trained vectors placed before the input.",
    "A registry records the base model, the dataset and the scores.",
    *COACH_PROMPTS,
    *QUOTES,
    *(p + " " + c for p, c in COACH_DIALOGUES),
]
"""The sentences the demo tokenizer is trained on: everything the demo datasets contain."""

PRETRAIN_SENTENCES: list[str] = [
    s
    for s in DEMO_SENTENCES
    if s not in COACH_PROMPTS[-COACH_HELDOUT:] and s not in QUOTES[-QUOTES_HELDOUT:]
]
"""What ``make_base_model(pretrain_steps=N)`` trains on: :data:`DEMO_SENTENCES` minus held-out rows."""

SPECIAL_TOKENS: dict[str, str] = {
    "pad_token": "<pad>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
}
"""Special tokens of the toy tokenizer; they get ids 0, 1, 2, 3 in this order."""

ARCHITECTURES = ("bloom", "gpt2", "llama", "t5")
"""Architectures :func:`make_base_model` can build; ``t5`` is the encoder-decoder one."""

PEFT_TYPES = ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "LORA")
"""PEFT types :func:`make_adapter` can make."""

# A training/eval example: plain text, or a prompt/completion pair (loss on the completion only).
Example = Union[str, Mapping[str, str], tuple[str, str]]

# Weight-init scale per architecture (``initializer_range``; ``initializer_factor`` for t5).
# The library defaults (0.02) give a random tiny model whose output ignores its context: every
# soft prompt then yields the same greedy text, and tests could not tell adapters apart. These
# values were measured to make the next-token argmax depend on the soft prompt while training
# stays stable. Dropout is off everywhere: a few training steps on a toy should not be noise.
_INIT_RANGE: dict[str, float] = {"bloom": 0.3, "gpt2": 0.1, "llama": 0.1, "t5": 2.0}

# Default LoRA targets per architecture (the attention projections).
_LORA_TARGETS: dict[str, list[str]] = {
    "bloom": ["query_key_value"],
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "v_proj"],
    "t5": ["q", "v"],
}


def coach_split() -> tuple[list[str], list[str]]:
    """Return ``(train, held_out)`` coach prompts; held-out rows are the last :data:`COACH_HELDOUT`."""
    return COACH_PROMPTS[:-COACH_HELDOUT], COACH_PROMPTS[-COACH_HELDOUT:]


def quotes_split() -> tuple[list[str], list[str]]:
    """Return ``(train, held_out)`` quotes; held-out rows are the last :data:`QUOTES_HELDOUT`."""
    return QUOTES[:-QUOTES_HELDOUT], QUOTES[-QUOTES_HELDOUT:]


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def _jsonl(records: Iterable[Mapping[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


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


def write_demo_datasets(directory: str | os.PathLike[str]) -> dict[str, Path]:
    """Write the demo datasets as JSONL files into ``directory`` (created if missing).

    Returns a dict from key to file path; the keys, files and record shapes are listed in the
    module docstring (``coach``, ``quotes``, ``coach_train``, ``coach_eval``, ``quotes_train``,
    ``quotes_eval``, ``coach_dialogues``). The bytes are the same on every call (UTF-8, one JSON
    object per line, ``\\n`` endings), so dataset digests are stable. Each file is written
    atomically. Raises ``OSError`` if the directory cannot be written.
    """
    out = Path(directory)
    coach_train, coach_eval = coach_split()
    quotes_train, quotes_eval = quotes_split()
    files: dict[str, tuple[str, list[dict[str, str]]]] = {
        "coach": ("coach_prompts.jsonl", [{"prompt": p} for p in COACH_PROMPTS]),
        "quotes": ("quotes.jsonl", [{"quote": q} for q in QUOTES]),
        "coach_train": ("coach_train.jsonl", [{"text": p} for p in coach_train]),
        "coach_eval": ("coach_eval.jsonl", [{"text": p} for p in coach_eval]),
        "quotes_train": ("quotes_train.jsonl", [{"text": q} for q in quotes_train]),
        "quotes_eval": ("quotes_eval.jsonl", [{"text": q} for q in quotes_eval]),
        "coach_dialogues": (
            "coach_dialogues.jsonl",
            [{"prompt": p, "completion": c} for p, c in COACH_DIALOGUES],
        ),
    }
    paths: dict[str, Path] = {}
    for key, (name, records) in files.items():
        path = out / name
        atomic_write_bytes(path, _jsonl(records))
        paths[key] = path
    return paths


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
    ids = dict(
        bos_token_id=special_ids["bos"],
        eos_token_id=special_ids["eos"],
        pad_token_id=special_ids["pad"],
    )
    if arch == "bloom":
        from transformers import BloomConfig

        return BloomConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            n_layer=num_layers,
            n_head=num_heads,
            initializer_range=scale,
            **ids,
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
            **ids,
        )
    if arch == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 2,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads or num_heads,
            max_position_embeddings=256,
            tie_word_embeddings=True,
            initializer_range=scale,
            **ids,
        )
    if arch == "t5":
        from transformers import T5Config

        return T5Config(
            vocab_size=vocab_size,
            d_model=hidden_size,
            d_kv=hidden_size // num_heads,
            d_ff=hidden_size * 2,
            num_layers=num_layers,
            num_decoder_layers=num_layers,
            num_heads=num_heads,
            decoder_start_token_id=special_ids["pad"],
            # T5 scales its init by ``initializer_factor``. At the usual 1.0 the tiny model (whose
            # LM head is tied to its input embedding) greedily emits <pad> forever whatever the
            # prompt; 2.0 makes its output depend on the input and the soft prompt. Note that
            # transformers 5 always ties T5's embeddings: ``tie_word_embeddings=False`` there only
            # turns off the decoder-output scaling, so it is not used.
            initializer_factor=scale,
            dropout_rate=0.0,
            **ids,
        )
    raise UsageError(
        f"unknown toy architecture {arch!r}", hint=f"choose one of {', '.join(ARCHITECTURES)}"
    )


def _model_class(arch: str) -> Any:
    import transformers

    names = {
        "bloom": "BloomForCausalLM",
        "gpt2": "GPT2LMHeadModel",
        "llama": "LlamaForCausalLM",
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
) -> Path:
    """Build a tiny base model with seeded random weights and save it with its tokenizer.

    ``arch`` is one of :data:`ARCHITECTURES`: ``bloom`` (``BloomForCausalLM``), ``gpt2``
    (``GPT2LMHeadModel``), ``llama`` (``LlamaForCausalLM``, tied embeddings) or ``t5``
    (``T5ForConditionalGeneration``, the encoder-decoder). The weights come from the model's own
    initialisation under ``torch.manual_seed(seed)``: the same arguments give the same tensors
    (and the same ``model.safetensors`` bytes); another seed gives the same shapes with different
    values, which is what embedding-fingerprint tests need. ``init_range`` is the init scale
    (``initializer_range``, or ``initializer_factor`` for t5); the default is a per-architecture
    value larger than the library's 0.02, so that the untrained model's output depends on its
    context and different soft prompts give different greedy generations. ``num_kv_heads``
    (llama only) makes a grouped-query-attention model; PEFT sizes prefix-tuning tensors by the
    key/value heads, not the width, on such models.

    ``pretrain_steps > 0`` trains the whole model (AdamW, lr 3e-3, batch 16, seeded) on
    ``pretrain_texts`` (default :data:`PRETRAIN_SENTENCES`, which leaves out the held-out rows)
    before saving, so that it writes readable, memorised English instead of byte noise: useful
    for a demo that prints generations. It costs about 35 ms per step for the default bloom on
    two CPU cores (300 steps: about 11 s, loss about 0.1); the fixtures leave it at 0.

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
    if num_kv_heads is not None and (arch != "llama" or num_kv_heads <= 0 or num_heads % num_kv_heads):
        raise UsageError(
            f"num_kv_heads={num_kv_heads} needs arch='llama' and must divide num_heads {num_heads}",
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
            encoded = _encode_examples(texts, tokenizer, seq2seq=arch == "t5", max_length=128)
            with quiet():
                _train(
                    model,
                    encoded,
                    pad_id=tokenizer.pad_token_id,
                    seq2seq=arch == "t5",
                    steps=pretrain_steps,
                    lr=3e-3,
                    batch_size=16,
                    seed=seed,
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
            num_virtual_tokens=num_virtual_tokens,
            prompt_tuning_init=init,
            prompt_tuning_init_text=init_text if init == "TEXT" else None,
            tokenizer_name_or_path=base,
            base_model_name_or_path=base,
        )
    if peft_type == "P_TUNING":
        return peft.PromptEncoderConfig(
            task_type=task_type,
            num_virtual_tokens=num_virtual_tokens,
            encoder_hidden_size=encoder_hidden_size,
            base_model_name_or_path=base,
        )
    if peft_type == "PREFIX_TUNING":
        return peft.PrefixTuningConfig(
            task_type=task_type,
            num_virtual_tokens=num_virtual_tokens,
            prefix_projection=prefix_projection,
            encoder_hidden_size=encoder_hidden_size,
            base_model_name_or_path=base,
        )
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


def _encode_examples(
    examples: Sequence[Example], tokenizer: Any, *, seq2seq: bool, max_length: int
) -> list[tuple[list[int], list[int]]]:
    """Turn examples into ``(input_ids, labels)`` pairs (labels -100 where no loss is taken).

    Causal LM: plain text is learned whole (``text + eos``); a prompt/completion pair is
    ``prompt + completion + eos`` with the prompt masked. Seq2seq: the input is the text (or
    prompt) plus eos, the labels are the text (or completion) plus eos.
    """
    eos = tokenizer.eos_token_id
    encoded: list[tuple[list[int], list[int]]] = []
    for ex in examples:
        if isinstance(ex, str):
            prompt, completion = None, ex
        elif isinstance(ex, tuple) and len(ex) == 2:
            prompt, completion = ex
        elif isinstance(ex, Mapping) and "text" in ex:
            prompt, completion = None, ex["text"]
        elif isinstance(ex, Mapping) and "prompt" in ex and "completion" in ex:
            prompt, completion = ex["prompt"], ex["completion"]
        else:
            raise UsageError(
                f"cannot use example {ex!r:.80}",
                hint="give a string, {'text': ...}, {'prompt': ..., 'completion': ...} or (prompt, completion)",
            )
        target = tokenizer(completion, add_special_tokens=False)["input_ids"] + [eos]
        if seq2seq:
            source = tokenizer(prompt if prompt is not None else completion, add_special_tokens=False)["input_ids"]
            encoded.append(((source + [eos])[:max_length], target[:max_length]))
        else:
            head = [] if prompt is None else tokenizer(prompt, add_special_tokens=False)["input_ids"]
            ids = (head + target)[:max_length]
            labels = ([-100] * len(head) + target)[:max_length]
            encoded.append((ids, labels))
    if not encoded:
        raise UsageError("no examples given", hint="pass at least one text")
    return encoded


def _batch(
    items: Sequence[tuple[list[int], list[int]]], pad_id: int, *, seq2seq: bool
) -> dict[str, torch.Tensor]:
    """Right-pad a batch into tensors (pad positions: attention 0, label -100)."""
    import torch

    if seq2seq:
        n_in = max(len(i) for i, _ in items)
        n_out = max(len(lab) for _, lab in items)
        ids = [i + [pad_id] * (n_in - len(i)) for i, _ in items]
        mask = [[1] * len(i) + [0] * (n_in - len(i)) for i, _ in items]
        labels = [lab + [-100] * (n_out - len(lab)) for _, lab in items]
    else:
        n = max(len(i) for i, _ in items)
        ids = [i + [pad_id] * (n - len(i)) for i, _ in items]
        mask = [[1] * len(i) + [0] * (n - len(i)) for i, _ in items]
        labels = [lab + [-100] * (n - len(lab)) for _, lab in items]
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "attention_mask": torch.tensor(mask, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
    }


def _train(
    model: Any,
    encoded: Sequence[tuple[list[int], list[int]]],
    *,
    pad_id: int,
    seq2seq: bool,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> list[float]:
    """A plain AdamW loop over shuffled batches for ``steps`` optimizer steps; returns the losses."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    order_rng = random.Random(seed)
    order: list[int] = []
    losses: list[float] = []
    model.train()
    for _ in range(steps):
        if len(order) < batch_size:
            epoch = list(range(len(encoded)))
            order_rng.shuffle(epoch)
            order.extend(epoch)
        take, order = order[:batch_size], order[batch_size:]
        batch = _batch([encoded[i] for i in take], pad_id, seq2seq=seq2seq)
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    model.eval()
    return losses


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
        encoded = _encode_examples(dataset or [], tokenizer, seq2seq=arch == "t5", max_length=max_length)
        with quiet():
            _train(
                peft_model,
                encoded,
                pad_id=tokenizer.pad_token_id,
                seq2seq=arch == "t5",
                steps=train_steps,
                lr=lr,
                batch_size=batch_size,
                seed=seed,
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
    import torch

    base = Path(base_dir)
    seq2seq = _arch_of(base) == "t5"
    tokenizer = load_tokenizer(base)
    encoded = _encode_examples(texts, tokenizer, seq2seq=seq2seq, max_length=max_length)
    model = load_model(base, adapter_dir)
    total, count = 0.0, 0
    with torch.no_grad(), quiet():
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            batch = _batch(chunk, tokenizer.pad_token_id, seq2seq=seq2seq)
            # model(...).loss is already a per-token mean over the batch; weight it back up so the
            # final figure is a mean over all tokens. Causal LMs shift labels by one position.
            labels = batch["labels"]
            n = int((labels[:, 1:] if not seq2seq else labels).ne(-100).sum())
            if n == 0:
                continue
            loss = model(**batch).loss
            total += float(loss) * n
            count += n
    if count == 0:
        raise UsageError("the examples have no target tokens to score", hint="pass longer texts")
    return total / count


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
    import torch

    base = Path(base_dir)
    seq2seq = _arch_of(base) == "t5"
    tokenizer = load_tokenizer(base)
    model = load_model(base, adapter_dir)
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    if enc["input_ids"].shape[1] == 0:
        # A causal LM needs at least one input position; start an empty prompt from <s>.
        enc = {
            "input_ids": torch.tensor([[tokenizer.bos_token_id]]),
            "attention_mask": torch.tensor([[1]]),
        }
    with torch.no_grad(), quiet():
        out = model.generate(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            max_new_tokens=max_new_tokens,
            do_sample=False,
            repetition_penalty=repetition_penalty,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    new = out[0] if seq2seq else out[0, enc["input_ids"].shape[1] :]
    return str(tokenizer.decode(new, skip_special_tokens=True))
