"""The serving engine: mixed batches of different soft prompts give, row for row, PEFT's own tokens.

Real parts only: tiny BLOOM, Llama and Qwen2 bases built from configs (their outputs depend on the
prompt and on the soft prompt: the tests check that), real PEFT adapters saved with
``save_pretrained``, published to a real catalogue and loaded through the registry's verified load.

The reference for every row is ``PeftModel.generate`` with that one adapter and that one prompt,
greedy, ``use_cache=False``. Why not PEFT's cached generate: with PEFT 0.21.2 and transformers 5.25
the cached path of prompt tuning is wrong (transformers renamed ``past_key_values`` to ``cache``;
PEFT's ``prepare_inputs_for_generation`` does not see the cache and prepends the soft prompt again at
every step), so it drifts from the uncached one after a few tokens (BLOOM and Llama;
``test_peft_cached_generate_drift_is_real``), while the uncached one equals a full recompute of the
sequence at every step. The engine equals the uncached path token for token.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from registry import catalogue
from registry.catalogue import PublishOptions
from registry.demo import toymodels
from registry.errors import NotFoundError, UsageError

# The engine does not care which catalogue backend answers: these tests use their own SQLite file
# (the default one in the test's SPR_HOME, see own_sqlite_catalogue) and run in the SQLite half only.
pytestmark = [pytest.mark.slow, pytest.mark.backend_independent]


@pytest.fixture(autouse=True)
def own_sqlite_catalogue(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPR_DATABASE_URL", raising=False)

PROMPTS = [
    "I want you to act as a motivational coach.",
    "Fall seven",
    "The best time to plant a tree was years ago; the second best",
    "Hi",
]
NEW_TOKENS = 10


# ---------------------------------------------------------------------------------------------
# Fixtures: bases, adapters (real PEFT), the catalogue
# ---------------------------------------------------------------------------------------------


def _soft_prompt(base: Path, out: Path, peft_type: str, num_virtual_tokens: int, seed: int) -> Path:
    """A real PEFT adapter (random init) made with get_peft_model + save_pretrained on ``base``."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base)).eval()
    if peft_type == "PROMPT_TUNING":
        config: Any = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens)
    elif peft_type == "P_TUNING":
        config = peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens, encoder_hidden_size=64)
    elif peft_type == "PREFIX_TUNING":
        config = peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens)
    else:
        target = ["query_key_value"] if model.config.model_type == "bloom" else ["q_proj", "v_proj"]
        config = peft.LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=target, init_lora_weights=False)
    config.base_model_name_or_path = str(base)
    torch.manual_seed(seed)
    peft_model = peft.get_peft_model(model, config)
    peft_model.save_pretrained(str(out))
    return out


ARCHS = ("bloom", "llama", "qwen2")
KINDS = {"pt3": ("PROMPT_TUNING", 3, 1), "pt7": ("PROMPT_TUNING", 7, 2), "pe5": ("P_TUNING", 5, 3)}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path) -> dict[str, dict[str, Path]]:
    """Per architecture: its base and three soft prompts (prompt tuning 3 and 7 tokens, p-tuning 5)."""
    root = tmp_path_factory.mktemp("serving")
    out: dict[str, dict[str, Path]] = {}
    for arch in ARCHS:
        # qwen2: RoPE with grouped-query attention (2 key/value heads), like the seeds' Qwen2.5
        kv = {"num_kv_heads": 2} if arch == "qwen2" else {}
        base = toymodels.make_base_model(root / arch / "base", arch=arch, tokenizer_dir=tiny_tokenizer, **kv)
        out[arch] = {"base": base}
        for key, (kind, n, seed) in KINDS.items():
            out[arch][key] = _soft_prompt(base, root / arch / key, kind, n, seed)
    for arch in ARCHS:
        out[arch]["prefix"] = _soft_prompt(out[arch]["base"], root / arch / "prefix", "PREFIX_TUNING", 4, 4)
    bloom = out["bloom"]["base"]
    out["bloom"]["lora"] = _soft_prompt(bloom, root / "bloom" / "lora", "LORA", 0, 5)
    out["bloom"]["lora2"] = _soft_prompt(bloom, root / "bloom" / "lora2", "LORA", 0, 6)
    return out


