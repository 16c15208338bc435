"""Compatibility rules over real adapters (PEFT) and real tiny bases (transformers), plus pure cases.

Every good adapter fits its true base; every incompatible pair is refused with the right code.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from registry.adapters import basemodel, compat
from registry.adapters.reader import read_adapter
from registry.demo import toymodels
from registry.errors import EXIT_INCOMPATIBLE, IncompatibleError
from registry.types import AdapterFacts, BaseModelInfo, TensorFacts

PEFT_NOW = compat.installed_peft_version()


def check(adapter_dir: Path, base_dir: Path, recorded_dir: Path | None = None, **kwargs: object) -> compat.CompatReport:
    """Check an adapter directory against a base directory; the recorded base defaults to the adapter's true base."""
    facts = read_adapter(adapter_dir)
    recorded_path = recorded_dir if recorded_dir is not None else Path(facts.base_model_name_or_path or "")
    recorded = basemodel.from_directory(recorded_path)
    kwargs.setdefault("installed_peft", PEFT_NOW)
    return compat.check(facts, basemodel.inspect(str(base_dir)), recorded, subject=adapter_dir.name, **kwargs)  # type: ignore[arg-type]


def codes(report: compat.CompatReport, severity: str | None = None) -> set[str]:
    return {f.code for f in report.findings if severity is None or f.severity == severity}


# ---------------------------------------------------------------------------------------------
# Extra tiny bases and adapters this module needs (built once per module)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def extra(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path, tiny_llama_gqa: Path,
          tiny_gpt2_same_width: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compat-extra")
    out = {
        "bloom_3_layers": toymodels.make_base_model(root / "bloom3", arch="bloom", num_layers=3, tokenizer_dir=tiny_tokenizer),
        "bloom_8_heads": toymodels.make_base_model(root / "bloom8h", arch="bloom", num_heads=8, tokenizer_dir=tiny_tokenizer),
    }
    out["llama_prefix"] = toymodels.make_adapter(tiny_llama_gqa, root / "llama-prefix", "PREFIX_TUNING")
    out["gpt2_lora"] = toymodels.make_adapter(tiny_gpt2_same_width, root / "gpt2-lora", "LORA")
    return out


# ---------------------------------------------------------------------------------------------
# Good pairs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "adapter, base",
    [
        ("prompt_tuning_random", "tiny_bloom"),
        ("prompt_tuning_text", "tiny_bloom"),
        ("p_tuning", "tiny_bloom"),
        ("prefix_tuning", "tiny_bloom"),
        ("lora", "tiny_bloom"),
        ("seq2seq_prompt_tuning", "tiny_t5"),
    ],
)
def test_every_good_adapter_fits_its_true_base(adapter: str, base: str, request: pytest.FixtureRequest) -> None:
    report = check(request.getfixturevalue(adapter), request.getfixturevalue(base))
    assert report.compatible, report.lines()
    assert not report.errors and not report.identity and not report.warnings, report.lines()


def test_grouped_query_prefix_and_conv1d_lora_fit_their_bases(extra: dict[str, Path], tiny_llama_gqa: Path,
                                                               tiny_gpt2_same_width: Path) -> None:
    # Prefix tuning on a GQA model is head_dim x kv_heads wide (32 here), not hidden_size (64).
    facts = read_adapter(extra["llama_prefix"])
    assert facts.token_dim == 32 and facts.num_attention_heads == 2
    assert check(extra["llama_prefix"], tiny_llama_gqa).compatible
    # GPT-2's Conv1D stores weights transposed; the LoRA shape check must know it.
    report = check(extra["gpt2_lora"], tiny_gpt2_same_width)
    assert report.compatible and not report.findings, report.lines()


# ---------------------------------------------------------------------------------------------
# Refused pairs, one code each
# ---------------------------------------------------------------------------------------------


