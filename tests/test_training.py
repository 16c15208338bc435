"""``spr train``: real Trainer + PEFT runs on tiny models, and everything they record.

Every training here is a few optimizer steps on a hidden-64 model (about a second each on two
cores). The catalogue is per test (``isolated_home``), so each test trains what it inspects.
"""

from __future__ import annotations

import json
import math
import os
import select
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from cli_support import spr, write_jsonl

from registry import catalogue
from registry.adapters import basemodel
from registry.adapters.dataset import describe_dataset
from registry.demo import toymodels
from registry.digest import PREFIX, canonical_json, sha256_bytes, sha256_file
from registry.errors import EXIT_INTERRUPTED, EXIT_USAGE
from registry.ml import training


@pytest.fixture
def coach_text(tmp_path: Path) -> Path:
    """40 text records (the coach prompts), written by the test."""
    return write_jsonl(tmp_path / "coach.jsonl", [{"text": p} for p in toymodels.COACH_PROMPTS])


@pytest.fixture
def dialogues(tmp_path: Path) -> Path:
    """16 prompt/completion records."""
    return write_jsonl(tmp_path / "dialogues.jsonl", [{"prompt": p, "completion": c} for p, c in toymodels.COACH_DIALOGUES])


FAST = ("--lr", "0.05", "--batch-size", "8", "--seed", "3")


