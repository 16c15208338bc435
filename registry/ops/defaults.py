"""Defaults of the operations commands, in a module light enough for the CLI to read at start-up.

It imports nothing; ``registry.ops`` re-exports it, and ``spr gc --grace`` shows it.
"""

from __future__ import annotations

DEFAULT_GRACE_SECONDS = 3600.0
"""How old an unreferenced blob or temp file must be before gc removes it (a publish in flight is younger)."""

__all__ = ["DEFAULT_GRACE_SECONDS"]
