"""Bearer tokens the Hub server accepts, and the user name each one acts as.

A token is given as ``"TOKEN"`` or ``"TOKEN USERNAME"``: the same syntax on the command line
(``--token``) and in a tokens file (one per line, blank lines and ``#`` comments ignored). The
user name (default ``user``) is what ``/api/whoami-v2`` answers and the namespace a repo is
created in when the client names none. Every valid token may read and write every repo: the
server has no per-namespace permissions. Tokens are kept only as sha256 digests and never appear
in an error message or a log.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from registry.errors import UsageError
from registry.hubserver.errors import BadRequest
from registry.hubserver.validation import validate_name_part

DEFAULT_USERNAME = "user"


class TokenRegistry:
    """The accepted tokens; ``user_for(token)`` says who a token is, or None for an unknown one."""

    def __init__(self, entries: Iterable[str] = (), tokens_file: Path | None = None) -> None:
        self._users: dict[str, str] = {}
        for index, entry in enumerate(entries, start=1):
            self._add(entry, where=f"token #{index}")
        if tokens_file is not None:
            try:
                lines = Path(tokens_file).read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise UsageError(
                    f"cannot read the tokens file {tokens_file}: {exc.strerror}",
                    hint="give a readable file with one 'TOKEN [USERNAME]' per line",
                ) from exc
            for number, line in enumerate(lines, start=1):
                stripped = line.strip()
                if stripped and not stripped.startswith("#"):
                    self._add(stripped, where=f"line {number} of {tokens_file}")

    def _add(self, entry: str, *, where: str) -> None:
        parts = entry.split()
        if len(parts) not in (1, 2) or not all(part.isprintable() for part in parts):
            raise UsageError(f"{where} is not 'TOKEN' or 'TOKEN USERNAME'", hint="tokens contain no spaces")
        username = parts[1] if len(parts) == 2 else DEFAULT_USERNAME
        try:
            validate_name_part(username, "namespace")
        except BadRequest as exc:
            raise UsageError(f"{where}: {exc.message}") from None
        self._users[_digest(parts[0])] = username

    def user_for(self, token: str) -> str | None:
        """The user name of ``token``, or None if the server does not accept it."""
        return self._users.get(_digest(token))

    def __len__(self) -> int:
        return len(self._users)

    def __repr__(self) -> str:
        return f"TokenRegistry({len(self)} tokens)"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
