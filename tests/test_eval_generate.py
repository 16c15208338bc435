"""``spr eval`` and ``spr generate``: verified loads, scores recorded against the eval data's digest,
the recorded template applied, and the generation metrics themselves."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from cli_support import spr, write_jsonl
from hypothesis import given, settings
from hypothesis import strategies as st

from registry import catalogue
from registry.demo import toymodels
from registry.digest import PREFIX, sha256_file
from registry.errors import EXIT_INCOMPATIBLE, EXIT_USAGE
from registry.ml import evaluation, training

TEMPLATE = "Human: {prompt}\n\nAssistant: "




@pytest.fixture
def dialogues(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "dialogues.jsonl", [{"prompt": p, "completion": c} for p, c in toymodels.COACH_DIALOGUES[:12]])


@pytest.fixture
def eval_set(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "eval.jsonl", [{"prompt": p, "completion": c} for p, c in toymodels.COACH_DIALOGUES[12:]])


def train_dialogues(base: Path, data: Path, name: str = "team/dlg") -> str:
    result = training.train_and_publish(
        training.TrainConfig(dataset=data, base_model=str(base), max_steps=3, lr=0.05, seed=0, template=TEMPLATE), name
    )
    assert result.published is not None
    return result.published.version.ref


@pytest.fixture
def trained(tiny_bloom: Path, dialogues: Path) -> str:
    """A soft prompt trained for 3 steps on prompt/completion data with a template, published."""
    return train_dialogues(tiny_bloom, dialogues)


def test_eval_records_each_score_with_the_dataset_digest(capsys: pytest.CaptureFixture[str], trained: str, eval_set: Path) -> None:
    before = {(s.metric, s.dataset, s.recorded_at) for s in catalogue.get_version(trained).eval_scores}
    code, out, err = spr(capsys, "--json", "eval", trained, "--dataset", str(eval_set), "--split", "test", "--max-new-tokens", "6")
    assert code == 0, err
    report = json.loads(out)
    digest = PREFIX + sha256_file(eval_set)[0]
    assert report["dataset"]["digest"] == digest and report["examples"] == 4
    assert set(report["scores"]) == {"eval_loss", "perplexity", "exact_match", "rouge_l"}  # prompt/completion: all four
    new = [s for s in catalogue.get_version(trained).eval_scores if (s.metric, s.dataset, s.recorded_at) not in before]
    assert sorted(s.metric for s in new) == ["eval_loss", "exact_match", "perplexity", "rouge_l"]
    for s in new:
        assert (s.dataset, s.dataset_name, s.split, s.recorded_by) == (digest, "eval.jsonl", "test", "tester")
        assert s.value == pytest.approx(report["scores"][s.metric])
    values = {s.metric: s.value for s in new}
    assert values["perplexity"] == pytest.approx(math.exp(values["eval_loss"]))
    assert 0 <= values["exact_match"] <= 1 and 0 <= values["rouge_l"] <= 1
    # The generation metrics are the mean of the per-example ones shown as samples.
    assert values["rouge_l"] == pytest.approx(sum(p["rouge_l"] for p in report["samples"]) / 4)
    logged = [e for e in catalogue.events(trained) if e.action == "eval"]
    assert {e.details["dataset"] for e in logged} == {digest}

    # Scores accumulate; show's "latest" view picks the newest per metric and dataset.
    code, _, err = spr(capsys, "eval", "--dataset", str(eval_set), trained, "--metric", "loss", "--split", "test")
    assert code == 0, err
    version = catalogue.get_version(trained)
    assert sum(1 for s in version.eval_scores if (s.metric, s.dataset) == ("eval_loss", digest)) == 2
    latest = version.latest_scores()[("eval_loss", digest)]
    assert latest.recorded_at == max(s.recorded_at for s in version.eval_scores if s.dataset == digest)


def test_eval_applies_the_recorded_template(trained: str, eval_set: Path, tiny_bloom: Path) -> None:
    # The loss spr eval records is the loss of the template-formatted examples: recompute it with
    # and without the template on the same loaded model.
    report = evaluation.evaluate(trained, eval_set, metrics=["loss"], record=False)
    loaded = evaluation.load_adapter(trained)
    data = training.load_examples(eval_set)

    def loss(template: str | None) -> float:
        enc, _ = training.encode_examples(data.examples, loaded.tokenizer, template=template, max_length=256, seq2seq=False)
        return training.mean_token_loss(loaded.model, enc, pad_id=loaded.tokenizer.pad_token_id, seq2seq=False)[0]

    assert report.template == TEMPLATE
    assert report.scores["eval_loss"] == pytest.approx(loss(TEMPLATE), rel=1e-6)
    assert report.scores["eval_loss"] != pytest.approx(loss(None), rel=1e-6)
    assert report.recorded is False and not catalogue.get_version(trained).eval_scores[2:]


def test_eval_and_add_share_the_group(capsys: pytest.CaptureFixture[str], trained: str) -> None:
    code, out, _ = spr(capsys, "eval", "--help")
    assert code == 0 and "add" in out and "run" in out
    code, _, err = spr(capsys, "eval", "add", trained, "bleu=0.25", "--split", "dev")
    assert code == 0, err
    assert [(s.metric, s.split) for s in catalogue.get_version(trained).eval_scores if s.metric == "bleu"] == [("bleu", "dev")]


def test_generation_metric_on_text_data_is_refused(capsys: pytest.CaptureFixture[str], trained: str, tmp_path: Path) -> None:
    texts = write_jsonl(tmp_path / "texts.jsonl", [{"text": q} for q in toymodels.QUOTES[:4]])
    n = len(catalogue.get_version(trained).eval_scores)
    code, _, err = spr(capsys, "eval", trained, "--dataset", str(texts), "--metric", "rouge-l")
    assert code == EXIT_USAGE and "prompt/completion" in err
    code, _, err = spr(capsys, "eval", trained, "--dataset", str(texts))  # text data: loss and perplexity
    assert code == 0, err
    assert sorted(s.metric for s in catalogue.get_version(trained).eval_scores[n:]) == ["eval_loss", "perplexity"]


def test_eval_on_another_base_is_refused_unless_allowed(
    capsys: pytest.CaptureFixture[str], trained: str, eval_set: Path, tiny_bloom_other: Path
) -> None:
    n = len(catalogue.get_version(trained).eval_scores)
    code, _, err = spr(capsys, "eval", trained, "--dataset", str(eval_set), "--base-model", str(tiny_bloom_other), "--metric", "loss")
    assert code == EXIT_INCOMPATIBLE and "embedding-fingerprint-differs" in err
    assert len(catalogue.get_version(trained).eval_scores) == n
    code, _, err = spr(capsys, "eval", trained, "--dataset", str(eval_set), "--base-model", str(tiny_bloom_other),
                       "--metric", "loss", "--allow-different-base")
    assert code == 0, err
    assert len(catalogue.get_version(trained).eval_scores) == n + 1
    assert any(e.action == "verify-override" for e in catalogue.events())


def test_missing_recorded_base_needs_base_model(
    capsys: pytest.CaptureFixture[str], tiny_bloom: Path, dialogues: Path, eval_set: Path, tmp_path: Path
) -> None:
    base = Path(shutil.copytree(tiny_bloom, tmp_path / "moved-base"))
    ref = train_dialogues(base, dialogues, "team/moved")
    shutil.rmtree(base)
    code, _, err = spr(capsys, "eval", ref, "--dataset", str(eval_set))
    assert code == EXIT_USAGE and "--base-model" in err and "moved-base" in err
    code, _, err = spr(capsys, "eval", ref, "--dataset", str(eval_set), "--base-model", str(tiny_bloom), "--metric", "loss")
    assert code == 0, err  # same weights at another path: the fingerprint matches


def _direct_generation(base: Path, adapter: Path | None, text: str, max_new_tokens: int) -> str:
    """The tutorials' generate() by hand: PeftModel.from_pretrained on the exported files."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base))
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        # Uncached for a soft prompt, as spr decodes: PEFT's cached decoding of a prompt-tuned model
        # drifts from a step-by-step forward pass (test_generate_text_equals_a_forward_pass_per_token).
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=1.5,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                             use_cache=adapter is None)
    return str(tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))


