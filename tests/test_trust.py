"""Signed versions (model-signing, offline keys and a CA chain), trust policies and audit checkpoints.

Keys are generated in each test (ECDSA P-256; a root -> intermediate -> leaf chain for PKI); the
bundles are the real ``model_signing`` library's, and its own public verifier is run on an exported
directory. Catalogue tampering is done as an auditor would, with SQL on the catalogue itself.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cli_support import spr
from huggingface_hub import HfApi  # imports huggingface_hub.hf_api, which the hub_server fixture patches
from ops_support import write_small_adapter
from trust_fixtures import KeyPair, write_ca_chain, write_key_pair

from registry import catalogue, trust
from registry.errors import SignatureError, SigningKeyError, UntrustedError
from registry.trust import signing

pytest.importorskip("model_signing", reason="the [sign] extra (model-signing) is part of the test extra")


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, KeyPair]:
    return {name: write_key_pair(tmp_path / "keys", name) for name in ("alice", "bob")}


def publish(tmp_path: Path, seed: int = 1, name: str = "team/coach", **options: Any) -> str:
    opts = catalogue.PublishOptions(**options) if options else None
    result = catalogue.publish(write_small_adapter(tmp_path / f"adapter-{seed}", seed), name, options=opts)
    return result.version.ref


def sign_events() -> list[Any]:
    return [e for e in catalogue.events() if e.action == "sign"]


def flip_base64_byte(text: str) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[len(raw) // 2] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


# ---------------------------------------------------------------------------------------------
# Signing and showing


def test_sign_show_round_trip(tmp_path: Path, keys: dict[str, KeyPair], capsys: pytest.CaptureFixture[str]) -> None:
    ref = publish(tmp_path)
    code, out, err = spr(capsys, "sign", ref, "--key", str(keys["alice"].private))
    assert code == 0, err
    fingerprint = signing.fingerprint_of(signing.load_public_key(keys["alice"].public))
    assert f"signed {ref}" in out and fingerprint[:23] in out

    code, out, _ = spr(capsys, "show", ref)
    assert code == 0
    assert "signatures:" in out and f"key {fingerprint[:23]}" in out and "valid" in out and "INVALID" not in out

    code, out, _ = spr(capsys, "show", ref, "--json")
    shown = json.loads(out)["signatures"]
    assert [(s["signer"], s["key_fingerprint"], s["valid"], s["kind"]) for s in shown] == [
        (f"key {fingerprint}", fingerprint, True, "key")
    ]
    [event] = sign_events()
    assert event.subject == ref and event.details["key_fingerprint"] == fingerprint
    assert event.details["bundle_sha256"] == shown[0]["bundle_sha256"]
    assert catalogue.verify_event_chain() == []


def test_several_signers_and_a_repeated_signature(tmp_path: Path, keys: dict[str, KeyPair]) -> None:
    ref = publish(tmp_path)
    first = trust.sign(ref, keys["alice"].private)
    second = trust.sign(ref, keys["bob"].private)
    again = trust.sign(ref, keys["alice"].private)
    assert first.created and second.created and not again.created
    assert again.signature.bundle == first.signature.bundle  # the stored bundle, not a new one
    stored = trust.signatures(ref)
    assert [s.key_fingerprint for s in stored] == [first.signature.key_fingerprint, second.signature.key_fingerprint]
    assert len(sign_events()) == 2
    report = trust.check(ref)
    assert [s.valid for s in report.signatures] == [True, True] and not report.required and not report.refused


def test_certificate_chain_signing(tmp_path: Path) -> None:
    ref = publish(tmp_path)
    ca = write_ca_chain(tmp_path / "pki", "acme", "release@acme.example")
    result = trust.sign(ref, ca.key, certificate=ca.certificate, chain=ca.chain)
    assert result.signature.kind == "certificate" and result.signature.signer == "release@acme.example"
    version = catalogue.get_version(ref)
    # Checked against the policy's root, and against the chain the bundle carries.
    assert signing.verify_bundle(version, result.signature.bundle, roots=[ca.root]).signer == "release@acme.example"
    other = write_ca_chain(tmp_path / "other", "evil", "release@acme.example")
    with pytest.raises(SignatureError, match="does not verify"):
        signing.verify_bundle(version, result.signature.bundle, roots=[other.root])


def test_publish_with_sign_key(tmp_path: Path, keys: dict[str, KeyPair], capsys: pytest.CaptureFixture[str]) -> None:
    adapter = write_small_adapter(tmp_path / "a", 3)
    code, out, err = spr(capsys, "publish", str(adapter), "--name", "team/coach", "--sign-key", str(keys["alice"].private))
    assert code == 0, err
    assert "signed by key sha256:" in out
    assert [s.valid for s in trust.check("team/coach@1").signatures] == [True]


def test_publish_with_a_bad_sign_key_publishes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key\n")
    code, _, err = spr(capsys, "publish", str(write_small_adapter(tmp_path / "a", 3)), "--name", "team/coach",
                       "--sign-key", str(bad))
    assert code == 2 and err.count("\n") == 1 and "not a PEM private key" in err
    assert catalogue.list_versions() == []


# ---------------------------------------------------------------------------------------------
# model_signing's own verifier, both directions


def signed_directory(tmp_path: Path, ref: str, bundle: str) -> Path:
    version = catalogue.get_version(ref)
    directory = catalogue.export(ref, tmp_path / "exported")
    (directory / signing.MANIFEST_FILENAME).write_bytes(signing.manifest_bytes(version))
    (directory / signing.SIGNATURE_FILENAME).write_text(bundle, encoding="utf-8")
    return directory


def test_model_signing_verifier_accepts_an_exported_directory(tmp_path: Path, keys: dict[str, KeyPair]) -> None:
    import model_signing

    ref = publish(tmp_path)
    sig = trust.sign(ref, keys["alice"].private).signature
    directory = signed_directory(tmp_path, ref, sig.bundle)
    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=keys["alice"].public).verify(
        directory, directory / "model.sig"
    )
    with pytest.raises(ValueError):  # and it is a real check: another key is refused
        model_signing.verifying.Config().use_elliptic_key_verifier(public_key=keys["bob"].public).verify(
            directory, directory / "model.sig"
        )


def test_trust_export_then_the_model_signing_cli_verifies(tmp_path: Path, keys: dict[str, KeyPair], capsys: pytest.CaptureFixture[str]) -> None:
    import subprocess
    import sys

    ref = publish(tmp_path)
    code, _, err = spr(capsys, "trust", "export", ref, str(tmp_path / "unsigned"))
    assert code == 5 and "has no valid signature" in err and not (tmp_path / "unsigned").exists()
    trust.sign(ref, keys["alice"].private)
    code, _, err = spr(capsys, "trust", "export", ref, str(tmp_path / "out"))
    assert code == 0, err
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "model.sig", "spr_manifest.json"]
    cli = [sys.executable, "-m", "model_signing", "verify", "key", str(out), "--signature", str(out / "model.sig")]
    ok = subprocess.run([*cli, "--public_key", str(keys["alice"].public)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr + ok.stdout
    wrong = subprocess.run([*cli, "--public_key", str(keys["bob"].public)], capture_output=True, text=True, timeout=120)
    assert wrong.returncode != 0


def test_a_bundle_made_by_model_signing_is_accepted(tmp_path: Path, keys: dict[str, KeyPair], capsys: pytest.CaptureFixture[str]) -> None:
    import model_signing

    ref = publish(tmp_path)
    version = catalogue.get_version(ref)
    directory = catalogue.export(ref, tmp_path / "exported")
    (directory / signing.MANIFEST_FILENAME).write_bytes(signing.manifest_bytes(version))
    model_signing.signing.Config().use_elliptic_key_signer(private_key=keys["bob"].private).set_hashing_config(
        model_signing.hashing.Config().set_ignored_paths(paths=["model.sig"])
    ).sign(directory, directory / "model.sig")
    code, _, err = spr(capsys, "sign", ref, "--bundle", str(directory / "model.sig"), "--public-key", str(keys["bob"].public))
    assert code == 0, err
    assert [s.valid for s in trust.check(ref).signatures] == [True]


# ---------------------------------------------------------------------------------------------
# Tampering: a flipped byte in a file, the manifest or the bundle


def test_flipped_bytes_in_a_signed_directory_are_refused(tmp_path: Path, keys: dict[str, KeyPair]) -> None:
    ref = publish(tmp_path)
    version = catalogue.get_version(ref)
    bundle = trust.sign(ref, keys["alice"].private).signature.bundle
    directory = signed_directory(tmp_path, ref, bundle)
    pem = keys["alice"].public.read_text()
    signing.verify_directory(directory, version, bundle, public_key_pem=pem)  # intact

    for name in ("adapter_model.safetensors", "adapter_config.json", signing.MANIFEST_FILENAME):
        path = directory / name
        original = path.read_bytes()
        data = bytearray(original)
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
        with pytest.raises(SignatureError, match=f"content differs from the signature: {name}"):
            signing.verify_directory(directory, version, bundle, public_key_pem=pem)
        path.write_bytes(original)
    (directory / "extra.txt").write_text("smuggled")
    with pytest.raises(SignatureError, match=r"not signed: extra\.txt"):
        signing.verify_directory(directory, version, bundle, public_key_pem=pem)


def test_flipped_bytes_in_the_bundle_are_refused(tmp_path: Path, keys: dict[str, KeyPair], capsys: pytest.CaptureFixture[str]) -> None:
    ref = publish(tmp_path)
    version = catalogue.get_version(ref)
    doc = json.loads(signing.sign_version(version, keys["alice"].private).bundle)
    pem = keys["alice"].public.read_text()
    for field in ("payload", "signature"):
        tampered = json.loads(json.dumps(doc))
        if field == "payload":
            tampered["dsseEnvelope"]["payload"] = flip_base64_byte(tampered["dsseEnvelope"]["payload"])
        else:
            sig = tampered["dsseEnvelope"]["signatures"][0]
            sig["sig"] = flip_base64_byte(sig["sig"])
        with pytest.raises(SignatureError):
            signing.verify_bundle(version, json.dumps(tampered), public_key_pem=pem)
        path = tmp_path / f"tampered-{field}.sig"
        path.write_text(json.dumps(tampered))
        code, _, err = spr(capsys, "sign", ref, "--bundle", str(path), "--public-key", str(keys["alice"].public))
        assert code == 5 and err.count("\n") == 1 and err.startswith("error: "), err
    assert trust.signatures(ref) == [] and sign_events() == []


def test_a_bundle_for_other_content_is_refused(tmp_path: Path, keys: dict[str, KeyPair], capsys: pytest.CaptureFixture[str]) -> None:
    one = publish(tmp_path, 1)
    # Same files, another manifest (a different template): the manifest alone tells them apart.
    other = publish(tmp_path, 1, name="team/other", template="Q: {prompt}\nA:")
    bundle = tmp_path / "one.sig"
    bundle.write_text(signing.sign_version(catalogue.get_version(one), keys["alice"].private).bundle)
    code, _, err = spr(capsys, "sign", other, "--bundle", str(bundle), "--public-key", str(keys["alice"].public))
    assert code == 5 and err.count("\n") == 1
    assert "signature is for other content than team/other@1 (different content for spr_manifest.json)" in err
    third = publish(tmp_path, 2)  # other files
    code, _, err = spr(capsys, "sign", third, "--bundle", str(bundle), "--public-key", str(keys["alice"].public))
    assert code == 5 and "different content for adapter_model.safetensors" in err
    assert trust.signatures(other) == [] and trust.signatures(third) == [] and sign_events() == []


def test_a_key_bundle_checked_against_another_key_is_refused(tmp_path: Path, keys: dict[str, KeyPair]) -> None:
    ref = publish(tmp_path)
    version = catalogue.get_version(ref)
    bundle = signing.sign_version(version, keys["alice"].private).bundle
    with pytest.raises(SignatureError, match="does not verify"):
        signing.verify_bundle(version, bundle, public_key_pem=keys["bob"].public.read_text())


# ---------------------------------------------------------------------------------------------
# Bad input: one line, non-zero, nothing stored


@pytest.mark.parametrize(
    "content, expected",
    [
        ("{not json", "not JSON"),
        ('{"mediaType": "x"}', "not a Sigstore bundle"),
        ("", "not JSON"),
    ],
)
def test_malformed_bundles(tmp_path: Path, keys: dict[str, KeyPair], capsys: pytest.CaptureFixture[str], content: str, expected: str) -> None:
    ref = publish(tmp_path)
    path = tmp_path / "bad.sig"
    path.write_text(content)
    code, _, err = spr(capsys, "sign", ref, "--bundle", str(path), "--public-key", str(keys["alice"].public))
    assert code == 5 and expected in err and err.count("\n") == 1 and "Traceback" not in err
    assert trust.signatures(ref) == [] and sign_events() == []


def test_truncated_bundle(tmp_path: Path, keys: dict[str, KeyPair], capsys: pytest.CaptureFixture[str]) -> None:
    ref = publish(tmp_path)
    bundle = signing.sign_version(catalogue.get_version(ref), keys["alice"].private).bundle
    path = tmp_path / "cut.sig"
    path.write_text(bundle[: len(bundle) // 2])
    code, _, err = spr(capsys, "sign", ref, "--bundle", str(path), "--public-key", str(keys["alice"].public))
    assert code == 5 and "not JSON (truncated" in err and err.count("\n") == 1
    assert trust.signatures(ref) == []


def test_keys_in_the_wrong_format(tmp_path: Path, keys: dict[str, KeyPair], capsys: pytest.CaptureFixture[str]) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    ref = publish(tmp_path)
    rsa_key = tmp_path / "rsa.pem"
    rsa_key.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    secp256k1 = write_key_pair(tmp_path / "k", "k1", curve=ec.SECP256K1())
    locked = write_key_pair(tmp_path / "k", "locked", password=b"s3cret")
    cases = [
        (keys["alice"].public, "not a PEM private key"),  # a public key where the private key goes
        (rsa_key, "not an elliptic-curve key on P-256"),
        (secp256k1.private, "not an elliptic-curve key on P-256"),
        (locked.private, "is encrypted"),
        (tmp_path / "missing.pem", "does not exist"),
    ]
    for key, expected in cases:
        code, _, err = spr(capsys, "sign", ref, "--key", str(key))
        assert code == 2 and expected in err and err.count("\n") == 1, (key, err)
    assert trust.signatures(ref) == [] and sign_events() == []
    # The right password opens the encrypted key.
    assert trust.sign(ref, locked.private, password="s3cret").created


def test_certificate_problems(tmp_path: Path, keys: dict[str, KeyPair], capsys: pytest.CaptureFixture[str]) -> None:
    ref = publish(tmp_path)
    expired = write_ca_chain(tmp_path / "old", "old", "old@acme.example", expired=True)
    code, _, err = spr(capsys, "sign", ref, "--key", str(expired.key), "--certificate", str(expired.certificate),
                       *[a for c in expired.chain for a in ("--cert-chain", str(c))])
    assert code == 2 and "not now" in err and err.count("\n") == 1
    good = write_ca_chain(tmp_path / "pki", "acme", "release@acme.example")
    code, _, err = spr(capsys, "sign", ref, "--key", str(keys["alice"].private), "--certificate", str(good.certificate))
    assert code == 2 and "is not for private key" in err
    code, _, err = spr(capsys, "sign", ref, "--key", str(good.key), "--certificate", str(keys["alice"].public))
    assert code == 2 and "not a PEM certificate" in err
    assert trust.signatures(ref) == [] and sign_events() == []


def test_sign_needs_exactly_one_source(tmp_path: Path, keys: dict[str, KeyPair], capsys: pytest.CaptureFixture[str]) -> None:
    ref = publish(tmp_path)
    code, _, err = spr(capsys, "sign", ref)
    assert code == 2 and "either --key" in err
    code, _, err = spr(capsys, "sign", ref, "--key", str(keys["alice"].private), "--bundle", str(keys["alice"].public))
    assert code == 2 and "either --key" in err


def test_untrusted_error_is_exit_3() -> None:
    assert UntrustedError("x").exit_code == 3 and SigningKeyError("x").exit_code == 2


# ---------------------------------------------------------------------------------------------
# Trust policy


def write_policy(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def sql(statement: str, **params: Any) -> None:
    from sqlalchemy import text

    from registry import db

    with db.get_engine(None).begin() as conn:
        conn.execute(text(statement), params)


def drop_guard(name: str, table: str) -> None:
    from registry import db

    if db.get_engine(None).dialect.name == "sqlite":
        sql(f"DROP TRIGGER {name}")
    else:
        sql(f"DROP TRIGGER {name} ON {table}")


def test_policy_trusts_one_key_and_refuses_another(tmp_path: Path, keys: dict[str, KeyPair], capsys: pytest.CaptureFixture[str]) -> None:
    trusted = publish(tmp_path, 1)
    untrusted = publish(tmp_path, 2, name="team/other")
    unsigned = publish(tmp_path, 3, name="team/third")
    elsewhere = publish(tmp_path, 4, name="lab/free")
    trust.sign(trusted, keys["alice"].private)
    trust.sign(untrusted, keys["bob"].private)
    policy = write_policy(tmp_path / "keys" / "policy.toml", '[[rule]]\nadapters = "team/*"\nrequire = true\nkeys = ["alice.pub"]\n')

    report = trust.enforce(trusted, policy_path=policy)
    assert report.trusted and report.required and report.findings == ()

    with pytest.raises(UntrustedError, match="signer-not-trusted") as caught:
        trust.enforce(untrusted, policy_path=policy)
    assert caught.value.exit_code == 3
    assert [f["code"] for f in caught.value.fields["findings"]] == ["signer-not-trusted"]

    code, out, _ = spr(capsys, "trust", "check", unsigned, "--trust-policy", str(policy))
    assert code == 3 and "UNTRUSTED" in out and "signature-missing" in out

    # No rule matches lab/*: checked and reported, not required.
    assert not trust.enforce(elsewhere, policy_path=policy).required
    # Without a policy nothing is required; the findings are warnings.
    report = trust.check(unsigned)
    assert not report.required and not report.refused and [f.code for f in report.findings] == ["signature-missing"]
    assert [f.severity for f in report.findings] == ["warning"]


def test_policy_from_the_environment(tmp_path: Path, keys: dict[str, KeyPair], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    ref = publish(tmp_path)
    trust.sign(ref, keys["bob"].private)
    policy = write_policy(tmp_path / "keys" / "policy.toml", '[[rule]]\nadapters = "*"\nrequire = true\nkeys = ["alice.pub"]\n')
    monkeypatch.setenv("SPR_TRUST_POLICY", str(policy))
    code, out, _ = spr(capsys, "trust", "check", ref, "--json")
    assert code == 3
    doc = json.loads(out)
    assert doc["refused"] and [f["code"] for f in doc["findings"]] == ["signer-not-trusted"]
    trust.sign(ref, keys["alice"].private)
    code, out, _ = spr(capsys, "trust", "check", ref)
    assert code == 0 and out.startswith("trusted: team/coach@1 is signed by key sha256:")


def test_policy_refuses_an_invalid_signature(tmp_path: Path, keys: dict[str, KeyPair]) -> None:
    ref = publish(tmp_path)
    trust.sign(ref, keys["alice"].private)
    policy = write_policy(tmp_path / "keys" / "policy.toml", '[[rule]]\nadapters = "team/*"\nrequire = true\nkeys = ["alice.pub"]\n')
    # An auditor's edit with SQL: the guard is dropped, the stored bundle's signature flipped.
    drop_guard("guard_signature_update", "signature")
    [stored] = trust.signatures(ref)
    doc = json.loads(stored.bundle)
    doc["dsseEnvelope"]["signatures"][0]["sig"] = flip_base64_byte(doc["dsseEnvelope"]["signatures"][0]["sig"])
    sql("UPDATE signature SET bundle = :b", b=json.dumps(doc))
    with pytest.raises(UntrustedError, match="signature-invalid"):
        trust.enforce(ref, policy_path=policy)
    report = trust.check(ref)
    assert [s.valid for s in report.signatures] == [False] and [f.code for f in report.findings] == ["signature-invalid"]


def test_policy_with_certificate_identities(tmp_path: Path) -> None:
    ref = publish(tmp_path)
    ca = write_ca_chain(tmp_path / "pki", "acme", "release@acme.example")
    trust.sign(ref, ca.key, certificate=ca.certificate, chain=ca.chain)
    good = write_policy(tmp_path / "pki" / "good.toml",
                        '[[rule]]\nadapters = "team/*"\nrequire = true\nidentities = ["release@acme.example"]\nroots = ["acme-root.crt"]\n')
    assert trust.enforce(ref, policy_path=good).trusted
    wrong_name = write_policy(tmp_path / "pki" / "name.toml",
                              '[[rule]]\nadapters = "team/*"\nrequire = true\nidentities = ["ops@acme.example"]\nroots = ["acme-root.crt"]\n')
    with pytest.raises(UntrustedError, match="signer-not-trusted"):
        trust.enforce(ref, policy_path=wrong_name)
    # The same identity issued by another CA: the chain does not reach the policy's root.
    write_ca_chain(tmp_path / "pki", "evil", "release@acme.example")
    other_root = write_policy(tmp_path / "pki" / "root.toml",
                              '[[rule]]\nadapters = "team/*"\nrequire = true\nidentities = ["release@acme.example"]\nroots = ["evil-root.crt"]\n')
    with pytest.raises(UntrustedError, match="signature-invalid"):
        trust.enforce(ref, policy_path=other_root)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[[rule]\nadapters = 1", "not valid TOML"),
        ('adapters = "x"\n', "must hold one or more [[rule]] tables"),
        ('[[rule]]\nadapters = "team/*"\nrequire = "yes"\n', "'require' must be true or false"),
        ('[[rule]]\nadapters = "team/*"\nkey = ["a.pub"]\n', "unknown key(s) key"),
        ('[[rule]]\nadapters = "team/*"\nkeys = ["missing.pub"]\n', "does not exist"),
        ('[[rule]]\nadapters = "team/*"\nidentities = ["a@b"]\n', "'identities' need 'roots'"),
        ('[[rule]]\nadapters = "team/*"\nrequire = true\n', "would refuse everything"),
        ('[[rule]]\nadapters = "team/*"\nkeys = ["policy.toml"]\n', "not a PEM public key"),
    ],
)
def test_bad_policies_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str) -> None:
    ref = publish(tmp_path)
    policy = write_policy(tmp_path / "policy.toml", text)
    code, _, err = spr(capsys, "trust", "check", ref, "--trust-policy", str(policy))
    assert code == 2 and expected in err and err.count("\n") == 1, err


# ---------------------------------------------------------------------------------------------
# Audit: guards, stored signatures, checkpoints


def kinds(problems: list[Any]) -> list[tuple[str, str]]:
    return [(p.severity, p.kind) for p in problems]


def test_a_clean_catalogue_has_no_trust_problems(tmp_path: Path, keys: dict[str, KeyPair]) -> None:
    ref = publish(tmp_path)
    trust.sign(ref, keys["alice"].private)
    ca = write_ca_chain(tmp_path / "pki", "acme", "release@acme.example")
    trust.sign(ref, ca.key, certificate=ca.certificate, chain=ca.chain)
    assert trust.audit_problems() == []


def test_dropped_triggers_are_reported(tmp_path: Path) -> None:
    publish(tmp_path)
    drop_guard("guard_event_delete", "event")
    drop_guard("guard_signature_update", "signature")
    problems = trust.audit_problems()
    assert kinds(problems) == [("error", "guard-missing"), ("error", "guard-missing")]
    assert "guard_event_delete" in problems[0].message and problems[0].subject == "event"
    assert "guard_signature_update" in problems[1].message


def test_an_edited_signature_row_is_reported(tmp_path: Path, keys: dict[str, KeyPair]) -> None:
    ref = publish(tmp_path)
    trust.sign(ref, keys["alice"].private)
    drop_guard("guard_signature_update", "signature")
    [stored] = trust.signatures(ref)
    doc = json.loads(stored.bundle)
    doc["dsseEnvelope"]["signatures"][0]["sig"] = flip_base64_byte(doc["dsseEnvelope"]["signatures"][0]["sig"])
    sql("UPDATE signature SET bundle = :b", b=json.dumps(doc))
    problems = [p for p in trust.audit_problems() if p.kind != "guard-missing"]
    assert kinds(problems) == [("error", "row-edited"), ("error", "signature-invalid")]


def test_checkpoint_catches_a_deleted_newest_event(tmp_path: Path, keys: dict[str, KeyPair]) -> None:
    from registry.trust import checkpoint

    ref = publish(tmp_path)
    catalogue.set_alias(ref, "prod")
    cp = checkpoint.create(key=keys["alice"].private)
    path = checkpoint.write(cp, tmp_path / "head.json")
    assert cp.count == 2 and cp.head == catalogue.events()[-1].hash
    assert trust.audit_problems(checkpoint_file=path, checkpoint_key=keys["alice"].public) == []
    # The catalogue grows: it still extends the checkpoint.
    trust.sign(ref, keys["bob"].private)
    assert trust.audit_problems(checkpoint_file=path) == []

    # Cut the tail (the sign event and the alias move), as an auditor would with SQL: the chain
    # that remains is valid, only the checkpoint sees the cut.
    drop_guard("guard_event_delete", "event")
    newest = [e.id for e in catalogue.events()][-2:]
    for event_id in newest:
        sql("DELETE FROM event WHERE id = :i", i=event_id)
    assert catalogue.verify_event_chain() == []
    problems = [p for p in trust.audit_problems(checkpoint_file=path) if p.kind == "checkpoint"]
    assert len(problems) == 1 and "holds 1 events but the checkpoint" in problems[0].message

    # Appending again does not hide it: event #2 is now another event.
    catalogue.set_alias(ref, "staging")
    problems = [p for p in trust.audit_problems(checkpoint_file=path) if p.kind == "checkpoint"]
    assert len(problems) == 1 and "event #2 hashes to" in problems[0].message


def test_checkpoint_files_are_checked(tmp_path: Path, keys: dict[str, KeyPair]) -> None:
    from registry.errors import IntegrityError, UsageError
    from registry.trust import checkpoint

    publish(tmp_path)
    path = checkpoint.write(checkpoint.create(key=keys["alice"].private), tmp_path / "head.json")
    assert checkpoint.read(path, public_key=keys["alice"].public).count == 1
    with pytest.raises(IntegrityError, match="not by"):
        checkpoint.read(path, public_key=keys["bob"].public)
    doc = json.loads(path.read_text())
    doc["statement"]["count"] = 0  # an edited statement
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="signature does not verify"):
        checkpoint.read(forged)
    unsigned = checkpoint.write(checkpoint.create(), tmp_path / "unsigned.json")
    assert checkpoint.read(unsigned).signed_by is None
    with pytest.raises(IntegrityError, match="is not signed"):
        checkpoint.read(unsigned, public_key=keys["alice"].public)
    for content in ("{", '{"statement": {"format": "x"}}', json.dumps({"statement": {**doc["statement"], "head": "zz"}})):
        bad = tmp_path / "bad.json"
        bad.write_text(content)
        with pytest.raises(UsageError, match="is not a checkpoint"):
            checkpoint.read(bad)


def test_train_with_sign_key(tmp_path: Path, keys: dict[str, KeyPair], capsys: pytest.CaptureFixture[str], tiny_bloom: Path) -> None:
    from cli_support import write_jsonl

    from registry.demo import toymodels

    data = write_jsonl(tmp_path / "coach.jsonl", [{"text": p} for p in toymodels.COACH_PROMPTS[:8]])
    bad = tmp_path / "bad.pem"
    bad.write_text("nope")
    code, _, err = spr(capsys, "train", "--base-model", str(tiny_bloom), "--dataset", str(data), "--name", "team/t",
                       "--max-steps", "1", "--eval-split", "0", "--device", "cpu", "--sign-key", str(bad))
    assert code == 2 and "not a PEM private key" in err and catalogue.list_versions() == []  # refused before training
    code, out, err = spr(capsys, "train", "--base-model", str(tiny_bloom), "--dataset", str(data), "--name", "team/t",
                         "--max-steps", "1", "--eval-split", "0", "--device", "cpu", "--sign-key", str(keys["alice"].private))
    assert code == 0, err
    assert "signed by key sha256:" in out
    assert [s.valid for s in trust.check("team/t@1").signatures] == [True]


def test_signature_rows_are_bound_to_their_events(tmp_path: Path, keys: dict[str, KeyPair]) -> None:
    from registry.catalogue.bindings import check_bindings

    ref = publish(tmp_path)
    trust.sign(ref, keys["alice"].private)
    assert [p for p in check_bindings() if p.subject.startswith("signature/")] == []
    drop_guard("guard_signature_update", "signature")
    sql("UPDATE signature SET signed_by = 'mallory'")
    problems = [p for p in check_bindings() if p.subject.startswith("signature/")]
    assert [(p.severity, p.kind) for p in problems] == [("error", "row-edited")]
    drop_guard("guard_signature_delete", "signature")
    sql("DELETE FROM signature")
    problems = [p for p in check_bindings() if p.subject.startswith("signature/")]
    assert [(p.severity, p.kind) for p in problems] == [("error", "row-deleted")]


def test_bundles_travel_to_another_catalogue(tmp_path: Path, keys: dict[str, KeyPair], monkeypatch: pytest.MonkeyPatch) -> None:
    """What push/pull do with model.sig: pick the bundle to publish, verify and store it on arrival."""
    from ops_support import switch_home

    ref = publish(tmp_path)
    trust.sign(ref, keys["bob"].private)
    trust.sign(ref, keys["alice"].private)
    policy = trust.load_policy(write_policy(tmp_path / "keys" / "policy.toml",
                                            '[[rule]]\nadapters = "team/*"\nrequire = true\nkeys = ["alice.pub"]\n'))
    version = catalogue.get_version(ref)
    bundle = trust.bundle_for_push(version, policy=policy)
    assert bundle is not None and bundle == trust.signatures(ref)[1].bundle  # the trusted one, not the oldest
    assert trust.bundle_for_push(version) == trust.signatures(ref)[0].bundle  # no policy: the oldest valid

    manifest_dir = tmp_path / "carried"
    catalogue.export(ref, manifest_dir)
    switch_home(monkeypatch, tmp_path / "elsewhere")
    arrived = catalogue.publish(manifest_dir, "team/coach").version
    assert arrived.digest == version.digest
    assert trust.import_bundle(arrived, bundle, policy=None) is None  # a key bundle needs a known key
    result = trust.import_bundle(arrived, bundle, policy=policy)
    assert result is not None and result.created and trust.enforce(arrived.ref, policy_path=policy.path).trusted
    doc = json.loads(bundle)
    doc["dsseEnvelope"]["payload"] = flip_base64_byte(doc["dsseEnvelope"]["payload"])
    with pytest.raises(SignatureError):
        trust.import_bundle(arrived, json.dumps(doc), policy=policy)


# ---------------------------------------------------------------------------------------------
# The policy where adapters are used: verify, load


def test_verify_under_a_policy(tmp_path: Path, keys: dict[str, KeyPair], prompt_tuning_random: Path, tiny_bloom: Path,
                               capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    ref = catalogue.publish(prompt_tuning_random, "team/coach", options=catalogue.PublishOptions(base_model=str(tiny_bloom))).version.ref
    require = write_policy(tmp_path / "keys" / "require.toml", '[[rule]]\nadapters = "team/*"\nrequire = true\nkeys = ["alice.pub"]\n')
    report_only = write_policy(tmp_path / "keys" / "report.toml", '[[rule]]\nadapters = "team/*"\nkeys = ["alice.pub"]\n')

    assert spr(capsys, "verify", ref, "--base-model", str(tiny_bloom))[0] == 0  # no policy: nothing about signatures
    code, out, _ = spr(capsys, "verify", ref, "--base-model", str(tiny_bloom), "--trust-policy", str(require), "--json")
    doc = json.loads(out)
    assert code == 3 and [(f["code"], f["severity"]) for f in doc["findings"]] == [("signature-missing", "error")]
    code, out, _ = spr(capsys, "verify", ref, "--base-model", str(tiny_bloom), "--trust-policy", str(report_only))
    assert code == 0 and "warning  signature-missing" in out

    trust.sign(ref, keys["bob"].private)
    monkeypatch.setenv("SPR_TRUST_POLICY", str(require))
    code, out, _ = spr(capsys, "verify", ref, "--base-model", str(tiny_bloom))
    assert code == 3 and "signer-not-trusted" in out
    trust.sign(ref, keys["alice"].private)
    code, out, _ = spr(capsys, "verify", ref, "--base-model", str(tiny_bloom))
    assert code == 0 and out.startswith("compatible:")


def test_load_under_a_policy(tmp_path: Path, keys: dict[str, KeyPair], prompt_tuning_random: Path, tiny_bloom: Path) -> None:
    from registry.errors import IncompatibleError
    from registry.ml import loading

    ref = catalogue.publish(prompt_tuning_random, "team/coach", options=catalogue.PublishOptions(base_model=str(tiny_bloom))).version.ref
    policy = write_policy(tmp_path / "keys" / "policy.toml", '[[rule]]\nadapters = "team/*"\nrequire = true\nkeys = ["alice.pub"]\n')
    with pytest.raises(IncompatibleError, match="signature-missing") as caught:
        loading.load(ref, str(tiny_bloom), trust_policy=policy)
    assert caught.value.exit_code == 3
    trust.sign(ref, keys["alice"].private)
    model = loading.load_many([ref], str(tiny_bloom), trust_policy=policy)
    assert model.active_adapter


# ---------------------------------------------------------------------------------------------
# Through the Hub: push uploads model.sig; pull and sync verify it and apply the policy


def test_push_pull_sync_with_signatures(tmp_path: Path, keys: dict[str, KeyPair], hub_server: Any,
                                        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import subprocess
    import sys

    from hub_fixtures import HUB_TOKEN
    from ops_support import switch_home

    from registry import hub

    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    ref = publish(tmp_path)
    trust.sign(ref, keys["alice"].private)
    pushed = hub.push(ref, "team/coach", endpoint=hub_server.url)
    api = HfApi(endpoint=hub_server.url, token=HUB_TOKEN)
    assert "model.sig" in api.list_repo_files("team/coach", revision="v1")
    assert hub.push(ref, "team/coach", endpoint=hub_server.url).commit_sha == pushed.commit_sha  # idempotent
    lockfile = tmp_path / "spr.lock"
    hub.lock([ref], lockfile)

    keydir = keys["alice"].public.parent
    trusts_bob = write_policy(keydir / "bob.toml", '[[rule]]\nadapters = "team/*"\nrequire = true\nkeys = ["bob.pub"]\n')
    trusts_alice = write_policy(keydir / "alice.toml", '[[rule]]\nadapters = "team/*"\nrequire = true\nkeys = ["alice.pub"]\n')

    # Deploy side: an empty catalogue. A policy trusting another key refuses, nothing is written.
    switch_home(monkeypatch, tmp_path / "deploy")
    code, _, err = spr(capsys, "pull", "team/coach@v1", "--to", str(tmp_path / "refused"), "--trust-policy", str(trusts_bob))
    assert code == 3 and "signer-not-trusted" in err and err.count("\n") == 1 and not (tmp_path / "refused").exists()

    switch_home(monkeypatch, tmp_path / "deploy2")
    code, _, err = spr(capsys, "pull", "team/coach@v1", "--to", str(tmp_path / "out"), "--trust-policy", str(trusts_alice))
    assert code == 0, err
    assert [s.valid for s in trust.check("team/coach@1").signatures] == [True]
    out = tmp_path / "out"
    assert {"model.sig", "spr_manifest.json"} <= {p.name for p in out.iterdir()}
    cli = [sys.executable, "-m", "model_signing", "verify", "key", str(out), "--signature", str(out / "model.sig"),
           "--public_key", str(keys["alice"].public)]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr + done.stdout
    # A second pull into the same directory is a no-op (the directory holds exactly this version).
    assert spr(capsys, "pull", "team/coach@v1", "--to", str(out), "--trust-policy", str(trusts_alice))[0] == 0

    # Without a policy the key is unknown here: the pull succeeds, the bundle is not stored.
    switch_home(monkeypatch, tmp_path / "deploy3")
    assert spr(capsys, "pull", "team/coach@v1")[0] == 0
    assert trust.signatures("team/coach@1") == []

    # sync applies the policy to every entry before writing any directory.
    switch_home(monkeypatch, tmp_path / "deploy4")
    code, _, err = spr(capsys, "sync", str(lockfile), "--to", str(tmp_path / "synced"), "--trust-policy", str(trusts_bob))
    assert code == 3 and not (tmp_path / "synced").exists()
    switch_home(monkeypatch, tmp_path / "deploy5")
    code, _, err = spr(capsys, "sync", str(lockfile), "--to", str(tmp_path / "synced"), "--trust-policy", str(trusts_alice))
    assert code == 0, err

    # A tampered model.sig on the Hub is refused (exit 5) and not stored.
    doc = json.loads(Path(api.hf_hub_download("team/coach", "model.sig", revision="v1")).read_text())
    doc["dsseEnvelope"]["payload"] = flip_base64_byte(doc["dsseEnvelope"]["payload"])
    api.upload_file(path_or_fileobj=json.dumps(doc).encode(), path_in_repo="model.sig", repo_id="team/coach")
    switch_home(monkeypatch, tmp_path / "deploy6")
    code, _, err = spr(capsys, "pull", "team/coach", "--trust-policy", str(trusts_alice))
    assert code == 5 and "does not verify" in err and err.count("\n") == 1
    assert trust.signatures("team/coach@1") == []


# ---------------------------------------------------------------------------------------------
# spr audit: the three tamperings found by hand (edited eval score, deleted newest event, dropped trigger)


def audit_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = spr(capsys, "audit", "--json", *args)
    return code, json.loads(out)


def test_audit_catches_an_edited_eval_score(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref = publish(tmp_path, evals=[catalogue.EvalInput("eval_loss", 2.5)])
    catalogue.add_evals(ref, [catalogue.EvalInput("accuracy", 0.61)])
    code, doc = audit_json(capsys)
    assert code == 0 and doc["problems"] == [], doc["problems"]
    sql("UPDATE eval_score SET value = 0.5 WHERE metric = 'eval_loss'")  # eval_score has no guard: plain SQL
    code, doc = audit_json(capsys)
    assert code == 5
    assert [(p["kind"], p["subject"].split("/")[0]) for p in doc["problems"]] == [("row-edited", "eval_score")]
    sql("DELETE FROM eval_score WHERE metric = 'accuracy'")
    code, doc = audit_json(capsys)
    assert sorted(p["kind"] for p in doc["problems"]) == ["row-deleted", "row-edited"]


def test_audit_binds_aliases_deprecations_and_hub_copies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = publish(tmp_path, 1)
    two = publish(tmp_path, 2)
    catalogue.set_alias(one, "prod")
    catalogue.set_alias(two, "prod")
    catalogue.set_alias(one, "staging")
    catalogue.remove_alias("team/coach", "staging")
    catalogue.deprecate(one, "superseded")
    catalogue.record_hub_copy(two, endpoint="http://hub.local", repo_id="team/coach", commit_sha="c" * 40, tag="v2")
    assert audit_json(capsys)[1]["problems"] == []
    # The alias moved back with SQL (the prod move deleted from history, in effect).
    sql("UPDATE alias SET version_id = (SELECT id FROM version WHERE number = 1) WHERE alias = 'prod'")
    sql("UPDATE version SET status_reason = 'fine after all'")  # the one mutable column group
    sql("UPDATE hub_copy SET commit_sha = :c", c="d" * 40)
    sql("INSERT INTO alias (adapter_id, alias, version_id, updated_at) SELECT adapter_id, 'staging', id, created_at "
        "FROM version WHERE number = 1")
    code, doc = audit_json(capsys)
    assert code == 5
    assert sorted((p["kind"], p["subject"].split("/")[0]) for p in doc["problems"]) == [
        ("row-edited", "alias"), ("row-edited", "alias"), ("row-edited", "hub_copy"), ("row-edited", "version-status"),
    ]


def test_audit_reports_a_dropped_trigger(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    publish(tmp_path)
    drop_guard("guard_event_update", "event")
    code, out, _ = spr(capsys, "audit")
    assert code == 5 and out.startswith("error guard-missing event: the append-only trigger guard_event_update is missing")


def test_audit_checkpoint_catches_a_deleted_newest_event(tmp_path: Path, keys: dict[str, KeyPair],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    ref = publish(tmp_path)
    catalogue.set_alias(ref, "prod")  # the move that put a version on prod: the newest event
    head = tmp_path / "head.json"
    code, out, err = spr(capsys, "audit", "checkpoint", "--key", str(keys["alice"].private), "-o", str(head))
    assert code == 0 and "checkpoint of 2 events" in out and "signed by sha256:" in out
    code, doc = audit_json(capsys, "--checkpoint", str(head), "--checkpoint-key", str(keys["alice"].public))
    assert code == 0 and doc["problems"] == [] and doc["head"]["count"] == 2
    assert doc["head"]["head"] == json.loads(head.read_text())["statement"]["head"]
    code, out, _ = spr(capsys, "audit", "checkpoint")  # to stdout, unsigned
    assert code == 0 and json.loads(out)["statement"]["count"] == 2 and "signature" not in json.loads(out)

    # Delete the newest event and put the guard back, as a careful intruder would; the alias row
    # goes too, so nothing else points at the cut.
    from registry import db

    if db.get_engine(None).dialect.name == "sqlite":
        with db.get_engine(None).connect() as conn:
            from sqlalchemy import text

            create = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'guard_event_delete'")).scalar_one()
        drop_guard("guard_event_delete", "event")
        sql("DELETE FROM event WHERE id = (SELECT max(id) FROM event)")
        sql(create)
    else:
        sql("ALTER TABLE event DISABLE TRIGGER guard_event_delete")
        sql("DELETE FROM event WHERE id = (SELECT max(id) FROM event)")
        sql("ALTER TABLE event ENABLE TRIGGER guard_event_delete")
    sql("DELETE FROM alias")
    code, doc = audit_json(capsys)
    assert code == 0 and doc["problems"] == []  # the chain alone cannot see the cut
    code, doc = audit_json(capsys, "--checkpoint", str(head))
    assert code == 5 and [p["kind"] for p in doc["problems"]] == ["checkpoint"]
    assert "1 event(s) up to the checkpoint were deleted" in doc["problems"][0]["message"]

    # Bad checkpoint files: one line, exit non-zero.
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    code, _, err = spr(capsys, "audit", "--checkpoint", str(bad))
    assert code == 2 and "is not a checkpoint" in err and err.count("\n") == 1
    code, _, err = spr(capsys, "audit", "--checkpoint", str(head), "--checkpoint-key", str(keys["bob"].public))
    assert code == 5 and "not by" in err and err.count("\n") == 1


def test_plain_audit_still_works_as_a_group(capsys: pytest.CaptureFixture[str]) -> None:
    assert spr(capsys, "audit")[0] == 0
    assert spr(capsys, "audit", "--strict")[0] == 0
    code, out, _ = spr(capsys, "audit", "--help")
    assert code == 0 and "checkpoint" in out


def test_without_model_signing_signatures_are_reported_unverified(tmp_path: Path, keys: dict[str, KeyPair],
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    ref = publish(tmp_path)
    trust.sign(ref, keys["alice"].private)
    policy = write_policy(tmp_path / "keys" / "p.toml", '[[rule]]\nadapters = "team/*"\nrequire = true\nkeys = ["alice.pub"]\n')
    monkeypatch.setitem(sys.modules, "model_signing", None)  # as in an install without the [sign] extra
    code, out, _ = spr(capsys, "show", ref)
    assert code == 0 and "not verified (install softprompt-registry[sign])" in out
    code, _, err = spr(capsys, "trust", "check", ref, "--trust-policy", str(policy))
    assert code == 1 and "install it with: pip install 'softprompt-registry[sign]'" in err and err.count("\n") == 1
    code, out, _ = spr(capsys, "audit")
    assert code == 0 and "signatures-unchecked" in out
