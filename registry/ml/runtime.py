"""The ML runtime: devices, library versions, quiet loading, base models (local or downloaded), the eval loss.

Everything here needs torch/transformers, imported inside the functions, so importing this module
stays cheap; :func:`require_ml` names the missing extra before anything heavy is attempted.
"""

from __future__ import annotations

import contextlib
import importlib.util
import platform
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from registry import settings
from registry.errors import DependencyMissingError, HubError, InvalidBaseModelError, UsageError
from registry.ml.data import IGNORE_INDEX, Encoded, pad_batch
from registry.types import BaseModelInfo

__all__ = [
    "describe_device",
    "library_versions",
    "load_base_model",
    "mean_token_loss",
    "quiet",
    "require_ml",
    "select_device",
]


def require_ml() -> None:
    """Raise :class:`DependencyMissingError` unless torch, transformers and peft are installed."""
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
        source = str(path.resolve()) if path.is_dir() else _download_base(spec, info)
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


_require_ml = require_ml  # the name evaluation and older callers use
