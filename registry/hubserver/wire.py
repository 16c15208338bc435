"""The request and response the Hub application sees, independent of the HTTP server that carries them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any, BinaryIO, Literal

from registry.hubserver.errors import BadRequest

# JSON bodies other than commits are small; refuse anything bigger before reading it into memory.
MAX_JSON_BODY = 16 * 1024 * 1024




@dataclass
class Request:
    """One HTTP request: ``raw_path`` is still percent-encoded, so ``%2F`` inside a segment stays one segment."""

    method: str
    raw_path: str
    query: Mapping[str, list[str]]
    headers: Message  # case-insensitive; http.client.HTTPMessage in the server
    body: BinaryIO
    base_url: str  # scheme://host:port as the client addressed the server: used to build URLs it can follow

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    def flag(self, name: str) -> bool:
        return (self.param(name) or "").lower() in ("1", "true", "yes")

    def read_all(self, limit: int = MAX_JSON_BODY) -> bytes:
        data = self.body.read(limit + 1)
        if len(data) > limit:
            raise BadRequest(f"request body larger than {limit} bytes")
        return data

    def json(self) -> Any:
        """The body parsed as JSON; :class:`BadRequest` if it is not."""
        try:
            return json.loads(self.read_all() or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"request body is not valid JSON: {exc}") from None
        except RecursionError:
            raise BadRequest("request body nests JSON too deeply") from None

    def json_object(self) -> dict[str, Any]:
        data = self.json()
        if not isinstance(data, dict):
            raise BadRequest("request body must be a JSON object")
        return data


@dataclass(frozen=True)
class FileBody:
    """Part of a file on disk, sent without reading it into memory."""

    path: Path
    offset: int
    length: int


@dataclass
class Response:
    """Status, headers and a body of bytes or a file slice. ``Content-Length`` is added unless already set."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | FileBody = b""

    @classmethod
    def json(
        cls,
        data: Any,
        status: int = 200,
        headers: list[tuple[str, str]] | None = None,
        content_type: str = "application/json; charset=utf-8",
    ) -> Response:
        payload = json.dumps(data, ensure_ascii=False).encode()
        return cls(status, [("Content-Type", content_type), *(headers or [])], payload)

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None


def parse_range(header: str | None, size: int) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """A single ``bytes=`` range as inclusive ``(start, end)``; None means "send everything".

    Several ranges, or a header that is not a bytes range, are ignored (allowed by RFC 9110).
    """
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            if not last:
                return None
            length = int(last)
            if length <= 0:
                return "unsatisfiable"
            return (max(0, size - length), size - 1) if size else "unsatisfiable"
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size:
        return "unsatisfiable"
    if start < 0 or end < start:
        return None
    return start, min(end, size - 1)
