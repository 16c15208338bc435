"""softprompt-registry: a registry and packaging service for trained soft prompts.

The library is grouped in rooms (see the README's "Architecture" section): the core modules here
(errors, settings, db, models, types, refs, digest), then ``storage``, ``adapters``, ``catalogue``,
``verification``, ``hub``, ``ops``, ``ml`` (the only room that imports torch), ``demo`` and ``hubserver``.
"""

from __future__ import annotations

import importlib
from typing import Any

# Names that moved into rooms but that users' code imports from the top (``from registry import
# loading``, as the README showed); resolved lazily so ``import registry`` stays light.
_MOVED = {"loading": "registry.ml.loading"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return importlib.import_module(_MOVED[name])
    raise AttributeError(f"module 'registry' has no attribute {name!r}")
