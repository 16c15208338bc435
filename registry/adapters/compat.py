"""Compatibility rules: (adapter facts, recorded base identity, target base facts) -> report.

Pure functions: no files, no network, no torch. :func:`check` runs every rule that applies to the
adapter's PEFT type and returns a :class:`CompatReport` of :class:`Finding` objects. Each finding
has a stable ``code`` (listed in :data:`CODES`), a severity, what was expected, what was found and
what to do.

Severities:

- ``error``: the adapter cannot work on this base (a width, shape, layer or head count that differs,
  a task type the architecture cannot serve, a LoRA target the base lacks, stored bytes that changed,
  a PEFT that cannot load it). Never overridable.
- ``identity``: the adapter would load and run, but the base is not the one it was trained on
  (other weights of the same shape, another architecture or config, another repo or revision).
  PEFT accepts these silently and the output is garbage, so they refuse by default;
  ``allow_different_base=True`` accepts them, and the caller logs that override as an event.
- ``warning``: worth knowing, never refused (tokenizer differs for a TEXT-initialised prompt,
  adapter saved by a newer PEFT, version deprecated).

Findings that need file access (``file-digest-mismatch``, ``file-missing``, ``non-finite-values``)
are made by the caller with :func:`finding` and added with :meth:`CompatReport.with_findings`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from registry.adapters.basemodel import BaseModelFacts
from registry.adapters.findings import (  # re-exported: compat is where callers look for them
    CODES,
    ERROR,
    IDENTITY,
    SEVERITIES,
    WARNING,
    CompatReport,
    Finding,
    _ordered,
    finding,
)
from registry.types import AdapterFacts, BaseModelInfo

# Minimum PEFT release that can load each adapter type spr handles.
PEFT_TYPE_MIN_VERSION = {"PROMPT_TUNING": "0.1.0", "P_TUNING": "0.1.0", "PREFIX_TUNING": "0.1.0", "LORA": "0.1.0"}
# Config keys that change what an adapter computes, with the PEFT release that introduced them. An
# older PEFT drops unknown keys with a warning and loads the adapter as if they were off: it runs,
# silently wrong. Only the non-default values listed here are refused.
PEFT_FEATURES: dict[str, tuple[str, Any]] = {
    # key: (first PEFT release, value meaning "feature off")
    "use_dora": ("0.9.0", False),
    "layer_replication": ("0.10.0", None),
    "lora_bias": ("0.14.0", False),
    "target_parameters": ("0.17.0", None),
}


# ---------------------------------------------------------------------------------------------
# The rules
# ---------------------------------------------------------------------------------------------


def check(
    adapter: AdapterFacts,
    target: BaseModelFacts | BaseModelInfo,
    recorded: BaseModelInfo | None = None,
    *,
    subject: str = "adapter",
    installed_peft: str | None = None,
    allow_different_base: bool = False,
) -> CompatReport:
    """Check ``adapter`` against the ``target`` base model; return every finding.

    ``recorded`` is the base identity measured at publish (or None: then only what the adapter's
    config claims is known, and name differences are warnings). ``installed_peft`` is the PEFT
    version that would load the adapter (None: not installed). Never raises for an
    incompatibility: read :attr:`CompatReport.compatible`, or call
    :meth:`CompatReport.raise_if_incompatible`.
    """
    facts = target if isinstance(target, BaseModelFacts) else BaseModelFacts(info=target)
    findings: list[Finding] = []
    findings += check_peft_support(adapter, installed_peft)
    findings += check_task_type(adapter, facts.info)
    if adapter.is_prompt_learning:
        findings += check_prompt_learning(adapter, facts)
    elif adapter.peft_type == "LORA":
        findings += check_lora(adapter, facts)
    findings += check_identity(adapter, recorded, facts.info)
    return CompatReport(
        subject=subject,
        peft_type=adapter.peft_type,
        base_model=facts.info,
        recorded=recorded,
        findings=_ordered(findings),
        allow_different_base=allow_different_base,
        bytes_read=facts.bytes_read,
    )


def _parse_version(text: str | None) -> Any:
    if not text:
        return None
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:  # pragma: no cover - packaging ships with pip/setuptools
        return None
    try:
        return Version(text.split("@", 1)[0].strip())
    except InvalidVersion:
        return None


def check_peft_support(adapter: AdapterFacts, installed: str | None) -> list[Finding]:
    """``peft-type-unsupported``, ``peft-too-old``, ``peft-newer``, ``peft-not-installed``."""
    out: list[Finding] = []
    minimum = PEFT_TYPE_MIN_VERSION.get(adapter.peft_type)
    if minimum is None:
        return [
            finding(
                "peft-type-unsupported",
                f"spr cannot verify or load {adapter.peft_type} adapters",
                expected=", ".join(PEFT_TYPE_MIN_VERSION),
                found=adapter.peft_type,
                hint="load this adapter with PEFT directly; spr handles prompt tuning, p-tuning, prefix tuning and LoRA",
            )
        ]
    if installed is None:
        return [
            finding(
                "peft-not-installed",
                "PEFT is not installed, so whether it can load this adapter was not checked",
                hint="install the ML extra (pip install 'softprompt-registry[ml]') where the adapter will be loaded",
            )
        ]
    have = _parse_version(installed)
    if have is None:
        return out
    if have < _parse_version(minimum):
        out.append(
            finding(
                "peft-type-unsupported",
                f"the installed PEFT {installed} cannot load {adapter.peft_type} adapters",
                expected=f"peft>={minimum}",
                found=f"peft {installed}",
                hint=f"upgrade PEFT: pip install -U 'peft>={minimum}'",
            )
        )
    for key, (since, off) in PEFT_FEATURES.items():
        value = adapter.config.get(key, off)
        if value not in (off, None, False, [], {}) and have < _parse_version(since):
            out.append(
                finding(
                    "peft-too-old",
                    f"the adapter sets {key}={str(value)[:40]}, which PEFT {installed} ignores (it would load but compute the wrong thing)",
                    expected=f"peft>={since}",
                    found=f"peft {installed}",
                    hint=f"upgrade PEFT: pip install -U 'peft>={since}'",
                )
            )
    made_by = _parse_version(adapter.peft_version)
    if made_by is not None and made_by > have:
        out.append(
            finding(
                "peft-newer",
                "the adapter was saved by a newer PEFT; options it knows and this one does not are dropped with a warning",
                expected=f"peft>={made_by.base_version}",
                found=f"peft {installed}",
                hint=f"upgrade PEFT to {made_by.base_version} or later where the adapter is loaded",
            )
        )
    return out


def check_task_type(adapter: AdapterFacts, base: BaseModelInfo) -> list[Finding]:
    """``task-type-unsupported``: a causal-LM adapter on an encoder-decoder, or the reverse."""
    task = adapter.task_type
    enc_dec = base.is_encoder_decoder
    if task is None or enc_dec is None:
        return []
    arch = base.architecture or base.model_type or "this architecture"
    if task == "CAUSAL_LM" and enc_dec:
        return [
            finding(
                "task-type-unsupported",
                f"a CAUSAL_LM adapter cannot run on the encoder-decoder {arch}",
                expected="a decoder-only base model (task CAUSAL_LM)",
                found=f"{arch} (encoder-decoder)",
                hint="use an adapter trained with task_type SEQ_2_SEQ_LM for this base, or serve a decoder-only base",
            )
        ]
    if task == "SEQ_2_SEQ_LM" and not enc_dec:
        return [
            finding(
                "task-type-unsupported",
                f"a SEQ_2_SEQ_LM adapter cannot run on the decoder-only {arch}",
                expected="an encoder-decoder base model (task SEQ_2_SEQ_LM)",
                found=f"{arch} (decoder-only)",
                hint="use an adapter trained with task_type CAUSAL_LM for this base, or serve an encoder-decoder base",
            )
        ]
    return []


def _config_int(config: Mapping[str, Any], *keys: str) -> int | None:
    nested = config.get("text_config")
    text: Mapping[str, Any] = nested if isinstance(nested, dict) else config
    for key in keys:
        value = text.get(key, config.get(key))
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def expected_prompt_shape(adapter: AdapterFacts, base: BaseModelFacts) -> dict[str, int | None]:
    """What PEFT would derive from this base for a prompt-learning adapter.

    Mirrors ``peft.utils.other._prepare_prompt_learning_config``: ``token_dim`` is the hidden size,
    except for prefix tuning on a model with ``num_key_value_heads`` (grouped-query attention),
    where it is ``head_dim x num_key_value_heads`` and the heads are the key/value heads.
    """
    info, config = base.info, base.config
    hidden = info.hidden_size
    layers = info.num_layers
    heads = info.num_heads
    if config:
        layers = _config_int(config, "num_hidden_layers", "num_layers", "n_layer") or layers
        heads = _config_int(config, "num_attention_heads", "n_head", "num_heads", "encoder_attention_heads") or heads
    token_dim = hidden
    if adapter.peft_type == "PREFIX_TUNING" and config:
        kv = _config_int(config, "num_key_value_heads")
        if kv is not None and hidden is not None and heads:
            head_dim = _config_int(config, "head_dim") or hidden // heads
            token_dim = head_dim * kv
            heads = kv
    return {"token_dim": token_dim, "num_layers": layers, "num_heads": heads}


def check_prompt_learning(adapter: AdapterFacts, base: BaseModelFacts) -> list[Finding]:
    """Width, tensor shape, and for prefix tuning the layer and head counts."""
    out: list[Finding] = []
    exp = expected_prompt_shape(adapter, base)
    name = base.info.name
    if adapter.token_dim is not None and exp["token_dim"] is not None and adapter.token_dim != exp["token_dim"]:
        what = "key/value width (head_dim x key/value heads)" if adapter.peft_type == "PREFIX_TUNING" and exp["token_dim"] != base.info.hidden_size else "hidden size"
        out.append(
            finding(
                "token-dim-mismatch",
                f"the soft prompt is {adapter.token_dim} wide, the base's {what} is {exp['token_dim']} "
                "(PEFT would load it and fail at the first generate())",
                expected=exp["token_dim"],
                found=adapter.token_dim,
                hint=f"serve the base the adapter was trained on, or retrain the soft prompt on {name}",
            )
        )
    if adapter.peft_type == "PREFIX_TUNING":
        if adapter.num_layers is not None and exp["num_layers"] is not None and adapter.num_layers != exp["num_layers"]:
            out.append(
                finding(
                    "prefix-layers-mismatch",
                    f"the prefix holds key/values for {adapter.num_layers} layers but the base model has {exp['num_layers']}",
                    expected=exp["num_layers"],
                    found=adapter.num_layers,
                    hint=f"serve the base model the prefix was trained on, or retrain it on {name}",
                )
            )
        if (
            adapter.num_attention_heads is not None
            and exp["num_heads"] is not None
            and adapter.num_attention_heads != exp["num_heads"]
        ):
            out.append(
                finding(
                    "prefix-heads-mismatch",
                    f"the prefix is split into {adapter.num_attention_heads} heads but the base model has {exp['num_heads']} (key/value) heads",
                    expected=exp["num_heads"],
                    found=adapter.num_attention_heads,
                    hint=f"serve the base model the prefix was trained on, or retrain it on {name}",
                )
            )
    out += _check_prompt_tensor(adapter)
    return out


def _check_prompt_tensor(adapter: AdapterFacts) -> list[Finding]:
    """The stored ``prompt_embeddings`` against the config (manifests are not re-validated on read)."""
    tensors = {t.name: t for t in adapter.tensors}
    emb = tensors.get("prompt_embeddings")
    if emb is None:
        return [
            finding(
                "tensor-shape-mismatch",
                "the adapter has no prompt_embeddings tensor",
                expected="prompt_embeddings",
                found=", ".join(sorted(tensors)[:3]) or "no tensors",
                hint="re-save the adapter with PEFT's save_pretrained() and publish it again",
            )
        ]
    nvt, dim = adapter.num_virtual_tokens, adapter.token_dim
    if nvt is None or dim is None:
        return []
    if adapter.peft_type == "PREFIX_TUNING":
        if adapter.num_layers is None:
            return []
        expected = (nvt, adapter.num_layers * 2 * dim)
        formula = "(num_virtual_tokens, num_layers x 2 x token_dim)"
    else:
        submodules = adapter.num_transformer_submodules or (2 if adapter.task_type == "SEQ_2_SEQ_LM" else 1)
        expected = (nvt * submodules, dim)
        formula = "(num_virtual_tokens x num_transformer_submodules, token_dim)"
    if tuple(emb.shape) != expected:
        return [
            finding(
                "tensor-shape-mismatch",
                f"prompt_embeddings does not have the shape the config implies {formula}",
                expected=list(expected),
                found=list(emb.shape),
                hint="the config and the weights come from different adapters; re-save the adapter and publish it again",
            )
        ]
    return []


_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+?)\.lora_(?P<which>A|B|embedding_A|embedding_B|magnitude_vector)(?:\.[^.]+)*\Z")


def lora_modules(adapter: AdapterFacts) -> dict[str, dict[str, tuple[int, ...]]]:
    """Adapted module path -> {"A": shape, "B": shape, …}, from the adapter's tensor names."""
    modules: dict[str, dict[str, tuple[int, ...]]] = {}
    for t in adapter.tensors:
        m = _LORA_KEY.match(t.name)
        if m:
            modules.setdefault(m.group("module"), {})[m.group("which")] = tuple(t.shape)
    return modules


