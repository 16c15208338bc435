"""Base-model identity without loading weights.

A base model is named by ``--base-model DIR|REPO[@REV]``. Its identity is what can be learned
without reading its weights:

- ``config.json``: architecture, model type, widths, and a digest of the config (volatile keys such
  as ``transformers_version`` left out);
- the safetensors header(s) (one file, or every shard of ``model.safetensors.index.json``): every
  weight tensor's name and shape, which is what LoRA target and shape checks need;
- the tokenizer digest: sha256 of the ``sha256sum``-style listing of the tokenizer files present
  (:data:`TOKENIZER_FILES`; ``tokenizer_config.json`` is left out because every transformers release
  rewrites it without changing how text is tokenized);
- the **embedding fingerprint** (:mod:`registry.adapters.fingerprint`): sha256 over a scheme tag,
  the input-embedding matrix's shape, and a fixed strided sample of rows read by byte offset.

From a local directory everything is read from disk, and the fingerprint and tokenizer-file digests
are cached per ``(path, size, mtime)`` under ``$SPR_HOME/cache/``. From a Hub repo ``REPO[@REV]``
the revision is pinned to its commit sha, ``config.json`` and the tokenizer files' digests come from
the Hub's metadata (LFS oids) or small downloads, and the safetensors headers and fingerprint rows
are read with HTTP range requests: no weight file is downloaded. That remote reading lives in the
Hub room (:mod:`registry.hub.remote_base`, on the one Hub client); :func:`identify` and
:func:`inspect` call into it, imported inside the function, for a ``REPO[@REV]`` spec. This module
keeps local reading and the pieces both share (config facts, shard indexes, finding the embedding).

:func:`identify` returns the catalogue's :class:`~registry.types.BaseModelInfo`; :func:`inspect`
returns :class:`BaseModelFacts`, which adds what compatibility checks need (the raw config, every
weight tensor's shape) and how many bytes of weight files were read.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.adapters.fingerprint import (
    FINGERPRINT_ROWS,
    FINGERPRINT_SCHEME,
    ROW_DTYPES,
    cached_file_sha256,
    cached_local_fingerprint,
    embedding_fingerprint,
    fingerprint_of_rows,
    rows_to_f32_bytes,
    sample_row_indices,
)
from registry.adapters.tensorfile import SafetensorsHeader, TensorInfo, read_header
from registry.digest import PREFIX, canonical_json, parse_json_object, sha256_bytes
from registry.errors import InvalidAdapterError, InvalidBaseModelError
from registry.types import AdapterFacts, BaseModelInfo

MAX_CONFIG_BYTES = 5_000_000
MAX_INDEX_BYTES = 50_000_000
MAX_TOKENIZER_DOWNLOAD = 100_000_000
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
# Checkpoint files that are pickles (torch.save): never read, only named when refusing a base.
PICKLED_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Files whose bytes decide how text becomes token ids. tokenizer_config.json is left out on purpose:
# transformers rewrites it on every save (new keys, reordered fields) without changing the vocabulary.
TOKENIZER_FILES = (
    "added_tokens.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "special_tokens_map.json",
    "spiece.model",
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
)
# Input-embedding tensor names, most specific first. Matched as a whole name or as a dotted suffix,
# so "transformer.word_embeddings.weight" and a bare "word_embeddings.weight" (a headless save) both hit.
EMBEDDING_NAMES = (
    "word_embeddings.weight",  # bloom, bert, falcon
    "wte.weight",  # gpt2, gpt-j, codegen
    "embed_tokens.weight",  # llama, mistral, qwen, opt, bart decoder
    "shared.weight",  # t5, bart (shared encoder/decoder embedding)
    "embed_in.weight",  # gpt-neox, pythia
    "tok_embeddings.weight",  # original llama checkpoints
    "word_embeddings_layernorm.weight",  # never the embedding; listed so it is not mistaken for one
)
_NOT_EMBEDDINGS = {"word_embeddings_layernorm.weight"}
_HF_CACHE_SNAPSHOT = re.compile(r"(?:^|/)models--([^/]+?)--([^/]+)/snapshots/([0-9a-f]{40})(?:/|$)")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(?:/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?\Z")


@dataclass(frozen=True)
class BaseModelFacts:
    """A base model's identity plus what compatibility checks need beyond it.

    ``info`` is the identity the catalogue records. ``config`` is the parsed ``config.json`` (an
    in-memory model's ``config.to_dict()``). ``tensors`` maps every weight tensor name to its shape
    (from the safetensors headers, or an in-memory model's parameters); ``None`` when unknown.
    ``embedding_tensor`` names the tensor the fingerprint was taken from. ``bytes_read`` counts the
    bytes read from weight files (headers and sampled rows), the figure that shows no weights
    were loaded.
    """

    info: BaseModelInfo
    config: Mapping[str, Any] = field(default_factory=dict)
    tensors: Mapping[str, tuple[int, ...]] | None = None
    embedding_tensor: str | None = None
    bytes_read: int = 0

    @property
    def module_names(self) -> frozenset[str]:
        """Every module that owns a weight, from the tensor names (``a.b.weight`` -> ``a.b``)."""
        if not self.tensors:
            return frozenset()
        return frozenset(name.rsplit(".", 1)[0] for name in self.tensors if "." in name)


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def identify(spec: str, *, resolve_remote: bool = True) -> BaseModelInfo:
    """Identify the base model named by ``spec``: a local directory, or ``REPO[@REV]``.

    Returns the identity the catalogue records. For a Hub repo, ``resolve_remote=False`` skips the
    network and returns only the name and the revision as given (what the adapter claims).
    Raises :class:`InvalidBaseModelError` for a spec that is neither, :class:`NotFoundError` for a
    repo or revision the Hub does not have, and :class:`HubError` when the Hub cannot be reached.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        return from_directory(path)
    name, revision = parse_repo_spec(spec)
    if not resolve_remote:
        return BaseModelInfo(name=name, revision=revision, source="hub")
    from registry.hub import remote_base  # the Hub room reads remote bases through its one client

    return remote_base.inspect_base(name, revision).info


def inspect(spec: str) -> BaseModelFacts:
    """Identity and tensor shapes of the base model named by ``spec`` (a directory or ``REPO[@REV]``).

    Raises as :func:`identify`.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        return inspect_directory(path)
    name, revision = parse_repo_spec(spec)
    from registry.hub import remote_base  # the Hub room reads remote bases through its one client

    return remote_base.inspect_base(name, revision)


def parse_repo_spec(spec: str) -> tuple[str, str | None]:
    """Split ``REPO[@REV]``; raise :class:`InvalidBaseModelError` when it is not a repo id."""
    name, _, revision = spec.partition("@")
    if not _REPO_ID.match(name) or ".." in name or (revision and not re.fullmatch(r"[A-Za-z0-9._/-]{1,200}", revision)):
        looks_like_path = spec.startswith((".", "/", "~")) or (os.sep in spec and not _REPO_ID.match(name))
        raise InvalidBaseModelError(
            f"base model {spec!r} is neither a local directory nor a Hub repo id 'ns/name[@revision]'"
            + (" (no such directory)" if looks_like_path else ""),
            hint="pass the directory that holds config.json, or a repo id such as bigscience/bloomz-560m",
        )
    return name, revision or None


def from_directory(path: Path) -> BaseModelInfo:
    """Identity of the base model saved in ``path`` (config, tokenizer digest, embedding fingerprint)."""
    return inspect_directory(path).info


def inspect_directory(path: Path) -> BaseModelFacts:
    """Everything :class:`BaseModelFacts` holds, read from a local directory without loading weights.

    Reads ``config.json``, the safetensors header(s), the tokenizer files' digests (cached) and the
    fingerprint rows (cached). A directory with no weight files at all still yields the config
    facts, with no fingerprint and no tensor shapes. Raises :class:`InvalidBaseModelError` for a
    missing or malformed config, index or header, and for a directory whose only weights are
    pickled (``pytorch_model.bin``: convert it to safetensors).
    """
    path = Path(path).expanduser()
    root = path.resolve()
    config = read_config(root)
    name, revision = _name_and_revision(root)
    reader = _LocalReader(root)
    headers = _local_headers(root, reader)
    tensors = tensor_shapes(headers)
    fingerprint = None
    emb_name = None
    if headers:
        located = find_embedding(headers, config)
        if located is not None:
            file_name, emb_info = located
            emb_name = emb_info.name
            fingerprint = cached_local_fingerprint(root / file_name, emb_info, reader.count)
    info = BaseModelInfo(
        name=name,
        revision=revision,
        source="local",
        embedding_fingerprint=fingerprint,
        tokenizer_digest=_local_tokenizer_digest(root),
        **config_facts(config),
    )
    return BaseModelFacts(info=info, config=config, tensors=tensors, embedding_tensor=emb_name, bytes_read=reader.bytes_read)


def from_adapter(facts: AdapterFacts) -> BaseModelInfo | None:
    """What the adapter itself says about its base model (unverified)."""
    if not facts.base_model_name_or_path:
        return None
    return BaseModelInfo(
        name=facts.base_model_name_or_path,
        revision=facts.base_model_revision,
        hidden_size=facts.token_dim if facts.peft_type != "PREFIX_TUNING" else None,
        source="adapter_config",
    )


def from_model(model: Any) -> BaseModelFacts:
    """Identity of an in-memory transformers model, with the same fingerprint algorithm.

    The config facts come from ``model.config.to_dict()``; the fingerprint from the rows of
    ``model.get_input_embeddings().weight``; tensor shapes from ``named_parameters()``. The config
    digest is left unset: a config object re-serialised by another transformers release differs
    from the ``config.json`` it was read from, so comparing digests would refuse good pairs; the
    structural fields (widths, layers, heads, vocabulary) are compared instead. Does not import torch
    (the model's own tensor methods are used). Raises :class:`InvalidBaseModelError` for an object
    that is not a transformers model.
    """
    config_obj = getattr(model, "config", None)
    if config_obj is None or not hasattr(config_obj, "to_dict") or not hasattr(model, "get_input_embeddings"):
        raise InvalidBaseModelError(
            f"expected a transformers model (with .config and get_input_embeddings()), found {type(model).__name__}",
            hint="pass a model loaded with transformers' from_pretrained(), or the directory it was saved to",
        )
    config = config_obj.to_dict()
    if not config.get("architectures"):
        config["architectures"] = [type(model).__name__]
    facts = config_facts(config)
    facts["config_digest"] = None
    embeddings = model.get_input_embeddings()
    weight = getattr(embeddings, "weight", None)
    fingerprint = None
    if weight is not None and len(weight.shape) == 2:
        rows = sample_row_indices(int(weight.shape[0]))
        sample = weight.detach()[rows].float().cpu().numpy()
        fingerprint = fingerprint_of_rows((int(weight.shape[0]), int(weight.shape[1])), sample)
    name_or_path = str(getattr(config_obj, "name_or_path", "") or getattr(config_obj, "_name_or_path", "") or type(model).__name__)
    name, revision = name_or_path, None
    m = _HF_CACHE_SNAPSHOT.search(name_or_path.replace(os.sep, "/"))
    if m:
        name, revision = f"{m.group(1)}/{m.group(2)}", m.group(3)
    info = BaseModelInfo(
        name=name,
        revision=revision,
        source="memory",
        embedding_fingerprint=fingerprint,
        tokenizer_digest=None,
        **facts,
    )
    tensors = {n: tuple(int(d) for d in p.shape) for n, p in model.named_parameters()}
    emb_name = next((n for n, p in model.named_parameters() if p is weight), None)
    return BaseModelFacts(info=info, config=config, tensors=tensors, embedding_tensor=emb_name, bytes_read=0)


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


def read_config(path: Path) -> dict[str, Any]:
    """Parse ``path/config.json`` (bounded size); raise :class:`InvalidBaseModelError` when unusable."""
    config_path = path / "config.json"
    if not config_path.is_file():
        raise InvalidBaseModelError(
            f"base model directory {path} has no config.json",
            hint="pass the directory that save_pretrained() wrote for the base model",
        )
    if config_path.stat().st_size > MAX_CONFIG_BYTES:
        raise InvalidBaseModelError(f"{config_path} is too large to be a model config", hint="check the path")
    return parse_config_bytes(config_path.read_bytes(), str(config_path))


def parse_config_bytes(data: bytes, where: str) -> dict[str, Any]:
    """``config.json`` bytes parsed into a dict; raise :class:`InvalidBaseModelError` when malformed."""
    return parse_json_object(data, where, InvalidBaseModelError, hint="re-save the base model")


def config_facts(config: Mapping[str, Any]) -> dict[str, Any]:
    """Architecture facts from a transformers config dict (any model family)."""
    nested = config.get("text_config")
    text_config: Mapping[str, Any] = nested if isinstance(nested, dict) else config

    def first(*keys: str) -> int | None:
        for key in keys:
            value = text_config.get(key, config.get(key))
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return None

    architectures = config.get("architectures")
    return {
        "architecture": architectures[0] if isinstance(architectures, list) and architectures and isinstance(architectures[0], str) else None,
        "model_type": config.get("model_type") if isinstance(config.get("model_type"), str) else None,
        "hidden_size": first("hidden_size", "n_embd", "d_model", "n_embed", "dim"),
        "vocab_size": first("vocab_size"),
        "num_layers": first("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
        "num_heads": first("num_attention_heads", "n_head", "num_heads", "n_heads"),
        "is_encoder_decoder": bool(config.get("is_encoder_decoder", False)),
        "config_digest": PREFIX + sha256_bytes(canonical_json(_identity_config(config))),
    }


def _identity_config(config: Mapping[str, Any]) -> dict[str, Any]:
    # Keys that change with the transformers version or the path it was saved from, not the model.
    volatile = {"transformers_version", "_name_or_path", "torch_dtype", "dtype", "_commit_hash", "use_cache"}
    return {k: v for k, v in config.items() if k not in volatile}


def _name_and_revision(root: Path) -> tuple[str, str | None]:
    # A directory inside the huggingface_hub cache (models--ns--name/snapshots/<sha>) is a known
    # repo at a known commit: record it that way so it matches the same model identified remotely.
    m = _HF_CACHE_SNAPSHOT.search(root.as_posix())
    if m:
        return f"{m.group(1)}/{m.group(2)}", m.group(3)
    return str(root), None


# ---------------------------------------------------------------------------------------------
# Safetensors headers and the embedding tensor
# ---------------------------------------------------------------------------------------------


class _LocalReader:
    """Counts the bytes read from weight files, the figure the benchmark reports."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bytes_read = 0
        self._lock = threading.Lock()

    def header(self, path: Path, where: str) -> SafetensorsHeader:
        header = read_header(path, where=where)
        with self._lock:
            self.bytes_read += 8 + header.header_length
        return header

    def count(self, n: int) -> None:
        with self._lock:
            self.bytes_read += n


def require_safetensors(path: Path) -> None:
    """Refuse a base-model directory that has no safetensors weights.

    Loading weights (transformers' ``from_pretrained``) needs ``model.safetensors`` or
    ``model.safetensors.index.json``: a pickled checkpoint (``pytorch_model.bin``) is never loaded,
    because unpickling runs whatever code the file names. Raises :class:`InvalidBaseModelError`
    naming the fix (convert to safetensors).
    """
    root = Path(path).expanduser()
    if (root / WEIGHTS_FILE).is_file() or (root / WEIGHTS_INDEX).is_file():
        return
    raise _no_safetensors_error(root, _pickled_weight_files(root))


def _pickled_weight_files(root: Path) -> list[str]:
    try:
        return sorted(p.name for p in root.iterdir() if p.suffix in PICKLED_WEIGHT_SUFFIXES and p.is_file())
    except OSError:
        return []


def _no_safetensors_error(root: Path, pickled: Sequence[str]) -> InvalidBaseModelError:
    found = f"only pickled weights ({', '.join(pickled[:3])}{', …' if len(pickled) > 3 else ''})" if pickled else "no weights"
    return InvalidBaseModelError(
        f"base model directory {root} has no safetensors weights ({WEIGHTS_FILE} or {WEIGHTS_INDEX}), {found}; "
        "spr never unpickles a checkpoint",
        hint="convert it to safetensors: load it once in a trusted environment and "
        "save_pretrained(DIR, safe_serialization=True), then pass DIR",
    )


def _local_headers(root: Path, reader: _LocalReader) -> dict[str, SafetensorsHeader]:
    """Headers of the weight files, keyed by file name relative to ``root``.

    Returns ``{}`` for a directory with no weight files at all (its config facts still identify
    it); raises :class:`InvalidBaseModelError` for one whose only weights are pickled: its
    identity (fingerprint, tensor shapes) cannot be read without unpickling, and saying so beats
    a verification that silently checks less.
    """
    index = root / WEIGHTS_INDEX
    single = root / WEIGHTS_FILE
    try:
        if index.is_file():
            if index.stat().st_size > MAX_INDEX_BYTES:
                raise InvalidBaseModelError(f"{index} is too large to be a shard index", hint="check the directory")
            shards = shards_from_index(index.read_bytes(), str(index))
            headers = {}
            for shard in shards:
                shard_path = _inside(root, shard, str(index))
                if not shard_path.is_file():
                    raise InvalidBaseModelError(
                        f"{index} names shard {shard!r}, which is missing from {root}",
                        hint="download every shard of the base model",
                    )
                headers[shard] = reader.header(shard_path, str(shard_path))
            return headers
        if single.is_file():
            return {WEIGHTS_FILE: reader.header(single, str(single))}
    except InvalidAdapterError as exc:  # tensorfile speaks of adapters; this is the base model
        raise InvalidBaseModelError(exc.message, hint=exc.hint) from None
    pickled = _pickled_weight_files(root)
    if pickled:
        raise _no_safetensors_error(root, pickled)
    return {}


def shards_from_index(data: bytes, where: str) -> list[str]:
    """The shard file names of a ``model.safetensors.index.json`` (names checked: no ``..``, no absolute)."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, huge ints
        raise InvalidBaseModelError(f"{where} is not valid JSON", hint="re-download the base model") from None
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise InvalidBaseModelError(f"{where}: expected a 'weight_map' of tensor name -> shard file", hint="re-download the base model")
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        if not re.fullmatch(r"[A-Za-z0-9._-][A-Za-z0-9._/-]{0,199}", shard) or ".." in shard.split("/"):
            raise InvalidBaseModelError(f"{where}: refusing unsafe shard name {shard[:100]!r}", hint="re-download the base model")
    return shards


def _inside(root: Path, rel: str, where: str) -> Path:
    path = (root / rel).resolve()
    if root not in path.parents:
        raise InvalidBaseModelError(f"{where}: shard {rel!r} resolves outside {root}", hint="re-download the base model")
    return path


def tensor_shapes(headers: Mapping[str, SafetensorsHeader]) -> dict[str, tuple[int, ...]] | None:
    """Every tensor name -> shape across ``headers``; None when there are none."""
    if not headers:
        return None
    shapes: dict[str, tuple[int, ...]] = {}
    for header in headers.values():
        for name, t in header.tensors.items():
            shapes[name] = t.shape
    return shapes


def find_embedding(
    headers: Mapping[str, SafetensorsHeader], config: Mapping[str, Any]
) -> tuple[str, TensorInfo] | None:
    """The input-embedding tensor: ``(file name, tensor info)``, or None when no candidate fits.

    Looks for the known names (:data:`EMBEDDING_NAMES`) as whole names or dotted suffixes, prefers
    the shortest full name (``shared.weight`` over ``encoder.embed_tokens.weight``), and requires a
    2-D tensor whose width is the config's hidden size and whose row count is at least its
    vocabulary size where those are known. When the input embedding is tied to the output layer
    and only ``lm_head.weight`` was saved, that tensor is used.
    """
    facts = config_facts(config)
    hidden, vocab = facts["hidden_size"], facts["vocab_size"]

    def fits(t: TensorInfo) -> bool:
        if len(t.shape) != 2 or t.dtype not in ROW_DTYPES or t.shape[0] == 0:
            return False
        return hidden is None or t.shape[1] == hidden

    candidates: list[tuple[int, int, str, str, TensorInfo]] = []
    for file_name, header in headers.items():
        for name, t in header.tensors.items():
            for suffix in EMBEDDING_NAMES:
                if suffix in _NOT_EMBEDDINGS:
                    continue
                if (name == suffix or name.endswith("." + suffix)) and fits(t):
                    # Decoder-side copies ("decoder.embed_tokens") rank after the encoder/shared one.
                    penalty = 1 if f".{name}".find(".decoder.") >= 0 else 0
                    if vocab is not None and t.shape[0] != vocab:
                        penalty += 2
                    candidates.append((penalty, len(name), name, file_name, t))
                    break
    if candidates:
        candidates.sort(key=lambda c: (c[0], c[1], c[2]))
        _, _, _, file_name, info = candidates[0]
        return file_name, info
    tied = config.get("tie_word_embeddings", True)
    if tied:
        for file_name, header in headers.items():
            for name, t in header.tensors.items():
                if (name == "lm_head.weight" or name.endswith(".lm_head.weight")) and fits(t):
                    return file_name, t
    return None


# ---------------------------------------------------------------------------------------------
# Tokenizer digest
# ---------------------------------------------------------------------------------------------


def tokenizer_digest_of(listing: Mapping[str, str]) -> str | None:
    """``sha256:<hex>`` of the ``sha256sum``-style listing of ``{file name: sha256}``; None when empty."""
    if not listing:
        return None
    text = "".join(f"{listing[name]}  {name}\n" for name in sorted(listing))
    return PREFIX + sha256_bytes(text.encode("utf-8"))


def _local_tokenizer_digest(root: Path) -> str | None:
    listing = {}
    for name in TOKENIZER_FILES:
        path = root / name
        if path.is_file():
            listing[name] = cached_file_sha256(path)
    return tokenizer_digest_of(listing)


__all__: Sequence[str] = (
    "FINGERPRINT_ROWS",
    "FINGERPRINT_SCHEME",
    "MAX_CONFIG_BYTES",
    "MAX_INDEX_BYTES",
    "MAX_TOKENIZER_DOWNLOAD",
    "TOKENIZER_FILES",
    "WEIGHTS_FILE",
    "WEIGHTS_INDEX",
    "BaseModelFacts",
    "config_facts",
    "embedding_fingerprint",
    "find_embedding",
    "fingerprint_of_rows",
    "from_adapter",
    "from_directory",
    "from_model",
    "identify",
    "inspect",
    "inspect_directory",
    "parse_config_bytes",
    "parse_repo_spec",
    "read_config",
    "require_safetensors",
    "rows_to_f32_bytes",
    "sample_row_indices",
    "shards_from_index",
    "tensor_shapes",
    "tokenizer_digest_of",
)
