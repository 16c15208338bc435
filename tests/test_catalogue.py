"""The catalogue: publish, refs, idempotency, immutability, aliases, lineage, the event chain."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from adapter_files import prompt_config, write_prompt_adapter
from sqlalchemy import text

from registry import catalogue, db, errors
from registry.adapters.manifest import digest_of
from registry.catalogue import PublishOptions
from registry.cli.inputs import parse_eval
from registry.digest import sha256_file
from registry.storage import LocalBlobStore


@pytest.fixture
def adapter(tmp_path: Path) -> Path:
    return write_prompt_adapter(tmp_path / "adapter", seed=1)


def test_publish_records_facts_and_stores_files(adapter: Path, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "a"}\n{"text": "b"}\n\n{"text": "c"}\n')
    result = catalogue.publish(
        adapter, "team/coach",
        options=PublishOptions(
            dataset=data, evals=[parse_eval("eval_loss=2.5")], description="coach",
            tags={"team": "search"}, training={"lr": 0.003, "epochs": 6}, template="Human: {prompt}\n\nAssistant: ",
        ),
    )
    v = result.version
    assert result.created
    assert (v.namespace, v.name, v.number) == ("team", "coach", 1)
    assert v.peft_type == "PROMPT_TUNING" and v.num_virtual_tokens == 4 and v.token_dim == 64
    assert v.init_method == "RANDOM"
    assert v.dataset is not None and v.dataset.records == 3 and v.dataset.format == "jsonl"
    assert v.dataset.digest == "sha256:" + sha256_file(data)[0]
    assert v.base_model is not None and v.base_model.name == "bigscience/bloomz-560m"
    assert v.training == {"lr": 0.003, "epochs": 6}
    assert v.template == "Human: {prompt}\n\nAssistant: "
    assert [s.metric for s in v.eval_scores] == ["eval_loss"]
    assert v.digest == digest_of(v.manifest)
    store = LocalBlobStore()
    for f in v.files:
        assert sha256_file(store.local_path(f.sha256))[0] == f.sha256
        assert f.sha256 == sha256_file(adapter / f.path)[0]


def test_publish_is_idempotent(adapter: Path) -> None:
    first = catalogue.publish(adapter, "coach")
    again = catalogue.publish(adapter, "coach")
    assert again.created is False
    assert again.version.number == first.version.number == 1
    assert again.version.digest == first.version.digest
    assert len(catalogue.versions("coach")) == 1
    assert [e.action for e in catalogue.events()] == ["publish"]


def test_versions_are_numbered_per_adapter(tmp_path: Path) -> None:
    for seed in range(3):
        catalogue.publish(write_prompt_adapter(tmp_path / f"a{seed}", seed=seed), "coach")
    catalogue.publish(write_prompt_adapter(tmp_path / "q", seed=9), "quotes")
    assert [s.number for s in catalogue.versions("coach")] == [3, 2, 1]
    assert catalogue.get_version("coach").number == 3
    assert catalogue.get_version("local/quotes@1").name == "quotes"


def test_refs_by_number_alias_and_digest(tmp_path: Path) -> None:
    v1 = catalogue.publish(write_prompt_adapter(tmp_path / "a", seed=1), "coach").version
    v2 = catalogue.publish(write_prompt_adapter(tmp_path / "b", seed=2), "coach").version
    catalogue.set_alias("coach@1", "prod")
    assert catalogue.get_version("coach@prod").number == 1
    assert catalogue.get_version(f"coach@{v2.digest}").number == 2
    assert catalogue.get_version("coach").digest == v2.digest
    with pytest.raises(errors.VersionNotFoundError, match="has no version 7 \\(latest is 2\\)"):
        catalogue.get_version("coach@7")
    with pytest.raises(errors.VersionNotFoundError, match="no alias 'staging'"):
        catalogue.get_version("coach@staging")
    with pytest.raises(errors.AdapterNotFoundError):
        catalogue.get_version("nope")
    assert v1.number == 1


def test_deprecated_version_is_skipped_by_bare_name(tmp_path: Path) -> None:
    catalogue.publish(write_prompt_adapter(tmp_path / "a", seed=1), "coach")
    catalogue.publish(write_prompt_adapter(tmp_path / "b", seed=2), "coach")
    catalogue.deprecate("coach@2", "diverged")
    assert catalogue.get_version("coach").number == 1
    assert catalogue.get_version("coach@2").status == "deprecated"
    assert [s.number for s in catalogue.list_versions()] == [1]
    assert [s.number for s in catalogue.list_versions(include_inactive=True)] == [2, 1]


def test_alias_moves_are_logged_with_from_and_to(tmp_path: Path) -> None:
    for seed in range(3):
        catalogue.publish(write_prompt_adapter(tmp_path / f"a{seed}", seed=seed), "coach")
    catalogue.set_alias("coach@1", "prod")
    catalogue.set_alias("coach@3", "prod")
    catalogue.set_alias("coach@3", "prod")  # no move, no event
    catalogue.remove_alias("coach", "prod")
    moves = [e for e in catalogue.events("coach") if e.action.startswith("alias")]
    assert [(e.action, e.details.get("from"), e.details.get("to")) for e in moves] == [
        ("alias-set", None, 1), ("alias-set", 1, 3), ("alias-remove", 3, None),
    ]
    with pytest.raises(errors.VersionNotFoundError):
        catalogue.get_version("coach@prod")


def test_lineage_over_three_generations(tmp_path: Path) -> None:
    data = tmp_path / "d.txt"
    data.write_text("one\ntwo\n")
    root = catalogue.publish(write_prompt_adapter(tmp_path / "a", seed=1), "coach",
                             options=PublishOptions(dataset=data, evals=[parse_eval("loss=3")])).version
    child = catalogue.publish(write_prompt_adapter(tmp_path / "b", seed=2), "coach",
                              options=PublishOptions(parent="coach@1")).version
    grandchild = catalogue.publish(write_prompt_adapter(tmp_path / "c", seed=3), "coach-v2",
                                   options=PublishOptions(parent=child.ref)).version
    result = catalogue.lineage(grandchild.ref)
    assert [n.ref for n in result.ancestors] == [child.ref, root.ref]
    assert result.complete
    assert result.ancestors[-1].version is not None
    assert result.ancestors[-1].version.dataset is not None
    assert result.ancestors[-1].version.eval_scores[0].value == 3
    assert grandchild.parent_ref == child.ref


def test_parent_changes_the_digest(tmp_path: Path) -> None:
    a = write_prompt_adapter(tmp_path / "a", seed=1)
    catalogue.publish(write_prompt_adapter(tmp_path / "p", seed=5), "base-prompt")
    plain = catalogue.publish(a, "x").version
    with_parent = catalogue.publish(a, "x", options=PublishOptions(parent="base-prompt")).version
    assert plain.digest != with_parent.digest
    assert with_parent.number == 2


def test_eval_scores_accumulate_outside_the_digest(adapter: Path, tmp_path: Path) -> None:
    v = catalogue.publish(adapter, "coach").version
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text('{"text": "x"}\n')
    catalogue.add_eval("coach@1", parse_eval(f"loss=2.0@{heldout}"))
    after = catalogue.add_eval("coach@1", parse_eval(f"loss=1.5@{heldout}"))
    assert after.digest == v.digest
    assert [s.value for s in after.eval_scores] == [2.0, 1.5]
    (latest,) = after.latest_scores().values()
    assert latest.value == 1.5 and latest.dataset == "sha256:" + sha256_file(heldout)[0]


def test_no_api_edits_a_published_version(adapter: Path) -> None:
    v = catalogue.publish(adapter, "coach").version
    engine = db.get_engine()
    for statement in (
        "UPDATE version SET digest = 'sha256:00' WHERE id = 1",
        "UPDATE version SET num_virtual_tokens = 9 WHERE id = 1",
        "UPDATE file SET sha256 = 'x' WHERE version_id = 1",
        "DELETE FROM version WHERE id = 1",
        "UPDATE event SET actor = 'mallory' WHERE id = 1",
        "DELETE FROM event",
    ):
        with pytest.raises(Exception, match=r"immutable|append-only"), engine.begin() as conn:
            conn.execute(text(statement))
    assert catalogue.get_version("coach@1") == catalogue.get_version("coach@1")
    assert catalogue.get_version("coach@1").digest == v.digest
    public = {name for name in dir(catalogue) if not name.startswith("_")}
    assert not any(name.startswith(("update", "edit", "set_version", "replace")) for name in public)


def test_event_chain_verifies_and_detects_edits(tmp_path: Path) -> None:
    for seed in range(3):
        catalogue.publish(write_prompt_adapter(tmp_path / f"a{seed}", seed=seed), "coach")
    catalogue.set_alias("coach@2", "prod")
    evs = catalogue.events()
    assert [e.prev_hash for e in evs[1:]] == [e.hash for e in evs[:-1]]
    assert catalogue.verify_event_chain() == []
    engine = db.get_engine()
    with engine.begin() as conn:  # someone with database access bypasses the guard
        on = " ON event" if engine.dialect.name == "postgresql" else ""
        conn.execute(text(f"DROP TRIGGER guard_event_update{on}"))
        conn.execute(text("UPDATE event SET actor = 'mallory' WHERE id = 2"))
    problems = catalogue.verify_event_chain()
    assert len(problems) == 1 and "event 2" in problems[0] and "edited" in problems[0]


def test_export_verifies_bytes_and_is_atomic(adapter: Path, tmp_path: Path) -> None:
    v = catalogue.publish(adapter, "coach").version
    out = catalogue.export("coach@1", tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == sorted(f.path for f in v.files)
    weights = next(f for f in v.files if f.path == "adapter_model.safetensors")
    blob = LocalBlobStore().path(weights.sha256)
    blob.chmod(0o644)
    raw = bytearray(blob.read_bytes())
    raw[-1] ^= 0xFF
    blob.write_bytes(bytes(raw))
    with pytest.raises(errors.DigestMismatchError, match="was changed on disk"):
        catalogue.export("coach@1", tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".spr-export-")]
    assert [e.action for e in catalogue.events()] == ["publish", "export"]


def test_dataset_directory_digest_matches_sha256sum_rule(tmp_path: Path) -> None:
    import hashlib
    import subprocess

    d = tmp_path / "ds"
    (d / "sub").mkdir(parents=True)
    (d / "b.jsonl").write_text('{"text": "b"}\n')
    (d / "a.jsonl").write_text('{"text": "a"}\n{"text": "aa"}\n')
    (d / "sub" / "c.jsonl").write_text('{"text": "c"}\n')
    from registry.adapters.dataset import describe_dataset

    info = describe_dataset(d)
    listing = subprocess.run(
        "find . -type f | sed 's|^./||' | LC_ALL=C sort | xargs -d '\\n' sha256sum",
        shell=True, cwd=d, capture_output=True, check=True,
    ).stdout
    assert info.digest == "sha256:" + hashlib.sha256(listing).hexdigest()
    assert info.records == 4 and info.format == "jsonl"


@pytest.mark.parametrize(
    ("name", "fmt", "content", "records"),
    [
        ("d.csv", "csv", 'text,label\n"multi\nline",1\nplain,0\n', 2),
        ("d.json", "json", json.dumps([{"text": "a"}, {"text": "b"}]), 2),
        ("d.txt", "txt", "one\n\ntwo\nthree\n", 3),
    ],
)
def test_dataset_formats_and_counts(tmp_path: Path, name: str, fmt: str, content: str, records: int) -> None:
    from registry.adapters.dataset import describe_dataset

    path = tmp_path / name
    path.write_text(content)
    info = describe_dataset(path)
    assert (info.format, info.records, info.name) == (fmt, records, name)


def test_dataset_parquet_count(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from registry.adapters.dataset import describe_dataset

    pq.write_table(pa.table({"text": ["a", "b", "c"]}), tmp_path / "d.parquet")
    assert describe_dataset(tmp_path / "d.parquet").records == 3


def test_tensor_shape_facts_for_seq2seq_prompt(tmp_path: Path) -> None:
    cfg = prompt_config(task_type="SEQ_2_SEQ_LM", num_transformer_submodules=2)
    d = write_prompt_adapter(tmp_path / "t5", rows=8, config=cfg)
    v = catalogue.publish(d, "t5-prompt").version
    assert v.num_transformer_submodules == 2 and v.task_type == "SEQ_2_SEQ_LM"


def test_list_filters(tmp_path: Path) -> None:
    data = tmp_path / "d.txt"
    data.write_text("x\n")
    catalogue.publish(write_prompt_adapter(tmp_path / "a", seed=1), "a", options=PublishOptions(dataset=data))
    lora_dir = tmp_path / "lora"
    lora_dir.mkdir()
    (lora_dir / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 2, "target_modules": ["query_key_value"],
         "base_model_name_or_path": "other/model", "lora_alpha": 8}))
    from safetensors.numpy import save_file

    save_file({
        "base_model.model.transformer.h.0.self_attention.query_key_value.lora_A.weight": np.zeros((2, 64), np.float32),
        "base_model.model.transformer.h.0.self_attention.query_key_value.lora_B.weight": np.zeros((192, 2), np.float32),
    }, str(lora_dir / "adapter_model.safetensors"))
    catalogue.publish(lora_dir, "b")
    assert [s.name for s in catalogue.list_versions(peft_type="lora")] == ["b"]
    assert [s.name for s in catalogue.list_versions(base_model="other/model")] == ["b"]
    assert [s.name for s in catalogue.list_versions(dataset="d.txt")] == ["a"]
    assert len(catalogue.list_versions(limit=1)) == 1
    with pytest.raises(errors.UsageError):
        catalogue.list_versions(limit=0)


def test_write_raw_header_helper_roundtrip(tmp_path: Path) -> None:
    # Guards the helper the bad-input tests rely on.
    from adapter_files import write_raw_safetensors

    header = json.dumps({"prompt_embeddings": {"dtype": "F32", "shape": [1, 2], "data_offsets": [0, 8]}}).encode()
    write_raw_safetensors(tmp_path / "x.safetensors", header, struct.pack("<2f", 1.0, 2.0))
    from registry.adapters.tensorfile import read_header, read_tensor

    h = read_header(tmp_path / "x.safetensors")
    assert read_tensor(tmp_path / "x.safetensors", h.tensors["prompt_embeddings"]).tolist() == [[1.0, 2.0]]


def test_sizes_beyond_32_bits_are_recorded(adapter: Path) -> None:
    # PostgreSQL's INTEGER is 32-bit: a 3 GB dataset must still be recordable (both backends).
    from registry.types import DatasetInfo

    big = DatasetInfo(digest="sha256:" + "ab" * 32, name="big.jsonl", format="jsonl", records=5_000_000_000,
                      size=3_000_000_000)
    v = catalogue.publish(adapter, "coach", options=PublishOptions(dataset_info=big)).version
    assert v.dataset is not None and v.dataset.size == 3_000_000_000 and v.dataset.records == 5_000_000_000


def test_blob_dir_can_be_shared_apart_from_home(adapter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "team-blobs"
    monkeypatch.setenv("SPR_BLOB_DIR", str(shared))
    v = catalogue.publish(adapter, "coach").version
    for f in v.files:
        assert (shared / "sha256" / f.sha256[:2] / f.sha256).is_file()


def test_import_holds_a_manifest_to_the_files_it_lists(adapter: Path, tmp_path: Path) -> None:
    # A manifest's digest proves only that the document is unchanged: its claims must match the files.
    import copy
    import shutil

    original = catalogue.publish(adapter, "coach").version
    lying = copy.deepcopy(original.manifest)
    lying["peft"]["token_dim"] = 4096
    with pytest.raises(errors.IntegrityError, match="'peft' does not describe the files"):
        catalogue.import_manifest(adapter, "pulled", lying)

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(adapter / "adapter_config.json", pickled / "adapter_config.json")
    (pickled / "adapter_model.bin").write_bytes(b"\\x80\\x04K\\x01.")
    manifest = copy.deepcopy(original.manifest)
    manifest["files"] = [
        {"path": p.name, "sha256": sha256_file(p)[0], "size": p.stat().st_size} for p in sorted(pickled.iterdir())
    ]
    with pytest.raises(errors.InvalidAdapterError, match="pickles are never loaded"):
        catalogue.import_manifest(pickled, "pulled", manifest)
    assert [v.name for v in catalogue.list_versions()] == ["coach"]

    honest = catalogue.import_manifest(adapter, "pulled", original.manifest).version
    assert honest.digest == original.digest
