"""The toy models, tokenizer, datasets and adapters are what they claim to be.

Everything else in the suite trusts these fixtures (widths, seeds, tensor shapes, init methods),
so each claim is checked here against real transformers and PEFT.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from model_fixtures import (
    ADAPTER_FACTS,
    ADAPTER_FIXTURES,
    TEXT_INIT,
    read_safetensors_header,
    safetensors_data,
    write_raw_safetensors,
    write_safetensors,
)
from safetensors import SafetensorError
from safetensors.numpy import load_file

from registry.demo import toymodels
from registry.errors import InvalidBaseModelError, UsageError
from registry.ml import data

# tiny models never touch the catalogue: run once, in the SQLite half.
pytestmark = pytest.mark.backend_independent

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _config(path: Path, name: str = "config.json") -> dict:
    return json.loads((path / name).read_text(encoding="utf-8"))


def _tensors(path: Path) -> dict[str, np.ndarray]:
    return load_file(str(path / "adapter_model.safetensors"))


def _embedding(base: Path) -> np.ndarray:
    names = {
        "bloom": "transformer.word_embeddings.weight",
        "gpt2": "transformer.wte.weight",
        "llama": "model.embed_tokens.weight",
        "t5": "shared.weight",
    }
    return load_file(str(base / "model.safetensors"))[names[_config(base)["model_type"]]]


def _next_token_logits(base: Path, adapter: Path | None, text: str = "I want you to act as a"):
    import torch

    model = toymodels.load_model(base, adapter)
    tok = toymodels.load_tokenizer(base)
    enc = tok(text, return_tensors="pt")
    kwargs = {}
    if _config(base)["model_type"] == "t5":
        kwargs["decoder_input_ids"] = torch.tensor([[tok.pad_token_id]])
    with torch.no_grad():
        return model(**enc, **kwargs).logits[0, -1]


# ---------------------------------------------------------------------------------------------
# datasets and tokenizer
# ---------------------------------------------------------------------------------------------


def test_import_is_cheap() -> None:
    code = "import sys, registry.demo.toymodels; print(sorted(m for m in ('torch','transformers','peft','tokenizers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_demo_datasets_shapes_and_split(tmp_path: Path) -> None:
    paths = toymodels.write_demo_datasets(tmp_path / "data")
    rows = {k: [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()] for k, p in paths.items()}
    assert len(rows["coach"]) == len(toymodels.COACH_PROMPTS) >= 40
    assert len(rows["quotes"]) == len(toymodels.QUOTES) >= 30
    assert all(set(r) == {"prompt"} for r in rows["coach"])
    assert all(set(r) == {"quote"} for r in rows["quotes"])
    assert all(set(r) == {"prompt", "completion"} for r in rows["coach_dialogues"])
    for name in ("coach", "quotes"):
        train = [r["text"] for r in rows[f"{name}_train"]]
        held = [r["text"] for r in rows[f"{name}_eval"]]
        assert held and train and not set(train) & set(held)
        assert len(train) + len(held) == len(rows[name])
    assert len(set(toymodels.COACH_PROMPTS)) == len(toymodels.COACH_PROMPTS)
    assert len(set(toymodels.QUOTES)) == len(toymodels.QUOTES)
    # Same bytes every time: dataset digests in the demo are stable.
    again = toymodels.write_demo_datasets(tmp_path / "again")
    assert all(paths[k].read_bytes() == again[k].read_bytes() for k in paths)


def test_tokenizer_round_trip_and_specials(tiny_tokenizer: Path) -> None:
    tok = toymodels.load_tokenizer(tiny_tokenizer)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert len(tok) == 400
    for text in [*toymodels.COACH_PROMPTS[:3], "Unseen wörds, emoji 🙂 and\ttabs\nnewlines", ""]:
        ids = tok(text)["input_ids"]
        assert 1 not in ids and 2 not in ids  # no special tokens added on encode
        assert tok.decode(ids) == text
    # Training on the demo text merged common pairs: a coach prompt is far shorter than its bytes.
    assert len(tok(toymodels.COACH_PROMPTS[0])["input_ids"]) < len(toymodels.COACH_PROMPTS[0]) / 2
    assert len(tok(TEXT_INIT)["input_ids"]) == ADAPTER_FACTS["prompt_tuning_text"]["num_virtual_tokens"]


def test_tokenizer_is_deterministic(tmp_path: Path, tiny_tokenizer: Path) -> None:
    again = toymodels.train_tokenizer(tmp_path / "tok")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (again / name).read_bytes() == (tiny_tokenizer / name).read_bytes()


def test_tokenizer_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        toymodels.train_tokenizer(tmp_path / "a", sentences=[])
    with pytest.raises(UsageError):
        toymodels.train_tokenizer(tmp_path / "b", vocab_size=100)


# ---------------------------------------------------------------------------------------------
# base models
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "model_type", "width"),
    [
        ("tiny_bloom", "bloom", 64),
        ("tiny_bloom_other", "bloom", 64),
        ("tiny_bloom_wide", "bloom", 128),
        ("tiny_gpt2_same_width", "gpt2", 64),
        ("tiny_llama_gqa", "llama", 64),
        ("tiny_t5", "t5", 64),
    ],
)
def test_base_fixture_shapes(request: pytest.FixtureRequest, fixture: str, model_type: str, width: int) -> None:
    base: Path = request.getfixturevalue(fixture)
    config = _config(base)
    assert config["model_type"] == model_type
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in base.iterdir()
    }
    assert _embedding(base).shape == (400, width)
    assert _embedding(base).dtype == np.float32
    tok = toymodels.load_tokenizer(base)
    assert config["vocab_size"] == len(tok) == 400
    assert config["eos_token_id"] == tok.eos_token_id


def test_seed_changes_weights_not_config(tiny_bloom: Path, tiny_bloom_other: Path) -> None:
    assert _config(tiny_bloom) == _config(tiny_bloom_other)
    a, b = _embedding(tiny_bloom), _embedding(tiny_bloom_other)
    assert a.shape == b.shape and not np.array_equal(a, b)
    assert (tiny_bloom / "tokenizer.json").read_bytes() == (tiny_bloom_other / "tokenizer.json").read_bytes()


def test_same_seed_same_bytes(tmp_path: Path, tiny_bloom: Path, tiny_tokenizer: Path) -> None:
    again = toymodels.make_base_model(tmp_path / "bloom", tokenizer_dir=tiny_tokenizer, seed=0)
    assert (again / "model.safetensors").read_bytes() == (tiny_bloom / "model.safetensors").read_bytes()
    assert _config(again) == _config(tiny_bloom)


def test_wide_and_gqa_configs(tiny_bloom_wide: Path, tiny_llama_gqa: Path, tiny_t5: Path) -> None:
    assert _config(tiny_bloom_wide)["hidden_size"] == 128
    llama = _config(tiny_llama_gqa)
    assert (llama["hidden_size"], llama["num_attention_heads"], llama["num_key_value_heads"]) == (64, 4, 2)
    t5 = _config(tiny_t5)
    assert t5["is_encoder_decoder"] and t5["d_model"] == 64


def test_make_base_model_rejects_bad_arguments(tmp_path: Path, tiny_tokenizer: Path) -> None:
    with pytest.raises(UsageError, match="architecture"):
        toymodels.make_base_model(tmp_path / "x", arch="mamba", tokenizer_dir=tiny_tokenizer)
    with pytest.raises(UsageError):
        toymodels.make_base_model(tmp_path / "y", hidden_size=66, num_heads=4, tokenizer_dir=tiny_tokenizer)
    with pytest.raises(UsageError, match="vocab_size"):
        toymodels.make_base_model(tmp_path / "z", vocab_size=10, tokenizer_dir=tiny_tokenizer)
    with pytest.raises(UsageError, match="num_kv_heads"):
        toymodels.make_base_model(tmp_path / "w", arch="bloom", num_kv_heads=2, tokenizer_dir=tiny_tokenizer)
    with pytest.raises(UsageError, match=r"tokenizer\.json"):
        toymodels.make_base_model(tmp_path / "v", tokenizer_dir=tmp_path)
    # Nothing half-made is left behind (the vocab check fails after the tokenizer was copied).
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# adapters
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ADAPTER_FIXTURES)
def test_adapter_files_match_facts(request: pytest.FixtureRequest, name: str) -> None:
    adapter: Path = request.getfixturevalue(name)
    facts = ADAPTER_FACTS[name]
    base: Path = request.getfixturevalue(facts["base"])
    config = _config(adapter, "adapter_config.json")
    assert config["peft_type"] == facts["peft_type"]
    assert config["task_type"] == facts["task_type"]
    assert config["base_model_name_or_path"] == str(base)
    assert config["peft_version"] == __import__("peft").__version__
    assert config["inference_mode"] is True
    for key in ("num_virtual_tokens", "num_transformer_submodules"):
        if key in facts:
            assert config[key] == facts[key]
    if facts["peft_type"] != "LORA":
        assert config["token_dim"] == 64 and config["num_layers"] == 2 and config["num_attention_heads"] == 4
    header = read_safetensors_header(adapter / "adapter_model.safetensors")
    assert header.pop("__metadata__") == {"format": "pt"}
    assert {k: tuple(v["shape"]) for k, v in header.items()} == facts["tensors"]
    assert {v["dtype"] for v in header.values()} == {"F32"}
    assert all(np.isfinite(t).all() for t in _tensors(adapter).values())


@pytest.mark.parametrize("name", ADAPTER_FIXTURES)
def test_adapter_loads_applies_and_generates(request: pytest.FixtureRequest, name: str) -> None:
    import torch
    from safetensors.torch import load_file as load_torch

    adapter: Path = request.getfixturevalue(name)
    base: Path = request.getfixturevalue(ADAPTER_FACTS[name]["base"])
    model = toymodels.load_model(base, adapter)
    stored = load_torch(str(adapter / "adapter_model.safetensors"))
    if "prompt_embeddings" in stored:
        loaded = model.prompt_encoder["default"].embedding.weight
        assert torch.equal(loaded, stored["prompt_embeddings"])
    else:
        state = model.state_dict()
        for key, value in stored.items():
            assert torch.equal(state[key.replace(".weight", ".default.weight")], value)
    # The adapter changes what the model predicts (an adapter silently not applied would not).
    diff = (_next_token_logits(base, adapter) - _next_token_logits(base, None)).abs().max()
    assert float(diff) > 1e-3
    text = toymodels.generate(base, adapter, "I want you to act as", max_new_tokens=4)
    assert isinstance(text, str) and text


def test_adapters_generate_differently(tiny_bloom: Path, prompt_tuning_random: Path, prompt_tuning_text: Path) -> None:
    prompt = "I want you to act as a motivational coach."
    outs = {toymodels.generate(tiny_bloom, a, prompt, max_new_tokens=8) for a in (None, prompt_tuning_random, prompt_tuning_text)}
    assert len(outs) == 3


def test_text_init_copies_the_init_text_embeddings(tiny_bloom: Path, prompt_tuning_text: Path) -> None:
    config = _config(prompt_tuning_text, "adapter_config.json")
    assert config["prompt_tuning_init"] == "TEXT"
    assert config["prompt_tuning_init_text"] == TEXT_INIT
    assert config["tokenizer_name_or_path"] == str(tiny_bloom)
    ids = toymodels.load_tokenizer(tiny_bloom)(TEXT_INIT)["input_ids"]
    np.testing.assert_array_equal(_tensors(prompt_tuning_text)["prompt_embeddings"], _embedding(tiny_bloom)[ids])


def test_random_init_differs_by_seed(tmp_path: Path, tiny_bloom: Path, prompt_tuning_random: Path) -> None:
    same = toymodels.make_adapter(tiny_bloom, tmp_path / "same", seed=0)
    other = toymodels.make_adapter(tiny_bloom, tmp_path / "other", seed=1)
    ref = (prompt_tuning_random / "adapter_model.safetensors").read_bytes()
    assert (same / "adapter_model.safetensors").read_bytes() == ref
    assert (other / "adapter_model.safetensors").read_bytes() != ref


def test_p_tuning_and_prefix_config_facts(p_tuning: Path, prefix_tuning: Path) -> None:
    pt = _config(p_tuning, "adapter_config.json")
    assert (pt["encoder_reparameterization_type"], pt["encoder_hidden_size"], pt["encoder_num_layers"]) == ("MLP", 64, 2)
    # Only the encoder's output is saved: no MLP weights in the file.
    assert list(_tensors(p_tuning)) == ["prompt_embeddings"]
    pre = _config(prefix_tuning, "adapter_config.json")
    assert pre["prefix_projection"] is False


def test_prefix_tuning_on_gqa_is_sized_by_kv_heads(tmp_path: Path, tiny_llama_gqa: Path) -> None:
    adapter = toymodels.make_adapter(tiny_llama_gqa, tmp_path / "prefix", "PREFIX_TUNING")
    config = _config(adapter, "adapter_config.json")
    # PEFT: token_dim = head_dim * num_key_value_heads = 16 * 2, num_attention_heads = kv heads.
    assert (config["token_dim"], config["num_attention_heads"], config["num_layers"]) == (32, 2, 2)
    assert _tensors(adapter)["prompt_embeddings"].shape == (4, 2 * 2 * 32)
    assert toymodels.generate(tiny_llama_gqa, adapter, "I want", max_new_tokens=3)


def test_lora_targets_and_default_init(tmp_path: Path, tiny_bloom: Path, lora: Path) -> None:
    config = _config(lora, "adapter_config.json")
    assert (config["r"], config["lora_alpha"], config["target_modules"]) == (4, 8, ["query_key_value"])
    zero_b = toymodels.make_adapter(tiny_bloom, tmp_path / "lora-default", "LORA", init="DEFAULT")
    assert all(not v.any() for k, v in _tensors(zero_b).items() if "lora_B" in k)


def test_training_lowers_held_out_loss_deterministically(tmp_path: Path, tiny_bloom: Path) -> None:
    train, held_out = toymodels.coach_split()
    kwargs = dict(init="TEXT", init_text=TEXT_INIT, num_virtual_tokens=None, train_steps=10, dataset=train)
    trained = toymodels.make_adapter(tiny_bloom, tmp_path / "a", **kwargs)
    again = toymodels.make_adapter(tiny_bloom, tmp_path / "b", **kwargs)
    untrained = toymodels.make_adapter(tiny_bloom, tmp_path / "c", init="TEXT", init_text=TEXT_INIT, num_virtual_tokens=None)
    assert (trained / "adapter_model.safetensors").read_bytes() == (again / "adapter_model.safetensors").read_bytes()
    before = toymodels.eval_loss(tiny_bloom, untrained, held_out)
    after = toymodels.eval_loss(tiny_bloom, trained, held_out)
    assert after < before - 0.5


def test_prompt_completion_masks_the_prompt(tiny_bloom: Path) -> None:
    tok = toymodels.load_tokenizer(tiny_bloom)
    examples = toymodels.to_examples([{"prompt": "Human: hi\n", "completion": "Hello."}])
    [encoded], _ = data.encode_examples(examples, tok, template=None, seq2seq=False, max_length=64)
    ids, labels = encoded.input_ids, encoded.labels
    n_prompt = len(tok("Human: hi\n")["input_ids"])
    assert labels[:n_prompt] == [-100] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] and ids[-1] == tok.eos_token_id
    # Scoring only the completion gives another figure than scoring the whole text.
    whole = toymodels.eval_loss(tiny_bloom, None, ["Human: hi\nHello."])
    completion_only = toymodels.eval_loss(tiny_bloom, None, [("Human: hi\n", "Hello.")])
    assert whole != completion_only


def test_seq2seq_adapter_trains_and_scores(tmp_path: Path, tiny_t5: Path) -> None:
    train, held_out = toymodels.quotes_split()
    adapter = toymodels.make_adapter(tiny_t5, tmp_path / "t5", train_steps=2, dataset=train)
    assert np.isfinite(toymodels.eval_loss(tiny_t5, adapter, held_out))


def test_make_adapter_rejects_bad_arguments(tmp_path: Path, tiny_bloom: Path, tiny_tokenizer: Path) -> None:
    with pytest.raises(UsageError, match="PEFT type"):
        toymodels.make_adapter(tiny_bloom, tmp_path / "a", "IA3")
    with pytest.raises(UsageError, match="init_text"):
        toymodels.make_adapter(tiny_bloom, tmp_path / "b", init="TEXT")
    with pytest.raises(UsageError, match="PROMPT_TUNING only"):
        toymodels.make_adapter(tiny_bloom, tmp_path / "c", "P_TUNING", init="TEXT", init_text="x")
    with pytest.raises(UsageError, match="num_virtual_tokens"):
        toymodels.make_adapter(tiny_bloom, tmp_path / "d", num_virtual_tokens=0)
    with pytest.raises(UsageError, match="dataset"):
        toymodels.make_adapter(tiny_bloom, tmp_path / "e", train_steps=3)
    with pytest.raises(InvalidBaseModelError):
        toymodels.make_adapter(tiny_tokenizer, tmp_path / "f")
    assert not any((tmp_path / n).exists() for n in "abcdef")


def test_adapter_factory_gives_private_copies(adapter_factory, prompt_tuning_random: Path) -> None:
    first, second = adapter_factory("prompt_tuning_random"), adapter_factory("prompt_tuning_random")
    assert first != second and first != prompt_tuning_random
    (first / "adapter_model.safetensors").write_bytes(b"broken")
    assert (second / "adapter_model.safetensors").read_bytes() == (prompt_tuning_random / "adapter_model.safetensors").read_bytes()
    with pytest.raises(ValueError):
        adapter_factory("nope")


# ---------------------------------------------------------------------------------------------
# safetensors writers
# ---------------------------------------------------------------------------------------------


def test_write_safetensors_round_trip(tmp_path: Path) -> None:
    arrays = {"prompt_embeddings": np.array([[np.nan, 1.0], [np.inf, 2.0]], dtype=np.float16)}
    path = write_safetensors(tmp_path / "x.safetensors", arrays, metadata={"format": "pt"})
    back = load_file(str(path))
    np.testing.assert_array_equal(back["prompt_embeddings"], arrays["prompt_embeddings"])
    assert read_safetensors_header(path)["prompt_embeddings"]["dtype"] == "F16"


def test_write_raw_safetensors(tmp_path: Path, prompt_tuning_random: Path) -> None:
    path = write_raw_safetensors(tmp_path / "huge.safetensors", b"{}", header_len=2**40)
    raw = path.read_bytes()
    assert struct.unpack("<Q", raw[:8])[0] == 2**40 and raw[8:] == b"{}"
    # Rebuilding a real file from its parts gives the same bytes (so edits to one part are the only change).
    original = prompt_tuning_random / "adapter_model.safetensors"
    header = read_safetensors_header(original)
    rebuilt = write_raw_safetensors(tmp_path / "same.safetensors", header, safetensors_data(original))
    assert load_file(str(rebuilt)).keys() == load_file(str(original)).keys()
    header["prompt_embeddings"]["data_offsets"][1] += 4096
    past_end = write_raw_safetensors(tmp_path / "past.safetensors", header, safetensors_data(original))
    with pytest.raises(SafetensorError):
        load_file(str(past_end))


def test_pretraining_the_base_is_real_and_seeded(tmp_path: Path, tiny_bloom: Path, tiny_tokenizer: Path) -> None:
    texts = toymodels.PRETRAIN_SENTENCES[:16]
    a = toymodels.make_base_model(tmp_path / "a", tokenizer_dir=tiny_tokenizer, pretrain_steps=5, pretrain_texts=texts)
    b = toymodels.make_base_model(tmp_path / "b", tokenizer_dir=tiny_tokenizer, pretrain_steps=5, pretrain_texts=texts)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert toymodels.eval_loss(a, None, texts) < toymodels.eval_loss(tiny_bloom, None, texts) - 1.0
    held_out = set(toymodels.coach_split()[1]) | set(toymodels.quotes_split()[1])
    assert not held_out & set(toymodels.PRETRAIN_SENTENCES)


def test_generate_from_an_empty_prompt(tiny_bloom: Path, prompt_tuning_random: Path) -> None:
    assert isinstance(toymodels.generate(tiny_bloom, prompt_tuning_random, "", max_new_tokens=3), str)
