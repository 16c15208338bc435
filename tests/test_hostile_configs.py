"""``adapter_config.json`` is hostile input: every field that names a path, a repo, a module or an
init that reaches outside the adapter is refused at publish and import, and never acted on by a load.

What PEFT 0.21 does with each field when it loads an adapter (read from its source):

- ``tokenizer_name_or_path`` + ``tokenizer_kwargs``: with a TEXT init and ``inference_mode: false``,
  ``PromptEmbedding`` calls ``AutoTokenizer.from_pretrained(name, **tokenizer_kwargs)`` (only
  ``trust_remote_code`` is popped: ``cache_dir``, ``token``, ``subfolder`` pass);
- ``init_lora_weights`` pissa/olora/corda/loftq/lora_ga: re-run at every load, inference included,
  and rewrite (or quantize) the base model's weights before the saved tensors are loaded;
- ``corda_config``: cache and covariance files that PEFT ``torch.load``s (unpickles);
- ``megatron_config`` + ``megatron_core``: a module PEFT imports; ``auto_mapping``: a module
  ``AutoPeftModel`` imports; ``base_model_name_or_path`` + ``revision``: what ``AutoPeftModel``
  downloads.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from adapter_files import prompt_config, write_prompt_adapter
from cli_support import spr, write_jsonl

from registry import catalogue, settings
from registry.adapters import manifest as manifests
from registry.adapters import reader
from registry.catalogue import PublishOptions
from registry.demo import toymodels
from registry.errors import InvalidAdapterError
from registry.types import FileRecord

HOSTILE: dict[str, tuple[dict[str, Any], str]] = {
    "tokenizer-cache-dir": ({"tokenizer_kwargs": {"cache_dir": "/etc/spr-owned"}}, "tokenizer_kwargs"),
    "tokenizer-token": ({"tokenizer_kwargs": {"token": "hf_stolen", "revision": "main"}}, "tokenizer_kwargs"),
    "tokenizer-subfolder": ({"tokenizer_kwargs": {"subfolder": "../../.ssh"}}, "tokenizer_kwargs"),
    "tokenizer-revision-traversal": ({"tokenizer_kwargs": {"revision": "../../x"}}, "tokenizer_kwargs"),
    "tokenizer-url": ({"tokenizer_name_or_path": "https://evil.example/tok"}, "tokenizer_name_or_path"),
    "base-url": ({"base_model_name_or_path": "http://evil.example/model"}, "base_model_name_or_path"),
    "base-control-chars": ({"base_model_name_or_path": "org/model\n\x1b[2Jfake"}, "base_model_name_or_path"),
    "revision-traversal": ({"revision": "../../../etc"}, "revision"),
    "revision-not-a-string": ({"revision": {"ref": "main"}}, "revision"),
    "trainable-text-init": (
        {"prompt_tuning_init": "TEXT", "prompt_tuning_init_text": "hi", "tokenizer_name_or_path": "org/tok",
         "inference_mode": False},
        "inference_mode",
    ),
    "lora-pissa": ({"init_lora_weights": "pissa"}, "init_lora_weights"),
    "lora-pissa-niter": ({"init_lora_weights": "pissa_niter_4"}, "init_lora_weights"),
    "lora-olora": ({"init_lora_weights": "olora"}, "init_lora_weights"),
    "lora-corda": ({"init_lora_weights": "corda"}, "init_lora_weights"),
    "lora-loftq": ({"init_lora_weights": "loftq"}, "init_lora_weights"),
    "lora-ga": ({"init_lora_weights": "lora_ga"}, "init_lora_weights"),
    "loftq-config": ({"loftq_config": {"loftq_bits": 4, "loftq_iter": 1}}, "loftq_config"),
    "corda-files": ({"corda_config": {"cache_file": "/tmp/evil.pt", "covariance_file": None}}, "corda_config"),
    "megatron-module": ({"megatron_config": {"tensor_model_parallel_size": 1}, "megatron_core": "megatron.evil"}, "megatron"),
    "megatron-core-alone": ({"megatron_core": "os"}, "megatron"),
    "auto-mapping-module": ({"auto_mapping": {"base_model_class": "system", "parent_library": "os"}}, "auto_mapping"),
    "auto-mapping-prefix": (
        {"auto_mapping": {"base_model_class": "X", "parent_library": "transformers_evil"}}, "auto_mapping",
    ),
}


def _prompt_dir(root: Path, **overrides: Any) -> Path:
    return write_prompt_adapter(root, config=prompt_config(**overrides))


def _blob_count() -> int:
    return sum(1 for p in settings.blobs_dir().rglob("*") if p.is_file() and not p.name.startswith("."))


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_publish_refuses_a_config_that_reaches_outside_the_adapter(case: str, tmp_path: Path) -> None:
    overrides, key = HOSTILE[case]
    directory = _prompt_dir(tmp_path / "adapter", **overrides)
    with pytest.raises(InvalidAdapterError) as caught:
        catalogue.publish(directory, "team/hostile")
    assert key in caught.value.message
    assert "\n" not in caught.value.message.replace(repr("\n"), "")  # one line, even for a value with a newline
    assert _blob_count() == 0  # refused before anything was stored
    assert catalogue.list_versions() == []


def test_cli_publish_names_the_field_in_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    directory = _prompt_dir(tmp_path / "adapter", tokenizer_kwargs={"cache_dir": "/etc/spr-owned"})
    code, out, err = spr(capsys, "publish", str(directory), "--name", "team/hostile")
    assert code != 0 and out == ""
    assert "tokenizer_kwargs sets cache_dir" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "overrides",
    [
        {"tokenizer_kwargs": {"revision": "0123456789abcdef0123456789abcdef01234567"}},
        {"tokenizer_kwargs": {}, "revision": "refs/pr/1"},
        {"init_lora_weights": True},
        {"init_lora_weights": "gaussian"},
        {"loftq_config": {}, "megatron_core": "megatron.core", "megatron_config": None, "corda_config": None},
        {"auto_mapping": {"base_model_class": "BloomForCausalLM", "parent_library": "transformers.models.bloom.modeling_bloom"}},
        {"base_model_name_or_path": "/srv/models/bloomz-560m", "tokenizer_name_or_path": "../models/bloomz"},
    ],
)
def test_what_peft_itself_writes_is_accepted(overrides: dict[str, Any], tmp_path: Path) -> None:
    directory = _prompt_dir(tmp_path / "adapter", **overrides)
    assert catalogue.publish(directory, "team/fine").created


def test_every_real_peft_adapter_is_accepted(request: pytest.FixtureRequest) -> None:
    # The configs PEFT 0.21's save_pretrained writes for each type pass the checks unchanged.
    for name in ("prompt_tuning_random", "prompt_tuning_text", "p_tuning", "prefix_tuning", "lora"):
        directory: Path = request.getfixturevalue(name)
        reader.check_references(json.loads((directory / "adapter_config.json").read_text()), directory)


def test_import_of_a_hostile_manifest_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A remote registry (or an older spr) built a manifest for a config this one refuses.
    directory = _prompt_dir(tmp_path / "pulled", init_lora_weights="pissa", tokenizer_kwargs={"cache_dir": "/x"})
    with monkeypatch.context() as m:
        m.setattr(reader, "check_references", lambda config, path: None, raising=False)
        facts = reader.read_adapter(directory)
    files = [FileRecord(f.path, *_sha_size(Path(f.source))) for f in facts.files]
    manifest = manifests.build(facts, files, base_model=None, dataset=None, training={}, template=None, parent_digest=None)
    with pytest.raises(InvalidAdapterError, match=r"tokenizer_kwargs|init_lora_weights"):
        catalogue.import_manifest(directory, "alice/pulled", manifest)
    assert catalogue.list_versions() == []


def _sha_size(path: Path) -> tuple[str, int]:
    from registry.digest import sha256_file

    return sha256_file(path)


# ---------------------------------------------------------------------------------------------
# Loads: a version catalogued before these checks existed is refused, and nothing is resolved
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def pissa_lora(tiny_bloom: Path, tmp_path: Path) -> Path:
    """A real PEFT LoRA adapter saved with init_lora_weights='pissa' (no weight conversion)."""
    import peft

    model = toymodels.load_model(tiny_bloom)
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query_key_value"], init_lora_weights="pissa",
                             task_type="CAUSAL_LM", base_model_name_or_path=str(tiny_bloom))
    out = tmp_path / "pissa"
    peft.get_peft_model(model, config).save_pretrained(str(out))
    assert json.loads((out / "adapter_config.json").read_text())["init_lora_weights"] == "pissa"
    return out


@contextmanager
def _unchecked_publishing(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Publish as a registry without the reference checks did (a catalogue from before them)."""
    with monkeypatch.context() as m:
        m.setattr(reader, "check_references", lambda config, path: None, raising=False)
        yield