def test_generate_applies_the_template_and_compares_with_the_base(
    capsys: pytest.CaptureFixture[str], trained: str, tiny_bloom: Path, tmp_path: Path
) -> None:
    code, out, err = spr(capsys, "--json", "generate", trained, "--prompt", "I want to run.", "--compare-base", "--max-new-tokens", "8")
    assert code == 0, err
    result = json.loads(out)
    formatted = "Human: I want to run.\n\nAssistant: "
    assert result["formatted"] == formatted and result["template"] == TEMPLATE
    exported = catalogue.export(trained, tmp_path / "exported")
    assert result["output"] == _direct_generation(tiny_bloom, exported, formatted, 8)
    assert result["base_output"] == _direct_generation(tiny_bloom, None, formatted, 8)
    assert result["output"] != result["base_output"]

    code, out, err = spr(capsys, "--json", "generate", trained, "--prompt", "I want to run.", "--no-template", "--max-new-tokens", "8")
    assert code == 0, err
    raw = json.loads(out)
    assert raw["formatted"] == "I want to run." and raw["base_output"] is None
    assert raw["output"] == _direct_generation(tiny_bloom, exported, "I want to run.", 8)

    code, out, _ = spr(capsys, "generate", trained, "--prompt", "I want to run.", "--compare-base", "--max-new-tokens", "8")
    assert code == 0 and out.splitlines() == [f"[{trained}] {result['output']}", f"[base model] {result['base_output']}"]


