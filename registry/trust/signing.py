"""Signing and verifying versions with OpenSSF ``model-signing`` (offline: EC keys or certificates).

What is signed: a version as a model directory, every file at its path plus ``spr_manifest.json``
holding the canonical manifest (whose sha256 is the version digest, so the signature covers the
base-model identity, dataset digest, template and lineage too). ``model.sig`` is the bundle's
own name in that directory and is excluded, as ``model_signing sign`` excludes it.

The statement is built from the sha256 the catalogue already holds for each file (verified when
the bytes were stored, re-checked by ``spr audit``), not by hashing the files again. Its resources
and root digest are the ones ``model_signing sign`` computes for the same directory (only the
informative model name and the recorded ignore list differ), so ``model_signing``'s own verifier
accepts an exported or pulled directory, and a bundle that ``model_signing`` made for such a
directory verifies here. ``model_signing``'s signer, verifier and manifest classes do all the
cryptography and formatting; this module chooses what goes in and checks what comes out.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from registry.adapters import manifest as manifests
from registry.digest import PREFIX, sha256_bytes
from registry.errors import DependencyMissingError, SignatureError, SigningKeyError
from registry.types import VersionInfo

SIGNATURE_FILENAME = "model.sig"
MANIFEST_FILENAME = "spr_manifest.json"
MAX_BUNDLE_BYTES = 1_000_000  # a bundle with a 3-certificate chain is ~5 KB
MAX_KEY_BYTES = 100_000
KEY = "key"
CERTIFICATE = "certificate"


@dataclass(frozen=True)
class SignedBundle:
    """A bundle that verified against the version it covers, and who signed it."""

    kind: str  # KEY or CERTIFICATE
    signer: str
    key_fingerprint: str
    public_key: str  # PEM public key, or the signing certificate's PEM
    bundle: str  # JSON text as model-signing writes it


def require_library() -> Any:
    try:
        import model_signing  # noqa: F401
    except ImportError:
        raise DependencyMissingError(
            "signing needs the model-signing library",
            hint="install it with: pip install 'softprompt-registry[sign]'",
        ) from None
    from model_signing._signing import sign_certificate, sign_ec_key, sign_sigstore_pb, signing

    return sign_certificate, sign_ec_key, sign_sigstore_pb, signing


# ---------------------------------------------------------------------------------------------
# What a signature covers


def signed_items(version: VersionInfo) -> dict[str, str]:
    """``path -> sha256 hex`` of everything a signature of ``version`` covers."""
    if sha256_bytes(manifests.encode(version.manifest)) != version.digest.removeprefix(PREFIX):
        raise SignatureError(
            f"{version.ref}: its stored manifest no longer hashes to its digest {version.digest[:19]}…",
            hint="run 'spr audit'; a version whose record was edited cannot be signed",
        )
    items = {f.path: f.sha256 for f in version.files}
    for reserved in (MANIFEST_FILENAME, SIGNATURE_FILENAME):
        if reserved in items:
            raise SignatureError(
                f"{version.ref} has a file named {reserved!r}, which a signed directory reserves",
                hint="republish the adapter without that file",
            )
    items[MANIFEST_FILENAME] = version.digest.removeprefix(PREFIX)
    return items


def manifest_bytes(version: VersionInfo) -> bytes:
    """The ``spr_manifest.json`` a signature covers: the canonical manifest (sha256 = digest)."""
    return manifests.encode(version.manifest)


def _statement_manifest(version: VersionInfo) -> Any:
    from model_signing import manifest as ms_manifest
    from model_signing._hashing import hashing as ms_hashing

    items = [
        ms_manifest.FileManifestItem(path=PurePosixPath(path), digest=ms_hashing.Digest("sha256", bytes.fromhex(sha)))
        for path, sha in signed_items(version).items()
    ]
    # What model_signing's file serializer records for a directory hashed with sha256 that
    # excludes its own signature file: verifiers re-derive their hashing settings from it.
    serialization = ms_manifest._FileSerialization("sha256", False, [Path(SIGNATURE_FILENAME)])
    return ms_manifest.Manifest(f"{version.namespace}/{version.name}", items, serialization)


# ---------------------------------------------------------------------------------------------
# Keys and certificates


def fingerprint_of(public_key: Any) -> str:
    """``sha256:<hex>`` of the PEM SubjectPublicKeyInfo: the hint model-signing puts in a key bundle."""
    from cryptography.hazmat.primitives import serialization

    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return PREFIX + hashlib.sha256(pem).hexdigest()


def fingerprint_of_pem(pem: str) -> str | None:
    """The fingerprint of a PEM public key or certificate, or None when it does not parse."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    data = pem.encode("ascii", "replace")
    try:
        if b"CERTIFICATE" in data:
            return fingerprint_of(x509.load_pem_x509_certificate(data).public_key())
        return fingerprint_of(serialization.load_pem_public_key(data))
    except Exception:
        return None


