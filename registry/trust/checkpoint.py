"""Checkpoints: a signed statement of the audit chain's head, kept outside the catalogue.

A hash chain stored only in the database it protects cannot show that its own tail was cut: delete
the newest events and what remains is still a valid chain. A checkpoint records the chain's length
and head hash at one moment; kept elsewhere (another system, a Hub repo), it lets
:func:`check_extends` prove that the catalogue still contains exactly those events as its first
``count`` (transparency logs do the same with signed tree heads).

The file is JSON::

    {"statement": {"format": "softprompt-registry/checkpoint/v1", "count": 1234,
                   "head": "<sha256 hex of event #1234>", "at": "2026-01-31T12:00:00.000000Z"},
     "signature": {"algorithm": "ecdsa-sha256", "key_fingerprint": "sha256:…",
                   "public_key": "-----BEGIN PUBLIC KEY-----…", "value": "<base64 DER>"}}

The signature (ECDSA over the canonical JSON of ``statement``) is optional; ``--public-key`` at
check time says which key must have made it.
"""

from __future__ import annotations

import base64
import errno
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from registry import catalogue
from registry.digest import canonical_json
from registry.errors import IntegrityError, UsageError
from registry.storage import atomic_write_bytes
from registry.trust import signing

FORMAT = "softprompt-registry/checkpoint/v1"
MAX_CHECKPOINT_BYTES = 100_000

@dataclass(frozen=True)
class Checkpoint:
    """A chain head as recorded: ``count`` events, the newest hashing to ``head``, at ``at``."""

    count: int
    head: str
    at: datetime
    signed_by: str | None = None  # key fingerprint when signed
    document: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "head": self.head, "at": _iso(self.at), "signed_by": self.signed_by}

def current(*, db: str | None = None) -> Checkpoint:
    """The catalogue's chain head now (unsigned)."""
    head = catalogue.chain_head(db=db)
    return Checkpoint(count=head.count, head=head.head_hash, at=datetime.now(timezone.utc))

def create(*, key: Path | None = None, password: str | None = None, db: str | None = None) -> Checkpoint:
    """A checkpoint of the current head, signed with the EC private ``key`` when given."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    cp = current(db=db)
    statement = {"format": FORMAT, "count": cp.count, "head": cp.head, "at": _iso(cp.at)}
    document: dict[str, Any] = {"statement": statement}
    fingerprint = None
    if key is not None:
        private = signing.load_private_key(key, password)
        fingerprint = signing.fingerprint_of(private.public_key())
        value = private.sign(canonical_json(statement), ec.ECDSA(hashes.SHA256()))
        document["signature"] = {
            "algorithm": "ecdsa-sha256", "key_fingerprint": fingerprint,
            "public_key": signing.public_pem(private.public_key()), "value": base64.b64encode(value).decode("ascii"),
        }
    return Checkpoint(cp.count, cp.head, cp.at, fingerprint, document)

def write(checkpoint: Checkpoint, destination: Path) -> Path:
    """Write ``checkpoint`` atomically to ``destination`` (temp file, fsync, rename)."""
    data = (json.dumps(checkpoint.document, indent=2, sort_keys=True) + "\n").encode("utf-8")
    destination = Path(destination)
    if not destination.parent.is_dir():  # an -o into a folder that does not exist is an error, not a mkdir
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(destination.parent))
    atomic_write_bytes(destination, data)
    return destination

def encode(checkpoint: Checkpoint) -> str:
    return json.dumps(checkpoint.document, indent=2, sort_keys=True) + "\n"

def read(path: Path | str, *, public_key: Path | None = None) -> Checkpoint:
    """Parse and (when signed) verify a checkpoint file.

    With ``public_key``, the checkpoint must be signed by that key. Raises
    :class:`~registry.errors.UsageError` for a file that is not a checkpoint and
    :class:`~registry.errors.IntegrityError` for a signature that does not verify.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CHECKPOINT_BYTES + 1)
    except FileNotFoundError:
        raise UsageError(f"checkpoint {path} does not exist", hint="pass a file written by 'spr audit checkpoint'") from None
    if len(data) > MAX_CHECKPOINT_BYTES:
        raise UsageError(f"checkpoint {path} is larger than {MAX_CHECKPOINT_BYTES} bytes; it is not a checkpoint")
    try:
        doc = json.loads(data)
        statement = doc["statement"]
        if statement["format"] != FORMAT:
            raise ValueError(f"format {str(statement['format'])[:60]!r}")
        count, head, at = statement["count"], statement["head"], statement["at"]
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError("count is not a non-negative integer")
        if not isinstance(head, str) or len(head) != 64 or any(c not in "0123456789abcdef" for c in head):
            raise ValueError("head is not a sha256 hex digest")
        when = datetime.strptime(at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise UsageError(
            f"checkpoint {path} is not a checkpoint ({str(exc)[:120] or type(exc).__name__})",
            hint="pass a file written by 'spr audit checkpoint'",
        ) from None
    sig = doc.get("signature")
    fingerprint = None
    if sig is not None:
        try:
            key = serialization.load_pem_public_key(str(sig["public_key"]).encode("ascii"))
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise ValueError("not an EC key")
            key.verify(base64.b64decode(sig["value"], validate=True), canonical_json(statement), ec.ECDSA(hashes.SHA256()))
            fingerprint = signing.fingerprint_of(key)
        except (InvalidSignature, ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(
                f"checkpoint {path}: its signature does not verify ({type(exc).__name__})",
                hint="the checkpoint was altered; use the copy kept elsewhere",
            ) from None
    if public_key is not None:
        expected = signing.fingerprint_of(signing.load_public_key(public_key))
        if fingerprint != expected:
            raise IntegrityError(
                f"checkpoint {path} is " + ("not signed" if fingerprint is None else f"signed by {fingerprint[:23]}…")
                + f", not by {public_key} ({expected[:23]}…)",
                hint="use the checkpoint your checkpoint key signed",
            )
    return Checkpoint(count, head, when, fingerprint, doc)

def check_extends(checkpoint: Checkpoint, *, db: str | None = None) -> list[str]:
    """Problems (one line each) if the catalogue does not still begin with the checkpoint's events.

    Together with the chain check (every event links to the one before it), equal hashes at the
    checkpoint's position prove that the first ``count`` events are exactly those recorded.
    """
    head = catalogue.chain_head(db=db)
    recorded = f"checkpoint of {_iso(checkpoint.at)} ({checkpoint.count} events, head {checkpoint.head[:12]}…)"
    if head.count < checkpoint.count:
        return [
            f"the catalogue holds {head.count} events but the {recorded} had {checkpoint.count}: "
            f"{checkpoint.count - head.count} event(s) up to the checkpoint were deleted (the newest, if nothing else is wrong)"
        ]
    if checkpoint.count == 0:
        return []
    found = catalogue.event_hash_at(checkpoint.count, db=db)
    if found != checkpoint.head:
        return [
            f"event #{checkpoint.count} hashes to {str(found)[:12]}…, not the {recorded}: events up to the "
            "checkpoint were deleted, edited or reordered"
        ]
    return []

def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


__all__ = ["FORMAT", "Checkpoint", "check_extends", "create", "current", "encode", "read", "write"]