def _base_weights(model: Any) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_load_refuses_a_catalogued_pissa_lora_and_leaves_the_base_alone(
    pissa_lora: Path, tiny_bloom: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    from registry.ml import loading

    with _unchecked_publishing(monkeypatch):
        catalogue.publish(pissa_lora, "team/pissa", options=PublishOptions(base_model=str(tiny_bloom)))
    model = toymodels.load_model(tiny_bloom)
    before = _base_weights(model)
    with pytest.raises(InvalidAdapterError, match="init_lora_weights is 'pissa'"):
        loading.load("team/pissa@1", model)
    after = _base_weights(model)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []  # PEFT's pissa init would have rewritten every query_key_value weight


def test_train_parent_refuses_a_catalogued_pissa_lora(
    pissa_lora: Path, tiny_bloom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from registry.ml import training

    with _unchecked_publishing(monkeypatch):
        catalogue.publish(pissa_lora, "team/pissa", options=PublishOptions(base_model=str(tiny_bloom)))
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": p} for p in toymodels.COACH_PROMPTS[:16]])
    with pytest.raises(InvalidAdapterError, match="init_lora_weights"):
        training.train_and_publish(
            training.TrainConfig(dataset=data, base_model=str(tiny_bloom), parent="team/pissa@1", max_steps=1),
            "team/child",
        )
    assert [v.ref for v in catalogue.list_versions()] == ["team/pissa@1"]  # no child


# Reads under a trap directory, seen by a Python audit hook (installed once per process: hooks
# cannot be removed, so the hook only records while a test holds the list).
_SEEN: list[list[str]] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _SEEN and event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], (str, bytes, Path)):
        _SEEN[-1].append(str(args[0]))