class _ModuleIndex:
    """Finds a base module by path, tolerating the prefix a head class adds or a headless save lacks.

    ``transformer.h.0.attn`` (a causal-LM save) and ``h.0.attn`` (a headless save) name the same
    module; lookups try the path, then the path without leading components, then base modules
    whose path ends with it. At least two components must agree, so a bare ``q`` never matches.
    """

    def __init__(self, tensors: Mapping[str, tuple[int, ...]]) -> None:
        self.weights: dict[str, tuple[int, ...]] = {}
        for name, shape in tensors.items():
            if name.endswith(".weight"):
                self.weights[name[: -len(".weight")]] = shape
        self.by_suffix: dict[str, str] = {}
        for module in self.weights:
            parts = module.split(".")
            for i in range(1, len(parts) - 1):
                self.by_suffix.setdefault(".".join(parts[i:]), module)

    def find(self, path: str) -> str | None:
        if path in self.weights:
            return path
        parts = path.split(".")
        for i in range(1, len(parts) - 1):
            candidate = ".".join(parts[i:])
            if candidate in self.weights:
                return candidate
        return self.by_suffix.get(path)


def check_lora(adapter: AdapterFacts, base: BaseModelFacts) -> list[Finding]:
    """Every adapted module exists in the base, and the LoRA factors fit its weight's shape."""
    modules = lora_modules(adapter)
    name = base.info.name
    if base.tensors is None:
        return [
            finding(
                "lora-targets-unchecked",
                "the base model's tensor names are unknown (no safetensors header), so LoRA targets and shapes were not checked",
                hint="save the base model with safetensors, or verify against a directory or Hub repo that has model.safetensors",
            )
        ]
    index = _ModuleIndex(base.tensors)
    out: list[Finding] = []
    missing = sorted(p for p in modules if index.find(p) is None)
    if missing:
        short = sorted({p.rsplit(".", 1)[-1] for p in missing})
        out.append(
            finding(
                "lora-target-missing",
                f"{len(missing)} of the {len(modules)} modules the LoRA adapter adapts do not exist in the base model "
                f"(PEFT would skip them silently), e.g. {missing[0]}",
                expected=", ".join(short),
                found="no such module in the base model",
                hint=f"serve the architecture the adapter was trained on, or retrain the adapter on {name} with its own module names",
            )
        )
    targets = adapter.config.get("target_modules")
    if isinstance(targets, list) and not missing:
        leaf_names = {m.rsplit(".", 1)[-1] for m in index.weights} | set(index.weights)
        absent = sorted(t for t in targets if isinstance(t, str) and t not in leaf_names and not any(m.endswith("." + t) for m in index.weights))
        if absent and len(absent) == len(targets):
            out.append(
                finding(
                    "lora-target-missing",
                    "none of the LoRA target_modules exist in the base model",
                    expected=", ".join(absent),
                    found="no such module in the base model",
                    hint=f"serve the architecture the adapter was trained on, or retrain the adapter on {name}",
                )
            )
    fan_in_fan_out = bool(adapter.config.get("fan_in_fan_out", False))
    for path, parts in sorted(modules.items()):
        module = index.find(path)
        if module is None:
            continue
        weight = index.weights[module]
        if len(weight) != 2 or "A" not in parts or "B" not in parts:
            continue
        out_features, in_features = weight
        if fan_in_fan_out or (base.info.model_type == "gpt2" and module.split(".")[-1] in ("c_attn", "c_proj", "c_fc")):
            # GPT-2's Conv1D stores weights as (in, out); PEFT sets fan_in_fan_out for them.
            in_features, out_features = weight
        a, b = parts["A"], parts["B"]
        if len(a) != 2 or len(b) != 2:
            continue
        if a[1] != in_features or b[0] != out_features:
            out.append(
                finding(
                    "tensor-shape-mismatch",
                    f"LoRA factors of {path} are {list(a)} and {list(b)} but the base module's weight maps {in_features} -> {out_features}",
                    expected=f"lora_A (r, {in_features}), lora_B ({out_features}, r)",
                    found=f"lora_A {list(a)}, lora_B {list(b)}",
                    hint=f"serve the base model the adapter was trained on (its width differs from {name}'s), or retrain on {name}",
                )
            )
            break  # one module explains it; every layer would repeat the same line
    return out


