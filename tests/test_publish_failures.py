"""A publish that fails for lack of space leaves the store as it was, and says that the disk is full.

The full disk is real: a 2 MiB tmpfs mounted for the test (the suite runs as root here; where
``mount`` is refused the tests are skipped with that reason).
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from adapter_files import prompt_config, write_prompt_adapter
from cli_support import spr

from registry import catalogue, db
from registry.errors import DatabaseError
from registry.storage import LocalBlobStore


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, unmounted afterwards."""
    mount_point = tmp_path / "tiny-fs"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 2 MiB tmpfs here ({done.stderr.strip() or done.returncode}); needs root")
    try:
        yield mount_point
    finally:
        db.dispose_all()  # close SQLite connections into the mount before unmounting it
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _blobs(root: Path) -> set[str]:
    """Every file under the blob store except its lock file (temp files included)."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != ".gc.lock"}


def _fill(directory: Path) -> Path:
    """Write a file until the filesystem is full; return it."""
    filler = directory / "filler"
    with open(filler, "wb") as fh:
        chunk = b"\0" * 65536
        try:
            while True:
                fh.write(chunk)
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_a_publish_that_fills_the_blob_store_removes_what_it_stored(
    capsys: pytest.CaptureFixture[str], tiny_fs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SPR_BLOB_DIR", str(tiny_fs / "blobs"))
    store = LocalBlobStore()
    adapter = write_prompt_adapter(tmp_path / "adapter", config=prompt_config(num_virtual_tokens=4, token_dim=64))
    # A 2.5 MB card: the config is stored (new), the weights are found already stored, the card fills the disk.
    (adapter / "README.md").write_bytes(os.urandom(2_500_000))
    already = store.put_bytes((adapter / "adapter_model.safetensors").read_bytes())
    before = _blobs(store.root)
    assert before == {f"sha256/{already[:2]}/{already}"}

    code, out, err = spr(capsys, "publish", str(adapter), "--name", "team/big")
    assert code == 1 and out == ""
    assert "No space left on device" in err and "Traceback" not in err
    assert _blobs(store.root) == before  # the new config blob is gone, the one found stored is kept
    assert catalogue.list_versions() == []

    # With room again, the same publish succeeds.
    (adapter / "README.md").write_text("a card\n")
    code, out, err = spr(capsys, "publish", str(adapter), "--name", "team/big")
    assert code == 0, err


def test_a_catalogue_on_a_full_disk_says_so_and_leaves_no_blobs(
    capsys: pytest.CaptureFixture[str], tiny_fs: Path, tmp_path: Path,
) -> None:
    url = f"sqlite:///{tiny_fs / 'catalogue.db'}"
    db.upgrade_url(url)
    adapter = write_prompt_adapter(tmp_path / "adapter", seed=3)
    store = LocalBlobStore()
    before = _blobs(store.root) if store.root.exists() else set()
    filler = _fill(tiny_fs)

    with pytest.raises(DatabaseError) as caught:
        catalogue.publish(adapter, "team/full", db=url)
    message = str(caught.value)
    assert f"the disk holding {(tiny_fs / 'catalogue.db').resolve()} is full" in message
    assert "check that the database is reachable" not in message
    assert _blobs(store.root) == before  # the blobs it stored before the commit failed were removed

    code, _, err = spr(capsys, "--db", url, "publish", str(adapter), "--name", "team/full")
    assert code != 0 and "is full" in err and "free some space" in err

    filler.unlink()
    assert catalogue.publish(adapter, "team/full", db=url).created
    assert len(_blobs(store.root)) == 2  # config and weights
