"""What a new user meets in the first hour (issue 12, item 12): lineage, log, audit, list and lock output."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_support import spr, write_jsonl

from registry import catalogue
from registry.catalogue import EvalInput, PublishOptions
from registry.demo import toymodels
from registry.errors import EXIT_NOT_FOUND, NotFoundError
from registry.hub import lock


def test_lineage_shows_a_score_recorded_twice_once_with_both_sources(
    capsys: pytest.CaptureFixture[str], prompt_tuning_random: Path
) -> None:
    # At publish (as spr train records its eval scores), then the same value again (as spr eval does).
    catalogue.publish(prompt_tuning_random, "team/coach", options=PublishOptions(evals=[EvalInput("eval_loss", 3.528478, dataset_name="coach_eval.jsonl")]))
    catalogue.add_evals("team/coach@1", [EvalInput("eval_loss", 3.528478, dataset_name="coach_eval.jsonl")])
    catalogue.add_evals("team/coach@1", [EvalInput("perplexity", 34.07, dataset_name="coach_eval.jsonl")])
    code, out, _ = spr(capsys, "lineage", "team/coach@1")
    assert code == 0
    lines = [line for line in out.splitlines() if "eval_loss=" in line]
    assert len(lines) == 1, out
    assert "publish, " in lines[0] and "spr eval, " in lines[0]
    assert sum("perplexity=34.07" in line for line in out.splitlines()) == 1
    # Nothing is lost from the catalogue: both records are still there.
    assert [s.metric for s in catalogue.get_version("team/coach@1").eval_scores].count("eval_loss") == 2


def test_lineage_keeps_different_values_apart(capsys: pytest.CaptureFixture[str], prompt_tuning_random: Path) -> None:
    catalogue.publish(prompt_tuning_random, "team/coach", options=PublishOptions(evals=[EvalInput("eval_loss", 3.5, dataset_name="a.jsonl")]))
    catalogue.add_evals("team/coach@1", [EvalInput("eval_loss", 3.25, dataset_name="a.jsonl")])
    code, out, _ = spr(capsys, "lineage", "team/coach@1")
    assert code == 0
    assert "eval_loss=3.5 on a.jsonl (publish" in out and "eval_loss=3.25 on a.jsonl (spr eval" in out


def test_training_from_a_parent_logs_no_export(capsys: pytest.CaptureFixture[str], tiny_bloom: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "coach.jsonl", [{"text": p} for p in toymodels.COACH_PROMPTS[:8]])
    common = ("--dataset", str(data), "--max-steps", "1", "--batch-size", "8", "--eval-split", "0")
    assert spr(capsys, "train", "--base-model", str(tiny_bloom), "--name", "team/coach", *common)[0] == 0
    code, _, err = spr(capsys, "train", "--parent", "team/coach@1", "--name", "team/coach", *common)
    assert code == 0, err
    actions = [e.action for e in catalogue.events("team/coach")]
    assert actions.count("publish") == 2
    assert "export" not in actions, actions
    # A user's own export is still logged.
    assert spr(capsys, "export", "team/coach@1", str(tmp_path / "out"))[0] == 0
    assert [e.action for e in catalogue.events("team/coach")].count("export") == 1


def test_audit_of_a_tiny_store_prints_no_rate(capsys: pytest.CaptureFixture[str], prompt_tuning_random: Path) -> None:
    catalogue.publish(prompt_tuning_random, "team/coach")
    code, _, err = spr(capsys, "audit")
    assert code == 0
    assert "hashed)" in err and "GB/s" not in err and "MB/s" not in err


@pytest.mark.parametrize(
    "n_bytes, seconds, shown",
    [
        (11_500, 0.01, ""),
        (11_500, 5.0, ""),  # slow but tiny: the time is overhead, not hashing
        (200_000_000, 0.05, ""),  # too short to time
        (2_000_000_000, 1.0, " at 2.00 GB/s"),
        (200_000_000, 1.0, " at 200 MB/s"),
    ],
)
def test_hash_rate_only_when_meaningful(n_bytes: int, seconds: float, shown: str) -> None:
    from registry.cli.ops_cmds import hash_rate

    assert hash_rate(n_bytes, seconds) == shown


@pytest.mark.parametrize(
    "value, shown",
    [
        ("/tmp/demo/tiny-bloom", "/tmp/demo/tiny-bloom"),
        ("/home/someone/experiments/2026/december/models/tiny-bloom", "/home/someone/experi…/tiny-bloom"),
        (
            "/root/.cache/huggingface/hub/models--bigscience--bloomz-560m/snapshots/a2845d7e13dd12efae154a9f1c63fcc2e0cc4b05",
            "bigscience/bloomz-560m@a2845d7e",
        ),
        ("bigscience/bloomz-560m", "bigscience/bloomz-560m"),
        ("an-organisation-with-a-long-name/a-model-with-a-long-name", "an-org…/a-model-with-a-long-name"),
        (None, "-"),
    ],
)
def test_list_cuts_long_names_keeping_the_name(value: str | None, shown: str) -> None:
    from registry.cli.catalogue_cmds import _short_path

    assert _short_path(value) == shown
    assert len(_short_path(value)) <= 32


def test_list_shows_the_base_models_name(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, prompt_tuning_random: Path
) -> None:
    import json
    import shutil

    adapter = tmp_path / "adapter"
    shutil.copytree(prompt_tuning_random, adapter)
    config_path = adapter / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = (
        "/root/.cache/huggingface/hub/models--bigscience--bloomz-560m/snapshots/a2845d7e13dd12efae154a9f1c63fcc2e0cc4b05"
    )
    config_path.write_text(json.dumps(config))
    catalogue.publish(adapter, "team/coach")
    code, out, _ = spr(capsys, "list")
    assert code == 0
    assert "bigscience/bloomz-560m" in out, out


def test_lock_of_a_version_never_pushed_is_not_found_and_names_push(
    capsys: pytest.CaptureFixture[str], prompt_tuning_random: Path, tmp_path: Path
) -> None:
    catalogue.publish(prompt_tuning_random, "local/unpushed")
    with pytest.raises(NotFoundError, match="never pushed"):
        lock(["local/unpushed@1"], tmp_path / "a.lock")
    code, _, err = spr(capsys, "lock", "local/unpushed@1", "-o", str(tmp_path / "a.lock"))
    assert code == EXIT_NOT_FOUND
    assert "spr push local/unpushed@1" in err
    assert not (tmp_path / "a.lock").exists()