# ---------------------------------------------------------------------------------------------
# Identity
# ---------------------------------------------------------------------------------------------

_STRUCTURAL = ("hidden_size", "num_layers", "num_heads", "vocab_size")


def check_identity(adapter: AdapterFacts, recorded: BaseModelInfo | None, target: BaseModelInfo) -> list[Finding]:
    """Is ``target`` the base the adapter was made on? Content (fingerprint, config) decides when known."""
    if recorded is None:
        return [
            finding(
                "base-unverified",
                "no base-model identity is recorded for this adapter, so a different base of the same shape cannot be detected",
                hint="publish with --base-model DIR|REPO[@REV] so that the base's identity is recorded",
            )
        ]
    if recorded.source == "adapter_config":
        return _check_claimed(recorded, target)
    out: list[Finding] = []
    content_compared = False
    same_content = True
    if (
        recorded.architecture and target.architecture and recorded.architecture != target.architecture
    ) or (recorded.model_type and target.model_type and recorded.model_type != target.model_type):
        content_compared, same_content = True, False
        out.append(
            finding(
                "architecture-differs",
                "the base is another architecture than the one the adapter was trained on",
                expected=f"{recorded.architecture or '?'} ({recorded.model_type or '?'})",
                found=f"{target.architecture or '?'} ({target.model_type or '?'})",
                hint=f"serve {_name(recorded)}; an adapter trained on one architecture is meaningless on another",
            )
        )
    if recorded.embedding_fingerprint and target.embedding_fingerprint:
        content_compared = True
        if recorded.embedding_fingerprint != target.embedding_fingerprint:
            same_content = False
            out.append(
                finding(
                    "embedding-fingerprint-differs",
                    "the input embeddings differ from the recorded base's (other weights, resized vocabulary or lossy "
                    "dtype cast); PEFT would load the adapter silently and produce garbage",
                    expected=_short(recorded.embedding_fingerprint),
                    found=_short(target.embedding_fingerprint),
                    hint=f"serve {_name(recorded)} in its saved dtype; --allow-different-base only if the weights are equivalent",
                )
            )
    if not any(f.code == "architecture-differs" for f in out):
        diffs = [
            f"{k}={getattr(recorded, k)} vs {getattr(target, k)}"
            for k in _STRUCTURAL
            if getattr(recorded, k) is not None and getattr(target, k) is not None and getattr(recorded, k) != getattr(target, k)
        ]
        digests_differ = bool(recorded.config_digest and target.config_digest and recorded.config_digest != target.config_digest)
        if recorded.config_digest and target.config_digest:
            content_compared = True
        if diffs or digests_differ:
            same_content = False
            out.append(
                finding(
                    "config-differs",
                    "the base model's config differs from the recorded base's" + (f" ({'; '.join(diffs)})" if diffs else ""),
                    expected=_short(recorded.config_digest) if digests_differ and not diffs else "; ".join(f"{k}={getattr(recorded, k)}" for k in _STRUCTURAL if getattr(recorded, k) is not None),
                    found=_short(target.config_digest) if digests_differ and not diffs else "; ".join(f"{k}={getattr(target, k)}" for k in _STRUCTURAL if getattr(target, k) is not None),
                    hint=f"serve {_name(recorded)} with its original config.json",
                )
            )
    if (recorded.tokenizer_digest and target.tokenizer_digest and recorded.tokenizer_digest != target.tokenizer_digest
            and adapter.init_method == "TEXT"):
        out.append(
            finding(
                "tokenizer-differs",
                "the tokenizer differs from the one the TEXT init text was tokenized with",
                expected=_short(recorded.tokenizer_digest),
                found=_short(target.tokenizer_digest),
                hint="serve the base model's original tokenizer files next to it; the soft prompt was initialised from its token ids",
            )
        )
    names_differ = _names_differ(recorded, target)
    if names_differ:
        if content_compared and same_content and recorded.embedding_fingerprint and target.embedding_fingerprint:
            # Same weights and config under another name: a local copy of the recorded repo is fine.
            if recorded.source == "hub" and target.source == "hub":
                out.append(
                    finding(
                        "base-name-differs",
                        "the base model has another repo id or revision than recorded, but the same embeddings and config",
                        expected=_name(recorded),
                        found=_name(target),
                        hint=f"pin {_name(recorded)} to be exact",
                    )
                )
        elif not content_compared or not (recorded.embedding_fingerprint and target.embedding_fingerprint):
            out.append(
                finding(
                    "base-model-differs",
                    "the base model is not the one recorded at publish, and their weights could not be compared "
                    "(no embedding fingerprint on one side)",
                    expected=_name(recorded),
                    found=_name(target),
                    hint=f"serve {_name(recorded)}, or pass --allow-different-base if you know it is the same model",
                )
            )
    return out