def test_train_publishes_every_recorded_fact(capsys: pytest.CaptureFixture[str], tiny_bloom: Path, coach_text: Path, tmp_path: Path) -> None:
    heldout_file = tmp_path / "heldout.jsonl"
    code, out, err = spr(
        capsys, "train", "--base-model", str(tiny_bloom), "--dataset", str(coach_text), "--name", "team/coach",
        "--max-steps", "12", "--eval-split", "0.2", "--max-length", "96", "--write-heldout", str(heldout_file), *FAST,
    )
    assert code == 0, err
    assert out.startswith("published team/coach@1 sha256:")
    v = catalogue.get_version("team/coach@1")

    # Base model: the identity measured from the directory, fingerprint included.
    assert v.base_model == basemodel.identify(str(tiny_bloom))
    assert v.base_model is not None and v.base_model.embedding_fingerprint and v.base_model.config_digest
    # Dataset: digest of the file's bytes, name, format, record count.
    assert v.dataset == describe_dataset(coach_text)
    assert v.dataset is not None and v.dataset.digest == PREFIX + sha256_file(coach_text)[0] and v.dataset.records == 40
    # The full PEFT config is the adapter_config.json that was published.
    exported = catalogue.export("team/coach@1", tmp_path / "exported")
    assert v.peft_config == json.loads((exported / "adapter_config.json").read_text())
    assert (v.peft_type, v.task_type, v.num_virtual_tokens, v.init_method) == ("PROMPT_TUNING", "CAUSAL_LM", 4, "RANDOM")
    assert v.peft_config["base_model_name_or_path"] == str(tiny_bloom.resolve())
    assert v.template == "{prompt}" and v.parent_digest is None

    t = v.training
    assert {k: t[k] for k in ("method", "epochs", "learning_rate", "batch_size", "max_length", "seed", "eval_split", "max_steps")} == {
        "method": "prompt-tuning", "epochs": 6.0, "learning_rate": 0.05, "batch_size": 8, "max_length": 96, "seed": 3,
        "eval_split": 0.2, "max_steps": 12,
    }
    assert t["steps"] == 12 and t["train_examples"] == 32 and t["eval_examples"] == 8
    import torch

    assert t["device"].startswith("cuda" if torch.cuda.is_available() else "cpu")
    assert {k: t["libraries"][k] for k in ("torch", "transformers", "peft")} == {
        k: metadata.version(k) for k in ("torch", "transformers", "peft")
    }
    # Loss curve: one finite (step, loss) per step.
    assert [s for s, _ in t["loss_curve"]] == list(range(1, 13))
    assert all(math.isfinite(loss) and loss > 0 for _, loss in t["loss_curve"])

    # Held-out split: the file written holds canonical JSON lines of records from the dataset, and
    # its digest is the one the eval scores are tied to.
    raw = heldout_file.read_bytes()
    held = [json.loads(line) for line in raw.decode().splitlines()]
    assert raw == b"".join(canonical_json(r) + b"\n" for r in held)
    assert len(held) == 8 and all(r["text"] in toymodels.COACH_PROMPTS for r in held)
    heldout_digest = PREFIX + sha256_bytes(raw)
    train_records = [{"text": p} for p in toymodels.COACH_PROMPTS if {"text": p} not in held]
    assert t["train_records_digest"] == PREFIX + sha256_bytes(b"".join(canonical_json(r) + b"\n" for r in train_records))
    assert t["eval_dataset"] == heldout_digest
    scores = {s.metric: s for s in v.eval_scores}
    assert set(scores) == {"eval_loss", "perplexity"}
    for s in scores.values():
        assert (s.dataset, s.split, s.recorded_by) == (heldout_digest, "heldout-20%", "tester")
    assert scores["perplexity"].value == pytest.approx(math.exp(scores["eval_loss"].value))
    assert t["eval_loss"] == scores["eval_loss"].value

    # The same recipe trained for 0 steps (same seed: same initial soft prompt) scores worse on
    # the same held-out data, and the run recorded that "before" figure itself.
    code, _, err = spr(
        capsys, "train", "--base-model", str(tiny_bloom), "--dataset", str(coach_text), "--name", "team/untrained",
        "--max-steps", "0", "--eval-split", "0.2", "--max-length", "96", *FAST,
    )
    assert code == 0, err
    untrained = catalogue.get_version("team/untrained@1")
    untrained_loss = {s.metric: s for s in untrained.eval_scores}["eval_loss"]
    assert untrained_loss.dataset == heldout_digest
    assert scores["eval_loss"].value < untrained_loss.value
    assert t["eval_loss_before"] == pytest.approx(untrained_loss.value, rel=1e-6)

    # spr eval on the written held-out file reproduces the recorded score under the same digest.
    code, out, err = spr(capsys, "--json", "eval", "team/coach@1", "--dataset", str(heldout_file), "--metric", "loss", "--no-record")
    assert code == 0, err
    report = json.loads(out)
    assert report["dataset"]["digest"] == heldout_digest
    assert report["scores"]["eval_loss"] == pytest.approx(scores["eval_loss"].value, rel=1e-6)


def test_same_seed_same_data_is_the_same_version(capsys: pytest.CaptureFixture[str], tiny_bloom: Path, coach_text: Path) -> None:
    argv = ("train", "--base-model", str(tiny_bloom), "--dataset", str(coach_text), "--name", "team/coach", "--max-steps", "3", *FAST)
    assert spr(capsys, *argv)[0] == 0
    code, out, _ = spr(capsys, *argv)
    assert code == 0 and out.startswith("already published (identical content) team/coach@1")
    assert len(catalogue.versions("team/coach")) == 1


