"""The OpenAI-compatible wire format: request validation and response bodies (no HTTP, no model code).

Validation happens at the edge: a request body that is not what the OpenAI API accepts, or asks
for something this server does not do (``n != 1``, ``logprobs``, ``best_of``), is refused with a
:class:`ProtocolError` that names the field; the HTTP layer turns it into a 400 with OpenAI's error
shape ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_STOP",
    "MAX_TOKENS_LIMIT",
    "CompletionParams",
    "ProtocolError",
    "chat_chunk",
    "chat_response",
    "completion_chunk",
    "completion_response",
    "error_body",
    "models_body",
    "parse_body",
    "parse_chat",
    "parse_completion",
]

MAX_BODY_BYTES = 1024 * 1024
"""Largest request body accepted (413 above)."""

MAX_TOKENS_LIMIT = 4096
"""Largest ``max_tokens`` accepted before the context check (which is usually stricter)."""

MAX_STOP = 4
"""At most this many stop strings (as OpenAI)."""

MAX_MESSAGES = 256
MAX_JSON_DEPTH = 32


class ProtocolError(Exception):
    """A request the server refuses: HTTP ``status``, a message naming the problem, the field at fault."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        self.kind = kind
        self.extra = dict(extra or {})


def error_body(exc: ProtocolError) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": exc.message, "type": exc.kind, "param": exc.param, "code": exc.code, **exc.extra}}


@dataclass(frozen=True)
class CompletionParams:
    """A validated completion or chat request."""

    model: str
    prompt: str | None  # completions
    messages: tuple[dict[str, str], ...] | None  # chat
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    no_template: bool
    extra: dict[str, Any] = field(default_factory=dict)


def _depth(value: Any, limit: int) -> int:
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, d + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, d + 1) for v in item)
    return deepest


