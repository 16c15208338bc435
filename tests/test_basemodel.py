"""Base-model identity: config facts, safetensors headers, tokenizer digest, embedding fingerprint.

Real tiny models (transformers, from configs) on disk and in memory; the Hub path runs the real
``huggingface_hub`` client against the project's Hub server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from hub_fixtures import HUB_TOKEN

from registry.adapters import basemodel
from registry.errors import InvalidBaseModelError, NotFoundError
from registry.hub.remote_base import RemoteFiles
from registry.hubserver import HubServer

HEX = re.compile(r"^sha256:[0-9a-f]{64}$")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _proc_rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_directory_identity_has_every_fact(tiny_bloom: Path) -> None:
    facts = basemodel.inspect(str(tiny_bloom))
    info = facts.info
    assert (info.architecture, info.model_type, info.hidden_size, info.num_layers, info.num_heads) == (
        "BloomForCausalLM", "bloom", 64, 2, 4,
    )
    assert info.vocab_size == 400 and info.is_encoder_decoder is False
    assert info.source == "local" and info.name == str(tiny_bloom.resolve())
    for digest in (info.config_digest, info.embedding_fingerprint, info.tokenizer_digest):
        assert digest and HEX.match(digest)
    assert facts.embedding_tensor == "transformer.word_embeddings.weight"
    assert facts.tensors is not None and facts.tensors["transformer.word_embeddings.weight"] == (400, 64)
    assert "transformer.h.0.self_attention.query_key_value" in facts.module_names
    # identify() is the catalogue's entry point and returns the same identity.
    assert basemodel.identify(str(tiny_bloom)) == info


def test_same_weights_same_fingerprint_other_weights_differ(tiny_bloom: Path, tiny_bloom_other: Path, tmp_path: Path) -> None:
    a = basemodel.from_directory(tiny_bloom)
    copy = basemodel.from_directory(_copy(tiny_bloom, tmp_path / "copy"))
    other = basemodel.from_directory(tiny_bloom_other)
    assert copy.embedding_fingerprint == a.embedding_fingerprint and copy.name != a.name
    # Same config.json (only the seed differs), so only the fingerprint tells them apart.
    assert other.config_digest == a.config_digest
    assert other.embedding_fingerprint != a.embedding_fingerprint


def test_fingerprint_reads_sampled_rows_only(tmp_path: Path, tiny_tokenizer: Path) -> None:
    """A 20,000-row embedding plus 24 MB of other weights: a few hundred KB are read, measured twice."""
    d = tmp_path / "big"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["BloomForCausalLM"], "model_type": "bloom",
                                               "hidden_size": 64, "vocab_size": 20000, "n_layer": 1, "n_head": 4}))
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((20000, 64), dtype=np.float32)
    other = np.zeros((6_000_000,), dtype=np.float32)
    header = {
        "transformer.word_embeddings.weight": {"dtype": "F32", "shape": [20000, 64], "data_offsets": [0, emb.nbytes]},
        "transformer.h.0.mlp.weight": {"dtype": "F32", "shape": [6_000_000], "data_offsets": [emb.nbytes, emb.nbytes + other.nbytes]},
    }
    raw = json.dumps(header).encode()
    with open(d / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + emb.tobytes() + other.tobytes())
    size = (d / "model.safetensors").stat().st_size
    before = _proc_rchar()
    facts = basemodel.inspect_directory(d)
    read = _proc_rchar() - before
    assert size > 29_000_000
    assert facts.bytes_read == 8 + len(raw) + 256 * 64 * 4
    assert read < 1_000_000, f"read {read} bytes of a {size}-byte base"
    # The same rows computed independently give the same fingerprint.
    rows = emb[[i * 20000 // 256 for i in range(256)]]
    assert facts.info.embedding_fingerprint == basemodel.fingerprint_of_rows((20000, 64), rows)
    # Second call: the fingerprint comes from the cache (no row reads), keyed by size and mtime.
    again = basemodel.inspect_directory(d)
    assert again.info.embedding_fingerprint == facts.info.embedding_fingerprint
    assert again.bytes_read == 8 + len(raw)
    assert list((Path(os.environ["SPR_HOME"]) / "cache" / "embedding-fingerprint").glob("*.json"))


def test_cache_notices_changed_weights(tiny_bloom: Path, tiny_bloom_other: Path, tmp_path: Path) -> None:
    d = _copy(tiny_bloom, tmp_path / "m")
    first = basemodel.from_directory(d).embedding_fingerprint
    target = d / "model.safetensors"
    shutil.copyfile(tiny_bloom_other / "model.safetensors", target)
    os.utime(target, ns=(1, 1))  # a different mtime, whatever the clock's resolution
    assert basemodel.from_directory(d).embedding_fingerprint == basemodel.from_directory(tiny_bloom_other).embedding_fingerprint != first


def test_in_memory_model_has_the_same_fingerprint(tiny_bloom: Path, tiny_t5: Path, tiny_llama_gqa: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    for path, cls in ((tiny_bloom, AutoModelForCausalLM), (tiny_t5, AutoModelForSeq2SeqLM), (tiny_llama_gqa, AutoModelForCausalLM)):
        on_disk = basemodel.inspect(str(path))
        in_memory = basemodel.from_model(cls.from_pretrained(str(path)))
        assert in_memory.info.embedding_fingerprint == on_disk.info.embedding_fingerprint, path.name
        assert in_memory.info.source == "memory" and in_memory.info.config_digest is None
        for key in ("architecture", "hidden_size", "num_layers", "num_heads", "vocab_size", "is_encoder_decoder"):
            assert getattr(in_memory.info, key) == getattr(on_disk.info, key), (path.name, key)
        assert set(in_memory.tensors or {}) <= set(on_disk.tensors or {})


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
def test_half_checkpoint_matches_float32_in_memory(dtype_name: str, tiny_bloom: Path, tmp_path: Path) -> None:
    """bf16 and fp16 widen to float32 exactly, so a half file and its float32 load share a fingerprint."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_bloom)).to(getattr(torch, dtype_name))
    model.save_pretrained(str(tmp_path / "half"))
    on_disk = basemodel.inspect(str(tmp_path / "half"))
    in_half = basemodel.from_model(AutoModelForCausalLM.from_pretrained(str(tmp_path / "half")))
    assert in_half.info.embedding_fingerprint == on_disk.info.embedding_fingerprint
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "half"), dtype=torch.float32)
    assert loaded.dtype == torch.float32
    assert basemodel.from_model(loaded).info.embedding_fingerprint == on_disk.info.embedding_fingerprint
    # ...and differs from the fp32 original (the cast rounded the values).
    assert on_disk.info.embedding_fingerprint != basemodel.from_directory(tiny_bloom).embedding_fingerprint


