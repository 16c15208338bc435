"""The registry's one error hierarchy.

Every error the library raises on purpose is a :class:`RegistryError`. Each carries an
``exit_code`` (documented in the README) and a message that says what was expected, what
was found and what to do. Where a builtin exception fits, the class mixes it in, so callers
that catch ``FileNotFoundError`` or ``ValueError`` keep working (as ``huggingface_hub`` does).

The CLI formats these in one place (``registry.cli.main``); anything else is a bug and is
shown as one, with a traceback under ``--debug``.
"""

from __future__ import annotations

from typing import Any

# Exit codes, documented in the README. 2 is click's own code for a usage error.
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INCOMPATIBLE = 3
EXIT_NOT_FOUND = 4
EXIT_INTEGRITY = 5
EXIT_SCHEMA = 6
EXIT_HUB = 7
EXIT_INTERRUPTED = 130


class RegistryError(Exception):
    """Base class of every error the registry raises on purpose."""

    exit_code: int = EXIT_ERROR

    def __init__(self, message: str, *, hint: str | None = None, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.fields = fields

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}; {self.hint}"
        return self.message

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description, for ``--json`` output."""
        return {
            "error": type(self).__name__,
            "message": self.message,
            "hint": self.hint,
            "exit_code": self.exit_code,
            **{k: v for k, v in self.fields.items() if _jsonable(v)},
        }


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, list, dict))


class UsageError(RegistryError, ValueError):
    """An argument or option the user gave is malformed (bad ref, bad METRIC=VALUE, …)."""

    exit_code = EXIT_USAGE


class InvalidAdapterError(RegistryError, ValueError):
    """An adapter directory or file is not a valid PEFT adapter."""


class InvalidDatasetError(RegistryError, ValueError):
    """A dataset path cannot be read or digested."""


class InvalidBaseModelError(RegistryError, ValueError):
    """A base model directory or repo cannot be identified."""


class NotFoundError(RegistryError, LookupError):
    """A named thing (adapter, version, alias, file) does not exist."""

    exit_code = EXIT_NOT_FOUND


class AdapterNotFoundError(NotFoundError):
    """No adapter of that name in the catalogue."""


class VersionNotFoundError(NotFoundError):
    """The adapter exists but not that version, alias or digest."""


class AlreadyExistsError(RegistryError):
    """A unique thing (alias name, …) already exists and may not be replaced."""


class ImmutableError(RegistryError):
    """Something tried to change a published version's facts."""


class IntegrityError(RegistryError):
    """Stored bytes or records do not match their recorded digest."""

    exit_code = EXIT_INTEGRITY


class DigestMismatchError(IntegrityError):
    """A file's sha256 differs from the one recorded for it."""


class SchemaError(RegistryError):
    """The catalogue's schema is older or newer than this code."""

    exit_code = EXIT_SCHEMA


class DatabaseError(RegistryError):
    """The catalogue database failed in a way the user must act on (unreachable, locked too long)."""


class IncompatibleError(RegistryError):
    """An adapter does not fit a base model; ``findings`` lists why."""

    exit_code = EXIT_INCOMPATIBLE


class HubError(RegistryError):
    """The Hub (or the local Hub server) refused or failed a request."""

    exit_code = EXIT_HUB


class BlobStoreError(RegistryError):
    """The blob store (an S3 bucket, …) refused or failed: no credentials, access denied, unreachable."""


class BlobInUseError(BlobStoreError):
    """gc asked to remove a blob that a writer (possibly on another machine) is about to reference."""


class LockfileDriftError(IntegrityError):
    """What a lockfile pins no longer matches what the Hub serves."""


class DependencyMissingError(RegistryError, ImportError):
    """An optional dependency (the ``[ml]`` extra) is needed for this command."""


class InterruptedOperationError(RegistryError):
    """The user interrupted a long operation (Ctrl-C); nothing was published."""

    exit_code = EXIT_INTERRUPTED


class SignatureError(IntegrityError):
    """A signature bundle does not parse, does not verify, or covers other content than the version."""


class SigningKeyError(RegistryError, ValueError):
    """A private key, public key or certificate file cannot be used (wrong format, curve, expired)."""

    exit_code = EXIT_USAGE


class TrustPolicyError(RegistryError, ValueError):
    """A trust policy file does not parse or names keys that cannot be read."""

    exit_code = EXIT_USAGE


class UntrustedError(IncompatibleError):
    """The trust policy requires a trusted signature and the version has none; ``findings`` lists why."""
