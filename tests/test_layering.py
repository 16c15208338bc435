"""The house rules of the layout (README "Architecture"), checked on the source itself.

Each room of ``registry/`` may import only the rooms below it; torch, transformers and peft are
imported at module level only inside ``registry/ml`` and ``registry/demo``; the Hub server imports
nothing from the library but the error types; ``cli/`` holds no SQL; no module grows past the size
a reader can hold in their head. The checks read the source with ``ast``, so a lazy import inside a
function counts for layering (it is still a dependency) but not for the torch rule (which is about
what importing a module costs).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = {"errors", "settings", "db", "models", "types", "refs", "digest", "migrations"}

# room -> the rooms it may import (core always allowed). Data flows one way: cli -> capabilities ->
# catalogue -> storage/core.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "storage": set(),
    "adapters": {"storage"},
    "catalogue": {"storage", "adapters"},
    "trust": {"storage", "adapters", "catalogue"},
    "verification": {"storage", "adapters", "catalogue", "trust"},
    "hub": {"storage", "adapters", "catalogue", "verification", "trust"},
    "ops": {"storage", "adapters", "catalogue", "trust"},
    "ml": {"storage", "adapters", "catalogue", "verification", "trust", "hub"},
    "serve": {"storage", "adapters", "catalogue", "verification", "trust", "hub", "ml"},
    "web": {"storage", "adapters", "catalogue", "verification", "trust", "hub", "ops"},
    "demo": {"storage", "adapters", "catalogue", "verification", "trust", "hub", "ml"},
    "hubserver": set(),
}
# Single imports allowed against the table, each with the reason (keep this short).
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("adapters", "registry.hub.remote_base"): "a base model named REPO[@REV] is read over the one Hub client "
    "(range requests); imported inside basemodel.identify/inspect, only for remote specs",
}
HEAVY = ("torch", "transformers", "peft", "accelerate", "tokenizers")
TORCH_ROOMS = {"ml", "demo"}
MAX_LINES = 700
# Modules allowed past MAX_LINES, each with the reason (keep this empty where possible).
OVERSIZE: dict[str, str] = {}


def _modules(folder: str) -> Iterator[Path]:
    yield from sorted((ROOT / folder).rglob("*.py"))


def _room(path: Path) -> str:
    rel = path.relative_to(ROOT / "registry")
    if len(rel.parts) == 1:
        return "core"
    return rel.parts[0]


def _imports(tree: ast.AST, *, module_level_only: bool) -> Iterator[tuple[int, str]]:
    nodes = tree.body if module_level_only and isinstance(tree, ast.Module) else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "registry":
                # `from registry.hub import remote_base` names the module registry.hub.remote_base
                for alias in node.names:
                    yield node.lineno, f"{node.module}.{alias.name}"
            else:
                yield node.lineno, node.module
        elif module_level_only and isinstance(node, (ast.If, ast.Try)):
            # `if TYPE_CHECKING:` blocks cost nothing at run time; try/except imports do.
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            yield from _imports(ast.Module(body=list(ast.iter_child_nodes(node)), type_ignores=[]), module_level_only=True)


def _target_room(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "registry" or len(parts) == 1:
        return None
    if parts[1] in CORE:
        return "core"
    if parts[1] == "cli":
        return "cli"
    return parts[1]


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def test_rooms_import_only_the_rooms_below_them() -> None:
    problems = []
    for path in _modules("registry"):
        room = _room(path)
        if room not in ALLOWED:
            problems.append(f"{path.relative_to(ROOT)}: room '{room}' is not in the layering table; add it")
            continue
        for line, module in _imports(_parse(path), module_level_only=False):
            target = _target_room(module)
            if target is None or target == room or target == "core":
                continue
            if (room, module) in EXCEPTIONS:
                continue
            if room == "hubserver" or target not in ALLOWED[room]:
                problems.append(f"{path.relative_to(ROOT)}:{line}: room '{room}' imports {module}")
    assert problems == []


def test_hub_server_shares_nothing_but_error_types() -> None:
    problems = []
    for path in _modules("registry/hubserver"):
        for line, module in _imports(_parse(path), module_level_only=False):
            if module.startswith("registry") and not module.startswith(("registry.hubserver", "registry.errors")):
                problems.append(f"{path.relative_to(ROOT)}:{line}: {module}")
    assert problems == []


@pytest.mark.parametrize("folder", ["registry", "cli"])
def test_torch_is_imported_at_module_level_only_in_ml_and_demo(folder: str) -> None:
    problems = []
    for path in _modules(folder):
        if folder == "registry" and _room(path) in TORCH_ROOMS:
            continue
        for line, module in _imports(_parse(path), module_level_only=True):
            if module.split(".")[0] in HEAVY:
                problems.append(f"{path.relative_to(ROOT)}:{line}: imports {module} at module level")
    assert problems == []


def test_cli_has_no_sql_and_no_sessions() -> None:
    problems = []
    for path in _modules("cli"):
        for line, module in _imports(_parse(path), module_level_only=False):
            # registry.db's public functions (upgrade_url, revision_status) are library calls for
            # `spr db`; the ORM rows and SQLAlchemy itself are the catalogue's business.
            if module.split(".")[0] in {"sqlalchemy", "sqlite3", "psycopg"} or module == "registry.models":
                problems.append(f"{path.relative_to(ROOT)}:{line}: imports {module}")
    assert problems == []


@pytest.mark.parametrize("folder", ["registry", "cli"])
def test_no_module_is_too_long_to_read(folder: str) -> None:
    long = {}
    for path in _modules(folder):
        rel = str(path.relative_to(ROOT))
        n = len(path.read_text().splitlines())
        if n > MAX_LINES and rel not in OVERSIZE:
            long[rel] = n
    assert long == {}, f"split these modules (or list them in OVERSIZE with the reason): {long}"


def test_the_layering_check_sees_a_violation(tmp_path: Path) -> None:
    """The checker itself: a storage module importing the catalogue is reported."""
    bad = ast.parse("from registry import catalogue\nimport torch\n")
    found = list(_imports(bad, module_level_only=True))
    assert (1, "registry.catalogue") in found and (2, "torch") in found
    assert _target_room("registry.catalogue.queries") == "catalogue"
    assert "catalogue" not in ALLOWED["storage"]