def test_sharded_checkpoint(tiny_bloom: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(tiny_bloom)).save_pretrained(str(tmp_path / "sharded"), max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert not (tmp_path / "sharded" / "model.safetensors").exists()
    sharded = basemodel.inspect(str(tmp_path / "sharded"))
    single = basemodel.inspect(str(tiny_bloom))
    assert sharded.info.embedding_fingerprint == single.info.embedding_fingerprint
    assert set(sharded.tensors or {}) == set(single.tensors or {})


def test_tied_embedding_saved_only_as_lm_head(tmp_path: Path) -> None:
    d = tmp_path / "tied"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "x", "hidden_size": 8, "vocab_size": 10, "tie_word_embeddings": True}))
    w = np.arange(80, dtype=np.float32).reshape(10, 8)
    raw = json.dumps({"lm_head.weight": {"dtype": "F32", "shape": [10, 8], "data_offsets": [0, w.nbytes]}}).encode()
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + w.tobytes())
    facts = basemodel.inspect_directory(d)
    assert facts.embedding_tensor == "lm_head.weight"
    assert facts.info.embedding_fingerprint == basemodel.fingerprint_of_rows((10, 8), w)


def test_tokenizer_digest_is_the_sha256sum_listing(tiny_bloom: Path) -> None:
    import hashlib

    names = sorted(n for n in basemodel.TOKENIZER_FILES if (tiny_bloom / n).is_file())
    assert "tokenizer.json" in names
    listing = "".join(f"{hashlib.sha256((tiny_bloom / n).read_bytes()).hexdigest()}  {n}\n" for n in names)
    assert basemodel.from_directory(tiny_bloom).tokenizer_digest == "sha256:" + hashlib.sha256(listing.encode()).hexdigest()