def test_prompt_completion_masks_the_prompt(tiny_bloom: Path, dialogues: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_bloom))
    data = training.load_examples(dialogues)
    assert data.kind == "prompt-completion" and data.columns == ("prompt", "completion")
    template = "Human: {prompt}\n\nAssistant: "
    encoded, dropped = training.encode_examples(data.examples, tok, template=template, max_length=256, seq2seq=False)
    assert dropped == 0 and len(encoded) == 16
    for ex, enc in zip(data.examples, encoded, strict=True):
        head = tok(template.replace("{prompt}", ex.prompt or ""))["input_ids"]
        tail = tok(ex.target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert enc.input_ids == head + tail
        assert enc.labels == [-100] * len(head) + tail
    batch = training.pad_batch(encoded[:4], tok.pad_token_id, seq2seq=False)
    labels, mask = batch["labels"], batch["attention_mask"]
    assert (labels[mask == 0] == -100).all()
    # The loss counts exactly the completion tokens (+ eos), never a prompt token.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_bloom))
    _, n_tokens = training.mean_token_loss(model, encoded, pad_id=tok.pad_token_id, seq2seq=False)
    assert n_tokens == sum(len(tok(c, add_special_tokens=False)["input_ids"]) + 1 for _, c in toymodels.COACH_DIALOGUES)


def test_train_on_prompt_completion_records_template(capsys: pytest.CaptureFixture[str], tiny_bloom: Path, dialogues: Path) -> None:
    code, _, err = spr(
        capsys, "train", "--base-model", str(tiny_bloom), "--dataset", str(dialogues), "--name", "team/dlg",
        "--template", r"Human: {prompt}\n\nAssistant: ", "--max-steps", "2", "--eval-split", "0.25", *FAST,
    )
    assert code == 0, err
    v = catalogue.get_version("team/dlg")
    assert v.template == "Human: {prompt}\n\nAssistant: "  # the typed \n became a newline
    assert v.training["data_kind"] == "prompt-completion"
    assert {s.split for s in v.eval_scores} == {"heldout-25%"}


@pytest.mark.parametrize("method", ["prompt-tuning", "lora"])
def test_parent_continues_from_the_parents_weights(tiny_bloom: Path, coach_text: Path, tmp_path: Path, method: str) -> None:
    import torch
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    parent = training.train_and_publish(
        training.TrainConfig(dataset=coach_text, base_model=str(tiny_bloom), method=method, max_steps=4, lr=0.05, seed=1,
                             template="Q: {prompt}"),
        "team/coach",
    ).published
    assert parent is not None
    stored = load_file(str(catalogue.export("team/coach@1", tmp_path / "parent") / "adapter_model.safetensors"))

    class FirstStep(TrainerCallback):  # type: ignore[misc]
        """Snapshot the trainable adapter tensors before the first optimizer step."""

        def __init__(self) -> None:
            self.seen: dict[str, torch.Tensor] = {}

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            self.seen = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items()}

    first = FirstStep()
    child = training.train_and_publish(
        training.TrainConfig(dataset=coach_text, base_model=None, parent="team/coach@1", max_steps=3, lr=0.05, seed=2),
        "team/coach", callbacks=[first],
    )
    assert child.published is not None
    # The first step starts from exactly the parent's stored tensors.
    assert set(first.seen) == set(stored)
    for key, tensor in stored.items():
        assert torch.equal(first.seen[key], tensor), key
    v = child.published.version
    assert v.number == 2 and v.parent_digest == parent.version.digest and v.parent_ref == "team/coach@1"
    assert v.training["parent"] == "team/coach@1"
    assert v.template == "Q: {prompt}"  # inherited
    assert v.peft_config["peft_type"] == parent.version.peft_config["peft_type"]
    assert v.base_model == parent.version.base_model  # --base-model defaulted to the parent's local base
    # ... and training moved away from them.
    after = load_file(str(catalogue.export("team/coach@2", tmp_path / "child") / "adapter_model.safetensors"))
    assert any(not torch.equal(after[k], stored[k]) for k in stored)
    assert [n.ref for n in catalogue.lineage("team/coach@2").ancestors] == ["team/coach@1"]


