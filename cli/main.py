"""Entry point of the ``spr`` console script: registers every command module on the group."""

from __future__ import annotations

import sys

from registry.cli import (  # noqa: F401  (importing registers the commands)
    blobs_cmds,
    catalogue_cmds,
    demo_cmd,
    hub_cmds,
    ops_cmds,
    serve_cmds,
    train_cmds,
    trust_cmds,
    ui_cmds,
    verify_cmds,
)
from registry.cli.app import cli, run

__all__ = ["cli", "main", "run"]


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
