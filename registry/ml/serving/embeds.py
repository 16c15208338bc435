"""``prompt_embeds``: the ``[soft prompt ; token embeddings]`` tensor other engines accept.

vLLM (``LLM(model=..., enable_prompt_embeds=True)``, then ``llm.generate({"prompt_embeds": t})``) and
SGLang (``input_embeds``) take a prompt as a ``seq_len x hidden`` tensor of embeddings instead of
token ids. For a prompt-tuning or p-tuning soft prompt that tensor is exactly the row this engine
feeds its own model: the soft prompt PEFT would prepend, then the embeddings of the prompt's
tokens (after the version's template), in the base's embedding dtype.
"""

from __future__ import annotations

import os
from typing import Any

from registry.errors import IncompatibleError, UsageError
from registry.ml.serving.engine import PROMPT_LEARNING_SHARED, Request, SoftPromptEngine

__all__ = ["prompt_embeds"]


def prompt_embeds(
    ref: str | os.PathLike[str],
    prompt: str,
    base: Any,
    *,
    tokenizer: Any = None,
    db: str | None = None,
    no_template: bool = False,
    allow_different_base: bool = False,
) -> Any:
    """Return the ``[soft prompt ; embed(tokens)]`` tensor (``seq_len x hidden``) for ``ref`` and ``prompt``.

    ``base`` is a :class:`SoftPromptEngine` already serving ``ref`` (cheapest: nothing is loaded),
    or anything the engine accepts as a base (a directory, ``REPO[@REV]``, a model with
    ``tokenizer=``), in which case ``ref`` is verified and loaded first. The version's template is
    applied unless ``no_template``. Raises :class:`IncompatibleError` when ``ref`` is refused and
    :class:`UsageError` for a PEFT type that is not a soft prompt (prefix tuning, LoRA).
    """
    import torch

    key = os.fspath(ref)
    if isinstance(base, SoftPromptEngine):
        engine = base
        if key not in engine.adapters:
            engine.add(key)
    else:
        engine = SoftPromptEngine(base, [key], tokenizer=tokenizer, db=db, allow_different_base=allow_different_base)
        if key in engine.refused:
            raise IncompatibleError(engine.refused[key], hint="see 'spr verify' for the findings")
    adapter = engine.adapters[key]
    if adapter.peft_type not in PROMPT_LEARNING_SHARED:
        raise UsageError(
            f"{adapter.version_ref} is a {adapter.peft_type} adapter: it is not a sequence of input embeddings",
            hint="prompt_embeds serves prompt tuning and p-tuning soft prompts",
        )
    from registry.ml.serving.batching import Row, prefill_inputs

    prepared = engine.prepare(Request(ref=key, prompt=prompt, max_new_tokens=0, no_template=no_template))
    with torch.no_grad():
        embeds, _, _ = prefill_inputs(engine.model, [Row(prepared.slot.soft_prompt, list(prepared.token_ids))])
    return embeds[0].detach().clone()