def test_width_mismatch(prompt_tuning_random: Path, p_tuning: Path, prefix_tuning: Path, lora: Path,
                        tiny_bloom_wide: Path) -> None:
    for adapter in (prompt_tuning_random, p_tuning, prefix_tuning):
        report = check(adapter, tiny_bloom_wide)
        assert not report.compatible
        assert "token-dim-mismatch" in codes(report, "error"), report.lines()
        f = next(f for f in report.findings if f.code == "token-dim-mismatch")
        assert (f.expected, f.found) == ("128", "64")
    report = check(lora, tiny_bloom_wide)
    assert "tensor-shape-mismatch" in codes(report, "error"), report.lines()
    # An error is never overridable.
    assert not check(prompt_tuning_random, tiny_bloom_wide, allow_different_base=True).compatible


def test_same_width_other_weights_is_an_identity_finding(prompt_tuning_random: Path, lora: Path, tiny_bloom_other: Path) -> None:
    for adapter in (prompt_tuning_random, lora):
        report = check(adapter, tiny_bloom_other)
        assert codes(report) == {"embedding-fingerprint-differs"}, report.lines()
        assert not report.compatible and not report.overridden
        accepted = check(adapter, tiny_bloom_other, allow_different_base=True)
        assert accepted.compatible and accepted.overridden


def test_same_width_other_architecture(prompt_tuning_random: Path, lora: Path, tiny_gpt2_same_width: Path) -> None:
    report = check(prompt_tuning_random, tiny_gpt2_same_width)
    assert {"architecture-differs", "embedding-fingerprint-differs"} <= codes(report, "identity")
    assert not report.errors  # the width fits: only the identity check catches it
    assert not report.compatible
    lora_report = check(lora, tiny_gpt2_same_width)
    assert "lora-target-missing" in codes(lora_report, "error"), lora_report.lines()
    assert not check(lora, tiny_gpt2_same_width, allow_different_base=True).compatible


def test_task_type_must_fit_the_architecture(prompt_tuning_random: Path, seq2seq_prompt_tuning: Path,
                                             tiny_t5: Path, tiny_bloom: Path) -> None:
    causal_on_t5 = check(prompt_tuning_random, tiny_t5)
    assert "task-type-unsupported" in codes(causal_on_t5, "error")
    seq2seq_on_bloom = check(seq2seq_prompt_tuning, tiny_bloom)
    assert "task-type-unsupported" in codes(seq2seq_on_bloom, "error")


def test_prefix_layers_and_heads(prefix_tuning: Path, extra: dict[str, Path], tiny_bloom: Path) -> None:
    layers = check(prefix_tuning, extra["bloom_3_layers"])
    assert "prefix-layers-mismatch" in codes(layers, "error"), layers.lines()
    f = next(f for f in layers.findings if f.code == "prefix-layers-mismatch")
    assert (f.expected, f.found) == ("3", "2")
    heads = check(prefix_tuning, extra["bloom_8_heads"])
    assert "prefix-heads-mismatch" in codes(heads, "error"), heads.lines()
    # A GQA prefix (32 wide, 2 kv heads) on a plain 64-wide model: width and heads both wrong.
    gqa_on_bloom = check(extra["llama_prefix"], tiny_bloom)
    assert {"token-dim-mismatch", "prefix-heads-mismatch"} <= codes(gqa_on_bloom, "error")


def test_lora_targets_absent(lora: Path, tiny_t5: Path) -> None:
    report = check(lora, tiny_t5)
    f = next(f for f in report.findings if f.code == "lora-target-missing")
    assert f.expected == "query_key_value"


# ---------------------------------------------------------------------------------------------
# Identity rules on recorded facts
# ---------------------------------------------------------------------------------------------


def test_tokenizer_differs_warns_for_text_init_only(prompt_tuning_text: Path, prompt_tuning_random: Path,
                                                    tiny_bloom: Path) -> None:
    base = basemodel.inspect(str(tiny_bloom))
    recorded = dataclasses.replace(base.info, tokenizer_digest="sha256:" + "0" * 64)
    text = compat.check(read_adapter(prompt_tuning_text), base, recorded, installed_peft=PEFT_NOW)
    assert codes(text) == {"tokenizer-differs"} and text.compatible
    assert text.findings[0].severity == "warning"
    rnd = compat.check(read_adapter(prompt_tuning_random), base, recorded, installed_peft=PEFT_NOW)
    assert not rnd.findings