def test_rouge_l_and_exact_match_values() -> None:
    assert evaluation.rouge_l("the cat sat", "the cat sat on the mat") == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert evaluation.rouge_l("police killed the gunman", "police kill the gunman") == pytest.approx(0.75)
    assert evaluation.rouge_l("", "") == 1.0 and evaluation.rouge_l("a", "") == 0.0 and evaluation.rouge_l("x y", "a b") == 0.0
    assert evaluation.exact_match("  Read five pages, before bed! ", "read five pages before bed") == 1.0
    assert evaluation.exact_match("Read five pages", "Read six pages") == 0.0


words = st.lists(st.sampled_from(["a", "b", "c", "d", "the", "cat"]), max_size=12).map(" ".join)


@settings(max_examples=200, deadline=None)
@given(words, words)
def test_rouge_l_properties(a: str, b: str) -> None:
    score = evaluation.rouge_l(a, b)
    assert 0.0 <= score <= 1.0
    assert score == pytest.approx(evaluation.rouge_l(b, a))  # F1 is symmetric
    assert evaluation.rouge_l(a, a) == 1.0
    assert (score == 1.0) == (a.split() == b.split())


def test_generate_text_equals_a_forward_pass_per_token(tiny_llama_gqa: Path, tmp_path: Path) -> None:
    """spr's greedy decoding of a soft prompt is the model's own argmax, token by token.

    With transformers 5.x and PEFT 0.21, ``PeftModel.generate`` of a prompt-tuned model with the KV
    cache drifts from a step-by-step forward pass after the first token (seen on Llama here and on
    the pretrained BLOOM of ``spr demo``); :func:`evaluation.generate_text` decodes uncached for
    soft prompts and must match the forward pass exactly.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = toymodels.make_adapter(tiny_llama_gqa, tmp_path / "pt", "PROMPT_TUNING", num_virtual_tokens=6)
    tok = AutoTokenizer.from_pretrained(str(tiny_llama_gqa))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_llama_gqa)), str(adapter)).eval()
    prompt = "I want to start running every morning"
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    cur = ids
    for _ in range(12):
        with torch.no_grad():
            logits = model(input_ids=cur, attention_mask=torch.ones_like(cur)).logits
        cur = torch.cat([cur, logits[0, -1].argmax().view(1, 1)], dim=1)
    by_hand = tok.decode(cur[0, ids.shape[1]:], skip_special_tokens=True)
    ours = evaluation.generate_text(model, tok, prompt, seq2seq=False, max_new_tokens=12, repetition_penalty=1.0, device="cpu")
    assert ours == by_hand
