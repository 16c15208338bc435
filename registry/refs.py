"""Parsing references: ``[namespace/]name[@N|@alias|@sha256:DIGEST]``.

A bare name means the latest active version. Names are validated here, once, so that no path
separator, control character or dot-segment from a user or a server reaches the filesystem.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from registry.digest import parse_digest
from registry.errors import UsageError

DEFAULT_NAMESPACE = "local"
# Hub-compatible: letters, digits, '-', '_', '.', not starting with '.' or '-', at most 96 characters.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}\Z")
_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}\Z")


@dataclass(frozen=True)
class Ref:
    """A parsed reference. Exactly one of ``number``, ``alias``, ``digest`` is set, or none (latest)."""

    namespace: str
    name: str
    number: int | None = None
    alias: str | None = None
    digest: str | None = None  # 64 hex, no prefix

    @property
    def full_name(self) -> str:
        return f"{self.namespace}/{self.name}"

    def __str__(self) -> str:
        if self.number is not None:
            return f"{self.full_name}@{self.number}"
        if self.alias is not None:
            return f"{self.full_name}@{self.alias}"
        if self.digest is not None:
            return f"{self.full_name}@sha256:{self.digest}"
        return self.full_name


def validate_name(value: str, what: str = "name") -> str:
    """Return ``value`` if it is a safe adapter or namespace name; raise :class:`UsageError` otherwise."""
    # fullmatch, not match: "$" also matches before a trailing newline ("coach\n" must fail).
    if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value or value.endswith(".git"):
        raise UsageError(
            f"invalid {what} {value!r}: expected 1-96 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit",
            hint="choose a name such as 'coach' or 'team/coach'",
        )
    return value


def validate_alias(value: str) -> str:
    """Return ``value`` if it is a valid alias (starts with a letter, so it never looks like a number)."""
    if not isinstance(value, str) or not _ALIAS.fullmatch(value) or ".." in value or value.lower() == "latest":
        raise UsageError(
            f"invalid alias {value!r}: expected a letter followed by letters, digits, '-', '_' or '.' "
            "('latest' is reserved)",
            hint="choose an alias such as 'prod' or 'staging'",
        )
    return value


def split_name(text: str) -> tuple[str, str]:
    """``ns/name`` or ``name`` -> ``(namespace, name)``, validated."""
    if text.count("/") > 1:
        raise UsageError(
            f"invalid adapter name {text!r}: expected 'name' or 'namespace/name'",
            hint="use at most one '/'",
        )
    namespace, _, name = text.rpartition("/")
    return validate_name(namespace or DEFAULT_NAMESPACE, "namespace"), validate_name(name, "name")


def parse_ref(text: str) -> Ref:
    """Parse a reference string; raise :class:`UsageError` with the expected form when malformed."""
    if not isinstance(text, str) or not text or len(text) > 300 or any(ord(c) < 32 for c in text):
        raise UsageError(
            f"invalid reference {text!r}: expected '[namespace/]name[@N|@alias|@sha256:DIGEST]'",
            hint="see 'spr list' for published adapters",
        )
    base, sep, selector = text.partition("@")
    namespace, name = split_name(base)
    if not sep:
        return Ref(namespace, name)
    if not selector:
        raise UsageError(
            f"invalid reference {text!r}: nothing after '@'",
            hint="write a version number, an alias or a digest, e.g. 'coach@2' or 'coach@prod'",
        )
    if selector.isascii() and selector.isdigit():  # str.isdigit() accepts "²", which int() refuses
        number = int(selector)
        if number < 1 or number > 10**9:
            raise UsageError(f"invalid version number {selector!r} in {text!r}: versions start at 1")
        return Ref(namespace, name, number=number)
    if selector.lower().startswith("sha256:"):
        return Ref(namespace, name, digest=parse_digest(selector))
    if selector.lower() == "latest":
        return Ref(namespace, name)
    return Ref(namespace, name, alias=validate_alias(selector))