@pytest.mark.parametrize(
    "spec", ["./no/such/dir", "/no/such/dir", "a/b/c", "not a repo", "ns/../x", "ns/name@bad rev"]
)
def test_unusable_specs_are_refused(spec: str) -> None:
    with pytest.raises(InvalidBaseModelError):
        basemodel.identify(spec)


def test_malformed_directories_are_refused(tiny_bloom: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidBaseModelError, match=r"no config\.json"):
        basemodel.identify(str(empty))
    bad = _copy(tiny_bloom, tmp_path / "badcfg")
    (bad / "config.json").write_text("{not json")
    with pytest.raises(InvalidBaseModelError, match="not valid JSON"):
        basemodel.identify(str(bad))
    escape = _copy(tiny_bloom, tmp_path / "escape")
    (escape / "model.safetensors").unlink()
    (escape / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../../etc/passwd"}}))
    with pytest.raises(InvalidBaseModelError, match="unsafe shard"):
        basemodel.identify(str(escape))
    truncated = _copy(tiny_bloom, tmp_path / "trunc")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidBaseModelError):
        basemodel.identify(str(truncated))


def test_sample_rows_are_fixed_and_spread() -> None:
    rows = basemodel.sample_row_indices(250_880)
    assert len(rows) == 256 and rows[0] == 0 and rows[-1] == 255 * 250_880 // 256
    assert basemodel.sample_row_indices(10) == list(range(10))


# ---------------------------------------------------------------------------------------------
# Hub: range requests only, same identity as the local copy
# ---------------------------------------------------------------------------------------------


def _push(server: HubServer, folder: Path, repo: str) -> str:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=server.url, token=HUB_TOKEN)
    api.create_repo(repo, exist_ok=True)
    return api.upload_folder(repo_id=repo, folder_path=str(folder)).oid


