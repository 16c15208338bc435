"""Hostile input: property-based tests of every parser that reads bytes or names from outside.

For any input, the adapter reader, the safetensors header parser, the manifest parser and the
ref/name parsers either succeed or raise a :class:`RegistryError` subclass: never another
exception, never a hang (hypothesis deadlines), never an allocation out of proportion to the
input (``tracemalloc`` peak per call). What they accept is safe to use: names and file paths that
pass validation cannot carry a path separator, a dot-segment or a control character to the
filesystem, and a manifest that parses can be turned into adapter facts.

Examples stay modest (the suite must stay fast); the ``@example`` cases are bugs these
properties found, kept as regressions.
"""

from __future__ import annotations

import json
import os
import re
import struct
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from ops_support import write_small_adapter

from registry import refs
from registry.adapters import manifest, tensorfile
from registry.adapters import reader as adapter
from registry.errors import RegistryError

T = TypeVar("T")
# SPR_FUZZ_SCALE=20 runs twenty times the examples (a deeper hunt than CI's).
_SCALE = max(1, int(os.environ.get("SPR_FUZZ_SCALE", "1")))
FAST = settings(max_examples=300 * _SCALE, deadline=1500, suppress_health_check=[HealthCheck.too_slow])
FILES = settings(max_examples=120 * _SCALE, deadline=3000, suppress_health_check=[HealthCheck.too_slow])
PEAK_LIMIT = 32 * 1024 * 1024  # inputs here are < 100 kB; a parser that needs 32 MB for one is broken


def bounded(fn: Callable[[], T]) -> T | RegistryError:
    """Call ``fn``; return its result or the RegistryError it raised. Anything else fails the test."""
    tracemalloc.start()
    try:
        return fn()
    except RegistryError as exc:
        return exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < PEAK_LIMIT, f"allocated {peak} bytes for a small input"


# ---------------------------------------------------------------------------------------------
# Strategies

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)
dtypes = st.sampled_from(sorted(tensorfile.ITEMSIZE)) | st.text(max_size=6) | json_scalars
dims = st.integers(min_value=-3, max_value=2**41) | st.sampled_from([0, 1, 4, 64, True]) | json_scalars
tensor_entry = st.fixed_dictionaries(
    {},
    optional={
        "dtype": dtypes,
        "shape": st.lists(dims, max_size=10) | json_values,
        "data_offsets": st.lists(st.integers(min_value=-5, max_value=2**64), max_size=3) | json_values,
    },
) | json_values
headers = st.dictionaries(
    st.sampled_from(["prompt_embeddings", "__metadata__", "x.lora_A.weight", "x.lora_B.weight"]) | st.text(max_size=10),
    tensor_entry,
    max_size=4,
)


def _valid_adapter_bytes() -> tuple[bytes, bytes]:
    with tempfile.TemporaryDirectory() as d:
        path = write_small_adapter(Path(d) / "a", 1)
        return (path / "adapter_config.json").read_bytes(), (path / "adapter_model.safetensors").read_bytes()


