"""``spr ui``: the read-only web catalogue (Starlette, Jinja2 templates, server-side SVG).

Needs the ``[ui]`` extra. HTTP in, catalogue query functions out: no SQL and no torch here.
"""

from __future__ import annotations

from registry.web.app import create_app

__all__ = ["create_app"]
