"""Verified loading: catalogue refs onto real tiny bases with real PEFT; refusals happen before loading."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from registry import catalogue
from registry.catalogue import PublishOptions
from registry.demo import toymodels
from registry.errors import IncompatibleError, NotFoundError, UsageError
from registry.ml import loading
from registry.storage import LocalBlobStore

PROMPT = "I want you to act as a motivational coach. My first request is:"


def publish(adapter_dir: Path, name: str, base: Path | None) -> str:
    options = PublishOptions(base_model=str(base) if base is not None else None)
    return catalogue.publish(adapter_dir, name, options=options).version.ref


def causal_lm(path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path)).eval()


def greedy(model: Any, base: Path) -> str:
    """The same greedy decoding as :func:`registry.demo.toymodels.generate`."""
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    enc = tok(PROMPT, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=16, do_sample=False,
            repetition_penalty=1.5, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )
    return str(tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))


def last_logits(model: Any, base: Path) -> Any:
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    enc = tok(PROMPT, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        return model(**enc).logits[0, -1].clone()


@pytest.fixture(scope="module")
def second_adapters(tmp_path_factory: pytest.TempPathFactory, tiny_bloom: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loading-extra")
    return {
        "prompt_seed1": toymodels.make_adapter(tiny_bloom, root / "pt-seed1", "PROMPT_TUNING", seed=1),
        "lora_seed1": toymodels.make_adapter(tiny_bloom, root / "lora-seed1", "LORA", seed=1),
    }


# ---------------------------------------------------------------------------------------------
# verify() on catalogue refs
# ---------------------------------------------------------------------------------------------


def test_verify_a_published_version(prompt_tuning_random: Path, tiny_bloom: Path, tiny_bloom_other: Path) -> None:
    ref = publish(prompt_tuning_random, "team/coach", tiny_bloom)
    good = loading.verify(ref, tiny_bloom)
    assert good.compatible and not good.findings and good.subject == "team/coach@1"
    bad = loading.verify("team/coach@1", str(tiny_bloom_other))
    assert [f.code for f in bad.findings] == ["embedding-fingerprint-differs"] and not bad.compatible
    assert not [e for e in catalogue.events() if e.action == "verify-override"]


def test_override_is_logged(prompt_tuning_random: Path, tiny_bloom: Path, tiny_bloom_other: Path) -> None:
    ref = publish(prompt_tuning_random, "team/coach", tiny_bloom)
    report = loading.verify(ref, tiny_bloom_other, allow_different_base=True, actor="alice")
    assert report.compatible and report.overridden
    (event,) = [e for e in catalogue.events() if e.action == "verify-override"]
    assert event.subject == ref and event.actor == "alice"
    assert [a["code"] for a in event.details["accepted"]] == ["embedding-fingerprint-differs"]
    assert event.details["base_model"]["name"] == str(tiny_bloom_other.resolve())
    assert catalogue.verify_event_chain() == []


def test_tampered_blob_is_refused_before_loading(lora: Path, tiny_bloom: Path) -> None:
    ref = publish(lora, "team/lora", tiny_bloom)
    record = next(f for f in catalogue.get_version(ref).files if f.path == "adapter_model.safetensors")
    blob = LocalBlobStore().path(record.sha256)
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    blob.write_bytes(bytes(data))
    report = loading.verify(ref, tiny_bloom)
    assert [f.code for f in report.findings] == ["file-digest-mismatch"] and not report.compatible
    model = causal_lm(tiny_bloom)
    with pytest.raises(IncompatibleError, match="file-digest-mismatch"):
        loading.load(ref, model)
    # PEFT never touched the model: no LoRA layer was injected.
    assert not any("lora_" in name for name, _ in model.named_parameters())
    LocalBlobStore().remove(record.sha256)
    missing = loading.verify(ref, tiny_bloom)
    assert [f.code for f in missing.findings] == ["file-missing"]


def test_unknown_ref_and_directory_without_config(tiny_bloom: Path, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        loading.verify("team/ghost@1", tiny_bloom)
    with pytest.raises(ValueError):
        loading.verify(tmp_path, tiny_bloom)


def test_deprecated_version_warns(prompt_tuning_random: Path, tiny_bloom: Path) -> None:
    ref = publish(prompt_tuning_random, "team/coach", tiny_bloom)
    catalogue.deprecate(ref, "superseded")
    report = loading.verify(ref, tiny_bloom)
    assert [f.code for f in report.findings] == ["version-deprecated"] and report.compatible


def test_non_finite_values_in_a_directory(adapter_factory: Any, tiny_bloom: Path) -> None:
    import numpy as np
    from safetensors.numpy import load_file, save_file

    d = adapter_factory("prompt_tuning_random")
    tensors = load_file(str(d / "adapter_model.safetensors"))
    tensors["prompt_embeddings"][0, 0] = np.nan
    save_file(tensors, str(d / "adapter_model.safetensors"))
    report = loading.verify(d, tiny_bloom)
    assert "non-finite-values" in [f.code for f in report.errors]


# ---------------------------------------------------------------------------------------------
# load()
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("adapter", ["prompt_tuning_random", "prompt_tuning_text", "p_tuning", "prefix_tuning", "lora"])
def test_load_generates_like_peft_itself(adapter: str, request: pytest.FixtureRequest, tiny_bloom: Path) -> None:
    adapter_dir: Path = request.getfixturevalue(adapter)
    ref = publish(adapter_dir, f"team/{adapter.replace('_', '-')}", tiny_bloom)
    model = loading.load(ref, tiny_bloom)  # base given as a path: loaded after verification
    assert type(model).__name__.startswith("PeftModel")
    assert model.active_adapter == loading.adapter_name_for(ref)
    text = greedy(model, tiny_bloom)
    assert text == toymodels.generate(tiny_bloom, adapter_dir, PROMPT)
    assert text  # generated something


def test_load_onto_an_in_memory_model_and_seq2seq(seq2seq_prompt_tuning: Path, tiny_t5: Path,
                                                  prompt_tuning_random: Path, tiny_bloom: Path) -> None:
    from transformers import AutoModelForSeq2SeqLM

    ref = publish(seq2seq_prompt_tuning, "team/t5", tiny_t5)
    model = loading.load(ref, AutoModelForSeq2SeqLM.from_pretrained(str(tiny_t5)), adapter_name="t5")
    assert model.active_adapter == "t5"
    assert toymodels.generate(tiny_t5, seq2seq_prompt_tuning, PROMPT) is not None
    # An unpublished adapter directory loads the same way (for CI on fresh training output).
    direct = loading.load(prompt_tuning_random, causal_lm(tiny_bloom))
    assert greedy(direct, tiny_bloom) == toymodels.generate(tiny_bloom, prompt_tuning_random, PROMPT)


def test_load_refuses_incompatible_pairs(prompt_tuning_random: Path, tiny_bloom: Path, tiny_bloom_wide: Path,
                                         tiny_bloom_other: Path) -> None:
    ref = publish(prompt_tuning_random, "team/coach", tiny_bloom)
    with pytest.raises(IncompatibleError) as wide:
        loading.load(ref, causal_lm(tiny_bloom_wide))
    assert "token-dim-mismatch" in {f["code"] for f in wide.value.fields["findings"]}
    assert wide.value.exit_code == 3
    other = causal_lm(tiny_bloom_other)
    with pytest.raises(IncompatibleError, match="embedding-fingerprint-differs"):
        loading.load(ref, other)
    model = loading.load(ref, other, allow_different_base=True)
    assert model.active_adapter == "team_coach_1"
    (event,) = [e for e in catalogue.events() if e.action == "verify-override"]
    assert event.details["via"] == "load"


def test_confirm_applied_catches_tensors_that_differ(prompt_tuning_random: Path, tiny_bloom: Path) -> None:
    from safetensors.torch import load_file

    model = loading.load(prompt_tuning_random, causal_lm(tiny_bloom), adapter_name="a")
    stored = load_file(str(prompt_tuning_random / "adapter_model.safetensors"))
    loading.confirm_applied(model, "a", stored, "pt")  # the real thing passes
    stored["prompt_embeddings"] = stored["prompt_embeddings"] + 1e-3
    with pytest.raises(IncompatibleError, match=r"adapter-not-applied|differs from the stored"):
        loading.confirm_applied(model, "a", stored, "pt")
    with pytest.raises(IncompatibleError, match="missing from the model"):
        loading.confirm_applied(model, "a", {"base_model.model.x.lora_A.weight": stored["prompt_embeddings"]}, "pt")


# ---------------------------------------------------------------------------------------------
# load_many()
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["prompt", "lora"])
def test_load_many_switches_between_adapters(kind: str, request: pytest.FixtureRequest, second_adapters: dict[str, Path],
                                             tiny_bloom: Path) -> None:
    import torch

    first: Path = request.getfixturevalue("prompt_tuning_random" if kind == "prompt" else "lora")
    second = second_adapters["prompt_seed1" if kind == "prompt" else "lora_seed1"]
    refs = [publish(first, f"team/{kind}-a", tiny_bloom), publish(second, f"team/{kind}-b", tiny_bloom)]
    names = [loading.adapter_name_for(r) for r in refs]
    assert names == [f"team_{kind}_a_1", f"team_{kind}_b_1"]
    many = loading.load_many(refs, causal_lm(tiny_bloom))
    assert set(many.peft_config) == set(names) and many.active_adapter == names[0]
    outputs = {}
    for name, ref, directory in zip(names, refs, (first, second), strict=True):
        many.set_adapter(name)
        alone = loading.load(ref, causal_lm(tiny_bloom))
        torch.testing.assert_close(last_logits(many, tiny_bloom), last_logits(alone, tiny_bloom))
        outputs[name] = (last_logits(many, tiny_bloom), greedy(many, tiny_bloom))
        assert outputs[name][1] == toymodels.generate(tiny_bloom, directory, PROMPT)
    (la, ga), (lb, gb) = outputs.values()
    assert not torch.allclose(la, lb), "each adapter must give its own output"
    assert ga != gb


def test_load_many_refuses_mixtures_and_duplicates(prompt_tuning_random: Path, lora: Path, tiny_bloom: Path,
                                                   tiny_bloom_wide: Path, p_tuning: Path) -> None:
    a = publish(prompt_tuning_random, "team/a", tiny_bloom)
    b = publish(lora, "team/b", tiny_bloom)
    with pytest.raises(IncompatibleError, match="cannot share one model"):
        loading.load_many([a, b], causal_lm(tiny_bloom))
    with pytest.raises(UsageError):
        loading.load_many([a, a], causal_lm(tiny_bloom))
    with pytest.raises(UsageError):
        loading.load_many([], causal_lm(tiny_bloom))
    # One bad adapter refuses the whole set before anything is loaded.
    model = causal_lm(tiny_bloom_wide)
    c = publish(p_tuning, "team/c", tiny_bloom)
    with pytest.raises(IncompatibleError, match="token-dim-mismatch"):
        loading.load_many([a, c], model)
    assert not hasattr(model, "peft_config")


def test_adapter_names_are_peft_safe() -> None:
    assert loading.adapter_name_for("team/coach@prod") == "team_coach_prod"
    assert loading.adapter_name_for("coach@sha256:abc.def") == "coach_sha256_abc_def"
    assert loading.adapter_name_for("..") == "adapter"


def test_load_with_a_hub_base(prompt_tuning_random: Path, tiny_bloom: Path, hub_server: Any) -> None:
    """A base named REPO@REV is identified by range requests, then fetched at the pinned commit to load."""
    from hub_fixtures import HUB_TOKEN
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub_server.url, token=HUB_TOKEN)
    api.create_repo("tester/tiny-bloom")
    api.upload_folder(repo_id="tester/tiny-bloom", folder_path=str(tiny_bloom))
    ref = publish(prompt_tuning_random, "team/coach", tiny_bloom)
    model = loading.load(ref, "tester/tiny-bloom")
    assert greedy(model, tiny_bloom) == toymodels.generate(tiny_bloom, prompt_tuning_random, PROMPT)


class _PickleBomb:
    """Unpickling this creates ``path``: the proof that a file was (or was not) unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("checkpoint", ["state-dict", "pickle-bomb"])