def _check_claimed(claimed: BaseModelInfo, target: BaseModelInfo) -> list[Finding]:
    """Only the adapter's own (unverified) claim is known: name differences are warnings."""
    if not _names_differ(claimed, target):
        return []
    return [
        finding(
            "base-name-differs",
            "the adapter's config names another base model, and no identity was recorded to compare weights with",
            expected=_name(claimed),
            found=_name(target),
            hint="publish with --base-model so the base's fingerprint is recorded, or check that this base is the one it was trained on",
        )
    ]


def _names_differ(a: BaseModelInfo, b: BaseModelInfo) -> bool:
    if a.name.rstrip("/") != b.name.rstrip("/"):
        return True
    return bool(a.revision and b.revision and a.revision != b.revision)


def _name(info: BaseModelInfo) -> str:
    return info.name + (f"@{info.revision}" if info.revision else "")


def _short(digest: str | None) -> str | None:
    if digest is None:
        return None
    return digest if len(digest) <= 23 else digest[:23] + "…"


def installed_peft_version() -> str | None:
    """The installed PEFT's version from package metadata (never imports peft, which imports torch)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("peft")
    except PackageNotFoundError:
        return None


__all__ = [
    "CODES", "ERROR", "IDENTITY", "PEFT_FEATURES", "PEFT_TYPE_MIN_VERSION", "SEVERITIES", "WARNING",
    "CompatReport", "Finding", "check", "check_identity", "check_lora", "check_peft_support",
    "check_prompt_learning", "check_task_type", "expected_prompt_shape", "finding", "installed_peft_version",
    "lora_modules",
]
