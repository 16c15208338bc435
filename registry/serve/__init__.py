"""``spr serve``: an OpenAI-compatible HTTP server over the soft-prompt engine (Starlette + uvicorn).

Public names: :func:`create_app` (the ASGI app over an engine) and :func:`serve` (build the engine,
bind, run uvicorn). Needs the ``[serve]`` extra; importing it never imports torch.
"""

from __future__ import annotations

from registry.serve.app import create_app
from registry.serve.server import serve

__all__ = ["create_app", "serve"]
