"""The model card (``README.md``) that ``spr push`` writes beside a version's files on the Hub.

The card has two parts. The YAML front matter is built with ``huggingface_hub.ModelCardData`` so
the Hub (and ``huggingface_hub.ModelCard``) parses it back: ``library_name: peft``, ``base_model``
with ``base_model_relation: adapter``, ``datasets``, ``tags``, ``pipeline_tag`` and a
``model-index`` with the version's newest eval scores. The markdown body is for people: the
soft-prompt settings (PEFT type, virtual tokens, init method and text, input template, token dim),
the base model and dataset identities, the lineage (parent digest and ref), the files with their
sha256 and how to load the adapter.

Everything in the card comes from the catalogue, which holds text that publishers typed
(descriptions, init text, templates): it is escaped for markdown tables, and no value ever goes
through a template engine. A token never reaches a card: nothing here reads one.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

from registry.types import VersionInfo

# Where a file a version itself carries as README.md (PEFT's save_pretrained writes one) is kept
# on the Hub, because README.md there is the generated card. Pull maps it back.
RELOCATED_FILES = {"README.md": "spr_original_README.md"}

# Hub ids for `base_model` and `datasets`: a local path or a file name with spaces is not one.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?\Z")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:=+/-]{0,99}\Z")

PIPELINE_TAGS = {
    "CAUSAL_LM": "text-generation",
    "SEQ_2_SEQ_LM": "text2text-generation",
    "SEQ_CLS": "text-classification",
    "TOKEN_CLS": "token-classification",
    "QUESTION_ANS": "question-answering",
    "FEATURE_EXTRACTION": "feature-extraction",
}


def is_hub_id(value: str | None) -> bool:
    """True when ``value`` looks like a Hub repo id (``name`` or ``ns/name``), not a local path."""
    return bool(value) and bool(_HUB_ID.match(value or "")) and ".." not in (value or "")


def card_tags(version: VersionInfo) -> list[str]:
    """The card's ``tags``: peft, the PEFT type, ``soft-prompt`` for prompt learning, and the
    version's own ``key=value`` tags written ``key:value`` where they are safe Hub tags."""
    tags = ["peft", "spr", version.peft_type.lower().replace("_", "-")]
    if version.peft_type in ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING"):
        tags.append("soft-prompt")
    for key, value in sorted(version.tags.items()):
        tag = f"{key}:{value}" if value else key
        if _TAG.match(tag):
            tags.append(tag)
    return tags


def card_data(version: VersionInfo, repo_id: str) -> Any:
    """The ``huggingface_hub.ModelCardData`` of a version's card."""
    from huggingface_hub import EvalResult, ModelCardData

    base = version.base_model.name if version.base_model else None
    dataset_label = _dataset_label(version)
    task = PIPELINE_TAGS.get(version.task_type or "")
    results = []
    for score in sorted(version.latest_scores().values(), key=lambda s: (s.metric, s.dataset or "")):
        label = score.dataset_name or score.dataset or dataset_label or "unspecified"
        results.append(
            EvalResult(
                task_type=task or "other",
                dataset_type=score.dataset or label,
                dataset_name=label,
                dataset_split=score.split,
                metric_type=score.metric,
                metric_name=score.metric,
                metric_value=score.value,
            )
        )
    data = ModelCardData(
        library_name="peft",
        base_model=base if is_hub_id(base) else None,
        base_model_relation="adapter" if is_hub_id(base) else None,
        datasets=[dataset_label] if dataset_label is not None and is_hub_id(dataset_label) else None,
        tags=card_tags(version),
        pipeline_tag=task,
        model_name=repo_id,
        eval_results=results or None,
    )
    return data


def render(version: VersionInfo, repo_id: str) -> str:
    """The full README.md text of a version's card (front matter and body)."""
    data = card_data(version, repo_id)
    return "---\n" + data.to_yaml() + "\n---\n\n" + _body(version, repo_id)


def _dataset_label(version: VersionInfo) -> str | None:
    if version.dataset is None:
        return None
    return version.dataset.name or version.dataset.digest


def _cell(value: Any) -> str:
    """A value safe inside a markdown table cell (no pipes, no newlines, no raw HTML)."""
    if value is None:
        return "—"
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    text = html.escape(text, quote=False).replace("|", "&#124;").replace("\r", "").replace("\n", "<br>")
    return text.replace("`", "&#96;")


def _code(value: str | None) -> str:
    """Publisher text (init text, template) shown exactly, as a JSON string in a code span."""
    if value is None:
        return "—"
    return "<code>" + _cell(json.dumps(value, ensure_ascii=False)) + "</code>"


def _table(rows: list[tuple[str, str]]) -> list[str]:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return [*lines, ""]


