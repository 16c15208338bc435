"""Base-model identification over the Hub: metadata, ranged header reads and ranged fingerprint rows.

Never a weight download. The revision is pinned to its commit sha; ``config.json``, the shard index
and the non-LFS tokenizer files (small, bounded) are downloaded into the HF cache; each safetensors
header and the sampled embedding rows are read with HTTP range requests. Every request goes through
the one Hub client (:class:`~registry.hub.client.HubClient`: the configured endpoint, its token,
its error translation); the identity itself is computed by :mod:`registry.adapters.basemodel` and
:mod:`registry.adapters.fingerprint`, exactly as for a local directory.
"""

from __future__ import annotations

import re
import struct
import threading
from collections.abc import Callable
from typing import Any

from registry.adapters.basemodel import (
    MAX_CONFIG_BYTES,
    MAX_INDEX_BYTES,
    MAX_TOKENIZER_DOWNLOAD,
    TOKENIZER_FILES,
    WEIGHTS_FILE,
    WEIGHTS_INDEX,
    BaseModelFacts,
    config_facts,
    find_embedding,
    parse_config_bytes,
    shards_from_index,
    tensor_shapes,
    tokenizer_digest_of,
)
from registry.adapters.fingerprint import embedding_fingerprint
from registry.adapters.tensorfile import MAX_HEADER_BYTES, SafetensorsHeader, parse_header_bytes
from registry.digest import sha256_bytes
from registry.errors import HubError, InvalidAdapterError, InvalidBaseModelError, NotFoundError
from registry.hub.client import HubClient, checked_sha
from registry.types import BaseModelInfo

# Over HTTP, rows closer than this are fetched in one request (bounded waste: 255 gaps at most).
REMOTE_MAX_GAP = 16_384


def inspect_base(
    repo_id: str, revision: str | None = None, *, endpoint: str | None = None, threads: int = 16
) -> BaseModelFacts:
    """Identify ``repo_id`` at ``revision`` (default ``main``) on the Hub without downloading weights.

    Pins the revision to its commit sha; downloads ``config.json``, the shard index and the
    non-LFS tokenizer files (small); reads each safetensors header and the fingerprint rows with
    HTTP range requests. Raises :class:`NotFoundError` for a missing repo or revision,
    :class:`HubError` when the Hub fails or cannot be reached, and
    :class:`InvalidBaseModelError` for malformed files.
    """
    hub = HubClient(endpoint)
    where = f"{repo_id}@{revision or 'main'} on {hub.endpoint}"
    try:
        with hub.call(f"identifying the base model {repo_id}", repo_id, revision=revision):
            return _read_remote(hub, repo_id, revision, where, threads)
    except HubError as exc:
        reason = exc.fields.get("reason")
        if reason == "repo-not-found":
            raise NotFoundError(
                f"base model repo {repo_id!r} was not found on {hub.endpoint} (or is private or gated)",
                hint="check the repo id, and set HF_TOKEN if it is private",
            ) from None
        if reason == "revision-not-found":
            raise NotFoundError(
                f"base model repo {repo_id!r} has no revision {revision!r} on {hub.endpoint}",
                hint="pass a branch, tag or commit sha that exists",
            ) from None
        if reason == "entry-not-found":
            raise InvalidBaseModelError(f"{where}: a file listed by the Hub could not be fetched ({exc.message})", hint="check the repo") from None
        raise
    except InvalidBaseModelError:
        raise
    except InvalidAdapterError as exc:  # tensorfile speaks of adapters; this is the base model
        raise InvalidBaseModelError(exc.message, hint=exc.hint) from None
    except OSError as exc:  # what the client's translation left as it was (a local read, a socket)
        raise HubError(
            f"cannot reach the Hub at {hub.endpoint} to identify {repo_id!r} "
            f"({type(exc).__name__}: {hub.redact(str(exc))[:120]})",
            hint="check the network and HF_ENDPOINT, or pass a local directory holding the model",
        ) from None


def _read_remote(hub: HubClient, repo_id: str, revision: str | None, where: str, threads: int) -> BaseModelFacts:
    info = hub.api.model_info(repo_id, revision=revision, files_metadata=True)
    commit = info.sha
    if not commit:
        raise HubError(f"{where}: the Hub did not report a commit sha", hint="check the endpoint")
    commit = checked_sha(commit, repo_id)
    siblings = {s.rfilename: s for s in (info.siblings or [])}

    def download(filename: str, limit: int) -> bytes:
        sibling = siblings.get(filename)
        if sibling is not None and sibling.size is not None and sibling.size > limit:
            raise InvalidBaseModelError(f"{where}: {filename} is {sibling.size} bytes (limit {limit})", hint="check the repo")
        path = hub.download(repo_id, filename, commit)
        if path.stat().st_size > limit:
            raise InvalidBaseModelError(f"{where}: {filename} is larger than {limit} bytes", hint="check the repo")
        return path.read_bytes()

    if "config.json" not in siblings:
        raise InvalidBaseModelError(f"{where} has no config.json", hint="pass a transformers model repo")
    config = parse_config_bytes(download("config.json", MAX_CONFIG_BYTES), f"{where}/config.json")
    remote = RemoteFiles(repo_id, commit, hub.endpoint, hub.token, where)
    headers: dict[str, SafetensorsHeader] = {}
    if WEIGHTS_INDEX in siblings:
        shards = shards_from_index(download(WEIGHTS_INDEX, MAX_INDEX_BYTES), f"{where}/{WEIGHTS_INDEX}")
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
    base_info = BaseModelInfo(
        name=repo_id,
        revision=commit,
        source="hub",
        embedding_fingerprint=fingerprint,
        tokenizer_digest=tokenizer_digest_of(listing),
        **config_facts(config),
    )
    return BaseModelFacts(
        info=base_info, config=config, tensors=tensor_shapes(headers), embedding_tensor=emb_name, bytes_read=remote.bytes_read
    )


def read_bounded(response: Any, limit: int) -> bytes:
    """At most ``limit`` bytes of a streamed response's body: stops reading once it has them."""
    chunks: list[bytes] = []
    have = 0
    for chunk in response.iter_bytes():
        chunks.append(chunk[: limit - have])
        have += len(chunks[-1])
        if have >= limit:
            break
    return b"".join(chunks)


class RemoteFiles:
    """Ranged reads of files of one repo at one commit, through huggingface_hub's HTTP session.

    ``token`` is what :class:`~registry.hub.client.HubClient` decided for ``endpoint`` (a string,
    or False/None for anonymous); it is never sent to another host a redirect points at.
    """

    def __init__(self, repo_id: str, commit: str, endpoint: str, token: str | bool | None, where: str) -> None:
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

                body = read_bounded(response, 64_000)
                plain = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-encoding")}
                hf_raise_for_status(httpx2.Response(response.status_code, headers=plain, content=body, request=response.request))
                raise HubError(
                    f"{self.where}: the server answered {response.status_code} to a Range request for {filename}",
                    hint="spr reads base models on the Hub by range requests only; use a server that supports them",
                )
            expected = self._expected_length(response, filename, start, last)
            data = read_bounded(response, expected)
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


__all__ = ["REMOTE_MAX_GAP", "RemoteFiles", "inspect_base", "read_bounded"]
