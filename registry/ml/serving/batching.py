"""One forward pass for rows that carry different soft prompts, then KV-cached decoding.

A prompt-learning soft prompt (prompt tuning, p-tuning) is a matrix ``P`` (virtual tokens x hidden)
that PEFT prepends to the token embeddings. Here every row brings its own ``P`` (or none):
``[P_row ; embed(tokens_row)]`` rows are left-padded to one length, the attention mask hides the
padding, and position ids count from each row's first real position (RoPE models read them; ALiBi
models such as BLOOM derive positions from the mask, which is the same count). Decoding then feeds
one token per live row with the KV cache, and a row that finishes (EOS, a stop string, its own
token budget, or a caller's cancellation) is dropped from the cache and from the work.

This module knows nothing about the catalogue: :mod:`registry.ml.serving.engine` builds the rows.
torch is imported inside the functions only.
"""

from __future__ import annotations

import inspect
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Row", "RowOutput", "Sampling", "decode_rows", "prefill_inputs"]


@dataclass(frozen=True)
class Sampling:
    """How one row picks its next token: greedy when ``temperature == 0``, else seeded sampling."""

    max_new_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class Row:
    """One request in a batch: its soft prompt (``None`` for the bare base), its prompt tokens."""

    soft_prompt: Any  # torch.Tensor [virtual tokens, hidden] or None
    token_ids: list[int]
    sampling: Sampling = field(default_factory=Sampling)


@dataclass
class RowOutput:
    """What one row produced: new token ids and why it stopped (``stop``, ``length`` or ``cancelled``)."""

    token_ids: list[int]
    finish_reason: str


TokenCallback = Callable[[int, int, list[int]], str | None]
"""``callback(row_index, token_id, row_tokens_so_far)``: return ``"stop"``/``"cancelled"`` to end the row."""


