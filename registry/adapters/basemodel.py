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
- the **embedding fingerprint** (:func:`embedding_fingerprint`): sha256 over a scheme tag, the
  input-embedding matrix's shape, and a fixed strided sample of :data:`FINGERPRINT_ROWS` rows,
  read by byte offset (about 1 MB of a 1 GB matrix). The rows are hashed as little-endian float32:
  fp16 and bf16 values widen to float32 exactly, so a checkpoint stored in bf16 and the same model
  loaded into memory as float32 have the same fingerprint, while any change of a sampled value
  (other weights, a resized vocabulary, a lossy cast) changes it.

From a local directory everything is read from disk, and the fingerprint and tokenizer-file digests
are cached per ``(path, size, mtime)`` under ``$SPR_HOME/cache/``. From a Hub repo ``REPO[@REV]``
the revision is pinned to its commit sha, ``config.json`` and the tokenizer files' digests come from
the Hub's metadata (LFS oids) or small downloads, and the safetensors headers and fingerprint rows
are read with HTTP range requests: no weight file is downloaded. The endpoint is always passed
explicitly (``registry.settings.hub_endpoint()``), never taken from what ``huggingface_hub`` read
at import time.

:func:`identify` returns the catalogue's :class:`~registry.types.BaseModelInfo`; :func:`inspect`
returns :class:`BaseModelFacts`, which adds what compatibility checks need (the raw config, every
weight tensor's shape) and how many bytes of weight files were read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

from registry import settings
from registry.adapters.tensorfile import (
    ITEMSIZE,
    MAX_HEADER_BYTES,
    SafetensorsHeader,
    TensorInfo,
    parse_header_bytes,
    read_header,
)
from registry.digest import (
    PREFIX,
    canonical_json,
    parse_json_object,
    sha256_bytes,
    sha256_file,
)
from registry.errors import (
    HubError,
    InvalidAdapterError,
    InvalidBaseModelError,
    NotFoundError,
)
from registry.storage.local import atomic_write_bytes
from registry.types import AdapterFacts, BaseModelInfo

MAX_CONFIG_BYTES = 5_000_000
MAX_INDEX_BYTES = 50_000_000
MAX_TOKENIZER_DOWNLOAD = 100_000_000
FINGERPRINT_ROWS = 256
# Over HTTP, rows closer than this are fetched in one request (bounded waste: 255 gaps at most).
REMOTE_MAX_GAP = 16_384
FINGERPRINT_SCHEME = "spr-embedding-fingerprint/v1"
CACHE_VERSION = 1
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
    return from_hub(name, revision).info


def inspect(spec: str) -> BaseModelFacts:
    """Identity and tensor shapes of the base model named by ``spec`` (a directory or ``REPO[@REV]``).

    Raises as :func:`identify`.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        return inspect_directory(path)
    name, revision = parse_repo_spec(spec)
    return from_hub(name, revision)


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
    tensors = _tensor_shapes(headers)
    fingerprint = None
    emb_name = None
    if headers:
        located = find_embedding(headers, config)
        if located is not None:
            file_name, info = located
            emb_name = info.name
            fingerprint = _cached_local_fingerprint(root / file_name, info, reader)
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
    return _parse_config(config_path.read_bytes(), str(config_path))


def _parse_config(data: bytes, where: str) -> dict[str, Any]:
    return parse_json_object(data, where, InvalidBaseModelError, hint="re-save the base model")


def config_facts(config: Mapping[str, Any]) -> dict[str, Any]:
    """Architecture facts from a transformers config dict (any model family)."""
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else config

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
            shards = _shards_from_index(index.read_bytes(), str(index))
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


def _shards_from_index(data: bytes, where: str) -> list[str]:
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


def _tensor_shapes(headers: Mapping[str, SafetensorsHeader]) -> dict[str, tuple[int, ...]] | None:
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
        if len(t.shape) != 2 or t.dtype not in _ROW_DTYPES or t.shape[0] == 0:
            return False
        return hidden is None or t.shape[1] == hidden

    candidates: list[tuple[int, int, str, str, TensorInfo]] = []
    for file_name, header in headers.items():
        for name, t in header.tensors.items():
            for rank, suffix in enumerate(EMBEDDING_NAMES):
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
# The fingerprint
# ---------------------------------------------------------------------------------------------

_ROW_DTYPES = {"F16", "BF16", "F32", "F64"}


def sample_row_indices(n_rows: int, k: int = FINGERPRINT_ROWS) -> list[int]:
    """The fixed strided sample: ``k`` rows spread evenly from row 0 (all rows when fewer)."""
    if n_rows <= k:
        return list(range(n_rows))
    return [i * n_rows // k for i in range(k)]


def fingerprint_of_rows(shape: tuple[int, int], rows: np.ndarray | Any) -> str:
    """``sha256:<hex>`` over the scheme, the matrix shape and the sampled rows as little-endian float32."""
    import numpy as np

    data = np.ascontiguousarray(rows, dtype="<f4")
    return _fingerprint_of_f32_bytes(shape, len(data), data.tobytes())


def _fingerprint_of_f32_bytes(shape: tuple[int, int], n_rows: int, data: bytes) -> str:
    h = hashlib.sha256()
    h.update(f"{FINGERPRINT_SCHEME}\nshape={shape[0]}x{shape[1]}\nrows={n_rows}\ndtype=F32\n".encode())
    h.update(data)
    return PREFIX + h.hexdigest()


def rows_to_f32_bytes(raw: bytes, dtype: str) -> bytes:
    """Row bytes of a safetensors dtype as little-endian float32 bytes (exact for F16 and BF16).

    F32 and BF16 need no numpy (F32 is already the target; a BF16 value is the upper half of a
    float32), which keeps numpy's import out of ``spr verify`` for most checkpoints.
    """
    if dtype == "F32":
        return raw
    if dtype == "BF16":
        out = bytearray(len(raw) * 2)
        out[2::4] = raw[0::2]
        out[3::4] = raw[1::2]
        return bytes(out)
    import numpy as np

    if dtype == "F16":
        return np.frombuffer(raw, dtype="<f2").astype("<f4").tobytes()
    if dtype == "F64":
        return np.frombuffer(raw, dtype="<f8").astype("<f4").tobytes()
    raise InvalidBaseModelError(f"cannot fingerprint an embedding of dtype {dtype}", hint="re-save the model in float")


def embedding_fingerprint(
    read: Callable[[int, int], bytes], info: TensorInfo, *, threads: int = 1, max_gap: int = 0
) -> str:
    """Fingerprint the embedding ``info``, reading the sampled rows with ``read(offset, length)``.

    Rows closer than ``max_gap`` bytes are fetched in one read (worth it over HTTP, where each
    request costs a round trip; a small vocabulary then takes a handful of requests instead of 256).
    """
    n_rows, width = info.shape
    row_bytes = width * ITEMSIZE[info.dtype]
    offsets = [info.begin + i * row_bytes for i in sample_row_indices(n_rows)]
    spans: list[list[int]] = []  # [start, end] of each read
    for off in offsets:
        if spans and off - spans[-1][1] <= max_gap:
            spans[-1][1] = off + row_bytes
        else:
            spans.append([off, off + row_bytes])

    def fetch(span: list[int]) -> bytes:
        data = read(span[0], span[1] - span[0])
        if len(data) != span[1] - span[0]:
            raise InvalidBaseModelError(
                f"the embedding tensor {info.name!r} is truncated (a read returned {len(data)} of {span[1] - span[0]} bytes)",
                hint="the weight file is incomplete; download it again",
            )
        return data

    if threads > 1 and len(spans) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=threads) as pool:
            blocks = list(pool.map(fetch, spans))
    else:
        blocks = [fetch(span) for span in spans]
    chunks = []
    k = 0
    for (start, end), block in zip(spans, blocks):
        while k < len(offsets) and offsets[k] + row_bytes <= end:
            rel = offsets[k] - start
            chunks.append(block[rel : rel + row_bytes])
            k += 1
    return _fingerprint_of_f32_bytes((n_rows, width), len(chunks), rows_to_f32_bytes(b"".join(chunks), info.dtype))


def _local_fingerprint(path: Path, info: TensorInfo, reader: _LocalReader) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        def read_row(offset: int, length: int) -> bytes:
            data = os.pread(fd, length, offset)
            reader.count(len(data))
            return data

        return embedding_fingerprint(read_row, info)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# Cache: $SPR_HOME/cache/<kind>/<sha256 of key>.json, keyed by (path, size, mtime)
# ---------------------------------------------------------------------------------------------


def _cache_dir(kind: str) -> Path:
    return settings.home() / "cache" / kind


def _stat_key(path: Path, extra: str) -> str:
    st = path.stat()
    return f"v{CACHE_VERSION}\0{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{extra}"


def _cache_get(kind: str, key: str, pattern: str) -> str | None:
    entry = _cache_dir(kind) / (sha256_bytes(key.encode()) + ".json")
    try:
        doc = json.loads(entry.read_bytes()[:10_000])
    except (OSError, ValueError):
        return None
    value = doc.get("value") if isinstance(doc, dict) and doc.get("key") == key else None
    return value if isinstance(value, str) and re.fullmatch(pattern, value) else None


def _cache_put(kind: str, key: str, value: str) -> None:
    directory = _cache_dir(kind)
    try:
        atomic_write_bytes(
            directory / (sha256_bytes(key.encode()) + ".json"), json.dumps({"key": key, "value": value}).encode()
        )
    except OSError:
        pass  # a read-only home only costs the next call a re-read


def _cached_local_fingerprint(path: Path, info: TensorInfo, reader: _LocalReader) -> str:
    key = _stat_key(path, f"{FINGERPRINT_SCHEME}\0{info.name}\0{info.begin}")
    cached = _cache_get("embedding-fingerprint", key, r"sha256:[0-9a-f]{64}")
    if cached is not None:
        return cached
    value = _local_fingerprint(path, info, reader)
    _cache_put("embedding-fingerprint", key, value)
    return value


def _cached_file_sha256(path: Path) -> str:
    key = _stat_key(path, "sha256")
    cached = _cache_get("file-sha256", key, r"[0-9a-f]{64}")
    if cached is not None:
        return cached
    value, _ = sha256_file(path)
    _cache_put("file-sha256", key, value)
    return value


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
            listing[name] = _cached_file_sha256(path)
    return tokenizer_digest_of(listing)


# ---------------------------------------------------------------------------------------------
# Hub: metadata, ranged header reads and ranged fingerprint rows; never a weight download
# ---------------------------------------------------------------------------------------------


def from_hub(repo_id: str, revision: str | None = None, *, endpoint: str | None = None, threads: int = 16) -> BaseModelFacts:
    """Identify ``repo_id`` at ``revision`` (default ``main``) on the Hub without downloading weights.

    Pins the revision to its commit sha; downloads ``config.json``, the shard index and the
    non-LFS tokenizer files (small); reads each safetensors header and the fingerprint rows with
    HTTP range requests. Raises :class:`NotFoundError` for a missing repo or revision,
    :class:`HubError` when the Hub fails or cannot be reached, and
    :class:`InvalidBaseModelError` for malformed files.
    """
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    ep = settings.hub_endpoint(endpoint)
    token = settings.hub_token()
    api = HfApi(endpoint=ep, token=token)
    where = f"{repo_id}@{revision or 'main'} on {ep}"
    try:
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
        commit = info.sha
        if not commit:
            raise HubError(f"{where}: the Hub did not report a commit sha", hint="check the endpoint")
        siblings = {s.rfilename: s for s in (info.siblings or [])}

        def download(filename: str, limit: int) -> bytes:
            sibling = siblings.get(filename)
            if sibling is not None and sibling.size is not None and sibling.size > limit:
                raise InvalidBaseModelError(f"{where}: {filename} is {sibling.size} bytes (limit {limit})", hint="check the repo")
            local = hf_hub_download(repo_id, filename, revision=commit, endpoint=ep, token=token)
            return Path(local).read_bytes()

        if "config.json" not in siblings:
            raise InvalidBaseModelError(f"{where} has no config.json", hint="pass a transformers model repo")
        config = _parse_config(download("config.json", MAX_CONFIG_BYTES), f"{where}/config.json")
        remote = _RemoteFiles(repo_id, commit, ep, token, where)
        headers: dict[str, SafetensorsHeader] = {}
        if WEIGHTS_INDEX in siblings:
            shards = _shards_from_index(download(WEIGHTS_INDEX, MAX_INDEX_BYTES), f"{where}/{WEIGHTS_INDEX}")
            for shard in shards:
                headers[shard] = remote.header(shard)
        elif WEIGHTS_FILE in siblings:
            headers[WEIGHTS_FILE] = remote.header(WEIGHTS_FILE)
        fingerprint = None
        emb_name = None
        if headers:
            located = find_embedding(headers, config)
            if located is not None:
                file_name, tinfo = located
                emb_name = tinfo.name
                fingerprint = embedding_fingerprint(remote.row_reader(file_name), tinfo, threads=threads, max_gap=REMOTE_MAX_GAP)
        listing: dict[str, str] = {}
        for name in TOKENIZER_FILES:
            sibling = siblings.get(name)
            if sibling is None:
                continue
            lfs = getattr(sibling, "lfs", None)
            sha = getattr(lfs, "sha256", None) if lfs is not None else None
            if isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha):
                listing[name] = sha  # the LFS oid is the file's sha256: no download needed
            else:
                listing[name] = sha256_bytes(download(name, MAX_TOKENIZER_DOWNLOAD))
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise NotFoundError(
            f"base model repo {repo_id!r} was not found on {ep} (or is private or gated)",
            hint="check the repo id, and set HF_TOKEN if it is private",
        ) from exc
    except RevisionNotFoundError as exc:
        raise NotFoundError(
            f"base model repo {repo_id!r} has no revision {revision!r} on {ep}",
            hint="pass a branch, tag or commit sha that exists",
        ) from exc
    except EntryNotFoundError as exc:
        raise InvalidBaseModelError(
            f"{where}: a file listed by the Hub could not be fetched ({settings.redact_token(str(exc))[:200]})", hint="check the repo"
        ) from exc
    except HfHubHTTPError as exc:
        # Redact before truncating: a server may echo the Authorization header it was sent.
        raise HubError(
            f"the Hub at {ep} failed while identifying {repo_id!r}: {settings.redact_token(str(exc))[:200]}",
            hint="retry, or check HF_ENDPOINT and HF_TOKEN",
        ) from exc
    except OSError as exc:
        raise HubError(
            f"cannot reach the Hub at {ep} to identify {repo_id!r} ({type(exc).__name__}: {settings.redact_token(str(exc))[:120]})",
            hint="check the network and HF_ENDPOINT, or pass a local directory holding the model",
        ) from exc
    except InvalidAdapterError as exc:
        raise InvalidBaseModelError(exc.message, hint=exc.hint) from None
    except Exception as exc:  # httpx transport errors do not derive from OSError
        if type(exc).__module__.startswith(("httpx", "httpcore")):
            raise HubError(
                f"cannot reach the Hub at {ep} to identify {repo_id!r} ({type(exc).__name__}: {settings.redact_token(str(exc))[:120]})",
                hint="check the network and HF_ENDPOINT, or pass a local directory holding the model",
            ) from exc
        raise
    base_info = BaseModelInfo(
        name=repo_id,
        revision=commit,
        source="hub",
        embedding_fingerprint=fingerprint,
        tokenizer_digest=tokenizer_digest_of(listing),
        **config_facts(config),
    )
    return BaseModelFacts(
        info=base_info, config=config, tensors=_tensor_shapes(headers), embedding_tensor=emb_name, bytes_read=remote.bytes_read
    )


def _read_bounded(response: Any, limit: int) -> bytes:
    """At most ``limit`` bytes of a streamed response's body: stops reading once it has them."""
    chunks: list[bytes] = []
    have = 0
    for chunk in response.iter_bytes():
        chunks.append(chunk[: limit - have])
        have += len(chunks[-1])
        if have >= limit:
            break
    return b"".join(chunks)


class _RemoteFiles:
    """Ranged reads of files of one repo at one commit, through huggingface_hub's HTTP session."""

    def __init__(self, repo_id: str, commit: str, endpoint: str, token: str | None, where: str) -> None:
        self.repo_id = repo_id
        self.commit = commit
        self.endpoint = endpoint
        self.token = token
        self.where = where
        self.bytes_read = 0
        self._lock = threading.Lock()
        self._locations: dict[str, tuple[str, dict[str, str]]] = {}

    def _location(self, filename: str) -> tuple[str, dict[str, str]]:
        """Resolve redirects once per file, so the many row reads go straight to the bytes."""
        if filename in self._locations:
            return self._locations[filename]
        from urllib.parse import urljoin, urlsplit

        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import (
            build_hf_headers,
            get_session,
            hf_raise_for_status,
        )

        url = hf_hub_url(self.repo_id, filename, revision=self.commit, endpoint=self.endpoint)
        headers = build_hf_headers(token=self.token)
        response = get_session().head(url, headers=headers, follow_redirects=False, timeout=30)
        location, final_headers = url, headers
        if response.is_redirect and "location" in response.headers:
            location = urljoin(url, response.headers["location"])
            if urlsplit(location).netloc != urlsplit(url).netloc:
                # Never send the token to another host (a CDN); signed URLs need none.
                final_headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        else:
            hf_raise_for_status(response)
        self._locations[filename] = (location, final_headers)
        return location, final_headers

    def read(self, filename: str, start: int, length: int) -> bytes:
        """Bytes ``[start, start+length)`` of ``filename`` (fewer only where the file ends first).

        Reads at most ``length`` bytes of the body and then closes the connection, so a hostile
        server answering with an endless body costs no more memory than the range asked for.
        Raises :class:`HubError` when the server ignores Range, answers a range other than the one
        asked for (``Content-Range``), or sends fewer bytes than it declared.
        """
        from huggingface_hub.utils import get_session, hf_raise_for_status

        if length <= 0:
            return b""
        url, headers = self._location(filename)
        last = start + length - 1
        with get_session().stream("GET", url, headers={**headers, "range": f"bytes={start}-{last}"}, timeout=60) as response:
            if response.status_code == 200:
                raise HubError(
                    f"{self.where}: the server ignored a Range request for {filename}",
                    hint="spr reads base models on the Hub by range requests only; use a server that supports them",
                )
            if response.status_code != 206:
                # An error answer's body is read only as far as an error message needs, never unbounded.
                import httpx2

                body = _read_bounded(response, 64_000)
                plain = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-encoding")}
                hf_raise_for_status(httpx2.Response(response.status_code, headers=plain, content=body, request=response.request))
                raise HubError(
                    f"{self.where}: the server answered {response.status_code} to a Range request for {filename}",
                    hint="spr reads base models on the Hub by range requests only; use a server that supports them",
                )
            expected = self._expected_length(response, filename, start, last)
            data = _read_bounded(response, expected)
            # Leaving the block closes the response: whatever the server still sends is never read.
        if len(data) < expected:
            raise HubError(
                f"{self.where}: the server sent {len(data)} of the {expected} bytes it promised for {filename} "
                f"(range {start}-{last})",
                hint="retry; if it persists, check the server",
            )
        with self._lock:
            self.bytes_read += len(data)
        return data

    def _expected_length(self, response: Any, filename: str, start: int, last: int) -> int:
        """How many body bytes a 206 answer to ``bytes=start-last`` must carry (at most the range)."""
        wanted = last - start + 1
        content_range = response.headers.get("content-range")
        if content_range is not None:
            m = re.fullmatch(r"\s*bytes\s+(\d{1,20})-(\d{1,20})/(?:\d{1,20}|\*)\s*", content_range)
            if m is None or int(m.group(1)) != start or not start <= int(m.group(2)) <= last:
                raise HubError(
                    f"{self.where}: asked for bytes {start}-{last} of {filename}, "
                    f"the server answered Content-Range {content_range[:80]!r}",
                    hint="spr reads base models on the Hub by range requests only; use a server that honours them",
                )
            return int(m.group(2)) - start + 1
        content_length = response.headers.get("content-length")
        if content_length is not None and content_length.strip().isdigit():
            return min(int(content_length), wanted)
        return wanted

    def header(self, filename: str) -> SafetensorsHeader:
        where = f"{self.where}/{filename}"
        first = self.read(filename, 0, 100_000)
        if len(first) < 8:
            raise InvalidBaseModelError(f"{where}: truncated safetensors file", hint="check the repo")
        (header_length,) = struct.unpack("<Q", first[:8])
        if header_length > MAX_HEADER_BYTES:
            raise InvalidBaseModelError(
                f"{where}: safetensors header length {header_length} exceeds {MAX_HEADER_BYTES}", hint="check the repo"
            )
        raw = first[8 : 8 + header_length]
        if len(raw) < header_length:
            raw = self.read(filename, 8, header_length)
        if len(raw) != header_length:
            raise InvalidBaseModelError(f"{where}: truncated safetensors header", hint="check the repo")
        return parse_header_bytes(raw, header_length, None, where)

    def row_reader(self, filename: str) -> Callable[[int, int], bytes]:
        return lambda offset, length: self.read(filename, offset, length)


__all__: Sequence[str] = (
    "BaseModelFacts",
    "config_facts",
    "embedding_fingerprint",
    "find_embedding",
    "fingerprint_of_rows",
    "from_adapter",
    "from_directory",
    "from_hub",
    "from_model",
    "identify",
    "inspect",
    "inspect_directory",
    "parse_repo_spec",
    "read_config",
    "require_safetensors",
    "sample_row_indices",
    "tokenizer_digest_of",
)
