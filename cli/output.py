"""Rendering for people: tables, trees and progress bars on stderr (data goes to stdout)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING

from registry.digest import ProgressCallback

if TYPE_CHECKING:
    from rich.console import Console

_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}
PROGRESS_MIN_BYTES = 64 * 1024 * 1024  # smaller jobs finish before a bar is worth drawing


def stdout() -> Console:
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:
        # Piped output is read by scripts and grep: never fold a row into two lines.
        console = Console(highlight=False, width=240)
    return console


def stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def unescape(text: str) -> str:
    r"""Interpret ``\n``, ``\t`` and ``\\`` in a template typed on a command line."""
    return re.sub(r"\\([nt\\])", lambda m: _ESCAPES[m.group(1)], text)


def markup_safe(text: object) -> str:
    """User text (names, init text, templates, split names) printed through rich, never as markup."""
    from rich.markup import escape

    return escape(str(text))


def short_digest(digest: str | None, n: int = 12) -> str:
    if not digest:
        return "-"
    return digest.replace("sha256:", "")[:n]


def when(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


@contextmanager
def hashing_progress(total_bytes: int, description: str) -> Iterator[ProgressCallback | None]:
    """A progress bar on stderr for hashing ``total_bytes``, or None when small or not a terminal."""
    console = stderr()
    if total_bytes < PROGRESS_MIN_BYTES or not console.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        console=console, transient=True,
    ) as bar:
        task = bar.add_task(description, total=total_bytes)
        yield lambda n: bar.advance(task, n)


def human_bytes(n: float) -> str:
    """``512 B``, ``1.5 MB``, ``2.0 GB``: decimal units, as disks and the Hub count."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