def prefill_inputs(model: Any, rows: Sequence[Row]) -> tuple[Any, Any, Any]:
    """``(inputs_embeds, attention_mask, position_ids)`` for the first pass over ``rows``.

    Row ``i`` is ``[soft_prompt_i ; embed(token_ids_i)]`` cast to the embedding dtype, left-padded
    with zeros to the longest row; the mask is 1 on real positions; position ids are
    ``cumsum(mask) - 1`` (0 on padding).
    """
    import torch

    embedding = model.get_input_embeddings()
    weight = embedding.weight
    pieces = []
    for row in rows:
        ids = torch.tensor([row.token_ids], dtype=torch.long, device=weight.device)
        tokens = embedding(ids)[0]
        if row.soft_prompt is not None:
            tokens = torch.cat([row.soft_prompt.to(device=tokens.device, dtype=tokens.dtype), tokens], dim=0)
        pieces.append(tokens)
    length = max(p.shape[0] for p in pieces)
    hidden = pieces[0].shape[1]
    embeds = torch.zeros((len(pieces), length, hidden), dtype=pieces[0].dtype, device=weight.device)
    mask = torch.zeros((len(pieces), length), dtype=torch.long, device=weight.device)
    for i, p in enumerate(pieces):
        embeds[i, length - p.shape[0] :] = p
        mask[i, length - p.shape[0] :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return embeds, mask, positions


def _forward_names(model: Any) -> tuple[str, bool, bool]:
    """The model's name for the KV cache argument and whether it takes position ids / logits_to_keep."""
    params = inspect.signature(model.forward).parameters
    cache_name = "cache" if "cache" in params else "past_key_values"
    return cache_name, "position_ids" in params, "logits_to_keep" in params


def _pick(logits: Any, sampling: Sampling, generator: Any) -> int:
    """Greedy argmax, or temperature + nucleus (top-p) sampling with the row's own generator."""
    import torch

    if sampling.temperature <= 0.0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        # keep the smallest set whose mass reaches top_p (the first token always stays)
        drop = cumulative - sorted_probs > sampling.top_p
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        probs = probs / probs.sum()
    # the row's generator lives on the CPU, so the draw does too (same numbers on any device)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator).item())


def decode_rows(
    model: Any,
    rows: Sequence[Row],
    *,
    eos_token_ids: Sequence[int] = (),
    on_token: TokenCallback | None = None,
    prefix: Callable[[int], tuple[Any, int]] | None = None,
) -> list[RowOutput]:
    """Run ``rows`` as ONE batch: a shared prefill pass, then one cached step per token.

    Each row stops at one of ``eos_token_ids`` (included in its tokens, like ``generate``), at its
    own ``max_new_tokens``, or when ``on_token`` returns a finish reason for it. Finished rows are
    dropped from the KV cache and the batch, so the work shrinks as rows end. Returns one
    :class:`RowOutput` per row, in order.

    ``prefix`` (prefix tuning) maps a batch size to ``(cache, n)``: a KV cache already holding
    ``n`` virtual positions for every row. The mask then starts with ``n`` ones and position ids
    with ``n``, as PEFT's prefix-tuning forward sees them.
    """
    import torch

    outputs = [RowOutput([], "length") for _ in rows]
    if not rows:
        return outputs
    cache_name, takes_positions, takes_keep = _forward_names(model)
    generators = []
    for row in rows:
        gen = None
        if row.sampling.temperature > 0.0:
            gen = torch.Generator(device="cpu")
            gen.manual_seed(row.sampling.seed if row.sampling.seed is not None else secrets.randbits(63))
        generators.append(gen)
    eos = set(int(t) for t in eos_token_ids)
    embeds, mask, positions = prefill_inputs(model, rows)
    live = [i for i, r in enumerate(rows) if r.sampling.max_new_tokens > 0]
    if len(live) != len(rows):
        keep = torch.tensor(live, dtype=torch.long)
        embeds, mask, positions = embeds[keep], mask[keep], positions[keep]
    cache = None
    if prefix is not None and live:
        cache, virtual = prefix(len(live))
        mask = torch.cat([torch.ones((len(live), virtual), dtype=mask.dtype, device=mask.device), mask], dim=1)
        positions = positions + virtual
    kwargs: dict[str, Any] = {"inputs_embeds": embeds, "attention_mask": mask, "use_cache": True}
    if cache is not None:
        kwargs[cache_name] = cache
    if takes_positions:
        kwargs["position_ids"] = positions
    if takes_keep:
        kwargs["logits_to_keep"] = 1
    with torch.no_grad():
        while live:
            out = model(**kwargs)
            cache = getattr(out, "cache", None)
            if cache is None:
                cache = getattr(out, "past_key_values", None)
            logits = out.logits[:, -1, :]
            next_ids: list[int] = []
            still: list[int] = []  # positions (in the current batch) of rows that go on
            for b, i in enumerate(live):
                token = _pick(logits[b], rows[i].sampling, generators[i])
                outputs[i].token_ids.append(token)
                reason = None
                if token in eos:
                    reason = "stop"
                elif on_token is not None:
                    reason = on_token(i, token, outputs[i].token_ids)
                if reason is None and len(outputs[i].token_ids) >= rows[i].sampling.max_new_tokens:
                    reason = "length"
                if reason is None:
                    still.append(b)
                    next_ids.append(token)
                else:
                    outputs[i].finish_reason = reason
            if not still:
                break
            if len(still) != len(live):
                keep = torch.tensor(still, dtype=torch.long, device=mask.device)
                assert cache is not None
                cache.batch_select_indices(keep)
                mask = mask[keep]
                positions = positions[keep]
                live = [live[b] for b in still]
            mask = torch.cat([mask, torch.ones((len(live), 1), dtype=mask.dtype, device=mask.device)], dim=1)
            positions = positions[:, -1:] + 1
            kwargs = {
                "input_ids": torch.tensor([[t] for t in next_ids], dtype=torch.long, device=mask.device),
                "attention_mask": mask,
                "use_cache": True,
                cache_name: cache,
            }
            if takes_positions:
                kwargs["position_ids"] = positions
            if takes_keep:
                kwargs["logits_to_keep"] = 1
    return outputs