def test_recorded_without_fingerprint_compares_names(prompt_tuning_random: Path, tiny_bloom: Path) -> None:
    base = basemodel.inspect(str(tiny_bloom))
    facts = read_adapter(prompt_tuning_random)
    recorded = BaseModelInfo(name="bigscience/bloomz-560m", revision="a" * 40, source="hub")
    report = compat.check(facts, base, recorded, installed_peft=PEFT_NOW)
    assert codes(report) == {"base-model-differs"} and not report.compatible
    # The same local copy under another path, same content: fine.
    same = dataclasses.replace(base.info, name="/elsewhere/bloom")
    assert not compat.check(facts, base, same, installed_peft=PEFT_NOW).findings
    # Two Hub names with the same content: a warning only.
    hub_a = dataclasses.replace(base.info, name="org/a", revision="1" * 40, source="hub")
    hub_b = dataclasses.replace(base, info=dataclasses.replace(base.info, name="org/b", revision="2" * 40, source="hub"))
    warned = compat.check(facts, hub_b, hub_a, installed_peft=PEFT_NOW)
    assert codes(warned) == {"base-name-differs"} and warned.compatible


def test_only_the_adapters_claim_is_known(prompt_tuning_random: Path, tiny_bloom: Path) -> None:
    facts = read_adapter(prompt_tuning_random)
    base = basemodel.inspect(str(tiny_bloom))
    claim = BaseModelInfo(name="someone/else", source="adapter_config")
    report = compat.check(facts, base, claim, installed_peft=PEFT_NOW)
    assert codes(report) == {"base-name-differs"} and report.compatible
    none = compat.check(facts, base, None, installed_peft=PEFT_NOW)
    assert codes(none) == {"base-unverified"} and none.compatible


def test_in_memory_target_compares_structure_not_config_digest(prompt_tuning_random: Path, tiny_bloom: Path) -> None:
    from transformers import AutoModelForCausalLM

    facts = read_adapter(prompt_tuning_random)
    in_memory = basemodel.from_model(AutoModelForCausalLM.from_pretrained(str(tiny_bloom)))
    recorded = basemodel.from_directory(tiny_bloom)
    report = compat.check(facts, in_memory, recorded, installed_peft=PEFT_NOW)
    assert report.compatible and not report.findings, report.lines()


# ---------------------------------------------------------------------------------------------
# PEFT versions (pure)
# ---------------------------------------------------------------------------------------------


def _lora_facts(**config: object) -> AdapterFacts:
    return AdapterFacts(
        peft_type="LORA", task_type="CAUSAL_LM", num_virtual_tokens=None, token_dim=None,
        num_transformer_submodules=None, num_layers=None, num_attention_heads=None, encoder_hidden_size=None,
        init_method=None, init_text=None, tokenizer_name_or_path=None, base_model_name_or_path=None,
        base_model_revision=None, peft_version=config.pop("peft_version", None),  # type: ignore[arg-type]
        lora_r=4, lora_alpha=8, target_modules=("q",), config=dict(config),
        tensors=(TensorFacts("base_model.model.q.lora_A.weight", "F32", (4, 8)),
                 TensorFacts("base_model.model.q.lora_B.weight", "F32", (8, 4))),
    )


def test_peft_version_rules() -> None:
    assert codes(compat.CompatReport("x", "LORA", BaseModelInfo(name="b"), None,
                                     tuple(compat.check_peft_support(_lora_facts(use_dora=True), "0.8.2")))) == {"peft-too-old"}
    assert compat.check_peft_support(_lora_facts(use_dora=True), "0.9.0") == []
    assert compat.check_peft_support(_lora_facts(use_dora=False), "0.5.0") == []
    newer = compat.check_peft_support(_lora_facts(peft_version="99.1.0"), PEFT_NOW)
    assert [(f.code, f.severity) for f in newer] == [("peft-newer", "warning")]
    assert [f.code for f in compat.check_peft_support(_lora_facts(), "0.0.1")] == ["peft-type-unsupported"]
    assert [f.code for f in compat.check_peft_support(_lora_facts(), None)] == ["peft-not-installed"]
    odd = dataclasses.replace(_lora_facts(), peft_type="IA3")
    assert [f.code for f in compat.check_peft_support(odd, PEFT_NOW)] == ["peft-type-unsupported"]


