"""``SoftPromptEngine``: one base model in memory, many verified soft prompts, mixed batches.

Every adapter goes through the registry's verified load (:func:`registry.ml.loading.load`: the
refusals of ``spr verify``, the exported bytes re-hashed, the loaded tensors compared with the
stored ones). What is kept afterwards depends on the PEFT type:

* prompt tuning and p-tuning: the soft prompt matrix PEFT itself would prepend
  (``PeftModel.get_prompt``; for p-tuning that is the prompt encoder's output, computed once per
  adapter). The PEFT wrapper is dropped: rows for any of these adapters share ONE forward pass on
  the plain base (:func:`registry.ml.serving.batching.decode_rows`).
* prefix tuning: the PEFT wrapper over the same base object (prompt learning never changes the
  base's modules); rows are served grouped per adapter through the same cached decoding, starting
  from a KV cache that holds PEFT's own per-layer key/values (``get_prompt``). Not PEFT's
  ``generate``: with transformers 5.25 it silently drops the prefix (see the README).
* LoRA: the adapters live in one PEFT model over an in-memory copy of the base (LoRA rewrites the
  modules it targets, so it cannot share the plain base); rows are served grouped per adapter,
  through the same KV-cached decoding as the soft prompts.

A ref that fails verification is refused with its finding (``engine.refused``) while the others
serve. ``add``/``remove``/``reload`` change the served set without reloading the base.
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.errors import IncompatibleError, NotFoundError, RegistryError, UsageError
from registry.ml.serving.batching import Row, Sampling, decode_rows

__all__ = [
    "PROMPT_LEARNING_SHARED",
    "Completion",
    "Prepared",
    "Request",
    "ServedAdapter",
    "SoftPromptEngine",
]

PROMPT_LEARNING_SHARED = ("PROMPT_TUNING", "P_TUNING")
"""PEFT types whose rows share one forward pass, whatever adapter each row carries."""

SERVABLE = (*PROMPT_LEARNING_SHARED, "PREFIX_TUNING", "LORA")


@dataclass(frozen=True)
class ServedAdapter:
    """One adapter the engine serves, named by the ref it was asked for."""

    ref: str  # as asked: "team/coach@prod", "team/coach@3" or an adapter directory
    version_ref: str  # "team/coach@3", or the directory's absolute path
    digest: str | None  # sha256:<manifest digest> of the version; None for a directory
    peft_type: str
    num_virtual_tokens: int | None
    template: str | None


@dataclass(frozen=True)
class Request:
    """One completion request: which ref, the prompt text, and how to decode."""

    ref: str
    prompt: str
    max_new_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    no_template: bool = False


@dataclass(frozen=True)
class Prepared:
    """A validated request: its adapter and soft prompt fixed at preparation time, its tokens counted."""

    request: Request
    adapter: ServedAdapter
    text: str  # the prompt after the template
    token_ids: tuple[int, ...]
    slot: Any  # the _Slot serving it (kept even if the ref is removed or reloaded meanwhile)


@dataclass(frozen=True)
class Completion:
    """What the engine returns for one request."""

    ref: str
    digest: str | None
    version_ref: str
    text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string), "length", or "cancelled"
    batch_size: int  # how many rows shared the forward pass that produced it


EventCallback = Callable[[int, str], bool]
"""``on_text(index, delta)`` for streaming: called with new text per row; return False to cancel the row."""


@dataclass
class _Slot:
    adapter: ServedAdapter
    name: str
    soft_prompt: Any = None  # [virtual tokens, hidden] for PROMPT_LEARNING_SHARED
    peft_model: Any = None  # prefix tuning: a PeftModel over the shared base


@dataclass
class _RowText:
    """Incremental detokenisation and stop strings for one row."""

    stop: tuple[str, ...]
    sent: int = 0
    text: str = ""
    stopped: bool = False
    held: list[int] = field(default_factory=list)


def _context_limit(model: Any, tokenizer: Any) -> int | None:
    config = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10_000_000:
        return limit
    return None


class SoftPromptEngine:
    """Serve many soft prompts from one base model in mixed batches.

    ``base`` is a directory, ``REPO[@REV]`` (safetensors only, at the commit its identity was
    measured at) or a loaded causal-LM model (then pass ``tokenizer``). Each of ``refs`` (catalogue
    references or adapter directories) is verified and loaded; one that is refused lands in
    :attr:`refused` (``ref -> message``) and the engine serves the rest. Raises
    :class:`InvalidBaseModelError`/:class:`NotFoundError` when the base itself cannot be loaded.
    """

    def __init__(
        self,
        base: Any,
        refs: Sequence[str | os.PathLike[str]] = (),
        *,
        tokenizer: Any = None,
        db: str | None = None,
        allow_different_base: bool = False,
    ) -> None:
        self.db = db
        self.allow_different_base = allow_different_base
        self.model, self.tokenizer, self.base_name = _load_base(base, tokenizer)
        self.max_context = _context_limit(self.model, self.tokenizer)
        eos = self.model.generation_config.eos_token_id if self.model.generation_config else None
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_token_ids: tuple[int, ...] = tuple(eos) if isinstance(eos, (list, tuple)) else ((eos,) if eos is not None else ())
        self._slots: dict[str, _Slot] = {}
        self._lora_model: Any = None
        self._lora_names: dict[str, str] = {}  # version_ref -> adapter name inside _lora_model
        self.refused: dict[str, str] = {}
        self._lock = threading.RLock()  # held while a batch runs and while the served set changes
        self._slots_lock = threading.Lock()  # short: reading/writing the served set (prepare never waits for a batch)
        self._counter = 0
        for ref in refs:
            try:
                self.add(ref)
            except (IncompatibleError, NotFoundError, UsageError) as exc:
                self.refused[os.fspath(ref)] = str(exc)

    # -----------------------------------------------------------------------------------------
    # The served set

    @property
    def adapters(self) -> dict[str, ServedAdapter]:
        """The served refs, by the name they were asked for."""
        with self._slots_lock:
            return {ref: slot.adapter for ref, slot in self._slots.items()}

    def add(self, ref: str | os.PathLike[str]) -> ServedAdapter:
        """Verify and load ``ref``, then serve it (replacing what the same ref served before).

        Raises :class:`IncompatibleError` with the findings when verification refuses it,
        :class:`NotFoundError` for an unknown ref, :class:`UsageError` for a PEFT type or task the
        engine cannot serve. Nothing changes for the other refs.
        """
        from registry.ml import loading

        key = os.fspath(ref)
        subject = loading.resolve_adapter(key, db=self.db)
        facts = subject.facts
        peft_type = str(facts.peft_type)
        if peft_type not in SERVABLE or (facts.task_type or "CAUSAL_LM") != "CAUSAL_LM":
            raise UsageError(
                f"{subject.label} is a {peft_type} adapter for {facts.task_type}; the engine serves causal-LM "
                f"{', '.join(SERVABLE)} adapters",
                hint="serve it with PEFT directly (registry.ml.loading.load)",
            )
        version = subject.version
        adapter = ServedAdapter(
            ref=key,
            version_ref=subject.label,
            digest=version.digest if version else None,
            peft_type=peft_type,
            num_virtual_tokens=facts.num_virtual_tokens,
            template=version.template if version else None,
        )
        with self._lock:
            self._counter += 1
            name = f"a{self._counter}_{loading.adapter_name_for(subject.label)}"[:90]
            exact = subject.label  # load the exact version resolved above, even if an alias moves meanwhile
            slot = _Slot(adapter=adapter, name=name)
            if peft_type == "LORA":
                self._add_lora(exact, name)
            else:
                peft_model = loading.load(
                    exact, self.model, db=self.db, allow_different_base=self.allow_different_base, adapter_name=name
                )
                if peft_type in PROMPT_LEARNING_SHARED:
                    import torch

                    with torch.no_grad():
                        slot.soft_prompt = peft_model.get_prompt(batch_size=1)[0].detach().clone()
                else:
                    slot.peft_model = peft_model
            with self._slots_lock:
                old = self._slots.get(key)
                self._slots[key] = slot
                self.refused.pop(key, None)
            if old is not None and old.adapter.peft_type == "LORA":
                self._drop_lora(old.name)
        return adapter

    def remove(self, ref: str) -> None:
        """Stop serving ``ref`` (requests already prepared for it still finish). Raises :class:`NotFoundError`."""
        with self._lock:
            with self._slots_lock:
                slot = self._slots.pop(ref, None)
            if slot is None:
                raise NotFoundError(f"{ref} is not served", hint=f"served: {', '.join(sorted(self._slots)) or 'none'}")
            if slot.adapter.peft_type == "LORA":
                self._drop_lora(slot.name)

    def reload(self) -> dict[str, tuple[str | None, str | None]]:
        """Resolve every served (and refused) ref again; load the refs whose version changed.

        Returns ``ref -> (old digest, new digest)`` for the refs that changed. A ref that now
        fails verification keeps serving its old version and is listed in :attr:`refused`.
        """
        from registry.ml import loading

        changed: dict[str, tuple[str | None, str | None]] = {}
        with self._slots_lock:
            targets = list(self._slots) + [r for r in self.refused if r not in self._slots]
        for ref in targets:
            old = self._slots.get(ref)
            try:
                subject = loading.resolve_adapter(ref, db=self.db)
                new_digest = subject.version.digest if subject.version else None
                if old is not None and old.adapter.version_ref == subject.label and old.adapter.digest == new_digest:
                    continue
                adapter = self.add(ref)
                changed[ref] = (old.adapter.digest if old else None, adapter.digest)
            except (IncompatibleError, NotFoundError, UsageError) as exc:
                self.refused[ref] = str(exc)
        return changed

    def _add_lora(self, exact: str, name: str) -> None:
        from registry.ml import loading

        if self._lora_model is None:
            base_copy = copy.deepcopy(self.model)
            self._lora_model = loading.load(
                exact, base_copy, db=self.db, allow_different_base=self.allow_different_base, adapter_name=name
            )
        else:
            # Verify against the plain base, then let PEFT add the adapter to the existing LoRA model.
            report = loading.verify(exact, self.model, db=self.db, allow_different_base=self.allow_different_base, via="serve")
            report.raise_if_incompatible()
            _load_lora_into(self._lora_model, exact, name, self.db)
        self._lora_names[name] = exact

    def _drop_lora(self, name: str) -> None:
        if self._lora_model is not None and name in self._lora_names:
            self._lora_names.pop(name)
            if not self._lora_names:
                self._lora_model = None  # free the copy of the base
            else:
                self._lora_model.delete_adapter(name)

    # -----------------------------------------------------------------------------------------
    # Requests

    def prompt_text(self, adapter: ServedAdapter, prompt: str, *, no_template: bool = False) -> str:
        """The text a row feeds the model: the version's recorded template applied, unless ``no_template``."""
        from registry.ml.training import apply_template

        return prompt if no_template else apply_template(adapter.template, prompt)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` as training encoded it (the tokenizer's own special tokens); never empty."""
        ids = list(self.tokenizer(text)["input_ids"])
        if not ids:
            start = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id
            ids = [int(start)]
        return ids

    def chat_prompt(self, messages: Sequence[Mapping[str, str]]) -> str:
        """Render chat ``messages`` with the base's chat template (generation prompt added).

        Raises :class:`UsageError` when the base's tokenizer has no chat template.
        """
        if not getattr(self.tokenizer, "chat_template", None):
            raise UsageError(
                f"the base model {self.base_name} has no chat template",
                hint="use /v1/completions with a plain prompt",
            )
        return str(self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False))

    def prepare(self, request: Request) -> Prepared:
        """Check ``request`` and fix its adapter and tokens.

        Raises :class:`NotFoundError` (listing the served refs) for a ref not served and
        :class:`UsageError` for a prompt that, with the virtual tokens and ``max_new_tokens``,
        does not fit the base's context (the message names the limit).
        """
        with self._slots_lock:
            slot = self._slots.get(request.ref)
            served = sorted(self._slots)
        if slot is None:
            raise NotFoundError(
                f"model {request.ref!r} is not served",
                hint=f"served: {', '.join(served) or 'none'}",
                served=served,
            )
        if request.max_new_tokens < 0:
            raise UsageError(f"max_new_tokens must be >= 0, got {request.max_new_tokens}", hint="e.g. 16")
        text = self.prompt_text(slot.adapter, request.prompt, no_template=request.no_template)
        ids = self.encode(text)
        virtual = slot.adapter.num_virtual_tokens or 0 if slot.adapter.peft_type != "LORA" else 0
        if self.max_context is not None:
            used = len(ids) + virtual
            if used > self.max_context or used + request.max_new_tokens > self.max_context:
                raise UsageError(
                    f"the prompt needs {len(ids)} tokens + {virtual} virtual tokens + {request.max_new_tokens} new "
                    f"tokens, more than the base model's context of {self.max_context} tokens",
                    hint="shorten the prompt or lower max_tokens",
                    limit=self.max_context,
                )
        return Prepared(request=request, adapter=slot.adapter, text=text, token_ids=tuple(ids), slot=slot)

    def generate(
        self,
        requests: Sequence[Request | tuple[str, str]],
        *,
        max_new_tokens: int = 16,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        no_template: bool = False,
        on_text: EventCallback | None = None,
    ) -> list[Completion]:
        """Answer ``requests`` (``Request`` objects or ``(ref, prompt)`` pairs) in one batch.

        Pairs take the keyword settings; greedy unless ``temperature > 0`` (then ``seed`` makes
        it repeatable). Raises as :meth:`prepare` before anything runs.
        """
        reqs = [
            r if isinstance(r, Request) else Request(
                ref=r[0], prompt=r[1], max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                seed=seed, stop=tuple(stop), no_template=no_template,
            )
            for r in requests
        ]
        prepared = [self.prepare(r) for r in reqs]
        return self.run(prepared, on_text=on_text)

    def run(self, prepared: Sequence[Prepared], *, on_text: EventCallback | None = None) -> list[Completion]:
        """Run prepared requests: every prompt-tuning/p-tuning row in one pass, the rest grouped per adapter."""
        results: list[Completion | None] = [None] * len(prepared)
        shared = [i for i, p in enumerate(prepared) if p.adapter.peft_type in PROMPT_LEARNING_SHARED]
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(prepared):
            if p.adapter.peft_type not in PROMPT_LEARNING_SHARED:
                groups.setdefault(p.slot.name, []).append(i)
        with self._lock:
            if shared:
                self._run_decode(self.model, prepared, shared, results, on_text)
            for indices in groups.values():
                first = prepared[indices[0]]
                if first.adapter.peft_type == "LORA":
                    if self._lora_model is None or first.slot.name not in self._lora_names:
                        raise NotFoundError(f"{first.adapter.ref} was removed before its request ran", hint="send it again")
                    self._lora_model.set_adapter(first.slot.name)
                    self._run_decode(self._lora_model.get_base_model(), prepared, indices, results, on_text)
                else:
                    self._run_decode(self.model, prepared, indices, results, on_text, prefix=_prefix_of(first.slot))
        return [r for r in results if r is not None]

    def _rows_text(self, prepared: Sequence[Prepared], indices: Sequence[int]) -> dict[int, _RowText]:
        return {i: _RowText(stop=prepared[i].request.stop) for i in indices}

    def _advance(self, state: _RowText, tokens: Sequence[int]) -> str:
        """Decode ``tokens``; return the new text safe to send (held back: partial characters, stop prefixes)."""
        text = self.tokenizer.decode(list(tokens), skip_special_tokens=True)
        cut = None
        for s in state.stop:
            at = text.find(s)
            if at >= 0 and (cut is None or at < cut):
                cut = at
        if cut is not None:
            state.text = text[:cut]
            state.stopped = True
            safe = len(state.text)
        else:
            state.text = text
            safe = len(text)
            if text.endswith("\ufffd"):
                safe = len(text.rstrip("\ufffd"))
            for s in state.stop:  # hold back a tail that may grow into a stop string
                for k in range(min(len(s) - 1, safe), 0, -1):
                    if text[:safe].endswith(s[:k]):
                        safe -= k
                        break
        delta = state.text[state.sent : safe] if safe > state.sent else ""
        state.sent = max(state.sent, safe)
        return delta

    def _run_decode(
        self, model: Any, prepared: Sequence[Prepared], indices: Sequence[int],
        results: list[Completion | None], on_text: EventCallback | None,
        prefix: Callable[[int], tuple[Any, int]] | None = None,
    ) -> None:
        states = self._rows_text(prepared, indices)
        rows = []
        for i in indices:
            p = prepared[i]
            r = p.request
            rows.append(Row(
                soft_prompt=p.slot.soft_prompt,
                token_ids=list(p.token_ids),
                sampling=Sampling(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p, seed=r.seed),
            ))

        def on_token(row: int, token: int, tokens: list[int]) -> str | None:
            i = indices[row]
            state = states[i]
            if not state.stop and on_text is None:
                return None
            delta = self._advance(state, tokens)
            if on_text is not None and delta and not on_text(i, delta):
                return "cancelled"
            return "stop" if state.stopped else None

        outs = decode_rows(model, rows, eos_token_ids=self.eos_token_ids, on_token=on_token, prefix=prefix)
        for i, out in zip(indices, outs, strict=True):
            self._finish(prepared[i], states[i], out.token_ids, out.finish_reason, len(indices), results, i, on_text)

    def _finish(
        self, p: Prepared, state: _RowText, tokens: Sequence[int], reason: str, batch: int,
        results: list[Completion | None], i: int, on_text: EventCallback | None,
    ) -> None:
        if reason != "cancelled":
            delta = self._advance(state, tokens) if not state.stopped else ""
            if state.stopped:
                reason = "stop"
            else:
                # the end: send what was held back for a stop string that never came
                delta += state.text[state.sent :]
                state.sent = len(state.text)
            if on_text is not None and delta:
                on_text(i, delta)
        results[i] = Completion(
            ref=p.adapter.ref, digest=p.adapter.digest, version_ref=p.adapter.version_ref, text=state.text,
            token_ids=tuple(tokens), prompt_tokens=len(p.token_ids), finish_reason=reason, batch_size=batch,
        )


def _prefix_of(slot: _Slot) -> Callable[[int], tuple[Any, int]]:
    """Prefix tuning: PEFT's own per-layer key/values for ``batch`` rows (``get_prompt``), and their length."""

    def make(batch: int) -> tuple[Any, int]:
        peft_model = slot.peft_model
        return peft_model.get_prompt(batch_size=batch), int(peft_model.peft_config[peft_model.active_adapter].num_virtual_tokens)

    return make


def _load_base(base: Any, tokenizer: Any) -> tuple[Any, Any, str]:
    """The causal LM, its tokenizer and a display name, from a directory, ``REPO[@REV]`` or a model."""
    from registry.adapters import basemodel

    if not isinstance(base, (str, os.PathLike)):
        if tokenizer is None:
            raise UsageError("an in-memory base model needs its tokenizer", hint="pass tokenizer=...")
        base.eval()
        return base, tokenizer, str(getattr(base.config, "_name_or_path", "") or type(base).__name__)
    import transformers

    spec = os.fspath(base)
    path = Path(spec).expanduser()
    if path.is_dir():
        basemodel.require_safetensors(path)  # a pickled checkpoint is refused, never unpickled
        local = str(path)
    else:
        from huggingface_hub import snapshot_download

        from registry import settings

        facts = basemodel.inspect(spec)  # resolves the revision to a commit
        try:
            local = snapshot_download(
                facts.info.name, revision=facts.info.revision, endpoint=settings.hub_endpoint(), token=settings.hub_token(),
                allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"],
            )
        except Exception as exc:  # the Hub client's own errors
            raise RegistryError(f"could not download {spec}: {exc}", hint="check HF_ENDPOINT and the repo name") from exc
    model = transformers.AutoModelForCausalLM.from_pretrained(local, use_safetensors=True)
    model.eval()
    tok = tokenizer or transformers.AutoTokenizer.from_pretrained(local)
    return model, tok, spec


def _load_lora_into(lora_model: Any, exact: str, name: str, db: str | None) -> None:
    """Add the verified LoRA version ``exact`` to an existing PEFT model, then confirm its tensors."""
    import shutil
    import tempfile

    from safetensors.torch import load_file

    from registry import catalogue
    from registry.adapters.manifest import check_relative_path
    from registry.ml import loading
    from registry.storage import open_store

    subject = loading.resolve_adapter(exact, db=db)
    tmp = Path(tempfile.mkdtemp(prefix="spr-serve-"))
    try:
        if subject.version is not None:
            store = open_store()
            for f in catalogue.get_version(exact, db=db).files:
                store.export(f.sha256, tmp / check_relative_path(f.path, "catalogue"))
            directory = tmp
        else:
            assert subject.directory is not None
            directory = subject.directory
        lora_model.load_adapter(str(directory), adapter_name=name, is_trainable=False)
        stored = load_file(str(directory / loading.WEIGHTS), device="cpu")
        loading.confirm_applied(lora_model, name, stored, subject.label)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
