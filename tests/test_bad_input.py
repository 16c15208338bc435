"""Bad input: each case is one clear error line, a non-zero exit, no traceback, nothing written."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from adapter_files import prompt_config, write_prompt_adapter, write_raw_safetensors

from registry import catalogue, settings
from registry.cli.main import run


def _state() -> tuple[int, list[str]]:
    """(number of versions, every file under the blob store) — must not change on a failed publish."""
    blobs = settings.blobs_dir()
    files = sorted(str(p.relative_to(blobs)) for p in blobs.rglob("*") if p.is_file()) if blobs.exists() else []
    try:
        count = len(catalogue.list_versions(include_inactive=True, limit=None))
    except Exception:
        count = 0
    return count, files


def _config(d: Path, **overrides: object) -> None:
    (d / "adapter_config.json").write_text(json.dumps(prompt_config(**overrides)))


def _missing_config(d: Path) -> None:
    (d / "adapter_config.json").unlink()


def _missing_weights(d: Path) -> None:
    (d / "adapter_model.safetensors").unlink()


def _config_not_json(d: Path) -> None:
    (d / "adapter_config.json").write_text("{not json")


def _config_not_object(d: Path) -> None:
    (d / "adapter_config.json").write_text("[1, 2, 3]")


def _unknown_type(d: Path) -> None:
    _config(d, peft_type="MAGIC_PROMPT")


def _zero_tokens(d: Path) -> None:
    _config(d, num_virtual_tokens=0)


def _negative_tokens(d: Path) -> None:
    _config(d, num_virtual_tokens=-3)


def _float_tokens(d: Path) -> None:
    _config(d, num_virtual_tokens=4.5)


def _string_tokens(d: Path) -> None:
    _config(d, num_virtual_tokens="4")


def _token_dim_mismatch(d: Path) -> None:
    _config(d, token_dim=128)


def _rows_mismatch(d: Path) -> None:
    _config(d, num_virtual_tokens=5)


def _missing_tensor_key(d: Path) -> None:
    from safetensors.numpy import save_file

    save_file({"something_else": np.zeros((4, 64), np.float32)}, str(d / "adapter_model.safetensors"))


def _nan_values(d: Path) -> None:
    write_prompt_adapter(d, tensors={"prompt_embeddings": np.full((4, 64), np.nan, np.float32)})


def _inf_values(d: Path) -> None:
    t = np.zeros((4, 64), np.float32)
    t[2, 3] = np.inf
    write_prompt_adapter(d, tensors={"prompt_embeddings": t})


def _truncated(d: Path) -> None:
    p = d / "adapter_model.safetensors"
    p.write_bytes(p.read_bytes()[:-100])


def _truncated_to_4_bytes(d: Path) -> None:
    (d / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00")


def _absurd_header_length(d: Path) -> None:
    write_raw_safetensors(d / "adapter_model.safetensors", b"{}", length=2**40)


def _header_not_json(d: Path) -> None:
    write_raw_safetensors(d / "adapter_model.safetensors", b"this is not json at all")


def _offsets_past_end(d: Path) -> None:
    header = json.dumps({"prompt_embeddings": {"dtype": "F32", "shape": [4, 64], "data_offsets": [0, 1024]}}).encode()
    write_raw_safetensors(d / "adapter_model.safetensors", header, b"\x00" * 100)


def _escaping_symlink(d: Path) -> None:
    outside = d.parent / "outside.json"
    outside.write_text(json.dumps(prompt_config()))
    (d / "adapter_config.json").unlink()
    os.symlink(outside, d / "adapter_config.json")


def _pickled_bin(d: Path) -> None:
    (d / "adapter_model.safetensors").unlink()
    # A pickle that would run code if loaded: it must never be.
    marker = d.parent / "PWNED"
    payload = (
        b"\x80\x04\x95" + struct.pack("<Q", 0)
        + b"cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR."
    )
    (d / "adapter_model.bin").write_bytes(payload)


def _huge_config(d: Path) -> None:
    with open(d / "adapter_config.json", "w") as f:
        f.write('{"peft_type": "PROMPT_TUNING", "pad": "')
        f.write("x" * (50 * 1024 * 1024))
        f.write('"}')


def _empty_dir(d: Path) -> None:
    for p in d.iterdir():
        p.unlink()


CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing config": (_missing_config, "expected adapter_config.json"),
    "missing weights": (_missing_weights, "found no weights file"),
    "config not JSON": (_config_not_json, "is not valid JSON"),
    "config not an object": (_config_not_object, "expected a JSON object, found list"),
    "unknown PEFT type": (_unknown_type, "unknown or unsupported peft_type 'MAGIC_PROMPT'"),
    "virtual tokens 0": (_zero_tokens, "num_virtual_tokens to be an integer from 1"),
    "virtual tokens negative": (_negative_tokens, "num_virtual_tokens to be an integer from 1"),
    "virtual tokens float": (_float_tokens, "num_virtual_tokens to be an integer"),
    "virtual tokens string": (_string_tokens, "num_virtual_tokens to be an integer"),
    "token dim != tensor width": (_token_dim_mismatch, "is 64 wide but the config implies 128"),
    "rows != tokens x submodules": (_rows_mismatch, "has 4 rows but the config implies 5"),
    "missing tensor key": (_missing_tensor_key, "expected a tensor 'prompt_embeddings'"),
    "NaN values": (_nan_values, "non-finite values"),
    "Inf values": (_inf_values, "holds 1 non-finite values"),
    "truncated safetensors": (_truncated, "data_offsets end at byte"),
    "truncated to 4 bytes": (_truncated_to_4_bytes, "truncated safetensors file"),
    "header length 2^40": (_absurd_header_length, "header length 1099511627776 is impossible"),
    "header not JSON": (_header_not_json, "header is not valid JSON"),
    "offsets past the end": (_offsets_past_end, "data_offsets end at byte 1024 but the data buffer holds only 100"),
    "symlink escaping the directory": (_escaping_symlink, "symlink that points outside"),
    "pickled adapter_model.bin": (_pickled_bin, "pickles are never loaded"),
    "50 MB config": (_huge_config, "is expected to be under 1000000 bytes"),
    "empty directory": (_empty_dir, "expected adapter_config.json"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_adapter_is_refused_cleanly(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # One good version first, so "unchanged" is checked against a non-empty catalogue and store.
    assert run(["publish", str(write_prompt_adapter(tmp_path / "good", seed=7)), "--name", "coach"]) == 0
    capsys.readouterr()
    before = _state()
    d = write_prompt_adapter(tmp_path / "bad" / "adapter", seed=8)
    mutate, expected = CASES[case]
    mutate(d)

    code = run(["publish", str(d), "--name", "coach"])

    out, err = capsys.readouterr()
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in err and out == ""
    assert _state() == before
    assert not (tmp_path / "bad" / "PWNED").exists()


def test_ref_that_does_not_exist(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run(["publish", str(write_prompt_adapter(tmp_path / "a")), "--name", "coach"])
    capsys.readouterr()
    for argv, expected, code in (
        (["show", "coach@9"], "adapter 'local/coach' has no version 9 (latest is 1); see 'spr versions local/coach'", 4),
        (["show", "ghost"], "no adapter named 'local/ghost'", 4),
        (["show", "coach@"], "nothing after '@'", 2),
        (["lineage", "a/b/c"], "expected 'name' or 'namespace/name'", 2),
        (["alias", "set", "coach@1", "1bad"], "invalid alias '1bad'", 2),
        (["publish", str(tmp_path / "a"), "--name", "../etc"], "invalid namespace '..'", 2),
        (["publish", str(tmp_path / "a"), "--name", "x", "--eval", "loss"], "expected METRIC=VALUE", 2),
        (["publish", str(tmp_path / "a"), "--name", "x", "--eval", "loss=nan"], "must be finite", 2),
        (["publish", str(tmp_path / "a"), "--name", "x", "--dataset-digest", "sha256:zz"], "expected a digest", 2),
        (["publish", str(tmp_path / "a"), "--name", "x", "--parent", "ghost"], "no adapter named 'local/ghost'", 4),
    ):
        assert run(argv) == code, argv
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert len(catalogue.versions("coach")) == 1


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="no adapter named"):
        run(["--debug", "show", "ghost"])


def test_json_errors_are_machine_readable(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--json", "show", "ghost"]) == 4
    out = capsys.readouterr().out
    doc = json.loads(out)
    assert doc["error"] == "AdapterNotFoundError" and doc["exit_code"] == 4


@pytest.mark.parametrize(
    "parse",
    [
        lambda: __import__("registry.refs", fromlist=["x"]).parse_ref("coach\n"),
        lambda: __import__("registry.refs", fromlist=["x"]).parse_ref("coach@prod\n"),
        lambda: __import__("registry.hub", fromlist=["x"]).parse_repo_spec("team/coach@v1\n"),
        lambda: __import__("registry.hub", fromlist=["x"]).parse_repo_spec("team/coach\n"),
        lambda: __import__("registry.adapters.manifest", fromlist=["x"]).check_relative_path("adapter_config.json\n", "test"),
    ],
    ids=["ref", "alias", "repo-revision", "repo-name", "manifest-path"],
)
def test_a_trailing_newline_never_passes_a_name_check(parse: Callable[[], object]) -> None:
    # `$` matches before a final newline; every validator must anchor at the true end.
    from registry.errors import RegistryError

    with pytest.raises(RegistryError):
        parse()


def test_an_unwritable_destination_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if os.geteuid() == 0:
        # root ignores permission bits: use a path under a regular file instead.
        target = tmp_path / "a-file" / "out"
        (tmp_path / "a-file").write_text("x")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "out"
    assert run(["publish", str(write_prompt_adapter(tmp_path / "a")), "--name", "coach"]) == 0
    capsys.readouterr()
    assert run(["export", "coach@1", str(target)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_eval_add_records_all_scores_or_none(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["publish", str(write_prompt_adapter(tmp_path / "a")), "--name", "coach"]) == 0
    assert run(["eval", "add", "coach@1", "acc=0.9", "f1=oops"]) == 2
    assert catalogue.get_version("coach@1").eval_scores == ()
    assert run(["eval", "add", "coach@1", "acc=0.9", "f1=0.5", "--split", "test"]) == 0
    scores = catalogue.get_version("coach@1").eval_scores
    assert [(s.metric, s.split) for s in scores] == [("acc", "test"), ("f1", "test")]
    assert run(["eval", "add", "coach@1", "acc=0.9", "--split", "x" * 101]) == 2
    capsys.readouterr()