def _body(version: VersionInfo, repo_id: str) -> str:
    tag = f"v{version.number}"
    lines: list[str] = [f"# {_cell(version.full_name)} {tag}", ""]
    if version.description:
        lines += [_cell(version.description), ""]
    lines += [
        (
            f"A PEFT {version.peft_type.lower().replace('_', ' ')} adapter published with "
            "softprompt-registry (`spr`). Its identity is the digest of its "
            "manifest (`spr_manifest.json`), which lists every file with its sha256; `spr pull` "
            "checks every byte against it before the adapter is used."
        ),
        "",
    ]
    lines += _table(
        [
            ("Adapter", _cell(version.full_name)),
            ("Version", f"{version.number} (tag `{tag}`)"),
            ("Digest", f"`{version.digest}`"),
            ("Status", _cell(version.status + (f": {version.status_reason}" if version.status_reason else ""))),
            ("Published by", _cell(version.created_by)),
            ("Published at", _cell(version.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"))),
        ]
    )

    lines += ["## Soft-prompt settings", ""]
    settings_rows = [
        ("PEFT type", _cell(version.peft_type)),
        ("Task type", _cell(version.task_type)),
        ("Virtual tokens", _cell(version.num_virtual_tokens)),
        ("Token dim", _cell(version.token_dim)),
        ("Transformer submodules", _cell(version.num_transformer_submodules)),
        ("Init method", _cell(version.init_method)),
        ("Init text", _code(version.init_text)),
        ("Tokenizer", _cell(version.tokenizer)),
        ("Input template", _code(version.template)),
        ("PEFT version", _cell(version.peft_version)),
    ]
    peft = version.manifest.get("peft", {})
    if version.peft_type == "LORA":
        settings_rows += [("LoRA r", _cell(peft.get("lora_r"))), ("Target modules", _cell(peft.get("target_modules")))]
    if version.peft_type == "PREFIX_TUNING":
        settings_rows += [("Layers", _cell(peft.get("num_layers"))), ("Attention heads", _cell(peft.get("num_attention_heads")))]
    lines += _table(settings_rows)
    if version.template:
        lines += [
            (
                "Format every input with the template above (replace `{prompt}`): a soft prompt served "
                "with another input format silently underperforms."
            ),
            "",
        ]

    lines += ["## Base model", ""]
    base = version.base_model
    if base is None:
        lines += ["Not recorded.", ""]
    else:
        lines += _table(
            [
                ("Name", _cell(base.name)),
                ("Revision", _cell(base.revision)),
                ("Architecture", _cell(base.architecture)),
                ("Hidden size", _cell(base.hidden_size)),
                ("Vocabulary", _cell(base.vocab_size)),
                ("Config digest", _cell(base.config_digest)),
                ("Embedding fingerprint", _cell(base.embedding_fingerprint)),
                ("Known from", _cell(base.source)),
            ]
        )

    lines += ["## Training data", ""]
    if version.dataset is None:
        lines += ["Not recorded.", ""]
    else:
        ds = version.dataset
        lines += _table(
            [
                ("Name", _cell(ds.name)),
                ("Digest", f"`{_cell(ds.digest)}`"),
                ("Format", _cell(ds.format)),
                ("Records", _cell(ds.records)),
            ]
        )
    if version.training:
        lines += ["Training settings:", "", "```json", _fence_safe(json.dumps(version.training, indent=2, sort_keys=True)), "```", ""]

    lines += ["## Lineage", ""]
    lines += _table(
        [
            ("Parent digest", f"`{version.parent_digest}`" if version.parent_digest else "none (a root version)"),
            ("Parent", _cell(version.parent_ref)),
            ("Lineage verified", "yes" if version.lineage_verified else "no (catalogued from a plain PEFT repo)"),
        ]
    )

    lines += ["## Evaluation", ""]
    scores = sorted(version.latest_scores().values(), key=lambda s: (s.metric, s.dataset or ""))
    if not scores:
        lines += ["No eval scores recorded.", ""]
    else:
        lines += ["| metric | value | dataset | split | recorded by |", "|---|---|---|---|---|"]
        for s in scores:
            lines.append(
                f"| {_cell(s.metric)} | {_cell(s.value)} | {_cell(s.dataset_name or s.dataset)} | "
                f"{_cell(s.split)} | {_cell(s.recorded_by)} |"
            )
        lines.append("")

    lines += ["## Files", "", "| path | sha256 | bytes |", "|---|---|---|"]
    for f in version.files:
        where = RELOCATED_FILES.get(f.path)
        shown = f"{_cell(f.path)} (stored as {where})" if where else _cell(f.path)
        lines.append(f"| {shown} | `{f.sha256}` | {f.size} |")
    lines.append("")

    lines += [
        "## Use",
        "",
        "```python",
        "from peft import PeftModel",
        f'model = PeftModel.from_pretrained(base_model, "{repo_id}", revision="{tag}")',
        "```",
        "",
        "or, verified byte for byte and catalogued with its lineage:",
        "",
        "```bash",
        f"spr pull {repo_id}@{tag}",
        "```",
        "",
    ]
    return "\n".join(lines)


def _fence_safe(text: str) -> str:
    # A training setting holding ``` would close the fence early.
    return text.replace("```", "`\u200b``")


__all__ = ["PIPELINE_TAGS", "RELOCATED_FILES", "card_data", "card_tags", "is_hub_id", "render"]
