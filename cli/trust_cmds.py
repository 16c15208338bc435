"""Trust commands: sign, trust check (and the signature lines of ``spr show``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from registry.cli.app import AppContext, cli, emit, json_option, pass_app
from registry.cli.output import markup_safe, stdout, when

if TYPE_CHECKING:
    from registry.types import VersionInfo

_PEM = click.Path(path_type=Path, dir_okay=False)


@cli.command()
@click.argument("ref")
@click.option("--key", "key", type=_PEM, metavar="PRIVATE_KEY.pem", help="EC private key (P-256/384/521, PEM) to sign with.")
@click.option("--key-password", envvar="SPR_SIGN_KEY_PASSWORD", metavar="TEXT",
              help="Password of an encrypted key (default: $SPR_SIGN_KEY_PASSWORD).")
@click.option("--certificate", type=_PEM, metavar="CERT.pem", help="Signing certificate for the key (PKI signing).")
@click.option("--cert-chain", "chain", type=_PEM, multiple=True, metavar="CHAIN.pem",
              help="Intermediate/root certificates carried in the bundle (repeatable).")
@click.option("--bundle", type=_PEM, metavar="model.sig", help="Store a bundle made elsewhere (model_signing sign) instead of signing.")
@click.option("--public-key", type=_PEM, metavar="KEY.pub", help="With --bundle: the public key of a key-signed bundle.")
@click.option("--author", help="Who signs (recorded in the event; default: git user.name, else the OS user).")
@json_option
@pass_app
def sign(
    app: AppContext, ref: str, key: Path | None, key_password: str | None, certificate: Path | None,
    chain: tuple[Path, ...], bundle: Path | None, public_key: Path | None, author: str | None,
) -> None:
    """Sign version REF (its files and manifest) with model-signing, and store the bundle.

    Several signers may sign one version; signing again with the same key keeps the first bundle.
    """
    from registry import trust
    from registry.errors import UsageError

    if (key is None) == (bundle is None):
        raise UsageError("pass either --key PRIVATE_KEY.pem (to sign) or --bundle model.sig (to store a bundle)",
                         hint="see 'spr sign --help'")
    if bundle is not None:
        if certificate or chain:
            raise UsageError("--certificate/--cert-chain sign with a key; a --bundle carries its own chain")
        result = trust.attach(ref, bundle, public_key=public_key, db=app.db, actor=author)
    else:
        assert key is not None
        if public_key is not None:
            raise UsageError("--public-key goes with --bundle; with --key it is derived from the private key")
        result = trust.sign(ref, key, certificate=certificate, chain=chain, password=key_password, db=app.db, actor=author)
    sig = result.signature

    def render() -> None:
        verb = "signed" if result.created else "already signed by this key"
        click.echo(f"{verb} {sig.ref} {sig.digest} by {sig.signer} ({sig.key_fingerprint[:23]}…)")

    emit(app, {"created": result.created, "signature": _public(sig)}, render)


@cli.group()
def trust() -> None:
    """Signatures and trust policies."""


@trust.command("check")
@click.argument("ref")
@click.option("--trust-policy", type=_PEM, metavar="FILE.toml", help="Trust policy (default: $SPR_TRUST_POLICY).")
@json_option
@pass_app
@click.pass_context
def trust_check(ctx: click.Context, app: AppContext, ref: str, trust_policy: Path | None) -> None:
    """Verify REF's signatures and judge them under the trust policy (exit 3 when it refuses)."""
    from registry import trust as trust_lib
    from registry.errors import EXIT_INCOMPATIBLE

    report = trust_lib.check(ref, policy_path=trust_policy, db=app.db)

    def render() -> None:
        for line in report.lines():
            click.echo(line)
        for s in report.signatures:
            state = ("valid" if s.valid else "INVALID") + (", trusted" if s.trusted else "")
            click.echo(f"  {s.signer} {s.key_fingerprint[:23]}… {when(s.signed_at)}: {state}")

    emit(app, report.to_dict(), render)
    if report.refused:
        ctx.exit(EXIT_INCOMPATIBLE)


@trust.command("export")
@click.argument("ref")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--trust-policy", type=_PEM, metavar="FILE.toml", help="Prefer the bundle this policy trusts (default: $SPR_TRUST_POLICY).")
@json_option
@pass_app
def trust_export(app: AppContext, ref: str, directory: Path, trust_policy: Path | None) -> None:
    """Export REF with spr_manifest.json and model.sig, ready for 'model_signing verify'."""
    from registry import trust as trust_lib

    out = trust_lib.export_signed(ref, directory, db=app.db, policy_path=trust_policy)
    emit(app, {"directory": out}, lambda: click.echo(f"exported {ref} with its signature to {out}"))


def signer_for_publish(key: Path | None) -> Callable[[str, str | None, str | None], dict[str, Any]] | None:
    """For ``--sign-key``: check the key now (before anything is published) and return a signer."""
    if key is None:
        return None
    import os

    from registry import trust as trust_lib
    from registry.trust import signing

    password = os.environ.get("SPR_SIGN_KEY_PASSWORD") or None
    signing.require_library()
    signing.load_private_key(key, password)

    def sign_it(ref: str, db: str | None, actor: str | None) -> dict[str, Any]:
        return _public(trust_lib.sign(ref, key, password=password, db=db, actor=actor).signature)

    return sign_it


def signature_rows(version: VersionInfo, db: str | None) -> list[dict[str, Any]]:
    """Each stored signature of ``version`` with ``valid`` (None when model-signing is not installed)."""
    from registry import trust as trust_lib

    return trust_lib.signature_report(version, db=db)


def render_signatures(rows: list[dict[str, Any]]) -> None:
    """The ``signatures`` block of ``spr show``."""
    console = stdout()
    if not rows:
        console.print("  signatures:     none")
        return
    console.print("  signatures:")
    for r in rows:
        state = {True: "valid", False: "INVALID", None: "not verified (install softprompt-registry[sign])"}[r["valid"]]
        line = f"    {r['signer']}  {r['key_fingerprint'][:23]}…  {when(r['signed_at'])}  {state}"
        if r["problem"]:
            line += f": {r['problem']}"
        console.print(markup_safe(line))


def _public(sig: Any) -> dict[str, Any]:
    return {
        "ref": sig.ref, "digest": sig.digest, "kind": sig.kind, "signer": sig.signer,
        "key_fingerprint": sig.key_fingerprint, "bundle_sha256": sig.bundle_sha256,
        "signed_by": sig.signed_by, "signed_at": sig.signed_at,
    }