_HOOKED: list[bool] = []


@contextmanager
def _reads_under(trap: Path) -> Iterator[Callable[[], list[str]]]:
    if not _HOOKED:
        sys.addaudithook(_audit)
        _HOOKED.append(True)
    seen: list[str] = []
    _SEEN.append(seen)
    try:
        yield lambda: [p for p in seen if p.startswith(str(trap))]
    finally:
        _SEEN.remove(seen)


def test_trainable_load_of_a_text_init_parent_never_reads_its_tokenizer_path(
    adapter_factory: Callable[[str], Path], tiny_bloom: Path, tiny_tokenizer: Path, tmp_path: Path,
) -> None:
    """`spr train --parent` on a TEXT-init soft prompt: the recorded tokenizer path is not opened."""
    import transformers

    from registry.ml import loading, training

    trap = tmp_path / "trap-tokenizer"
    shutil.copytree(tiny_tokenizer, trap)  # a real tokenizer: reading it would succeed silently
    adapter = adapter_factory("prompt_tuning_text")
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["prompt_tuning_init"] == "TEXT"
    config["tokenizer_name_or_path"] = str(trap)
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    catalogue.publish(adapter, "team/text", options=PublishOptions(base_model=str(tiny_bloom)))

    with _reads_under(trap) as reads:  # the hook sees a tokenizer load (control)
        transformers.AutoTokenizer.from_pretrained(str(trap))
        assert reads(), "the audit hook did not see the tokenizer being read"

    data = write_jsonl(tmp_path / "d.jsonl", [{"text": p} for p in toymodels.COACH_PROMPTS[:16]])
    with _reads_under(trap) as reads:
        result = training.train_and_publish(
            training.TrainConfig(dataset=data, base_model=str(tiny_bloom), parent="team/text@1", max_steps=1),
            "team/text",
        )
        loading.load("team/text@1", str(tiny_bloom))
        assert reads() == []
    assert result.published is not None
    child = result.published.version.peft_config
    # The child records its own base as tokenizer, and the init it inherited.
    assert child["tokenizer_name_or_path"] == str(tiny_bloom) and child["prompt_tuning_init"] == "TEXT"