def test_parent_options_that_contradict_it_are_refused(capsys: pytest.CaptureFixture[str], tiny_bloom: Path, coach_text: Path,
                                                         p_tuning: Path, prompt_tuning_random: Path) -> None:
    catalogue.publish(p_tuning, "team/pt", options=catalogue.PublishOptions(base_model=str(tiny_bloom)))
    catalogue.publish(prompt_tuning_random, "team/prompt", options=catalogue.PublishOptions(base_model=str(tiny_bloom)))
    code, _, err = spr(capsys, "train", "--dataset", str(coach_text), "--name", "team/child", "--parent", "team/pt")
    assert code == EXIT_USAGE and "encoder output" in err
    code, _, err = spr(capsys, "train", "--dataset", str(coach_text), "--name", "team/child", "--parent", "team/prompt",
                       "--virtual-tokens", "8")
    assert code == EXIT_USAGE and "differs from the parent" in err
    assert [s.ref for s in catalogue.list_versions()] == ["team/prompt@1", "team/pt@1"]


def test_parent_on_another_base_is_refused(capsys: pytest.CaptureFixture[str], tiny_bloom: Path, tiny_bloom_other: Path,
                                           coach_text: Path, prompt_tuning_random: Path) -> None:
    catalogue.publish(prompt_tuning_random, "team/prompt", options=catalogue.PublishOptions(base_model=str(tiny_bloom)))
    code, _, err = spr(capsys, "train", "--base-model", str(tiny_bloom_other), "--dataset", str(coach_text),
                       "--name", "team/child", "--parent", "team/prompt", "--max-steps", "1")
    assert code == 3 and "embedding-fingerprint-differs" in err
    assert len(catalogue.list_versions()) == 1


@pytest.mark.parametrize(("method", "peft_type"), [("p-tuning", "P_TUNING"), ("prefix-tuning", "PREFIX_TUNING")])
def test_other_prompt_learning_methods(capsys: pytest.CaptureFixture[str], tiny_bloom: Path, coach_text: Path,
                                       method: str, peft_type: str) -> None:
    code, _, err = spr(capsys, "train", "--base-model", str(tiny_bloom), "--dataset", str(coach_text), "--name", "team/m",
                       "--method", method, "--virtual-tokens", "6", "--max-steps", "2", "--eval-split", "0", *FAST)
    assert code == 0, err
    v = catalogue.get_version("team/m")
    assert (v.peft_type, v.num_virtual_tokens, v.eval_scores) == (peft_type, 6, ())
    assert (v.training["eval_split"], v.training["eval_examples"], v.training["steps"]) == (0.0, 0, 2)


