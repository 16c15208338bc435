"""``spr publish DIR`` where PEFT's ``save_pretrained`` wrote adapters under their names.

PEFT writes the ``default`` adapter into DIR itself and adapter NAME into ``DIR/NAME/`` (with only a
README at the top when there is no ``default``). The folders here are written by real PEFT.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_support import spr

from registry import catalogue
from registry.adapters import reader
from registry.catalogue import PublishOptions
from registry.demo import toymodels
from registry.errors import EXIT_USAGE, InvalidAdapterError, UsageError


def _save(base: Path, out: Path, names: list[str]) -> Path:
    """Prompt-tuning adapters named ``names`` on one model, saved with one save_pretrained call."""
    import peft

    model = toymodels.load_model(base)
    configs = [peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2 + i) for i in range(len(names))]
    peft_model = peft.get_peft_model(model, configs[0], adapter_name=names[0])
    for name, config in zip(names[1:], configs[1:], strict=True):
        peft_model.add_adapter(name, config)
    peft_model.save_pretrained(str(out))
    return out


def test_a_single_named_adapter_is_found_and_published(
    capsys: pytest.CaptureFixture[str], tiny_bloom: Path, tmp_path: Path,
) -> None:
    saved = _save(tiny_bloom, tmp_path / "saved", ["coach"])
    assert not (saved / "adapter_config.json").exists() and (saved / "coach" / "adapter_config.json").is_file()

    code, out, err = spr(capsys, "publish", str(saved), "--name", "team/coach")
    assert code == 0, err
    assert "publishing adapter 'coach'" in err and str(saved / "coach") in err
    assert out.startswith("published team/coach@1 ")
    v = catalogue.get_version("team/coach@1")
    assert v.num_virtual_tokens == 2
    assert v.peft_config == json.loads((saved / "coach" / "adapter_config.json").read_text())


def test_several_adapters_are_listed_and_one_is_chosen_by_name(
    capsys: pytest.CaptureFixture[str], tiny_bloom: Path, tmp_path: Path,
) -> None:
    saved = _save(tiny_bloom, tmp_path / "saved", ["default", "quotes", "coach"])
    assert (saved / "adapter_config.json").is_file() and (saved / "quotes" / "adapter_config.json").is_file()
    assert reader.find_adapters(saved) == {"coach": saved / "coach", "default": saved, "quotes": saved / "quotes"}

    code, out, err = spr(capsys, "publish", str(saved), "--name", "team/x")
    assert code == EXIT_USAGE and out == ""
    assert "holds 3 adapters: coach, default, quotes" in err and "--adapter-name NAME" in err
    assert catalogue.list_versions() == []

    code, out, err = spr(capsys, "publish", str(saved), "--name", "team/quotes", "--adapter-name", "quotes")
    assert code == 0, err
    assert catalogue.get_version("team/quotes@1").num_virtual_tokens == 3
    code, out, err = spr(capsys, "publish", str(saved), "--name", "team/default", "--adapter-name", "default")
    assert code == 0, err
    assert catalogue.get_version("team/default@1").num_virtual_tokens == 2

    code, out, err = spr(capsys, "publish", str(saved), "--name", "team/x", "--adapter-name", "nope")
    assert code != 0 and "no adapter named 'nope'; found coach, default, quotes" in err

    # The library call behaves the same.
    with pytest.raises(UsageError, match="holds 3 adapters"):
        catalogue.publish(saved, "team/y")
    result = catalogue.publish(saved, "team/coach", options=PublishOptions(adapter_name="coach"))
    assert result.version.num_virtual_tokens == 4


def test_a_folder_without_any_adapter_still_says_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(InvalidAdapterError, match=r"expected adapter_config\.json"):
        catalogue.publish(tmp_path / "empty", "team/none")


def test_a_symlinked_subfolder_is_not_an_adapter(tmp_path: Path, prompt_tuning_random: Path) -> None:
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "linked").symlink_to(prompt_tuning_random)
    assert reader.find_adapters(tmp_path / "saved") == {}
