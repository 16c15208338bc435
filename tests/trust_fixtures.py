"""Real keys for the trust tests: ECDSA P-256 key pairs and a tiny CA chain (root -> intermediate -> leaf).

Everything is generated with ``cryptography`` inside the test's temporary directory; nothing is
checked in, nothing reaches the network.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path


@dataclass(frozen=True)
class CertSigner:
    key: Path
    certificate: Path
    chain: tuple[Path, ...]  # intermediate(s), then root
    root: Path
    identity: str


def write_key_pair(directory: Path, name: str, *, curve: ec.EllipticCurve | None = None, password: bytes | None = None) -> KeyPair:
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(curve or ec.SECP256R1())
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    private = directory / f"{name}.pem"
    public = directory / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return KeyPair(private, public)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool,
    email: str | None = None, not_before: dt.datetime | None = None, not_after: dt.datetime | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject)).issuer_name(_name(issuer)).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(days=1))
        .not_valid_after(not_after or now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    )
    if email:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def write_ca_chain(directory: Path, name: str, identity: str, *, expired: bool = False) -> CertSigner:
    """A root CA, an intermediate and a leaf certificate for ``identity`` (an e-mail SAN)."""
    directory.mkdir(parents=True, exist_ok=True)
    root_key = ec.generate_private_key(ec.SECP256R1())
    inter_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    root = _cert(f"{name} root", root_key, f"{name} root", root_key, ca=True)
    inter = _cert(f"{name} intermediate", inter_key, f"{name} root", root_key, ca=True)
    now = dt.datetime.now(dt.timezone.utc)
    leaf = _cert(
        f"{name} signer", leaf_key, f"{name} intermediate", inter_key, ca=False, email=identity,
        not_before=now - dt.timedelta(days=60) if expired else None,
        not_after=now - dt.timedelta(days=1) if expired else None,
    )
    key_path = directory / f"{name}-leaf.pem"
    key_path.write_bytes(
        leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return CertSigner(
        key=key_path, certificate=_pem(directory / f"{name}-leaf.crt", leaf),
        chain=(_pem(directory / f"{name}-inter.crt", inter), _pem(directory / f"{name}-root.crt", root)),
        root=directory / f"{name}-root.crt", identity=identity,
    )
