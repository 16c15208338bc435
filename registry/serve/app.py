"""The ASGI app of ``spr serve``: OpenAI-compatible routes over a :class:`SoftPromptEngine`.

HTTP in, library calls out: requests are validated at the edge (:mod:`registry.serve.protocol`),
prepared by the engine (unknown model -> 404 listing the served refs, too long -> 400 naming the
limit), and queued. One worker gathers queued requests into a batch (up to ``max_batch`` rows,
waiting at most ``max_wait_ms`` after the first one arrives; requests arriving while a batch runs
join the next one) and runs it on a thread, so the event loop keeps accepting requests. Streaming
responses are server-sent events fed from the engine's per-row text callback; a client that goes
away marks its row cancelled and the engine drops it at the next token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from registry.errors import NotFoundError, RegistryError, UsageError
from registry.serve import protocol
from registry.serve.metrics import Metrics
from registry.serve.protocol import CompletionParams, ProtocolError

__all__ = ["Batcher", "create_app"]


@dataclass
class Job:
    """One queued request: what the engine prepared, and how its answer travels back."""

    prepared: Any
    stream: bool
    future: asyncio.Future[Any]
    events: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)


class Batcher:
    """Dynamic batching: one worker task, batches bounded by ``max_batch`` and ``max_wait_ms``."""

    def __init__(self, engine: Any, metrics: Metrics, *, max_batch: int, max_wait_ms: float) -> None:
        self.engine = engine
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def submit(self, job: Job) -> None:
        await self.queue.put(job)
        self.metrics.queue_depth = self.queue.qsize()

    async def _gather(self) -> list[Job]:
        loop = asyncio.get_running_loop()
        batch = [await self.queue.get()]
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                while len(batch) < self.max_batch and not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        self.metrics.queue_depth = self.queue.qsize()
        live = []
        for j in batch:
            if j.cancelled.is_set():  # its client left while it waited
                j.future.cancel()
            else:
                live.append(j)
        return live

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._gather()
            if not jobs:
                continue

            def on_text(i: int, delta: str, jobs: list[Job] = jobs) -> bool:
                job = jobs[i]
                if job.cancelled.is_set():
                    return False
                if job.stream:
                    loop.call_soon_threadsafe(job.events.put_nowait, delta)
                return True

            started = time.perf_counter()
            try:
                streaming = any(j.stream for j in jobs)  # without a stream, no per-token text is needed
                results = await run_in_threadpool(self.engine.run, [j.prepared for j in jobs],
                                                  on_text=on_text if streaming else None)
            except Exception as exc:  # a failed batch fails its requests, never the server
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(exc)
                    j.events.put_nowait(exc)
                continue
            elapsed = time.perf_counter() - started
            self.metrics.batch(
                len(jobs), sum(len(r.token_ids) for r in results), elapsed,
                [(r.ref, r.prompt_tokens, len(r.token_ids), r.finish_reason) for r in results],
            )
            for j, r in zip(jobs, results, strict=True):
                if not j.future.done():
                    j.future.set_result(r)
                j.events.put_nowait(r)


def _json_error(exc: ProtocolError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(protocol.error_body(exc), status_code=exc.status, headers=headers)


async def _drain(request: HttpRequest) -> None:
    """Read and drop a refused body (up to 8 MiB) so the client reads the 413 instead of a reset connection."""
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > 8 * protocol.MAX_BODY_BYTES:
            return


async def _read_body(request: HttpRequest) -> dict[str, Any]:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > protocol.MAX_BODY_BYTES:
        await _drain(request)
        raise ProtocolError(f"request body is {length} bytes; the limit is {protocol.MAX_BODY_BYTES} bytes (1 MiB)", status=413)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():  # no or a false Content-Length: count what arrives
        size += len(chunk)
        if size > protocol.MAX_BODY_BYTES:
            chunks = []
            if size > 8 * protocol.MAX_BODY_BYTES:
                break  # stop reading; the connection may be reset
            continue  # drop the rest (see _drain)
        chunks.append(chunk)
    if size > protocol.MAX_BODY_BYTES:
        raise ProtocolError(f"request body is over the limit of {protocol.MAX_BODY_BYTES} bytes (1 MiB)", status=413)
    return protocol.parse_body(b"".join(chunks))


def _served_facts(engine: Any) -> dict[str, dict[str, Any]]:
    return {
        ref: {"ref": ref, "version_ref": a.version_ref, "digest": a.digest, "peft_type": a.peft_type}
        for ref, a in engine.adapters.items()
    }


def _sse(payload: Mapping[str, Any] | str) -> bytes:
    text = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


def create_app(engine: Any, *, token: str | None = None, max_batch: int = 8, max_wait_ms: float = 10.0) -> Starlette:
    """The Starlette app serving ``engine``; ``token`` (if set) is required as ``Authorization: Bearer``."""
    from registry.ml.serving.engine import Request as EngineRequest  # no torch at import

    metrics = Metrics()
    batcher = Batcher(engine, metrics, max_batch=max_batch, max_wait_ms=max_wait_ms)
    started = int(time.time())

    def check_token(request: HttpRequest) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise ProtocolError("missing or wrong API token; send 'Authorization: Bearer <token>'", status=401,
                                kind="authentication_error", code="invalid_api_key")

    async def health(request: HttpRequest) -> Response:
        return JSONResponse({"status": "ok", "base_model": engine.base_name, "served": sorted(engine.adapters),
                             "refused": sorted(engine.refused)})

    async def metrics_route(request: HttpRequest) -> Response:
        try:
            check_token(request)
        except ProtocolError as exc:
            return _json_error(exc)
        metrics.queue_depth = batcher.queue.qsize()
        return PlainTextResponse(metrics.render(_served_facts(engine)), media_type="text/plain; version=0.0.4")

    async def models(request: HttpRequest) -> Response:
        try:
            check_token(request)
        except ProtocolError as exc:
            return _json_error(exc)
        return JSONResponse(protocol.models_body(list(_served_facts(engine).values()), started))

    async def reload(request: HttpRequest) -> Response:
        if token is None:
            return _json_error(ProtocolError("POST /admin/reload needs the server to run with --token", status=403,
                                             kind="permission_error"))
        try:
            check_token(request)
        except ProtocolError as exc:
            return _json_error(exc)
        changed = await run_in_threadpool(engine.reload)
        return JSONResponse({
            "changed": {ref: {"from": old, "to": new} for ref, (old, new) in changed.items()},
            "served": _served_facts(engine),
            "refused": dict(engine.refused),
        })

    async def complete(request: HttpRequest, chat: bool) -> Response:
        model = "?"
        try:
            check_token(request)
            body = await _read_body(request)
            params: CompletionParams = protocol.parse_chat(body) if chat else protocol.parse_completion(body)
            model = params.model
            prompt = params.prompt
            if chat:
                assert params.messages is not None
                if params.model not in engine.adapters:
                    engine.prepare(EngineRequest(ref=params.model, prompt=""))  # raises the 404 with the served list
                prompt = engine.chat_prompt(params.messages)
            assert prompt is not None
            ereq = EngineRequest(
                ref=params.model, prompt=prompt, max_new_tokens=params.max_tokens, temperature=params.temperature,
                top_p=params.top_p, seed=params.seed, stop=params.stop, no_template=params.no_template or chat,
            )
            prepared = await run_in_threadpool(engine.prepare, ereq)
        except ProtocolError as exc:
            metrics.request(model, str(exc.status))
            return _json_error(exc)
        except NotFoundError:
            metrics.request(model, "404")
            names = sorted(engine.adapters)
            return _json_error(ProtocolError(
                f"model {model!r} is not served here; served: {', '.join(names) or 'none'}", status=404,
                param="model", code="model_not_found", extra={"served": names},
            ))
        except UsageError as exc:
            metrics.request(model, "400")
            limit = exc.fields.get("limit")
            return _json_error(ProtocolError(str(exc), param="prompt" if limit else None,
                                             code="context_length_exceeded" if limit else None,
                                             extra={"limit": limit} if limit else None))
        # the version fixed when the request was prepared (an alias reload meanwhile does not change it)
        served = {"ref": params.model, "version_ref": prepared.adapter.version_ref, "digest": prepared.adapter.digest}
        loop = asyncio.get_running_loop()
        job = Job(prepared=prepared, stream=params.stream, future=loop.create_future())
        await batcher.submit(job)
        if not params.stream:
            try:
                result = await job.future
            except RegistryError as exc:
                metrics.request(model, "503")
                return _json_error(ProtocolError(str(exc), status=503, kind="server_error"))
            except Exception as exc:  # the batch failed (e.g. out of memory): this request fails, the server stays
                metrics.request(model, "500")
                return _json_error(ProtocolError(f"the batch failed: {type(exc).__name__}: {str(exc)[:200]}",
                                                 status=500, kind="server_error"))
            metrics.request(model, "200")
            build = protocol.chat_response if chat else protocol.completion_response
            return JSONResponse(build(model, served, result.text, _finish(result.finish_reason), result.prompt_tokens,
                                      len(result.token_ids), result.batch_size))
        metrics.request(model, "200")
        return StreamingResponse(_stream(job, chat, model, served), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    async def _stream(job: Job, chat: bool, model: str, served: Mapping[str, Any]) -> AsyncIterator[bytes]:
        cid, created = protocol.new_stream_ids(chat)
        finished = False
        try:
            if chat:
                yield _sse(protocol.chat_chunk(cid, created, model, served, {"role": "assistant", "content": ""}, None))
            while True:
                event = await job.events.get()
                if isinstance(event, str):
                    if chat:
                        yield _sse(protocol.chat_chunk(cid, created, model, served, {"content": event}, None))
                    else:
                        yield _sse(protocol.completion_chunk(cid, created, model, served, event, None))
                    continue
                if isinstance(event, BaseException):
                    yield _sse({"error": {"message": str(event), "type": "server_error", "param": None, "code": None}})
                else:
                    reason = _finish(event.finish_reason)
                    if chat:
                        yield _sse(protocol.chat_chunk(cid, created, model, served, {}, reason))
                    else:
                        yield _sse(protocol.completion_chunk(cid, created, model, served, "", reason))
                yield _sse("[DONE]")
                finished = True
                return
        finally:
            if not finished:  # the client went away: free its row at the next token
                job.cancelled.set()

    async def completions(request: HttpRequest) -> Response:
        return await complete(request, chat=False)

    async def chat_completions(request: HttpRequest) -> Response:
        return await complete(request, chat=True)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics_route, methods=["GET"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/admin/reload", reload, methods=["POST"]),
        ],
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    app.state.batcher = batcher
    return app


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"
