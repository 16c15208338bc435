"""The CLI as a whole: every command documented, user text printed verbatim, templates typed alike."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from adapter_files import write_prompt_adapter

from registry import catalogue
from registry.cli.main import cli, run

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in sorted(group.commands.items()):
        path = f"{prefix}{name}"
        found.append((path, command))
        if isinstance(command, click.Group):
            found.extend(_commands(command, path + " "))
    return found


COMMANDS = _commands(cli)


def test_there_are_commands_to_check() -> None:
    assert len(COMMANDS) > 20


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_command_has_help_and_is_in_the_readme(path: str, command: click.Command) -> None:
    assert (command.help or "").strip(), f"spr {path} has no help text"
    assert re.search(rf"`spr {re.escape(path)}\b", README), f"spr {path} is not documented in README.md"


def test_user_text_is_printed_verbatim_not_as_markup(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    catalogue.publish(write_prompt_adapter(tmp_path / "a"), "coach",
                      options=catalogue.PublishOptions(description="uses [bold]brackets[/bold] and [red]"))
    catalogue.deprecate("coach@1", "superseded [see ticket 12]")
    capsys.readouterr()
    assert run(["show", "coach@1"]) == 0
    out = capsys.readouterr().out
    assert "uses [bold]brackets[/bold] and [red]" in out
    assert "deprecated (superseded [see ticket 12])" in out
    assert run(["lineage", "coach@1"]) == 0
    assert "[deprecated]" in capsys.readouterr().out


def test_publish_interprets_template_escapes_like_train(tmp_path: Path) -> None:
    assert run(["publish", str(write_prompt_adapter(tmp_path / "a")), "--name", "coach",
                "--template", r"Human: {prompt}\n\nAssistant: "]) == 0
    assert catalogue.get_version("coach").template == "Human: {prompt}\n\nAssistant: "


def test_gc_default_grace_matches_the_library() -> None:
    from registry import ops
    from registry.cli import ops_cmds

    (grace,) = [p for p in ops_cmds.gc.params if p.name == "grace"]
    assert grace.default == ops.DEFAULT_GRACE_SECONDS == ops.gc.__kwdefaults__["grace_seconds"]


def test_loading_the_cli_imports_no_database_or_ml_library() -> None:
    # Each command imports what it needs when it runs: `spr --help` and the commands that
    # never touch the catalogue start fast.
    import subprocess
    import sys

    code = "import sys, registry.cli.main; print(sorted(m for m in ('sqlalchemy', 'torch', 'huggingface_hub', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