def test_base_model_from_the_hub(capsys: pytest.CaptureFixture[str], hub_server: Any, tiny_bloom: Path, coach_text: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from hub_fixtures import HUB_TOKEN
    from huggingface_hub import HfApi

    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    api = HfApi(endpoint=hub_server.url, token=HUB_TOKEN)
    api.create_repo("tester/tiny-bloom")
    commit = api.upload_folder(repo_id="tester/tiny-bloom", folder_path=str(tiny_bloom)).oid
    code, _, err = spr(capsys, "train", "--base-model", "tester/tiny-bloom", "--dataset", str(coach_text), "--name", "team/hub",
                       "--max-steps", "1", *FAST)
    assert code == 0, err
    v = catalogue.get_version("team/hub")
    assert v.base_model is not None
    assert (v.base_model.source, v.base_model.name, v.base_model.revision) == ("hub", "tester/tiny-bloom", commit)
    assert v.base_model.embedding_fingerprint == basemodel.identify(str(tiny_bloom)).embedding_fingerprint
    assert (v.peft_config["base_model_name_or_path"], v.peft_config["revision"]) == ("tester/tiny-bloom", commit)
    # The recorded base is not a local directory: generation needs --base-model, then verifies it.
    code, _, err = spr(capsys, "generate", "team/hub", "--prompt", "Hi")
    assert code == EXIT_USAGE and "--base-model" in err
    code, _, err = spr(capsys, "generate", "team/hub", "--prompt", "Hi", "--base-model", f"tester/tiny-bloom@{commit}",
                         "--max-new-tokens", "3")
    assert code == 0, err


def test_text_init_takes_its_token_count(capsys: pytest.CaptureFixture[str], tiny_bloom: Path, coach_text: Path) -> None:
    from transformers import AutoTokenizer

    text = toymodels.TEXT_INIT_PROMPT
    code, _, err = spr(capsys, "train", "--base-model", str(tiny_bloom), "--dataset", str(coach_text), "--name", "team/t",
                       "--init", "text", "--init-text", text, "--max-steps", "1", *FAST)
    assert code == 0, err
    v = catalogue.get_version("team/t")
    n = len(AutoTokenizer.from_pretrained(str(tiny_bloom))(text)["input_ids"])
    assert (v.init_method, v.init_text, v.num_virtual_tokens) == ("TEXT", text, n)


def test_seq2seq_base(capsys: pytest.CaptureFixture[str], tiny_t5: Path, dialogues: Path) -> None:
    code, _, err = spr(capsys, "train", "--base-model", str(tiny_t5), "--dataset", str(dialogues), "--name", "team/t5",
                       "--max-steps", "2", *FAST)
    assert code == 0, err
    v = catalogue.get_version("team/t5")
    assert (v.task_type, v.num_transformer_submodules) == ("SEQ_2_SEQ_LM", 2)
    assert {s.metric for s in v.eval_scores} == {"eval_loss", "perplexity"}


def test_no_publish_writes_the_directory_only(capsys: pytest.CaptureFixture[str], tiny_bloom: Path, coach_text: Path,
                                              tmp_path: Path, isolated_home: Path) -> None:
    out_dir = tmp_path / "out" / "coach"
    code, out, err = spr(capsys, "train", "--base-model", str(tiny_bloom), "--dataset", str(coach_text), "--no-publish",
                         "--output", str(out_dir), "--max-steps", "1", *FAST)
    assert code == 0, err
    assert out == ""  # nothing published, nothing on stdout
    assert sorted(p.name for p in out_dir.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "spr_training.json"]
    assert json.loads((out_dir / "spr_training.json").read_text())["steps"] == 1
    assert catalogue.list_versions() == []
    assert list((isolated_home / "tmp").iterdir()) == []
    # The directory is a standard adapter: publishing it later works.
    assert catalogue.publish(out_dir, "team/later").created


@pytest.mark.parametrize(
    ("records", "extra", "message"),
    [
        ([{"body": "x"}] * 5, (), "no column 'text'"),
        ([{"text": 3}] * 5, (), "expected a string"),
        ([{"text": "a b"}] * 5, ("--template", "no placeholder"), "{prompt}"),
        ([{"text": "a b"}] * 5, ("--eval-split", "1.5"), "--eval-split"),
        ([{"text": "a b"}], (), "cannot hold out"),
        ([{"text": "a b"}] * 5, ("--init-text", "hi", "--method", "lora"), "prompt tuning only"),
    ],
)
def test_bad_input_fails_before_training_and_publishes_nothing(
    capsys: pytest.CaptureFixture[str], tiny_bloom: Path, tmp_path: Path, isolated_home: Path,
    records: list[dict[str, Any]], extra: tuple[str, ...], message: str,
) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", records)
    code, out, err = spr(capsys, "train", "--base-model", str(tiny_bloom), "--dataset", str(data), "--name", "team/x", *extra)
    assert code != 0 and message in err and out == ""
    assert len(err.strip().splitlines()) == 1  # one error line, no traceback
    assert catalogue.list_versions() == []
    assert not (isolated_home / "tmp").exists() or list((isolated_home / "tmp").iterdir()) == []


def test_name_or_output_is_required(capsys: pytest.CaptureFixture[str], tiny_bloom: Path, coach_text: Path) -> None:
    code, _, err = spr(capsys, "train", "--base-model", str(tiny_bloom), "--dataset", str(coach_text))
    assert code == EXIT_USAGE and "--name" in err
    code, _, err = spr(capsys, "train", "--base-model", str(tiny_bloom), "--dataset", str(coach_text), "--no-publish")
    assert code == EXIT_USAGE and "--output" in err


def test_dataset_formats(tmp_path: Path) -> None:
    csv_file = tmp_path / "d.csv"
    csv_file.write_text('prompt,completion\n"a, b",c\nd,e\n', encoding="utf-8")
    data = training.load_examples(csv_file)
    assert data.kind == "prompt-completion" and [e.prompt for e in data.examples] == ["a, b", "d"]
    json_file = tmp_path / "d.json"
    json_file.write_text(json.dumps([{"quote": "q1"}, {"quote": "q2"}]), encoding="utf-8")
    data = training.load_examples(json_file, text_column="quote")
    assert [e.target for e in data.examples] == ["q1", "q2"] and data.info.records == 2
    txt_file = tmp_path / "d.txt"
    txt_file.write_text("one\n\ntwo\n", encoding="utf-8")
    assert [e.target for e in training.load_examples(txt_file).examples] == ["one", "two"]


def test_saved_datasets_directory_without_the_datasets_package(tmp_path: Path) -> None:
    import importlib.util

    from registry.errors import DependencyMissingError

    if importlib.util.find_spec("datasets") is not None:
        pytest.skip("the datasets package is installed here")
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "state.json").write_text('{"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}')
    (saved / "dataset_info.json").write_text("{}")
    with pytest.raises(DependencyMissingError, match="pip install datasets"):
        training.load_examples(saved)


