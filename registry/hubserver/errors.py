"""Errors the Hub server answers with; each one knows its HTTP status and the Hub's ``X-Error-Code``.

These never leave the server package as exceptions a CLI user sees: the HTTP layer turns them into
responses the ``huggingface_hub`` client maps onto its own exceptions (``RepositoryNotFoundError``,
``RevisionNotFoundError``, ``EntryNotFoundError``, ``BadRequestError``, ``HfHubHTTPError``).
The storage test helpers (``tamper``, ``truncate``) raise them too.
"""

from __future__ import annotations

# The exact message the client recognises as "your token is wrong" (``utils/_http.py``).
INVALID_CREDENTIALS_MESSAGE = "Invalid credentials in Authorization header"


class HubServerError(Exception):
    """An error with an HTTP status, an optional ``X-Error-Code`` and a message for ``X-Error-Message``."""

    status: int = 500
    error_code: str | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(HubServerError):
    """Malformed input: a hostile path, bad JSON, a bad name (400 -> ``BadRequestError``)."""

    status = 400


class Unauthorized(HubServerError):
    """A bad token, or a write without a token (401)."""

    status = 401


class Forbidden(HubServerError):
    """A valid request the server will not perform (403)."""

    status = 403


class RepoNotFound(HubServerError, LookupError):
    """No such repo, or a private repo seen by an anonymous caller (404 ``RepoNotFound``)."""

    status = 404
    error_code = "RepoNotFound"


class RevisionNotFound(HubServerError, LookupError):
    """No branch, tag or commit of that name (404 ``RevisionNotFound``)."""

    status = 404
    error_code = "RevisionNotFound"


class EntryNotFound(HubServerError, LookupError):
    """No file or folder at that path in the revision (404 ``EntryNotFound``)."""

    status = 404
    error_code = "EntryNotFound"

    def __init__(self, message: str, commit: str | None = None) -> None:
        super().__init__(message)
        # Sent back as X-Repo-Commit: the client caches "file absent at this commit".
        self.commit = commit


class NotFound(HubServerError):
    """An unknown route (404, no error code)."""

    status = 404


class Conflict(HubServerError):
    """The thing to create already exists (409)."""

    status = 409

    def __init__(self, message: str, extra: dict[str, object] | None = None) -> None:
        super().__init__(message)
        # Extra JSON fields for the body: create_repo(exist_ok=True) reads "url" from a 409.
        self.extra = extra or {}


class Gone(HubServerError):
    """A stored object the metadata points to is missing from disk (410; deliberately not 5xx,
    which the client would retry for half a minute)."""

    status = 410


class PreconditionFailed(HubServerError):
    """``parentCommit`` is not the branch head any more (412)."""

    status = 412
