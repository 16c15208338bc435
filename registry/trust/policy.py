"""Trust policies: which keys or certificate identities may sign which adapters.

A policy is a TOML file (``--trust-policy FILE`` or ``$SPR_TRUST_POLICY``)::

    [[rule]]
    adapters = "team/*"              # glob over NAMESPACE/NAME; the first matching rule applies
    require = true                   # unsigned or wrongly signed versions are refused (exit 3)
    keys = ["keys/release.pub"]      # PEM public keys, relative to the policy file
    identities = ["release@example.com"]  # certificate identities (SAN e-mail or URI, else CN)
    roots = ["keys/ca.pem"]          # the CA certificates those certificates must chain to

Without a policy, or for an adapter no rule matches, signatures are checked and reported but not
required. Findings: ``signature-missing``, ``signature-invalid``, ``signer-not-trusted``.
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from registry.adapters.compat import ERROR, WARNING, Finding
from registry.errors import SignatureError, SigningKeyError, TrustPolicyError, UntrustedError
from registry.trust import signing
from registry.types import SignatureInfo, VersionInfo

MAX_POLICY_BYTES = 1_000_000
_RULE_KEYS = {"adapters", "require", "keys", "identities", "roots"}


@dataclass(frozen=True)
class Rule:
    """One ``[[rule]]`` of a policy, with its keys read and fingerprinted."""

    adapters: str
    require: bool
    key_fingerprints: frozenset[str]
    identities: frozenset[str]
    roots: tuple[Path, ...]
    public_keys: tuple[tuple[str, str], ...] = ()  # (fingerprint, PEM) of each key in ``keys``

    def public_key(self, fingerprint: str) -> str | None:
        """The PEM of the listed key with this fingerprint (to verify a key bundle pulled from a Hub)."""
        return next((pem for fp, pem in self.public_keys if fp == fingerprint), None)

    def matches(self, full_name: str) -> bool:
        return fnmatch.fnmatchcase(full_name, self.adapters)


@dataclass(frozen=True)
class Policy:
    """A parsed trust policy: rules in file order (the first that matches an adapter applies)."""

    path: Path
    rules: tuple[Rule, ...]

    def rule_for(self, full_name: str) -> Rule | None:
        return next((r for r in self.rules if r.matches(full_name)), None)


@dataclass(frozen=True)
class SignatureCheck:
    """One stored signature, verified: ``valid`` (bundle and content), ``trusted`` (by the rule)."""

    signer: str
    key_fingerprint: str
    kind: str
    signed_at: Any
    signed_by: str
    valid: bool
    trusted: bool
    problem: str | None = None


@dataclass(frozen=True)
class TrustReport:
    """What the signatures of one version say under a policy (or under none)."""

    subject: str
    digest: str
    policy: str | None
    rule: str | None  # the matching rule's ``adapters`` pattern
    required: bool
    signatures: tuple[SignatureCheck, ...]
    findings: tuple[Finding, ...] = field(default=())

    @property
    def trusted(self) -> bool:
        """True when a valid signature by a trusted signer exists (and nothing is invalid)."""
        return any(s.trusted for s in self.signatures) and not any(not s.valid for s in self.signatures)

    @property
    def refused(self) -> bool:
        return any(f.severity == ERROR for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject, "digest": self.digest, "policy": self.policy, "rule": self.rule,
            "required": self.required, "trusted": self.trusted, "refused": self.refused,
            "signatures": [asdict(s) for s in self.signatures], "findings": [asdict(f) for f in self.findings],
        }

    def lines(self) -> list[str]:
        if self.refused:
            head = f"UNTRUSTED: {self.subject} is refused by trust policy {self.policy} (rule {self.rule!r})"
        elif self.trusted:
            head = f"trusted: {self.subject} is signed by " + ", ".join(s.signer for s in self.signatures if s.trusted)
        elif not self.required:
            head = f"signatures not required for {self.subject}" + (
                " (no trust policy)" if self.policy is None else f" (no rule of {self.policy} requires them)"
            )
        else:
            head = f"{self.subject}: signatures checked"
        return [head, *("  " + f.line() for f in self.findings)]

    def raise_if_refused(self) -> None:
        """Raise :class:`UntrustedError` (exit 3) carrying the findings when the policy refuses."""
        errors = [f for f in self.findings if f.severity == ERROR]
        if not errors:
            return
        first = errors[0]
        more = f", and {len(errors) - 1} more finding(s)" if len(errors) > 1 else ""
        raise UntrustedError(
            f"{self.subject} is refused by trust policy {self.policy}: {first.code}: {first.message}{more}",
            hint=first.hint, findings=[asdict(f) for f in self.findings], subject=self.subject,
        )


def load_policy(path: Path | str) -> Policy:
    """Parse a policy file; raises :class:`TrustPolicyError` naming the line or key that is wrong."""
    path = Path(path)
    signing.require_library()  # keys and bundles are read with cryptography / model-signing
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_POLICY_BYTES + 1)
    except FileNotFoundError:
        raise TrustPolicyError(f"trust policy {path} does not exist", hint="check --trust-policy / $SPR_TRUST_POLICY") from None
    except IsADirectoryError:
        raise TrustPolicyError(f"trust policy {path} is a directory", hint="pass a TOML file") from None
    if len(data) > MAX_POLICY_BYTES:
        raise TrustPolicyError(f"trust policy {path} is larger than {MAX_POLICY_BYTES} bytes")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TrustPolicyError(f"trust policy {path} is not valid TOML: {exc}", hint="fix the file; see README 'Signing and trust'") from None
    unknown = set(doc) - {"rule"}
    if unknown or not isinstance(doc.get("rule"), list) or not doc["rule"]:
        raise TrustPolicyError(
            f"trust policy {path} must hold one or more [[rule]] tables" + (f" (unknown keys: {', '.join(sorted(unknown))})" if unknown else ""),
            hint="see README 'Signing and trust' for the format",
        )
    rules = tuple(_rule(path, i, raw) for i, raw in enumerate(doc["rule"], start=1))
    return Policy(path=path, rules=rules)


def _rule(path: Path, index: int, raw: Any) -> Rule:
    where = f"trust policy {path}, rule {index}"
    if not isinstance(raw, dict):
        raise TrustPolicyError(f"{where} is not a table")
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise TrustPolicyError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}", hint=f"allowed: {', '.join(sorted(_RULE_KEYS))}")
    adapters = raw.get("adapters")
    if not isinstance(adapters, str) or not adapters:
        raise TrustPolicyError(f"{where}: 'adapters' must be a glob such as \"team/*\"")
    require = raw.get("require", False)
    if not isinstance(require, bool):
        raise TrustPolicyError(f"{where}: 'require' must be true or false")

    def str_list(key: str) -> list[str]:
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise TrustPolicyError(f"{where}: {key!r} must be a list of strings")
        return value

    base = path.parent
    fingerprints = set()
    pems: list[tuple[str, str]] = []
    for name in str_list("keys"):
        try:
            key = signing.load_public_key(base / name)
            fingerprints.add(signing.fingerprint_of(key))
            pems.append((signing.fingerprint_of(key), signing.public_pem(key)))
        except SigningKeyError as exc:
            raise TrustPolicyError(f"{where}: {exc.message}", hint=exc.hint) from None
    roots = tuple(base / name for name in str_list("roots"))
    for root in roots:
        try:
            signing.load_certificates(root, "root certificate")
        except SigningKeyError as exc:
            raise TrustPolicyError(f"{where}: {exc.message}", hint=exc.hint) from None
    identities = frozenset(str_list("identities"))
    if identities and not roots:
        raise TrustPolicyError(
            f"{where}: 'identities' need 'roots' (anyone can make a certificate naming any identity)",
            hint="add the CA certificate(s) that issue your signers' certificates",
        )
    if require and not fingerprints and not identities:
        raise TrustPolicyError(f"{where}: 'require = true' with no 'keys' or 'identities' would refuse everything",
                               hint="list the keys or certificate identities allowed to sign")
    return Rule(adapters, require, frozenset(fingerprints), identities, roots, tuple(pems))


def check(
    version: VersionInfo, stored: list[SignatureInfo], policy: Policy | None
) -> TrustReport:
    """Verify every stored signature of ``version`` and judge them under ``policy``."""
    rule = policy.rule_for(f"{version.namespace}/{version.name}") if policy else None
    required = bool(rule and rule.require)
    severity = ERROR if required else WARNING
    checks: list[SignatureCheck] = []
    findings: list[Finding] = []
    for sig in stored:
        valid, problem = True, None
        try:
            if sig.kind == signing.KEY:
                signing.verify_bundle(version, sig.bundle, public_key_pem=sig.public_key)
            else:
                signing.verify_bundle(version, sig.bundle, roots=rule.roots if rule and rule.roots else None)
        except SignatureError as exc:
            valid, problem = False, exc.message
        if valid and signing.fingerprint_of_pem(sig.public_key) != sig.key_fingerprint:
            valid, problem = False, f"the stored key is not {sig.key_fingerprint[:23]}…"
        trusted = valid and rule is not None and (
            sig.key_fingerprint in rule.key_fingerprints
            or (sig.kind == signing.CERTIFICATE and bool(rule.roots) and sig.signer in rule.identities)
        )
        checks.append(SignatureCheck(sig.signer, sig.key_fingerprint, sig.kind, sig.signed_at, sig.signed_by,
                                     valid, trusted, problem))
        if not valid:
            findings.append(Finding(
                "signature-invalid", severity, f"the signature by {sig.signer} does not verify: {problem}",
                expected="a bundle over this version's files and manifest", found=f"bundle sha256:{sig.bundle_sha256[:16]}…",
                hint="the catalogue or the bundle was altered: run 'spr audit' and re-sign from a trusted copy",
            ))
    if not stored:
        findings.append(Finding(
            "signature-missing", severity, f"{version.ref} has no signature",
            expected="a signature" + (f" by a signer trusted for {rule.adapters}" if rule else ""), found="none",
            hint=f"sign it with 'spr sign {version.ref} --key KEY.pem'",
        ))
    elif rule is not None and (rule.key_fingerprints or rule.identities) and not any(c.trusted for c in checks) \
            and any(c.valid for c in checks):
        signers = ", ".join(c.signer for c in checks if c.valid)
        findings.append(Finding(
            "signer-not-trusted", severity, f"{version.ref} is signed, but not by a signer the policy trusts for {rule.adapters}",
            expected=", ".join(sorted(rule.identities | rule.key_fingerprints)), found=signers,
            hint="have a trusted key sign it, or add the signer to the trust policy",
        ))
    return TrustReport(
        subject=version.ref, digest=version.digest, policy=str(policy.path) if policy else None,
        rule=rule.adapters if rule else None, required=required, signatures=tuple(checks), findings=tuple(findings),
    )


__all__ = ["Policy", "Rule", "SignatureCheck", "TrustReport", "check", "load_policy"]