def test_split_is_seeded_and_named() -> None:
    examples = [training.Example(str(i)) for i in range(20)]
    train_a, held_a = training.split_heldout(examples, 0.1, seed=7)
    _, held_b = training.split_heldout(examples, 0.1, seed=7)
    _, held_c = training.split_heldout(examples, 0.1, seed=8)
    assert held_a == held_b and len(held_a) == 2 and len(train_a) == 18 and set(held_a).isdisjoint(train_a)
    assert held_a != held_c
    assert [training.heldout_split_name(f) for f in (0.1, 0.125, 0.5)] == ["heldout-10%", "heldout-12.5%", "heldout-50%"]


def test_training_commands_start_without_torch() -> None:
    probe = "import sys; from registry.cli.main import run; code = run(sys.argv[1:]); print(code, 'torch' in sys.modules)"
    for command in ("train", "generate", "eval"):
        proc = subprocess.run([sys.executable, "-c", probe, command, "--help"], capture_output=True, text=True, timeout=120,
                              check=False)
        assert proc.stdout.strip().splitlines()[-1] == "0 False", (command, proc.stdout, proc.stderr)


def _read_until(proc: subprocess.Popen[str], needle: str, timeout: float) -> str:
    assert proc.stderr is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.5)
        if ready:
            line = proc.stderr.readline()
            if not line:
                break
            seen += line
            if needle in line:
                return seen
    raise AssertionError(f"{needle!r} never appeared on stderr; got:\n{seen}")


@pytest.mark.slow
def test_sigint_mid_training_publishes_nothing(tiny_bloom: Path, coach_text: Path, tmp_path: Path, isolated_home: Path) -> None:
    out_dir = tmp_path / "out" / "adapter"
    proc = subprocess.Popen(
        [sys.executable, "-m", "registry.cli.main", "train", "--base-model", str(tiny_bloom), "--dataset", str(coach_text),
         "--name", "team/coach", "--max-steps", "100000", "--output", str(out_dir), *FAST],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
    )
    try:
        _read_until(proc, "step 1/100000", timeout=120)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_INTERRUPTED, stderr
    assert "training interrupted" in stderr and "nothing was published" in stderr
    assert "Traceback" not in stderr and stdout == ""
    assert catalogue.list_versions() == []
    assert [e.action for e in catalogue.events()] == []
    assert list((isolated_home / "tmp").iterdir()) == []  # the staging folder is gone
    assert not out_dir.exists()
    assert not out_dir.parent.exists() or list(out_dir.parent.iterdir()) == []  # no half-written output either
