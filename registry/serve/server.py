"""Build the engine, bind the socket, run uvicorn: what ``spr serve`` does after parsing."""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any

from registry.errors import DependencyMissingError, UsageError

__all__ = ["serve"]


def serve(
    base_model: str,
    refs: Sequence[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int = 8,
    max_wait_ms: float = 10.0,
    token: str | None = None,
    db: str | None = None,
    allow_different_base: bool = False,
    announce: Callable[[str], None] = print,
) -> None:
    """Load ``base_model`` once with every ref in ``refs`` and serve them until interrupted.

    Refused refs are announced (with their finding) and left out; if none is left, raises
    :class:`UsageError`. The socket is bound before uvicorn starts, so ``port=0`` picks a free port
    and the announcement names it. Raises :class:`DependencyMissingError` without the ``[serve]``
    extra.
    """
    if max_batch < 1 or max_wait_ms < 0:
        raise UsageError(f"--max-batch must be >= 1 and --max-wait-ms >= 0 (got {max_batch}, {max_wait_ms})",
                         hint="e.g. --max-batch 8 --max-wait-ms 10")
    try:
        import uvicorn

        from registry.serve.app import create_app
    except ImportError as exc:
        raise DependencyMissingError(f"spr serve needs starlette and uvicorn ({exc})",
                                     hint="pip install 'softprompt-registry[serve]'") from exc
    from registry.ml.serving import SoftPromptEngine

    engine = SoftPromptEngine(base_model, list(refs), db=db, allow_different_base=allow_different_base)
    for ref, why in engine.refused.items():
        announce(f"refused {ref}: {why}")
    if not engine.adapters:
        raise UsageError("no ref could be served (each was refused above)", hint="fix the refs, or check them with 'spr verify'")
    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    for ref, a in engine.adapters.items():
        announce(f"serving {ref} -> {a.version_ref} {a.digest or ''} ({a.peft_type})".rstrip())
    shown = f"[{host}]" if ":" in host else host
    announce(f"listening on http://{shown}:{bound} (max batch {max_batch}, max wait {max_wait_ms:g} ms"
             + (", token required)" if token else ")"))
    app = create_app(engine, token=token, max_batch=max_batch, max_wait_ms=max_wait_ms)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


def _bind(host: str, port: int) -> Any:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}", hint="pick another --port (0 picks a free one)") from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