def test_manifest_facts_with_a_wrong_tensor_shape(prompt_tuning_random: Path, tiny_bloom: Path) -> None:
    facts = read_adapter(prompt_tuning_random)
    broken = dataclasses.replace(facts, tensors=(TensorFacts("prompt_embeddings", "F32", (5, 64)),))
    report = compat.check(broken, basemodel.inspect(str(tiny_bloom)), basemodel.from_directory(tiny_bloom), installed_peft=PEFT_NOW)
    f = next(f for f in report.findings if f.code == "tensor-shape-mismatch")
    assert (f.expected, f.found) == ("[4, 64]", "[5, 64]")


def test_headless_base_module_names_still_match() -> None:
    """A base saved without its head prefix (``h.0…`` instead of ``transformer.h.0…``) is the same module."""
    facts = _lora_facts()
    facts = dataclasses.replace(facts, tensors=(
        TensorFacts("base_model.model.transformer.h.0.self_attention.query_key_value.lora_A.weight", "F32", (4, 8)),
        TensorFacts("base_model.model.transformer.h.0.self_attention.query_key_value.lora_B.weight", "F32", (24, 4)),
    ), config={"target_modules": ["query_key_value"]})
    base = basemodel.BaseModelFacts(info=BaseModelInfo(name="b"), tensors={"h.0.self_attention.query_key_value.weight": (24, 8)})
    assert compat.check_lora(facts, base) == []
    wrong = basemodel.BaseModelFacts(info=BaseModelInfo(name="b"), tensors={"h.0.self_attention.dense.weight": (8, 8)})
    assert [f.code for f in compat.check_lora(facts, wrong)] == ["lora-target-missing"]
    unknown = basemodel.BaseModelFacts(info=BaseModelInfo(name="b"), tensors=None)
    assert [f.code for f in compat.check_lora(facts, unknown)] == ["lora-targets-unchecked"]


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def test_report_is_readable_and_serialisable(prompt_tuning_random: Path, tiny_bloom_wide: Path) -> None:
    report = check(prompt_tuning_random, tiny_bloom_wide)
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["compatible"] is False
    assert {f["code"] for f in doc["findings"]} == codes(report)
    assert all(set(f) == {"code", "severity", "message", "expected", "found", "hint"} for f in doc["findings"])
    lines = report.lines()
    assert lines[0].startswith("INCOMPATIBLE")
    token_line = next(line for line in lines if "token-dim-mismatch" in line)
    assert "expected 128, found 64" in token_line and "retrain" in token_line
    assert report.findings[0].severity == "error"  # errors sort first
    with pytest.raises(IncompatibleError) as info:
        report.raise_if_incompatible()
    assert info.value.exit_code == EXIT_INCOMPATIBLE == 3
    assert "token-dim-mismatch" in str(info.value)
    assert {f["code"] for f in info.value.fields["findings"]} == codes(report)


def test_every_code_has_a_known_severity() -> None:
    assert all(sev in compat.SEVERITIES for sev, _ in compat.CODES.values())
    for code in ("token-dim-mismatch", "tensor-shape-mismatch", "base-model-differs", "embedding-fingerprint-differs",
                 "config-differs", "architecture-differs", "task-type-unsupported", "prefix-layers-mismatch",
                 "prefix-heads-mismatch", "lora-target-missing", "file-digest-mismatch", "peft-type-unsupported",
                 "peft-too-old", "tokenizer-differs", "peft-newer"):
        assert code in compat.CODES