@pytest.mark.parametrize("server_fixture", ["hub_server", "hub_server_lfs"])
def test_hub_identity_matches_local_without_downloading_weights(
    server_fixture: str, request: pytest.FixtureRequest, tiny_bloom: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server: HubServer = request.getfixturevalue(server_fixture)
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    commit = _push(server, tiny_bloom, "tester/tiny-bloom")
    server.clear_log()
    remote = basemodel.inspect("tester/tiny-bloom")
    local = basemodel.inspect(str(tiny_bloom))
    assert remote.info.source == "hub" and remote.info.name == "tester/tiny-bloom"
    assert remote.info.revision == commit  # "main" pinned to its commit sha
    for key in ("embedding_fingerprint", "config_digest", "tokenizer_digest", "architecture", "hidden_size"):
        assert getattr(remote.info, key) == getattr(local.info, key), key
    assert remote.tensors == local.tensors
    weights = [r for r in server.requests if r.method == "GET" and r.path.split("?")[0].endswith("/model.safetensors")]
    assert weights and all(r.status == 206 for r in weights), "the weight file must only be read by range requests"
    assert remote.bytes_read < (tiny_bloom / "model.safetensors").stat().st_size
    # REPO@REV pins an explicit revision the same way.
    assert basemodel.identify(f"tester/tiny-bloom@{commit}").revision == commit


def test_hub_unknown_repo_and_revision(hub_server: HubServer, tiny_bloom: Path) -> None:
    with pytest.raises(NotFoundError):
        basemodel.identify("tester/nothing-here")
    _push(hub_server, tiny_bloom, "tester/tiny-bloom")
    with pytest.raises(NotFoundError):
        basemodel.identify("tester/tiny-bloom@no-such-branch")


def test_identify_without_network_keeps_the_claim() -> None:
    info = basemodel.identify("bigscience/bloomz-560m@abc123", resolve_remote=False)
    assert (info.name, info.revision, info.source, info.embedding_fingerprint) == ("bigscience/bloomz-560m", "abc123", "hub", None)


class _HostileRangeServer:
    """A stdlib HTTP server that answers every range GET with 206 and a body far longer than asked.

    ``mode`` picks the lie: "endless" claims the asked range in Content-Range and then streams
    ``body_size`` bytes; "bare" sends no Content-Range or Content-Length at all; "short" promises
    the whole range and sends 10 bytes; "echo" answers every GET with 400 and an error message
    that repeats the Authorization header. ``sent`` counts the body bytes the socket accepted and
    ``cut`` records that the client closed the connection before the body ended.
    """

    def __init__(self, mode: str, body_size: int = 50_000_000) -> None:
        import http.server
        import threading

        outer = self
        self.mode, self.body_size = mode, body_size
        self.sent = 0
        self.cut = False
        self.done = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                if outer.mode == "echo":  # an error answer that repeats the credentials it was sent
                    body = json.dumps({"error": f"bad request from {self.headers.get('authorization')}"}).encode()
                    self.send_response(400)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                m = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("range", ""))
                assert m is not None
                start, last = int(m.group(1)), int(m.group(2))
                self.send_response(206)
                if outer.mode in ("endless", "short"):
                    self.send_header("Content-Range", f"bytes {start}-{last}/{10**12}")
                self.end_headers()
                try:
                    if outer.mode == "short":
                        self.wfile.write(b"x" * 10)
                        return
                    chunk = b"\x01" * 65_536
                    while outer.sent < outer.body_size:
                        self.wfile.write(chunk)
                        outer.sent += len(chunk)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    outer.cut = True
                finally:
                    self.close_connection = True
                    outer.done.set()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _HostileRangeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("mode", ["endless", "bare"])
def test_remote_read_stops_at_the_range_asked_for(mode: str) -> None:
    import tracemalloc

    length = 100_000  # what a safetensors header read asks for
    with _HostileRangeServer(mode) as server:
        remote = RemoteFiles("org/x", "0" * 40, server.url, None, "org/x on a hostile server")
        tracemalloc.start()
        try:
            data = remote.read("model.safetensors", 0, length)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert server.done.wait(30), "the server never finished its answer"
    assert len(data) == length and remote.bytes_read == length
    assert peak < 8_000_000, f"reading {length} bytes held {peak} bytes at peak"
    assert server.cut and server.sent < server.body_size, "the client must close the connection, not drain 50 MB"


def test_remote_read_refuses_a_short_body() -> None:
    from registry.errors import HubError

    with _HostileRangeServer("short") as server:
        remote = RemoteFiles("org/x", "0" * 40, server.url, None, "org/x on a hostile server")
        with pytest.raises(HubError, match="sent 10 of the 1000 bytes"):
            remote.read("model.safetensors", 0, 1000)


def test_hub_errors_never_carry_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    from registry.errors import HubError
    from registry.ml import training

    token = "hf_SeCrEt0123456789abcdefSECRET"
    monkeypatch.setenv("HF_TOKEN", token)
    with _HostileRangeServer("echo") as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        with pytest.raises(HubError) as identify_error:
            basemodel.inspect("org/x")
        with pytest.raises(HubError) as download_error:
            training._download_base("org/x", None)
    for exc in (identify_error.value, download_error.value):
        text = f"{exc.message} {exc.hint}"
        assert token not in text and "<token>" in text, text  # the echo is there, the token is not