def test_a_base_with_only_pickled_weights_is_refused_never_unpickled(
    checkpoint: str, prompt_tuning_random: Path, tiny_bloom: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pickle
    import shutil

    import torch

    from registry.cli.main import run
    from registry.errors import InvalidBaseModelError
    from registry.ml import training

    # The tiny base as a legacy checkpoint: config, tokenizer and pytorch_model.bin, no safetensors.
    # (transformers 5 always saves safetensors, so the .bin is written with torch.save, as old releases did.)
    base = tmp_path / "bin-base"
    shutil.copytree(tiny_bloom, base, ignore=shutil.ignore_patterns("*.safetensors", "*.safetensors.index.json"))
    marker = tmp_path / "unpickled.marker"
    if checkpoint == "state-dict":
        torch.save(causal_lm(tiny_bloom).state_dict(), base / "pytorch_model.bin")
    else:
        (base / "pytorch_model.bin").write_bytes(pickle.dumps(_PickleBomb(marker)))
    assert not list(base.glob("*.safetensors"))

    # allow_different_base: even when the caller accepts an unrecorded base, a pickle is never loaded.
    with pytest.raises(InvalidBaseModelError, match="no safetensors weights") as refused:
        loading.load(prompt_tuning_random, str(base), allow_different_base=True)
    assert "pytorch_model.bin" in refused.value.message and "safetensors" in (refused.value.hint or "")
    # Each loader refuses by itself too, not only because verification came first.
    with pytest.raises(InvalidBaseModelError, match="no safetensors weights"):
        loading._load_base(str(base), None, "CAUSAL_LM")  # type: ignore[arg-type]
    with pytest.raises(InvalidBaseModelError, match="no safetensors weights"):
        training.load_base_model(str(base))

    dataset = tmp_path / "coach.jsonl"
    dataset.write_text("".join(f'{{"text": "{p}"}}\n' for p in toymodels.COACH_PROMPTS[:4]))
    capsys.readouterr()
    code = run(["train", "--base-model", str(base), "--dataset", str(dataset), "--no-publish",
                "--output", str(tmp_path / "out"), "--max-steps", "1"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "no safetensors weights" in err, err
    assert not (tmp_path / "out").exists()
    assert not marker.exists(), "a pickled checkpoint was unpickled"