def parse_body(raw: bytes) -> dict[str, Any]:
    """Decode a JSON object body (at most :data:`MAX_BODY_BYTES`, nesting at most 32 deep)."""
    if len(raw) > MAX_BODY_BYTES:
        raise ProtocolError(f"request body is {len(raw)} bytes; the limit is {MAX_BODY_BYTES} bytes (1 MiB)", status=413)
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"request body is not valid JSON: {str(exc)[:120]}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"request body must be a JSON object, found {type(body).__name__}", code="invalid_json")
    if _depth(body, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise ProtocolError(f"request body nests deeper than {MAX_JSON_DEPTH} levels", code="invalid_json")
    return body


def _typed(body: Mapping[str, Any], key: str, kinds: tuple[type, ...], what: str, default: Any) -> Any:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds:
        raise ProtocolError(f"'{key}' must be {what}, found a boolean", param=key)
    if not isinstance(value, kinds):
        raise ProtocolError(f"'{key}' must be {what}, found {type(value).__name__}", param=key)
    return value


def _common(body: Mapping[str, Any]) -> dict[str, Any]:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ProtocolError("'model' is required: the served ref to answer with, e.g. 'team/coach@prod'", param="model")
    n = _typed(body, "n", (int,), "an integer", 1)
    if n != 1:
        raise ProtocolError(f"'n' must be 1 (one choice per request); found {n}", param="n")
    for key in ("best_of",):
        if body.get(key) not in (None, 1):
            raise ProtocolError(f"'{key}' is not supported; leave it out", param=key)
    if body.get("logprobs") not in (None, False, 0) or body.get("top_logprobs") not in (None, 0):
        raise ProtocolError("'logprobs' is not supported by this server; leave it out", param="logprobs")
    if body.get("echo") not in (None, False):
        raise ProtocolError("'echo' is not supported; leave it out", param="echo")
    max_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _typed(body, max_key, (int,), "an integer", 16)
    if not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise ProtocolError(f"'{max_key}' must be between 1 and {MAX_TOKENS_LIMIT}; found {max_tokens}", param=max_key)
    temperature = float(_typed(body, "temperature", (int, float), "a number", 1.0))
    if not 0.0 <= temperature <= 2.0:
        raise ProtocolError(f"'temperature' must be between 0 and 2; found {temperature}", param="temperature")
    top_p = float(_typed(body, "top_p", (int, float), "a number", 1.0))
    if not 0.0 < top_p <= 1.0:
        raise ProtocolError(f"'top_p' must be in (0, 1]; found {top_p}", param="top_p")
    seed = _typed(body, "seed", (int,), "an integer", None)
    if seed is not None and not 0 <= seed < 2**63:
        raise ProtocolError(f"'seed' must be between 0 and 2**63 - 1; found {seed}", param="seed")
    stop_raw = body.get("stop")
    if stop_raw is None:
        stop: tuple[str, ...] = ()
    elif isinstance(stop_raw, str):
        stop = (stop_raw,)
    elif isinstance(stop_raw, list) and all(isinstance(s, str) for s in stop_raw):
        stop = tuple(stop_raw)
    else:
        raise ProtocolError("'stop' must be a string or a list of strings", param="stop")
    if len(stop) > MAX_STOP or any(not s or len(s) > 200 for s in stop):
        raise ProtocolError(f"'stop' takes at most {MAX_STOP} non-empty strings of at most 200 characters", param="stop")
    stream = _typed(body, "stream", (bool,), "a boolean", False)
    no_template = _typed(body, "no_template", (bool,), "a boolean", False)
    return dict(model=model, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, stop=stop,
                stream=stream, no_template=no_template)


def parse_completion(body: Mapping[str, Any]) -> CompletionParams:
    """Validate a ``/v1/completions`` body; ``prompt`` is a string (or a list holding one string)."""
    common = _common(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise ProtocolError("'prompt' must be one string (a list of prompts or of token ids is not supported)", param="prompt")
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ProtocolError("'prompt' is required and must be a string", param="prompt")
    return CompletionParams(prompt=prompt, messages=None, **common)


def parse_chat(body: Mapping[str, Any]) -> CompletionParams:
    """Validate a ``/v1/chat/completions`` body: ``messages`` of ``{"role", "content": str}``."""
    common = _common(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or len(messages) > MAX_MESSAGES:
        raise ProtocolError(f"'messages' must be a non-empty list of at most {MAX_MESSAGES} messages", param="messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
            raise ProtocolError(
                f"messages[{i}] must be {{'role': 'system'|'user'|'assistant', 'content': '<text>'}}", param=f"messages[{i}]"
            )
        out.append({"role": str(m["role"]), "content": str(m["content"])})
    return CompletionParams(prompt=None, messages=tuple(out), **common)


def _ids(prefix: str) -> tuple[str, int]:
    return f"{prefix}-{uuid.uuid4().hex[:24]}", int(time.time())


def _spr(served: Mapping[str, Any], batch_size: int | None) -> dict[str, Any]:
    out = {"version": served.get("version_ref"), "digest": served.get("digest")}
    if batch_size is not None:
        out["batch_size"] = batch_size
    return out


def _fingerprint(served: Mapping[str, Any]) -> str:
    return str(served.get("digest") or f"dir:{served.get('version_ref')}")


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def completion_response(model: str, served: Mapping[str, Any], text: str, finish_reason: str, prompt_tokens: int,
                        completion_tokens: int, batch_size: int) -> dict[str, Any]:
    """A ``text_completion`` object; ``system_fingerprint`` is the version digest served."""
    cid, created = _ids("cmpl")
    return {
        "id": cid, "object": "text_completion", "created": created, "model": model,
        "system_fingerprint": _fingerprint(served),
        "choices": [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}],
        "usage": _usage(prompt_tokens, completion_tokens),
        "spr": _spr(served, batch_size),
    }


def chat_response(model: str, served: Mapping[str, Any], text: str, finish_reason: str, prompt_tokens: int,
                  completion_tokens: int, batch_size: int) -> dict[str, Any]:
    """A ``chat.completion`` object."""
    cid, created = _ids("chatcmpl")
    return {
        "id": cid, "object": "chat.completion", "created": created, "model": model,
        "system_fingerprint": _fingerprint(served),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason,
                     "logprobs": None}],
        "usage": _usage(prompt_tokens, completion_tokens),
        "spr": _spr(served, batch_size),
    }


def completion_chunk(cid: str, created: int, model: str, served: Mapping[str, Any], text: str,
                     finish_reason: str | None) -> dict[str, Any]:
    """One streamed ``text_completion`` chunk."""
    return {
        "id": cid, "object": "text_completion", "created": created, "model": model,
        "system_fingerprint": _fingerprint(served),
        "choices": [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}],
    }


def chat_chunk(cid: str, created: int, model: str, served: Mapping[str, Any], delta: Mapping[str, str],
               finish_reason: str | None) -> dict[str, Any]:
    """One streamed ``chat.completion.chunk``."""
    return {
        "id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
        "system_fingerprint": _fingerprint(served),
        "choices": [{"index": 0, "delta": dict(delta), "finish_reason": finish_reason, "logprobs": None}],
    }


def models_body(served: Sequence[Mapping[str, Any]], created: int) -> dict[str, Any]:
    """``GET /v1/models``: one entry per served ref, with the version and digest it resolves to."""
    return {
        "object": "list",
        "data": [
            {"id": s["ref"], "object": "model", "created": created, "owned_by": "spr", "root": s.get("version_ref"),
             "digest": s.get("digest"), "peft_type": s.get("peft_type")}
            for s in served
        ],
    }


def new_stream_ids(chat: bool) -> tuple[str, int]:
    """An id and timestamp shared by every chunk of one stream."""
    return _ids("chatcmpl" if chat else "cmpl")