def publish(adapter: Path, name: str, base: Path, template: str | None = None) -> str:
    options = PublishOptions(base_model=str(base), template=template)
    return catalogue.publish(adapter, name, options=options).version.ref


_PEFT_MODELS: dict[tuple[str, str], tuple[Any, Any]] = {}  # one PEFT model per (base, adapter), reused


def peft_reference(base: Path, adapter: Path, text: str, *, max_new_tokens: int = NEW_TOKENS, use_cache: bool = False) -> list[int]:
    """PEFT's own single-adapter greedy generate for one prompt (a fresh base, the adapter directory)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    key = (str(base), str(adapter))
    if key not in _PEFT_MODELS:
        model = AutoModelForCausalLM.from_pretrained(str(base)).eval()
        _PEFT_MODELS[key] = (AutoTokenizer.from_pretrained(str(base)), PeftModel.from_pretrained(model, str(adapter), is_trainable=False).eval())
    tok, peft_model = _PEFT_MODELS[key]
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        out = peft_model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=False, use_cache=use_cache,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )
    return [int(t) for t in out[0, enc["input_ids"].shape[1]:]]


def peft_forward_reference(base: Path, adapter: Path | None, text: str, *, max_new_tokens: int = NEW_TOKENS) -> list[int]:
    """Greedy decoding by full recompute through PEFT's own forward (the bare base when ``adapter`` is None).

    The reference for prefix tuning: PEFT's forward applies the prefix, while its ``generate`` with
    transformers 5.25 does not (``test_peft_prefix_generate_ignores_the_prefix``)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base)).eval()
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False).eval()
    ids = list(tok(text)["input_ids"])
    out: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(input_ids=torch.tensor([ids]), attention_mask=torch.ones((1, len(ids)), dtype=torch.long)).logits[0, -1].argmax())
            out.append(token)
            ids.append(token)
            if token == tok.eos_token_id:
                break
    return out


def engine_for(base: Path | str, refs: list[str]) -> Any:
    from registry.ml.serving import SoftPromptEngine

    return SoftPromptEngine(str(base), refs)


# ---------------------------------------------------------------------------------------------
# THE identity test
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_mixed_batch_equals_peft_row_for_row(arch: str, built: dict[str, dict[str, Path]]) -> None:
    paths = built[arch]
    refs = {key: publish(paths[key], f"team/{arch}-{key}", paths["base"]) for key in KINDS}
    engine = engine_for(paths["base"], list(refs.values()))
    assert not engine.refused and set(engine.adapters) == set(refs.values())
    # one batch: every soft prompt x every prompt, interleaved, different lengths and virtual-token counts
    pairs = [(refs[key], prompt) for prompt in PROMPTS for key in KINDS]
    results = engine.generate(pairs, max_new_tokens=NEW_TOKENS)
    assert [r.batch_size for r in results] == [len(pairs)] * len(pairs)
    by_pair: dict[tuple[str, str], list[int]] = {}
    for (ref, prompt), result in zip(pairs, results, strict=True):
        key = next(k for k, v in refs.items() if v == ref)
        want = peft_reference(paths["base"], paths[key], prompt)
        assert list(result.token_ids) == want, f"{arch} {key} {prompt!r}"
        assert result.digest == catalogue.get_version(ref).digest
        by_pair[(key, prompt)] = want
    # The soft prompt matters: for every prompt the three adapters do not all agree, and some
    # prompt gets three different answers (so a engine that ignored soft prompts would fail above).
    answers = [{tuple(by_pair[(k, p)]) for k in KINDS} for p in PROMPTS]
    assert all(len(a) >= 2 for a in answers), answers
    assert any(len(a) == 3 for a in answers), answers