VALID_CONFIG, VALID_WEIGHTS = _valid_adapter_bytes()


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few random flips, truncations, insertions or a rewritten length prefix."""
    out = bytearray(data)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "prefix", "set"]))
        if op == "flip" and out:
            i = draw(st.integers(min_value=0, max_value=len(out) - 1))
            out[i] ^= draw(st.integers(min_value=1, max_value=255))
        elif op == "truncate":
            del out[draw(st.integers(min_value=0, max_value=len(out))):]
        elif op == "insert":
            i = draw(st.integers(min_value=0, max_value=len(out)))
            out[i:i] = draw(st.binary(max_size=16))
        elif op == "prefix" and len(out) >= 8:
            out[:8] = struct.pack("<Q", draw(st.integers(min_value=0, max_value=2**64 - 1)))
        elif op == "set" and out:
            i = draw(st.integers(min_value=0, max_value=len(out) - 1))
            out[i] = draw(st.sampled_from(b'{}[]":,0-e.\\\x00\xff'))
    return bytes(out)


def safetensors_bytes(header: Any, data: bytes, length: int | None = None) -> bytes:
    raw = json.dumps(header).encode("utf-8")
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


# ---------------------------------------------------------------------------------------------
# safetensors header


@pytest.mark.backend_independent
@FAST
@given(raw=st.binary(max_size=300), header_length=st.integers(min_value=0, max_value=2**64 - 1),
       file_size=st.none() | st.integers(min_value=0, max_value=2**50))
@example(raw=b"1" * 5000, header_length=5000, file_size=None)  # an int of 5000 digits: ValueError, not JSONDecodeError
def test_header_parser_on_arbitrary_bytes(raw: bytes, header_length: int, file_size: int | None) -> None:
    bounded(lambda: tensorfile.parse_header_bytes(raw, header_length, file_size, "fuzz"))


@pytest.mark.backend_independent
@FAST
@given(header=headers, data=st.binary(max_size=64), file_size=st.none() | st.integers(min_value=0, max_value=2**45))
@example(header={"t": {"dtype": [], "shape": [], "data_offsets": [0, 0]}}, data=b"", file_size=None)
@example(header={"t": {"dtype": {"F32": 1}, "shape": [1], "data_offsets": [0, 4]}}, data=b"", file_size=None)
def test_header_parser_on_structured_headers(header: dict[str, Any], data: bytes, file_size: int | None) -> None:
    raw = json.dumps(header).encode("utf-8")
    result = bounded(lambda: tensorfile.parse_header_bytes(raw, len(raw), file_size, "fuzz"))
    if isinstance(result, tensorfile.SafetensorsHeader):
        for info in result.tensors.values():  # what it accepts is self-consistent
            assert info.dtype in tensorfile.ITEMSIZE
            assert 0 <= info.begin <= info.end
            if file_size is not None:
                assert info.end <= file_size


@pytest.mark.backend_independent
@FILES
@given(content=st.binary(max_size=400) | mutated(VALID_WEIGHTS)
       | st.builds(safetensors_bytes, headers, st.binary(max_size=64)))
@example(content=struct.pack("<Q", 2**40) + b"{}")  # absurd header length: refused before any allocation
def test_read_header_on_arbitrary_files(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "adapter_model.safetensors"
        path.write_bytes(content)
        result = bounded(lambda: tensorfile.read_header(path))
        if isinstance(result, tensorfile.SafetensorsHeader):
            for info in result.tensors.values():
                assert info.end <= len(content)
                bounded(lambda info=info: tensorfile.count_non_finite(path, info))


# ---------------------------------------------------------------------------------------------
# adapter reader


@st.composite
def adapter_configs(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["valid-mutated", "json", "bytes", "valid-bytes-mutated"]))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "valid-bytes-mutated":
        return draw(mutated(VALID_CONFIG))
    config: dict[str, Any] = json.loads(VALID_CONFIG)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        key = draw(st.sampled_from([*sorted(config), "r", "target_modules", "rank_pattern", "encoder_hidden_size"]))
        if draw(st.booleans()):
            config.pop(key, None)
        else:
            config[key] = draw(json_values | st.sampled_from(
                ["PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "LORA", "TEXT", "SEQ_2_SEQ_LM", 0, 1, 2, 4, 64, 2**31]
            ))
    return json.dumps(config).encode()


@pytest.mark.backend_independent
@FILES
@given(config=adapter_configs(),
       weights=st.just(VALID_WEIGHTS) | mutated(VALID_WEIGHTS) | st.binary(max_size=200)
       | st.builds(safetensors_bytes, headers, st.binary(max_size=64)))
@example(config=b'{"peft_type": "PROMPT_TUNING", "num_virtual_tokens": ' + b"9" * 5000 + b"}", weights=VALID_WEIGHTS)
def test_adapter_reader_on_hostile_directories(config: bytes, weights: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "adapter_config.json").write_bytes(config)
        (root / "adapter_model.safetensors").write_bytes(weights)
        result = bounded(lambda: adapter.read_adapter(root))
        if not isinstance(result, RegistryError):
            assert result.peft_type in adapter.SUPPORTED_TYPES
            assert {f.path for f in result.files} >= {"adapter_config.json", "adapter_model.safetensors"}


def test_the_valid_adapter_used_for_mutations_is_valid(tmp_path: Path) -> None:
    facts = adapter.read_adapter(write_small_adapter(tmp_path / "a", 1))
    assert facts.peft_type == "PROMPT_TUNING" and facts.num_virtual_tokens == 4


# ---------------------------------------------------------------------------------------------
# manifest


def _valid_manifest() -> dict[str, Any]:
    from registry.types import FileRecord

    with tempfile.TemporaryDirectory() as d:
        facts = adapter.read_adapter(write_small_adapter(Path(d) / "a", 2))
    files = [FileRecord(f.path, "ab" * 32, f.size) for f in facts.files]
    return manifest.build(facts, files, base_model=None, dataset=None, training={}, template=None, parent_digest=None)


VALID_MANIFEST = _valid_manifest()


@st.composite
def manifests(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["mutated-doc", "mutated-bytes", "json", "bytes"]))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    encoded = manifest.encode(VALID_MANIFEST)
    if kind == "mutated-bytes":
        return draw(mutated(encoded))
    doc = json.loads(encoded)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        target = draw(st.sampled_from(["top", "peft", "file", "tensor"]))
        holder: Any = doc
        if target != "top":
            key_path = {"peft": ("peft",), "file": ("files", 0), "tensor": ("tensors", 0)}[target]
            for step in key_path:
                try:
                    holder = holder[step]
                except (KeyError, IndexError, TypeError):
                    holder = None
                    break
        if not isinstance(holder, dict):
            continue
        key = draw(st.sampled_from([*sorted(holder), "extra"]))
        if draw(st.booleans()):
            holder.pop(key, None)
        else:
            holder[key] = draw(json_values | st.sampled_from(["../etc/passwd", "/abs", "a\nb", "ok.json\n", "a/../b"]))
    return json.dumps(doc, allow_nan=True).encode()


@pytest.mark.backend_independent
@FAST
@given(data=manifests())
@example(data=b"1" * 5000)
@example(data=json.dumps({**VALID_MANIFEST, "peft": {}}).encode())
@example(data=json.dumps({**VALID_MANIFEST, "files": [{"path": "adapter_config.json\n", "sha256": "ab" * 32, "size": 1}]}).encode())
def test_manifest_parser_on_hostile_documents(data: bytes) -> None:
    result = bounded(lambda: manifest.parse(data))
    if isinstance(result, RegistryError):
        return
    for entry in result["files"]:  # accepted paths cannot leave a directory
        _assert_safe_relative_path(entry["path"])
    # A parsed manifest is safe to use: turning it into facts raises nothing but registry errors.
    bounded(lambda: manifest.facts_from_manifest(result))
    # With an expected digest, the parser also refuses anything that hashes differently.
    bounded(lambda: manifest.parse(data, expected_digest="sha256:" + "0" * 64))


def test_valid_manifest_round_trips() -> None:
    data = manifest.encode(VALID_MANIFEST)
    assert manifest.parse(data, expected_digest=manifest.digest_of(VALID_MANIFEST)) == VALID_MANIFEST


# ---------------------------------------------------------------------------------------------
# refs and names

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
name_chars = st.sampled_from([*list("abcXYZ019._-/@:\\ \n\t\x00\x7f²٣\u202e"), "sha256:", "..", "@1", "@prod"])
ref_like = st.lists(name_chars, max_size=20).map("".join) | st.text(max_size=40)


def _assert_safe_component(value: str) -> None:
    assert _SAFE_NAME.fullmatch(value), repr(value)
    assert ".." not in value and "/" not in value and "\\" not in value
    assert all(32 < ord(c) < 127 for c in value)
    assert Path(value).name == value and value not in (".", "..")


def _assert_safe_relative_path(value: str) -> None:
    assert all(32 < ord(c) < 127 for c in value), repr(value)
    assert not value.startswith("/") and "\\" not in value
    assert all(part not in ("", ".", "..") for part in value.split("/")), repr(value)


@pytest.mark.backend_independent
@FAST
@given(text=ref_like)
@example(text="a@\u00b2")  # str.isdigit() is true for "²"; int() refuses it (was a ValueError)
@example(text="a@\u0663")  # an Arabic-Indic digit: not a version number
@example(text="team/coach\n")
def test_ref_parser(text: str) -> None:
    result = bounded(lambda: refs.parse_ref(text))
    if isinstance(result, RegistryError):
        return
    _assert_safe_component(result.namespace)
    _assert_safe_component(result.name)
    if result.alias is not None:
        _assert_safe_component(result.alias)
    if result.number is not None:
        assert 1 <= result.number <= 10**9
    if result.digest is not None:
        assert re.fullmatch(r"[0-9a-f]{64}", result.digest)
    assert refs.parse_ref(str(result)) == result


@pytest.mark.backend_independent
@FAST
@given(text=ref_like)
@example(text="coach\n")  # "$" matches before a trailing newline: was accepted
@example(text="team/coach\n")
def test_names_that_pass_validation_are_safe_path_components(text: str) -> None:
    result = bounded(lambda: refs.split_name(text))
    if not isinstance(result, RegistryError):
        for part in result:
            _assert_safe_component(part)
    alias = bounded(lambda: refs.validate_alias(text))
    if not isinstance(alias, RegistryError):
        _assert_safe_component(alias)


@pytest.mark.backend_independent
@FAST
@given(text=ref_like | st.sampled_from(["adapter_config.json\n", "a/../b", "./a", "a//b", "/etc/passwd"]))
@example(text="adapter_config.json\n")
def test_manifest_file_paths_that_pass_validation_are_safe(text: str) -> None:
    result = bounded(lambda: manifest.check_relative_path(text, "fuzz"))
    if not isinstance(result, RegistryError):
        _assert_safe_relative_path(result)


@pytest.mark.parametrize("name", ["coach\n", "../coach", "team/../x", "a\x00b", "team/coach/extra", ".hidden", "co ach"])
def test_publish_refuses_unsafe_names_before_writing_anything(tmp_path: Path, name: str) -> None:
    from registry import catalogue
    from registry.errors import UsageError
    from registry.storage import LocalBlobStore

    with pytest.raises(UsageError):
        catalogue.publish(write_small_adapter(tmp_path / "a", 3), name)
    assert list(LocalBlobStore().iter_blob_paths()) == []
