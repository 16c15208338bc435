"""TEXT init: the virtual-token count follows the init text, and what PEFT used is what is recorded.

The seeds' recipe sets ``num_virtual_tokens`` to the init text's token count under the base's
tokenizer (``spr train``'s default). With another explicit ``--virtual-tokens``, PEFT cuts the
text's token ids or repeats them to fill: ``spr train`` warns and records the text PEFT started
from (checked here against the untrained soft prompt's rows, which are those tokens' embeddings).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cli_support import spr, write_jsonl
from model_fixtures import TEXT_INIT

from registry import catalogue
from registry.demo import toymodels
from registry.ml import training
from registry.ml.config import text_init_ids


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "coach.jsonl", [{"text": p} for p in toymodels.COACH_PROMPTS[:16]])


def _ids(base: Path, text: str) -> list[int]:
    from transformers import AutoTokenizer

    return list(AutoTokenizer.from_pretrained(str(base))(text)["input_ids"])


def _decode(base: Path, ids: list[int]) -> str:
    from transformers import AutoTokenizer

    return str(AutoTokenizer.from_pretrained(str(base)).decode(ids))


def _untrained(base: Path, data: Path, name: str, virtual: int | None) -> tuple[Any, training.TrainResult]:
    result = training.train_and_publish(
        training.TrainConfig(dataset=data, base_model=str(base), init="text", init_text=TEXT_INIT,
                             virtual_tokens=virtual, max_steps=0),
        name,
    )
    assert result.published is not None
    return result.published.version, result


def _assert_rows_are_embeddings_of(version: Any, base: Path, ids: list[int], tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    stored = load_file(str(catalogue.export(version.ref, tmp_path / version.name) / "adapter_model.safetensors"))
    embeddings = toymodels.load_model(base).get_input_embeddings().weight.detach()
    assert torch.equal(stored["prompt_embeddings"], embeddings[torch.tensor(ids)].to(torch.float32))


def test_virtual_tokens_default_to_the_init_texts_token_count(tiny_bloom: Path, data: Path, tmp_path: Path) -> None:
    ids = _ids(tiny_bloom, TEXT_INIT)
    version, result = _untrained(tiny_bloom, data, "team/recipe", None)
    assert version.num_virtual_tokens == len(ids) == 11
    assert version.init_text == TEXT_INIT and result.notices == ()
    assert "init_text_given" not in version.training
    _assert_rows_are_embeddings_of(version, tiny_bloom, ids, tmp_path)


@pytest.mark.parametrize(("virtual", "how"), [(4, "cut it to"), (15, "repeated it to fill")])
def test_an_explicit_mismatch_warns_and_records_the_text_peft_used(
    tiny_bloom: Path, data: Path, tmp_path: Path, virtual: int, how: str,
) -> None:
    ids = _ids(tiny_bloom, TEXT_INIT)
    used_ids = text_init_ids(ids, virtual)
    version, result = _untrained(tiny_bloom, data, "team/mismatch", virtual)
    used = _decode(tiny_bloom, used_ids)
    assert version.num_virtual_tokens == virtual
    assert version.init_text == used != TEXT_INIT  # what PEFT started from, not what was typed
    assert version.peft_config["prompt_tuning_init_text"] == used
    assert version.training["init_text_given"] == TEXT_INIT and version.training["init_text_tokens"] == 11
    (notice,) = result.notices
    assert f"has 11 tokens under the base model's tokenizer but --virtual-tokens is {virtual}: PEFT {how}" in notice
    _assert_rows_are_embeddings_of(version, tiny_bloom, used_ids, tmp_path)


def test_cli_prints_the_warning(capsys: pytest.CaptureFixture[str], tiny_bloom: Path, data: Path) -> None:
    code, out, err = spr(capsys, "train", "--base-model", str(tiny_bloom), "--dataset", str(data), "--name", "team/c",
                         "--init-text", TEXT_INIT, "--virtual-tokens", "4", "--max-steps", "0")
    assert code == 0, err
    assert "warning: --init-text has 11 tokens" in err and "drop --virtual-tokens" in err
    assert out.startswith("published team/c@1")
    code, out, err = spr(capsys, "train", "--base-model", str(tiny_bloom), "--dataset", str(data), "--name", "team/d",
                         "--init-text", TEXT_INIT, "--virtual-tokens", "11", "--max-steps", "0")
    assert code == 0, err
    assert "warning" not in err