def test_peft_cached_generate_drift_is_real(built: dict[str, dict[str, Path]]) -> None:
    """Why the reference is uncached: PEFT's cached prompt-tuning generate differs somewhere, and the
    uncached one equals a step-by-step full recompute (which the engine also equals, above)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    paths = built["bloom"]
    tok = AutoTokenizer.from_pretrained(str(paths["base"]))
    differ = 0
    for key in KINDS:
        for prompt in PROMPTS:
            uncached = peft_reference(paths["base"], paths[key], prompt)
            cached = peft_reference(paths["base"], paths[key], prompt, use_cache=True)
            differ += uncached != cached
    assert differ > 0
    model = AutoModelForCausalLM.from_pretrained(str(paths["base"])).eval()
    peft_model = PeftModel.from_pretrained(model, str(paths["pt7"]), is_trainable=False).eval()
    soft = peft_model.get_prompt(1)[0].detach()
    ids = tok(PROMPTS[0])["input_ids"]
    recompute = []
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            embeds = torch.cat([soft, model.get_input_embeddings()(torch.tensor([ids]))[0]])[None]
            token = int(model(inputs_embeds=embeds).logits[0, -1].argmax())
            recompute.append(token)
            ids.append(token)
            if token == tok.eos_token_id:
                break
    assert recompute == peft_reference(paths["base"], paths["pt7"], PROMPTS[0])


# ---------------------------------------------------------------------------------------------
# The rest of the engine
# ---------------------------------------------------------------------------------------------


def test_refused_ref_keeps_the_others_serving(built: dict[str, dict[str, Path]]) -> None:
    good = publish(built["bloom"]["pt3"], "team/good", built["bloom"]["base"])
    other = publish(built["llama"]["pt3"], "team/llama-prompt", built["llama"]["base"])
    engine = engine_for(built["bloom"]["base"], [good, other, "team/nope@1"])
    assert set(engine.adapters) == {good}
    assert set(engine.refused) == {other, "team/nope@1"}
    assert "does not fit" in engine.refused[other]
    [result] = engine.generate([(good, "Hi")], max_new_tokens=3)
    assert len(result.token_ids) == 3 or result.finish_reason == "stop"
    with pytest.raises(NotFoundError, match="not served") as info:
        engine.generate([(other, "Hi")])
    assert good in str(info.value)


def test_add_remove_without_reloading_the_base(built: dict[str, dict[str, Path]]) -> None:
    paths = built["bloom"]
    a = publish(paths["pt3"], "team/a", paths["base"])
    b = publish(paths["pe5"], "team/b", paths["base"])
    engine = engine_for(paths["base"], [a])
    model = engine.model
    engine.add(b)
    assert engine.model is model and set(engine.adapters) == {a, b}
    [ra, rb] = engine.generate([(a, PROMPTS[1]), (b, PROMPTS[1])], max_new_tokens=NEW_TOKENS)
    assert list(ra.token_ids) == peft_reference(paths["base"], paths["pt3"], PROMPTS[1])
    assert list(rb.token_ids) == peft_reference(paths["base"], paths["pe5"], PROMPTS[1])
    engine.remove(a)
    assert set(engine.adapters) == {b}
    with pytest.raises(NotFoundError):
        engine.generate([(a, "Hi")])
    with pytest.raises(NotFoundError):
        engine.remove(a)


def test_alias_reload_switches_version(built: dict[str, dict[str, Path]]) -> None:
    paths = built["bloom"]
    v1 = publish(paths["pt3"], "team/coach", paths["base"])
    v2 = publish(paths["pt7"], "team/coach", paths["base"])
    catalogue.set_alias(v1, "prod")
    engine = engine_for(paths["base"], ["team/coach@prod"])
    first = engine.adapters["team/coach@prod"]
    assert first.version_ref == v1
    assert engine.reload() == {}
    catalogue.set_alias(v2, "prod")
    changed = engine.reload()
    assert changed == {"team/coach@prod": (first.digest, catalogue.get_version(v2).digest)}
    [r] = engine.generate([("team/coach@prod", PROMPTS[0])], max_new_tokens=NEW_TOKENS)
    assert r.version_ref == v2 and list(r.token_ids) == peft_reference(paths["base"], paths["pt7"], PROMPTS[0])


def test_template_per_row_and_no_template(built: dict[str, dict[str, Path]]) -> None:
    from registry.ml.serving import Request

    paths = built["bloom"]
    template = "Human: {prompt}\n\nAssistant: "
    ref = publish(paths["pt3"], "team/templated", paths["base"], template=template)
    plain = publish(paths["pe5"], "team/plain", paths["base"])
    engine = engine_for(paths["base"], [ref, plain])
    results = engine.generate([
        Request(ref, PROMPTS[1], max_new_tokens=NEW_TOKENS),
        Request(ref, PROMPTS[1], max_new_tokens=NEW_TOKENS, no_template=True),
        Request(plain, PROMPTS[1], max_new_tokens=NEW_TOKENS),
    ])
    assert list(results[0].token_ids) == peft_reference(paths["base"], paths["pt3"], template.replace("{prompt}", PROMPTS[1]))
    assert list(results[1].token_ids) == peft_reference(paths["base"], paths["pt3"], PROMPTS[1])
    assert list(results[2].token_ids) == peft_reference(paths["base"], paths["pe5"], PROMPTS[1])
    assert results[0].prompt_tokens > results[1].prompt_tokens


def test_rows_finish_at_their_own_budget_stop_string_and_eos(built: dict[str, dict[str, Path]]) -> None:
    from registry.ml.serving import Request

    paths = built["llama"]
    a = publish(paths["pt3"], "team/a", paths["base"])
    b = publish(paths["pt7"], "team/b", paths["base"])
    engine = engine_for(paths["base"], [a, b])
    [full] = engine.generate([(b, PROMPTS[0])], max_new_tokens=12)
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 2]
    assert stop.strip(), full.text
    results = engine.generate([
        Request(a, PROMPTS[2], max_new_tokens=2),
        Request(b, PROMPTS[0], max_new_tokens=12, stop=(stop,)),
        Request(a, PROMPTS[3], max_new_tokens=NEW_TOKENS),
        Request(b, PROMPTS[1], max_new_tokens=0),
    ])
    assert len(results[0].token_ids) == 2 and results[0].finish_reason == "length"
    assert list(results[0].token_ids) == peft_reference(paths["base"], paths["pt3"], PROMPTS[2])[:2]
    assert results[1].finish_reason == "stop" and results[1].text == full.text[: full.text.find(stop)]
    assert list(results[2].token_ids) == peft_reference(paths["base"], paths["pt3"], PROMPTS[3])
    assert results[3].token_ids == () and results[3].text == ""
    # EOS: a row whose greedy output reaches EOS stops there with finish_reason "stop"
    eos = engine.tokenizer.eos_token_id
    for r in results:
        if eos in r.token_ids:
            assert r.token_ids[-1] == eos and r.finish_reason == "stop"


def test_streaming_deltas_add_up_and_cancel_drops_the_row(built: dict[str, dict[str, Path]]) -> None:
    from registry.ml.serving import Request

    paths = built["bloom"]
    a = publish(paths["pt3"], "team/a", paths["base"])
    b = publish(paths["pe5"], "team/b", paths["base"])
    engine = engine_for(paths["base"], [a, b])
    deltas: dict[int, list[str]] = {0: [], 1: []}

    def on_text(i: int, delta: str) -> bool:
        deltas[i].append(delta)
        return i != 1 or len(deltas[1]) < 2  # row 1's client "disconnects" after its second piece

    results = engine.generate(
        [Request(a, PROMPTS[0], max_new_tokens=NEW_TOKENS), Request(b, PROMPTS[0], max_new_tokens=NEW_TOKENS)],
        on_text=on_text,
    )
    assert "".join(deltas[0]) == results[0].text
    assert results[1].finish_reason == "cancelled" and len(results[1].token_ids) < NEW_TOKENS
    assert list(results[0].token_ids) == peft_reference(paths["base"], paths["pt3"], PROMPTS[0])


def test_seeded_sampling_repeats_and_ignores_batch_mates(built: dict[str, dict[str, Path]]) -> None:
    from registry.ml.serving import Request

    paths = built["qwen2"]
    a = publish(paths["pt3"], "team/a", paths["base"])
    b = publish(paths["pt7"], "team/b", paths["base"])
    engine = engine_for(paths["base"], [a, b])
    req = Request(a, PROMPTS[0], max_new_tokens=12, temperature=1.5, top_p=0.95, seed=7)
    [alone] = engine.generate([req])
    mixed = engine.generate([Request(b, PROMPTS[2], max_new_tokens=5), req])
    assert mixed[1].token_ids == alone.token_ids
    other_seed = [engine.generate([Request(a, PROMPTS[0], max_new_tokens=12, temperature=1.5, seed=s)])[0].token_ids for s in range(8, 12)]
    assert any(t != alone.token_ids for t in other_seed)


def test_prefix_tuning_and_lora_are_served_grouped(built: dict[str, dict[str, Path]]) -> None:
    paths = built["bloom"]
    pt = publish(paths["pt3"], "team/pt", paths["base"])
    prefix = publish(paths["prefix"], "team/prefix", paths["base"])
    lora = publish(paths["lora"], "team/lora", paths["base"])
    lora2 = publish(paths["lora2"], "team/lora2", paths["base"])
    engine = engine_for(paths["base"], [pt, prefix, lora, lora2])
    assert not engine.refused
    pairs = [(pt, PROMPTS[0]), (prefix, PROMPTS[0]), (lora, PROMPTS[1]), (lora2, PROMPTS[1]), (lora, PROMPTS[3])]
    results = engine.generate(pairs, max_new_tokens=NEW_TOKENS)
    assert [r.batch_size for r in results] == [1, 1, 2, 1, 2]
    assert list(results[0].token_ids) == peft_reference(paths["base"], paths["pt3"], PROMPTS[0])
    # prefix tuning: PEFT's forward (full recompute) is the reference; and the prefix matters
    assert list(results[1].token_ids) == peft_forward_reference(paths["base"], paths["prefix"], PROMPTS[0])
    assert list(results[1].token_ids) != peft_forward_reference(paths["base"], None, PROMPTS[0])
    # LoRA: PEFT's cached generate is the reference (LoRA does not go through the broken path)
    assert list(results[2].token_ids) == peft_reference(paths["base"], paths["lora"], PROMPTS[1], use_cache=True)
    assert list(results[3].token_ids) == peft_reference(paths["base"], paths["lora2"], PROMPTS[1], use_cache=True)
    assert list(results[4].token_ids) == peft_reference(paths["base"], paths["lora"], PROMPTS[3], use_cache=True)
    assert results[2].token_ids != results[3].token_ids  # the two LoRAs differ
    engine.remove(lora)
    [r] = engine.generate([(lora2, PROMPTS[1])], max_new_tokens=NEW_TOKENS)
    assert r.token_ids == results[3].token_ids


def test_peft_prefix_generate_ignores_the_prefix(built: dict[str, dict[str, Path]]) -> None:
    """Why prefix rows are not checked against PEFT's generate: it returns the bare base's tokens here."""
    paths = built["bloom"]
    bare = peft_forward_reference(paths["base"], None, PROMPTS[0])
    assert peft_forward_reference(paths["base"], paths["prefix"], PROMPTS[0]) != bare
    assert peft_reference(paths["base"], paths["prefix"], PROMPTS[0], use_cache=True)[: len(bare)] == bare


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_rows_of_different_lengths_in_one_group(arch: str, built: dict[str, dict[str, Path]]) -> None:
    paths = built[arch]
    prefix = publish(paths["prefix"], "team/prefix", paths["base"])
    engine = engine_for(paths["base"], [prefix])
    results = engine.generate([(prefix, p) for p in PROMPTS], max_new_tokens=NEW_TOKENS)
    assert [r.batch_size for r in results] == [len(PROMPTS)] * len(PROMPTS)
    for prompt, result in zip(PROMPTS, results, strict=True):
        assert list(result.token_ids) == peft_forward_reference(paths["base"], paths["prefix"], prompt), prompt


def test_prompt_too_long_names_the_limit(built: dict[str, dict[str, Path]]) -> None:
    paths = built["llama"]
    a = publish(paths["pt7"], "team/a", paths["base"])
    engine = engine_for(paths["base"], [a])
    assert engine.max_context == 256
    with pytest.raises(UsageError, match="context of 256 tokens"):
        engine.generate([(a, "word " * 300)])
    with pytest.raises(UsageError, match="256"):
        engine.generate([(a, "Hi")], max_new_tokens=255)


def test_prompt_embeds_is_the_row_the_engine_feeds(built: dict[str, dict[str, Path]]) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from registry.ml.serving import Request, prompt_embeds
    from registry.ml.serving.batching import Row, prefill_inputs

    paths = built["qwen2"]
    a = publish(paths["pe5"], "team/a", paths["base"], template="Q: {prompt}\nA:")
    b = publish(paths["pt7"], "team/b", paths["base"])
    engine = engine_for(paths["base"], [a, b])
    tensor = prompt_embeds(a, PROMPTS[1], engine)
    ids = engine.encode("Q: " + PROMPTS[1] + "\nA:")
    assert tuple(tensor.shape) == (5 + len(ids), 64)
    assert tensor.dtype == engine.model.get_input_embeddings().weight.dtype == torch.float32
    # equal to its row inside a mixed batch (left padding removed)
    prep = [engine.prepare(Request(b, PROMPTS[2])), engine.prepare(Request(a, PROMPTS[1]))]
    embeds, mask, _ = prefill_inputs(engine.model, [Row(p.slot.soft_prompt, list(p.token_ids)) for p in prep])
    assert torch.equal(embeds[1][mask[1].bool()], tensor)
    # its first rows are PEFT's own p-tuning prompt (the encoder output), the rest the token embeddings
    model = AutoModelForCausalLM.from_pretrained(str(paths["base"])).eval()
    peft_prompt = PeftModel.from_pretrained(model, str(paths["pe5"]), is_trainable=False).get_prompt(1)[0]
    assert torch.equal(tensor[:5], peft_prompt.detach())
    assert torch.equal(tensor[5:], model.get_input_embeddings()(torch.tensor(ids)).detach())
    # from a base directory (verified load on the way) the same tensor comes back
    assert torch.equal(prompt_embeds(a, PROMPTS[1], str(paths["base"])), tensor)
    with pytest.raises(UsageError, match="no chat template"):
        engine.chat_prompt([{"role": "user", "content": "hi"}])
    json.dumps(engine.adapters[a].__dict__)  # plain, JSON-ready facts


def test_base_from_a_hub_repo_at_a_revision(built: dict[str, dict[str, Path]], hub_server: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """``REPO@REV``: the engine downloads the safetensors snapshot at that commit and serves the same tokens."""
    from hub_fixtures import HUB_TOKEN
    from huggingface_hub import HfApi

    paths = built["llama"]
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    api = HfApi(endpoint=hub_server.url, token=HUB_TOKEN)
    api.create_repo("tester/tiny-llama", exist_ok=True)
    commit = api.upload_folder(repo_id="tester/tiny-llama", folder_path=str(paths["base"])).oid
    ref = publish(paths["pt7"], "team/a", paths["base"])
    remote = engine_for(f"tester/tiny-llama@{commit}", [ref])
    assert not remote.refused, remote.refused
    [r] = remote.generate([(ref, PROMPTS[2])], max_new_tokens=NEW_TOKENS)
    assert list(r.token_ids) == peft_reference(paths["base"], paths["pt7"], PROMPTS[2])
