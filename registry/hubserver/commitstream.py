"""Reading the ndjson body of a commit without holding a large file's content in memory.

A client with Xet on uploads every file "regular": a 200 MB adapter arrives as one 270 MB line of
base64 inside the commit. Reading that line, parsing it and decoding it at once costs over a GB of
server memory. Lines up to :data:`IN_MEMORY_LINE` bytes are parsed as JSON; a longer line that
starts the way ``huggingface_hub`` serialises a file operation (``json.dumps`` of
``{"key": "file", "value": {"content": "<base64>", "path": …, "encoding": "base64"}}``) has its
content decoded chunk by chunk straight into the object store. Any other long line is parsed in
memory, so a different serialisation still works, only less frugally, up to
:data:`MAX_JSON_LINE` bytes (the limit on any JSON body); a longer one is a 400.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from registry.hubserver.errors import BadRequest
from registry.hubserver.records import StoredObject
from registry.hubserver.storage import HubStorage, ObjectWriter
from registry.hubserver.wire import MAX_JSON_BODY

IN_MEMORY_LINE = 8 * 1024 * 1024
# The longest line parsed in memory when it is not a streamable file line (newline included).
MAX_JSON_LINE = MAX_JSON_BODY
_FILE_PREFIX = b'{"key": "file", "value": {"content": "'
_READ = 1024 * 1024
_MAX_TAIL = 1024 * 1024  # what may follow the content on its line: the path and the encoding


@dataclass(frozen=True)
class CommitItem:
    """One line of the payload: ``key`` and ``value``; ``stored`` is set when a file's content was
    streamed into the store already (``value`` then has no ``content``)."""

    number: int
    key: object
    value: dict[str, Any]
    stored: StoredObject | None = None


def read_commit_items(body: BinaryIO, storage: HubStorage, stored: list[StoredObject]) -> Iterator[CommitItem]:
    """The payload's lines, in order; raises :class:`BadRequest` on a malformed one.

    Every object a streamed file line puts into the store is appended to ``stored`` as soon as it is
    there, so the caller can remove it if the commit is refused.
    """
    number = 0
    while True:
        line = body.readline(IN_MEMORY_LINE)
        if not line:
            return
        number += 1
        if line.endswith(b"\n") or len(line) < IN_MEMORY_LINE:
            if line.strip():
                yield _parse(number, line)
            continue
        if line.startswith(_FILE_PREFIX):
            yield _stream_file(number, line[len(_FILE_PREFIX) :], body, storage, stored)
        else:
            # Bounded: one byte past the limit is enough to know the line is too long.
            line += body.readline(MAX_JSON_LINE + 1 - len(line))
            if len(line) > MAX_JSON_LINE:
                raise BadRequest(f"line {number} of the commit is longer than {MAX_JSON_LINE} bytes")
            yield _parse(number, line)


def _parse(number: int, line: bytes) -> CommitItem:
    try:
        item = json.loads(line)
    except ValueError:
        raise BadRequest(f"line {number} of the commit is not JSON") from None
    except RecursionError:
        raise BadRequest(f"line {number} of the commit nests JSON too deeply") from None
    if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
        raise BadRequest(f"line {number} of the commit must be {{'key': ..., 'value': {{...}}}}")
    return CommitItem(number, item.get("key"), item["value"])


def _stream_file(number: int, pending: bytes, body: BinaryIO, storage: HubStorage, stored: list[StoredObject]) -> CommitItem:
    with storage.object_writer() as writer:
        sink = _Base64Sink(writer, number)
        while True:
            quote = pending.find(b'"')
            if quote >= 0:
                sink.feed(pending[:quote])
                tail = pending[quote + 1 :]
                break
            sink.feed(pending)
            # readline, not read: it never runs past the end of this line into the next one.
            pending = body.readline(_READ)
            if not pending:
                raise BadRequest(f"line {number} of the commit ends inside a file's content")
        sink.close()
        while not tail.endswith(b"\n"):
            more = body.readline(_READ)
            if not more:
                break
            tail += more
            if len(tail) > _MAX_TAIL:
                raise BadRequest(f"line {number} of the commit is malformed after a file's content")
        obj = writer.finish()
        stored.append(obj)
    # What follows the content closes the JSON object: put an empty content back in front of it.
    item = _parse(number, _FILE_PREFIX + b'"' + tail)
    value = {k: v for k, v in item.value.items() if k != "content"}
    return CommitItem(number, item.key, value, obj)


class _Base64Sink:
    """Decodes base64 arriving in arbitrary pieces (only whole 4-character groups at a time)."""

    def __init__(self, writer: ObjectWriter, number: int) -> None:
        self._writer = writer
        self._number = number
        self._carry = b""

    def feed(self, data: bytes) -> None:
        data = self._carry + data
        whole = len(data) - len(data) % 4
        self._carry = data[whole:]
        if whole:
            self._decode(data[:whole])

    def close(self) -> None:
        if self._carry:
            raise BadRequest(f"line {self._number} of the commit: a file's content is not base64")

    def _decode(self, data: bytes) -> None:
        try:
            self._writer.write(base64.b64decode(data, validate=True))
        except (binascii.Error, ValueError):
            raise BadRequest(f"line {self._number} of the commit: a file's content is not base64") from None