def public_pem(public_key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def _read_bounded(path: Path, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_KEY_BYTES + 1)
    except FileNotFoundError:
        raise SigningKeyError(f"{what} {path} does not exist", hint="check the path") from None
    except IsADirectoryError:
        raise SigningKeyError(f"{what} {path} is a directory", hint="pass a PEM file") from None
    if len(data) > MAX_KEY_BYTES:
        raise SigningKeyError(f"{what} {path} is larger than {MAX_KEY_BYTES} bytes; it is not a PEM key")
    return data


def _check_curve(public_key: Any, where: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name not in (
        "secp256r1", "secp384r1", "secp521r1"
    ):
        raise SigningKeyError(
            f"{where} is not an elliptic-curve key on P-256, P-384 or P-521 (model-signing signs with those)",
            hint="create one with: openssl ecparam -name prime256v1 -genkey -noout -out key.pem",
        )


def load_private_key(path: Path, password: str | None = None) -> Any:
    """The EC private key in ``path`` (PEM); raises :class:`SigningKeyError` naming what is wrong."""
    from cryptography.hazmat.primitives import serialization

    data = _read_bounded(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password.encode() if password else None)
    except TypeError:
        raise SigningKeyError(
            f"private key {path} is encrypted" if not password else f"private key {path} is not encrypted",
            hint="pass its password with --key-password (or $SPR_SIGN_KEY_PASSWORD)" if not password
            else "drop --key-password",
        ) from None
    except (ValueError, Exception) as exc:  # cryptography raises ValueError or UnsupportedAlgorithm
        raise SigningKeyError(
            f"private key {path} is not a PEM private key ({_first_line(exc)})",
            hint="pass a PEM EC private key (-----BEGIN EC PRIVATE KEY----- or PKCS#8)",
        ) from None
    _check_curve(key.public_key(), f"private key {path}")
    return key


def load_public_key(path: Path) -> Any:
    """The EC public key in ``path`` (PEM); raises :class:`SigningKeyError`."""
    from cryptography.hazmat.primitives import serialization

    data = _read_bounded(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except Exception as exc:
        raise SigningKeyError(
            f"public key {path} is not a PEM public key ({_first_line(exc)})",
            hint="pass a PEM file starting with -----BEGIN PUBLIC KEY-----",
        ) from None
    _check_curve(key, f"public key {path}")
    return key


def load_certificates(path: Path, what: str = "certificate") -> list[Any]:
    """Every PEM certificate in ``path``; raises :class:`SigningKeyError`."""
    from cryptography import x509

    data = _read_bounded(path, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except Exception as exc:
        raise SigningKeyError(
            f"{what} {path} is not a PEM certificate ({_first_line(exc)})",
            hint="pass PEM files starting with -----BEGIN CERTIFICATE-----",
        ) from None
    return certs


def certificate_identity(cert: Any) -> str:
    """A certificate's signer identity: its first SAN e-mail or URI, else its subject CN, else the subject."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        for kind in (x509.RFC822Name, x509.UniformResourceIdentifier, x509.DNSName):
            values = san.get_values_for_type(kind)
            if values:
                return str(values[0])
    except x509.ExtensionNotFound:
        pass
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else cert.subject.rfc4514_string()


# ---------------------------------------------------------------------------------------------
# Sign


def sign_version(
    version: VersionInfo, key: Path, *, certificate: Path | None = None, chain: Sequence[Path] = (),
    password: str | None = None,
) -> SignedBundle:
    """Sign ``version`` with the EC private key ``key`` (and, for PKI, its ``certificate`` and ``chain``).

    Returns the bundle after verifying it against the same version. Raises
    :class:`SigningKeyError` for a key or certificate that cannot sign (wrong format, curve,
    mismatched pair, expired certificate).
    """
    sign_certificate, sign_ec_key, _, signing = require_library()
    private_key = load_private_key(key, password)
    if certificate is None:
        if chain:
            raise SigningKeyError("--cert-chain needs --certificate", hint="pass the signing certificate too")
        # model-signing 1.1 hands the password to cryptography as given, which wants bytes.
        signer: Any = sign_ec_key.Signer(key, password.encode() if password else None)
    else:
        if password:
            raise SigningKeyError(
                "model-signing 1.1 signs with certificates only from an unencrypted key",
                hint="decrypt a copy for signing (openssl pkey -in KEY -out PLAIN.pem), or sign with --key alone",
            )
        leaf = load_certificates(certificate)[0]
        for path in chain:
            load_certificates(path, "certificate chain file")
        if leaf.public_key() != private_key.public_key():
            raise SigningKeyError(
                f"certificate {certificate} is not for private key {key}",
                hint="pass the certificate issued for this key",
            )
        now = dt.datetime.now(dt.timezone.utc)
        if leaf.not_valid_after_utc < now or leaf.not_valid_before_utc > now:
            raise SigningKeyError(
                f"certificate {certificate} is valid from {leaf.not_valid_before_utc:%Y-%m-%d} to "
                f"{leaf.not_valid_after_utc:%Y-%m-%d}, not now",
                hint="sign with a current certificate",
            )
        try:
            signer = sign_certificate.Signer(key, certificate, list(chain))
        except ValueError as exc:
            raise SigningKeyError(f"cannot sign with certificate {certificate}: {_first_line(exc)}") from None
    signature = signer.sign(signing.Payload(_statement_manifest(version)))
    bundle = signature.bundle.to_json()
    if certificate is not None:
        return verify_bundle(version, bundle)
    return verify_bundle(version, bundle, public_key_pem=public_pem(private_key.public_key()))


# ---------------------------------------------------------------------------------------------
# Verify


def parse_bundle(bundle: str | bytes) -> dict[str, Any]:
    """The bundle as JSON, bounded; raises :class:`SignatureError` for anything else."""
    raw = bundle.encode("utf-8") if isinstance(bundle, str) else bundle
    if len(raw) > MAX_BUNDLE_BYTES:
        raise SignatureError(f"signature bundle is larger than {MAX_BUNDLE_BYTES} bytes; it is not a model-signing bundle")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise SignatureError(
            "signature bundle is not JSON (truncated or not a model-signing bundle)",
            hint="pass the model.sig written by 'spr sign' or 'model_signing sign'",
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("verificationMaterial"), dict) or "dsseEnvelope" not in doc:
        raise SignatureError(
            "signature bundle is not a Sigstore bundle with a DSSE envelope",
            hint="pass the model.sig written by 'spr sign' or 'model_signing sign'",
        )
    return doc


def describe_bundle(bundle: str | bytes) -> tuple[str, str | None, Any | None]:
    """``(kind, key hint, signing certificate or None)`` read from a bundle, without verifying it."""
    import base64

    from cryptography import x509

    doc = parse_bundle(bundle)
    material = doc["verificationMaterial"]
    chain = material.get("x509CertificateChain")
    if isinstance(chain, dict):
        try:
            der = base64.b64decode(chain["certificates"][0]["rawBytes"])
            return CERTIFICATE, None, x509.load_der_x509_certificate(der)
        except Exception:
            raise SignatureError("signature bundle's certificate chain cannot be read") from None
    public = material.get("publicKey")
    hint = public.get("hint") if isinstance(public, dict) else None
    return KEY, str(hint) if hint else None, None


def verify_bundle(
    version: VersionInfo, bundle: str | bytes, *, public_key_pem: str | None = None,
    roots: Sequence[Path] | None = None,
) -> SignedBundle:
    """Verify that ``bundle`` signs exactly ``version``'s files and manifest.

    Key bundles are checked against ``public_key_pem``. Certificate bundles are checked against
    ``roots`` (CA certificates, e.g. a trust policy's) when given, else against the chain the
    bundle carries (consistency, not trust: trust is the policy's question). Raises
    :class:`SignatureError` with one line saying what failed.
    """
    _, sign_ec_key, sign_sigstore_pb, _ = require_library()
    from model_signing._signing import sign_certificate

    text = bundle.decode("utf-8", "replace") if isinstance(bundle, bytes) else bundle
    kind, hint, leaf = describe_bundle(text)
    expected = signed_items(version)
    with tempfile.TemporaryDirectory(prefix="spr-verify-") as tmp:
        sig_path = Path(tmp) / SIGNATURE_FILENAME
        sig_path.write_text(text, encoding="utf-8")
        try:
            signature = sign_sigstore_pb.Signature.read(sig_path)
        except Exception as exc:
            raise SignatureError(f"signature bundle cannot be read: {_first_line(exc)}") from None
        if kind == KEY:
            if public_key_pem is None:
                raise SignatureError("a key-signed bundle needs the signer's public key to verify",
                                     hint="pass --public-key KEY.pub")
            key_path = Path(tmp) / "key.pub"
            key_path.write_text(public_key_pem, encoding="ascii")
            verifier: Any = sign_ec_key.Verifier(key_path)
            from cryptography.hazmat.primitives import serialization

            public = serialization.load_pem_public_key(public_key_pem.encode("ascii"))
            pem_out = public_pem(public)
            signer = f"key {fingerprint_of(public)}"
        else:
            assert leaf is not None
            from cryptography.hazmat.primitives import serialization

            public = leaf.public_key()
            if roots:
                root_paths = list(roots)
            else:
                root_paths = [Path(tmp) / "chain.pem"]
                root_paths[0].write_bytes(_bundle_chain_root(text))
            verifier = sign_certificate.Verifier(root_paths)
            pem_out = leaf.public_bytes(serialization.Encoding.PEM).decode("ascii")
            signer = certificate_identity(leaf)
        try:
            signed = verifier.verify(signature)
        except Exception as exc:
            raise SignatureError(
                f"signature of {version.ref} does not verify: {_first_line(exc) or type(exc).__name__}",
                hint="the bundle was altered, or was made with another key",
            ) from None
    fingerprint = fingerprint_of(public)
    if kind == KEY and hint and PREFIX + hint != fingerprint:
        raise SignatureError(f"signature of {version.ref} names key sha256:{hint[:16]}…, not {fingerprint[:23]}…")
    _check_covers(version, signed, expected)
    return SignedBundle(kind=kind, signer=signer, key_fingerprint=fingerprint, public_key=pem_out, bundle=text)


def directory_items(directory: Path) -> dict[str, str]:
    """``path -> sha256 hex`` of every regular file under ``directory`` except ``model.sig``.

    Symbolic links are refused (as ``model_signing`` refuses them): a signed directory is plain files.
    """
    from registry.digest import sha256_file

    items: dict[str, str] = {}
    root = Path(directory)
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            raise SignatureError(f"{root}: {rel} is a symbolic link; a signed directory holds plain files")
        if not path.is_file() or rel == SIGNATURE_FILENAME or rel.split("/")[0] in (".git", ".gitattributes", ".github", ".gitignore"):
            continue
        items[rel] = sha256_file(path)[0]
    return items


def verify_directory(
    directory: Path, version: VersionInfo, bundle: str | bytes, *, public_key_pem: str | None = None,
    roots: Sequence[Path] | None = None, items: Mapping[str, str] | None = None,
) -> SignedBundle:
    """Verify that ``bundle`` signs ``version`` and that ``directory`` holds exactly that content.

    ``items`` (``path -> sha256 hex``) may be passed when the caller already hashed the files
    (a pull does), so nothing is read twice.
    """
    signed = verify_bundle(version, bundle, public_key_pem=public_key_pem, roots=roots)
    found = dict(items) if items is not None else directory_items(directory)
    expected = signed_items(version)
    if found != expected:
        changed = sorted(p for p in set(found) & set(expected) if found[p] != expected[p])
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected))
        parts = [
            *(["content differs from the signature: " + ", ".join(changed[:5])] if changed else []),
            *(["missing: " + ", ".join(missing[:5])] if missing else []),
            *(["not signed: " + ", ".join(extra[:5])] if extra else []),
        ]
        raise SignatureError(f"{directory} does not match its signature ({'; '.join(parts)})",
                             hint="the files were altered after signing; fetch them again from a trusted source")
    return signed


def _bundle_chain_root(bundle: str) -> bytes:
    """The last certificate of a bundle's chain, as PEM: the anchor it claims for itself."""
    import base64

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    certs = json.loads(bundle)["verificationMaterial"]["x509CertificateChain"]["certificates"]
    last = x509.load_der_x509_certificate(base64.b64decode(certs[-1]["rawBytes"]))
    return last.public_bytes(serialization.Encoding.PEM)


def _check_covers(version: VersionInfo, signed: Any, expected: Mapping[str, str]) -> None:
    params = signed.serialization_type
    if params.get("method") != "files" or params.get("hash_type") != "sha256":
        raise SignatureError(
            f"signature of {version.ref} hashes files as {params.get('method')}/{params.get('hash_type')}; "
            "spr verifies whole-file sha256 bundles",
            hint="sign with 'spr sign' (or model_signing's default file serialization)",
        )
    got = {d.identifier: d.digest.digest_hex for d in signed.resource_descriptors()}
    if got == dict(expected):
        return
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    changed = sorted(p for p in set(got) & set(expected) if got[p] != expected[p])
    parts = []
    if changed:
        parts.append("different content for " + ", ".join(changed[:5]))
    if missing:
        parts.append("does not cover " + ", ".join(missing[:5]))
    if extra:
        parts.append("covers files the version lacks: " + ", ".join(extra[:5]))
    raise SignatureError(
        f"signature is for other content than {version.ref} ({'; '.join(parts)})",
        hint="a bundle signs one exact version; sign this one with 'spr sign'",
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


__all__ = [
    "CERTIFICATE", "KEY", "MANIFEST_FILENAME", "SIGNATURE_FILENAME", "SignedBundle", "certificate_identity",
    "describe_bundle", "directory_items", "fingerprint_of", "fingerprint_of_pem", "load_certificates", "load_private_key", "load_public_key",
    "manifest_bytes", "parse_bundle", "public_pem", "sign_version", "signed_items", "verify_bundle", "verify_directory",
]
