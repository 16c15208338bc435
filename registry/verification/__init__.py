"""Verification room: torch-free checks that an adapter fits a base model before anything is loaded.

Public names (import them from here): :func:`verify`, :func:`verify_subject`, :func:`resolve_adapter`,
:func:`is_adapter_directory`, :func:`base_facts`, :func:`check_files`, :func:`adapter_name_for`,
:class:`AdapterSubject`. Nothing in this room imports torch, transformers or peft.
"""

from __future__ import annotations

from registry.verification.checks import (
    ADAPTER_CONFIG,
    WEIGHTS,
    AdapterSubject,
    adapter_name_for,
    base_facts,
    check_files,
    is_adapter_directory,
    resolve_adapter,
    verify,
    verify_subject,
)

__all__ = [
    "ADAPTER_CONFIG",
    "WEIGHTS",
    "AdapterSubject",
    "adapter_name_for",
    "base_facts",
    "check_files",
    "is_adapter_directory",
    "resolve_adapter",
    "verify",
    "verify_subject",
]
