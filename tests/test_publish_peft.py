"""Publish round trip for adapters written by real PEFT, one per type."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from registry import catalogue
from registry.catalogue import PublishOptions
from registry.digest import sha256_file

CASES = {
    "prompt_tuning_random": ("PROMPT_TUNING", "CAUSAL_LM"),
    "prompt_tuning_text": ("PROMPT_TUNING", "CAUSAL_LM"),
    "p_tuning": ("P_TUNING", "CAUSAL_LM"),
    "prefix_tuning": ("PREFIX_TUNING", "CAUSAL_LM"),
    "lora": ("LORA", "CAUSAL_LM"),
    "seq2seq_prompt_tuning": ("PROMPT_TUNING", "SEQ_2_SEQ_LM"),
}


@pytest.mark.parametrize("fixture", sorted(CASES))
def test_publish_export_round_trip(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    adapter_dir: Path = request.getfixturevalue(fixture)
    base_dir = request.getfixturevalue("tiny_t5" if fixture.startswith("seq2seq") else "tiny_bloom")
    config = json.loads((adapter_dir / "adapter_config.json").read_text())

    version = catalogue.publish(adapter_dir, f"team/{fixture.replace('_', '-')}",
                                options=PublishOptions(base_model=str(base_dir))).version

    peft_type, task_type = CASES[fixture]
    assert (version.peft_type, version.task_type) == (peft_type, task_type)
    assert version.peft_config == config
    assert version.base_model is not None and version.base_model.hidden_size == 64
    if peft_type != "LORA":
        assert version.num_virtual_tokens == config["num_virtual_tokens"]
        assert version.token_dim == config["token_dim"] == 64
    if fixture == "prompt_tuning_text":
        assert version.init_method == "TEXT" and version.init_text == config["prompt_tuning_init_text"]
    if fixture == "seq2seq_prompt_tuning":
        assert version.num_transformer_submodules == 2

    out = catalogue.export(version.ref, tmp_path / "exported")
    for f in version.files:
        assert sha256_file(out / f.path)[0] == sha256_file(adapter_dir / f.path)[0] == f.sha256
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {f.path for f in version.files}


def test_exported_adapter_loads_in_peft(prompt_tuning_random: Path, tiny_bloom: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    version = catalogue.publish(prompt_tuning_random, "coach").version
    out = catalogue.export(version.ref, tmp_path / "exported")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_bloom), out, is_trainable=False)
    stored = load_file(str(prompt_tuning_random / "adapter_model.safetensors"))["prompt_embeddings"]
    loaded = model.get_prompt_embedding_to_save("default")
    assert torch.equal(loaded, stored)
