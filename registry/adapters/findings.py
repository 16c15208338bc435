"""Findings: what a compatibility check reports, with a stable code, a severity and a fix.

The codes in :data:`CODES` are a public contract (scripts match on them); :class:`CompatReport`
collects findings and turns refusals into :class:`~registry.errors.IncompatibleError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from registry.errors import IncompatibleError
from registry.types import BaseModelInfo

ERROR = "error"
IDENTITY = "identity"
WARNING = "warning"
SEVERITIES = (ERROR, IDENTITY, WARNING)

# code -> (severity, one-line meaning). The codes are a public contract: scripts match on them.
CODES: dict[str, tuple[str, str]] = {
    "token-dim-mismatch": (ERROR, "the soft prompt's width differs from the base model's hidden size"),
    "tensor-shape-mismatch": (ERROR, "an adapter tensor's shape does not fit the config or the base model"),
    "task-type-unsupported": (ERROR, "the adapter's task type does not fit the base model's architecture"),
    "prefix-layers-mismatch": (ERROR, "prefix tuning was made for another number of transformer layers"),
    "prefix-heads-mismatch": (ERROR, "prefix tuning was made for another number of attention (key/value) heads"),
    "lora-target-missing": (ERROR, "a module the LoRA adapter adapts does not exist in the base model"),
    "file-digest-mismatch": (ERROR, "a stored file's sha256 differs from the catalogue's record"),
    "file-missing": (ERROR, "a file of the version is missing from the blob store"),
    "non-finite-values": (ERROR, "an adapter tensor holds NaN or Inf"),
    "peft-type-unsupported": (ERROR, "the installed PEFT cannot load this kind of adapter"),
    "peft-too-old": (ERROR, "the adapter uses a PEFT feature newer than the installed PEFT"),
    "adapter-not-applied": (ERROR, "after loading, the model's adapter tensors differ from the stored ones"),
    "base-model-differs": (IDENTITY, "the base model is not the one recorded (name or revision), and its content could not be compared"),
    "embedding-fingerprint-differs": (IDENTITY, "the base model's input embeddings differ from the recorded base's"),
    "architecture-differs": (IDENTITY, "the base model's architecture differs from the recorded base's"),
    "config-differs": (IDENTITY, "the base model's config differs from the recorded base's"),
    "tokenizer-differs": (WARNING, "the tokenizer differs from the one the TEXT init was tokenized with"),
    "peft-newer": (WARNING, "the adapter was saved by a newer PEFT than the one installed"),
    "peft-not-installed": (WARNING, "PEFT is not installed here, so loadability by PEFT was not checked"),
    "base-name-differs": (WARNING, "the base model has another name than recorded, but the same content"),
    "base-unverified": (WARNING, "no base-model identity was recorded, so only shapes could be checked"),
    "lora-targets-unchecked": (WARNING, "the base model's tensor names are unknown, so LoRA targets were not checked"),
    "version-deprecated": (WARNING, "the version is deprecated"),
    "version-yanked": (WARNING, "the version was yanked"),
}

@dataclass(frozen=True)
class Finding:
    """One reason an adapter does or may not fit a base model."""

    code: str
    severity: str
    message: str
    expected: str | None
    found: str | None
    hint: str

    def line(self) -> str:
        """One readable line: code, expected, found, what to do."""
        parts = [f"{self.severity:<8} {self.code}: {self.message}"]
        if self.expected is not None or self.found is not None:
            parts.append(f"expected {self.expected}, found {self.found}")
        parts.append(self.hint)
        return " — ".join(parts)


@dataclass(frozen=True)
class CompatReport:
    """The outcome of checking one adapter against one base model."""

    subject: str
    peft_type: str
    base_model: BaseModelInfo
    recorded: BaseModelInfo | None
    findings: tuple[Finding, ...]
    allow_different_base: bool = False
    bytes_read: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == ERROR)

    @property
    def identity(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == IDENTITY)

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == WARNING)

    @property
    def compatible(self) -> bool:
        """No error, and no identity finding unless ``allow_different_base`` accepted them."""
        return not self.errors and (not self.identity or self.allow_different_base)

    @property
    def overridden(self) -> bool:
        """True when identity findings were accepted by ``allow_different_base`` (log this)."""
        return self.compatible and bool(self.identity)

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(f.code for f in self.findings)

    def with_findings(self, findings: Iterable[Finding]) -> CompatReport:
        """A copy with more findings (errors first, in the order given)."""
        return replace(self, findings=_ordered(self.findings + tuple(findings)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``compatible``, ``overridden``, the subject, both identities and every finding."""
        return {
            "subject": self.subject,
            "peft_type": self.peft_type,
            "compatible": self.compatible,
            "overridden": self.overridden,
            "allow_different_base": self.allow_different_base,
            "base_model": self.base_model.identity(),
            "recorded_base_model": self.recorded.identity() if self.recorded else None,
            "findings": [asdict(f) for f in self.findings],
            "bytes_read": self.bytes_read,
            **dict(self.extra),
        }

    def lines(self) -> list[str]:
        """The report for people: a verdict line, then one line per finding."""
        base = _describe(self.base_model)
        if not self.compatible:
            verdict = f"INCOMPATIBLE: {self.subject} must not be loaded on {base}"
        elif self.overridden:
            verdict = f"compatible (base-model difference accepted by --allow-different-base): {self.subject} on {base}"
        else:
            verdict = f"compatible: {self.subject} fits {base}"
        return [verdict, *("  " + f.line() for f in self.findings)]

    def raise_if_incompatible(self) -> None:
        """Raise :class:`IncompatibleError` carrying the findings when the report refuses the pair."""
        if self.compatible:
            return
        refusing = self.errors or self.identity
        first = refusing[0]
        more = len(refusing) - 1
        only_identity = not self.errors
        raise IncompatibleError(
            f"{self.subject} does not fit {_describe(self.base_model)}: {first.code}: {first.message} "
            f"(expected {first.expected}, found {first.found})" + (f", and {more} more finding(s)" if more else ""),
            hint=first.hint
            + ("; if you are sure, pass --allow-different-base (allow_different_base=True), which is logged" if only_identity else ""),
            findings=[asdict(f) for f in self.findings],
            subject=self.subject,
        )


def finding(code: str, message: str, *, expected: Any = None, found: Any = None, hint: str) -> Finding:
    """A :class:`Finding` for ``code`` with the severity :data:`CODES` gives it."""
    severity = CODES[code][0]
    return Finding(
        code=code,
        severity=severity,
        message=message,
        expected=None if expected is None else str(expected),
        found=None if found is None else str(found),
        hint=hint,
    )


def _ordered(findings: Iterable[Finding]) -> tuple[Finding, ...]:
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    return tuple(sorted(findings, key=lambda f: rank[f.severity]))


def _describe(info: BaseModelInfo) -> str:
    name = info.name
    if info.revision:
        name += f"@{info.revision[:12]}"
    return f"base model {name}"
