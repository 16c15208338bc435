"""Trust: signed versions (OpenSSF ``model-signing``), trust policies and signed audit checkpoints.

The public surface of the room:

- :func:`sign` / :func:`attach`: sign a version with a key or certificate, or store a bundle made
  elsewhere (``model_signing sign`` over an exported directory); either is verified against the
  version before anything is stored, then recorded with a ``sign`` event.
- :func:`check` / :func:`enforce`: verify a version's stored signatures and judge them under the
  trust policy (``--trust-policy`` or ``$SPR_TRUST_POLICY``); ``enforce`` raises
  :class:`~registry.errors.UntrustedError` (exit 3) when the policy refuses.
- :mod:`registry.trust.checkpoint`: signed statements of the audit chain's head.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from registry import catalogue, settings
from registry.adapters.compat import Finding
from registry.errors import DependencyMissingError, SignatureError
from registry.trust import signing
from registry.trust.policy import Policy, SignatureCheck, TrustReport, load_policy
from registry.trust.signing import SIGNATURE_FILENAME, manifest_bytes
from registry.types import SignatureInfo, VersionInfo


@dataclass(frozen=True)
class SignResult:
    signature: SignatureInfo
    created: bool  # False when this key had already signed the version (the stored one is returned)


def sign(
    ref: str, key: Path | str, *, certificate: Path | str | None = None, chain: Sequence[Path | str] = (),
    password: str | None = None, db: str | None = None, actor: str | None = None,
) -> SignResult:
    """Sign version ``ref`` with the EC private key ``key`` (PEM) and store the bundle.

    With ``certificate`` (and ``chain``), the bundle carries the certificate chain and names the
    certificate's identity as signer. Raises :class:`~registry.errors.SigningKeyError` for a key or
    certificate that cannot sign; nothing is stored then.
    """
    version = catalogue.get_version(ref, db=db)
    signed = signing.sign_version(
        version, Path(key), certificate=Path(certificate) if certificate else None,
        chain=[Path(c) for c in chain], password=password,
    )
    return _store(version, signed, db=db, actor=actor)


def attach(
    ref: str, bundle: Path | str, *, public_key: Path | str | None = None, db: str | None = None,
    actor: str | None = None,
) -> SignResult:
    """Store a bundle made elsewhere (e.g. ``model_signing sign`` over an exported directory).

    A key bundle needs the signer's ``public_key``; a certificate bundle carries its chain. The
    bundle must sign exactly this version's files and ``spr_manifest.json``; otherwise
    :class:`~registry.errors.SignatureError` and nothing is stored.
    """
    version = catalogue.get_version(ref, db=db)
    path = Path(bundle)
    try:
        with open(path, "rb") as fh:
            data = fh.read(signing.MAX_BUNDLE_BYTES + 1)
    except FileNotFoundError:
        raise SignatureError(f"signature bundle {path} does not exist", hint="check the path") from None
    pem = None
    if public_key is not None:
        pem = signing.public_pem(signing.load_public_key(Path(public_key)))
    signed = signing.verify_bundle(version, data, public_key_pem=pem)
    return _store(version, signed, db=db, actor=actor)


def _store(version: VersionInfo, signed: signing.SignedBundle, *, db: str | None, actor: str | None) -> SignResult:
    info, created = catalogue.add_signature(
        version.ref, version.digest,
        catalogue.NewSignature(signed.kind, signed.signer, signed.key_fingerprint, signed.public_key, signed.bundle),
        db=db, actor=actor,
    )
    return SignResult(info, created)


def signatures(ref: str, *, db: str | None = None) -> list[SignatureInfo]:
    """The stored signatures of ``ref``, oldest first (not verified: see :func:`check`)."""
    return catalogue.version_signatures(ref, db=db)


def signature_report(version: VersionInfo, *, db: str | None = None) -> list[dict[str, object]]:
    """What ``spr show`` (and the web catalogue's version JSON) say about each stored signature:
    signer, kind, key fingerprint, bundle sha256, who stored it and when, and ``valid`` (None when
    model-signing is not installed) with the ``problem`` when it does not verify."""
    stored = catalogue.version_signatures(version.ref, db=db)
    if not stored:
        return []
    try:
        checks: list[SignatureCheck | None] = list(check(version, policy=None, db=db).signatures)
    except DependencyMissingError:
        checks = [None] * len(stored)
    return [
        {
            "ref": sig.ref, "digest": sig.digest, "kind": sig.kind, "signer": sig.signer,
            "key_fingerprint": sig.key_fingerprint, "bundle_sha256": sig.bundle_sha256,
            "signed_by": sig.signed_by, "signed_at": sig.signed_at,
            "valid": None if chk is None else chk.valid, "problem": None if chk is None else chk.problem,
        }
        for sig, chk in zip(stored, checks, strict=True)
    ]


def active_policy(override: str | os.PathLike[str] | None = None) -> Policy | None:
    """The trust policy in force: ``override``, else ``$SPR_TRUST_POLICY``, else none."""
    path = settings.trust_policy_path(override)
    return load_policy(path) if path is not None else None


def check(
    version: VersionInfo | str, *, policy: Policy | None = None, policy_path: Path | str | None = None,
    db: str | None = None,
) -> TrustReport:
    """Verify the stored signatures of ``version`` and judge them under the policy in force."""
    from registry.trust import policy as policies

    if isinstance(version, str):
        version = catalogue.get_version(version, db=db)
    if policy is None:
        policy = active_policy(policy_path)
    return policies.check(version, catalogue.version_signatures(version.ref, db=db), policy)


def enforce(
    version: VersionInfo | str, *, policy_path: Path | str | None = None, db: str | None = None
) -> TrustReport:
    """:func:`check`, raising :class:`~registry.errors.UntrustedError` (exit 3) when the policy refuses."""
    report = check(version, policy_path=policy_path, db=db)
    report.raise_if_refused()
    return report


def policy_findings(
    version: VersionInfo, *, policy_path: str | os.PathLike[str] | None = None, db: str | None = None
) -> list[Finding]:
    """Findings for ``verify``/``load``: the trust policy's, when one is in force and has a rule for
    this adapter (errors when the rule requires signatures, else warnings); none otherwise."""
    policy = active_policy(policy_path)
    if policy is None or policy.rule_for(f"{version.namespace}/{version.name}") is None:
        return []
    return list(check(version, policy=policy, db=db).findings)


def bundle_for_push(version: VersionInfo, *, db: str | None = None, policy: Policy | None = None) -> str | None:
    """The bundle to publish beside the files as ``model.sig`` (one per Hub repo, as model-signing's
    CLI expects): the oldest valid signature the policy trusts, else the oldest valid one, else None."""
    from registry.trust import policy as policies

    stored = catalogue.version_signatures(version.ref, db=db)
    if not stored:
        return None
    report = policies.check(version, stored, policy)
    by_fp = {s.key_fingerprint: s for s in stored}
    for wanted in (lambda c: c.trusted, lambda c: c.valid):
        for chk in report.signatures:
            if wanted(chk):
                return by_fp[chk.key_fingerprint].bundle
    return None


def export_signed(
    ref: str, destination: Path | str, *, db: str | None = None, policy_path: Path | str | None = None,
    actor: str | None = None,
) -> Path:
    """Export ``ref`` as a directory ``model_signing verify`` accepts: the files (every byte verified),
    ``spr_manifest.json`` (the canonical manifest) and ``model.sig`` (see :func:`bundle_for_push`).

    Raises :class:`~registry.errors.SignatureError` before writing anything when the version has
    no valid signature.
    """
    version = catalogue.get_version(ref, db=db)
    bundle = bundle_for_push(version, db=db, policy=active_policy(policy_path))
    if bundle is None:
        raise SignatureError(
            f"{version.ref} has no valid signature to export", hint=f"sign it first: spr sign {version.ref} --key KEY.pem"
        )
    directory = catalogue.export(version.ref, destination, db=db, actor=actor)
    (directory / signing.MANIFEST_FILENAME).write_bytes(signing.manifest_bytes(version))
    (directory / signing.SIGNATURE_FILENAME).write_text(bundle, encoding="utf-8")
    return directory


def import_bundle(
    version: VersionInfo, bundle: bytes | str, *, policy: Policy | None = None, db: str | None = None,
    actor: str | None = None,
) -> SignResult | None:
    """Verify a bundle that came with a pulled version and store it; None when its key is unknown.

    A certificate bundle carries its chain (checked against the policy's roots when a rule
    names some); a key bundle names its key only by fingerprint, so it is verified with the
    matching key of the policy's rule, and left unstored (None) when no rule lists that key.
    Raises :class:`~registry.errors.SignatureError` for a bundle that does not verify.
    """
    rule = policy.rule_for(f"{version.namespace}/{version.name}") if policy else None
    kind, hint, _ = signing.describe_bundle(bundle)
    if kind == signing.KEY:
        pem = rule.public_key("sha256:" + hint) if rule and hint else None
        if pem is None:
            return None
        signed = signing.verify_bundle(version, bundle, public_key_pem=pem)
    else:
        signed = signing.verify_bundle(version, bundle, roots=rule.roots if rule and rule.roots else None)
    return _store(version, signed, db=db, actor=actor)


def check_pulled(
    version: VersionInfo, bundle: bytes | str | None, *, policy: Policy | None, db: str | None = None
) -> TrustReport:
    """For pull/sync: store a ``model.sig`` that came with ``version`` (see :func:`import_bundle`), then
    judge the version under ``policy``. A key bundle whose key the policy does not list is reported
    as ``signer-not-trusted`` (naming its key), not as a missing signature."""
    import dataclasses

    from registry.adapters.compat import ERROR, WARNING

    if bundle is not None and policy is None:
        try:
            signing.require_library()
        except DependencyMissingError:
            bundle = None  # nothing can verify it here, and nothing requires it: catalogued unsigned
    stored = import_bundle(version, bundle, policy=policy, db=db) if bundle is not None else None
    report = check(version, policy=policy, db=db)
    if bundle is None or stored is not None or (not report.required and report.rule is None):
        return report
    _, hint, _ = signing.describe_bundle(bundle)
    unknown = Finding(
        "signer-not-trusted", ERROR if report.required else WARNING,
        f"{version.ref}'s model.sig is signed by key sha256:{(hint or '?')[:16]}…, which the policy does not list",
        expected="a key listed in the policy's rule", found=f"sha256:{hint}",
        hint="have a trusted key sign it, or add the signer's public key to the trust policy",
    )
    findings = (*(f for f in report.findings if f.code != "signature-missing"), unknown)
    return dataclasses.replace(report, findings=findings)


@dataclass(frozen=True)
class IntegrityProblem:
    """One finding for ``spr audit``: same fields as the audit's own problems."""

    severity: str  # "error" or "warning"
    kind: str  # guard-missing, signature-invalid, signature-event, signatures-unchecked, checkpoint
    subject: str
    message: str


def audit_problems(*, db: str | None = None, checkpoint_file: str | os.PathLike[str] | None = None,
                   checkpoint_key: str | os.PathLike[str] | None = None) -> list[IntegrityProblem]:
    """What ``spr audit`` adds: the append-only triggers are in place, every row that matters
    (eval scores, aliases, deprecations, hub copies, signatures) matches the event that bound it,
    every stored signature verifies, and (with ``checkpoint_file``) the chain still extends the
    checkpoint.

    A checkpoint file that does not parse or whose signature fails raises (one-line error);
    damage in the catalogue is reported, never raised.
    """
    from registry.digest import sha256_bytes
    from registry.trust import checkpoint as checkpoints

    problems: list[IntegrityProblem] = []
    recorded = None
    if checkpoint_file is not None:
        recorded = checkpoints.read(Path(checkpoint_file), public_key=Path(checkpoint_key) if checkpoint_key else None)
    for name in catalogue.missing_guards(db=db):
        table = name.split("_")[1]
        problems.append(IntegrityProblem(
            "error", "guard-missing", table,
            f"the append-only trigger {name} is missing: rows of '{table}' can be edited or deleted unseen; "
            "re-create it (its SQL is in the migration that made it, migrations/versions/) and check what changed "
            "while it was gone against a backup or a checkpoint",
        ))
    problems += [IntegrityProblem(p.severity, p.kind, p.subject, p.message) for p in catalogue.check_bindings(db=db)]
    stored = list(catalogue.all_signatures(db=db))
    versions: dict[str, VersionInfo] = {}
    checked = True
    for sig in stored:
        subject = f"{sig.ref} {sig.key_fingerprint[:23]}…"
        if sha256_bytes(sig.bundle.encode("utf-8")) != sig.bundle_sha256:
            problems.append(IntegrityProblem(
                "error", "row-edited", subject,
                "the stored bundle no longer hashes to the bundle_sha256 its 'sign' event recorded (the row was edited)",
            ))
        if not checked:
            continue
        version = versions.get(sig.ref) or catalogue.get_version(sig.ref, db=db)
        versions[sig.ref] = version
        try:
            if sig.kind == signing.KEY:
                signing.verify_bundle(version, sig.bundle, public_key_pem=sig.public_key)
            else:
                signing.verify_bundle(version, sig.bundle)
        except SignatureError as exc:
            problems.append(IntegrityProblem("error", "signature-invalid", subject, exc.message))
        except DependencyMissingError:
            checked = False
            problems.append(IntegrityProblem(
                "warning", "signatures-unchecked", "signature",
                f"{len(stored)} stored signature(s) not verified: install softprompt-registry[sign]",
            ))
    if recorded is not None:
        for line in checkpoints.check_extends(recorded, db=db):
            problems.append(IntegrityProblem("error", "checkpoint", str(checkpoint_file), line))
    return problems


def chain_head(*, db: str | None = None) -> dict[str, object]:
    """The audit chain's head, for ``spr audit --json``: ``{"count": N, "head": HEX}`` (record it elsewhere)."""
    head = catalogue.chain_head(db=db)
    return {"count": head.count, "head": head.head_hash}


__all__ = [
    "SIGNATURE_FILENAME",
    "IntegrityProblem",
    "Policy",
    "SignResult",
    "SignatureCheck",
    "TrustReport",
    "active_policy",
    "attach",
    "audit_problems",
    "check",
    "enforce",
    "load_policy",
    "manifest_bytes",
    "sign",
    "signatures",
]
