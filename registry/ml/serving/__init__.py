"""Serving many soft prompts from one base model: the engine, its batching, and prompt embeddings.

Public names: :class:`SoftPromptEngine`, :class:`Request`, :class:`Completion`,
:class:`ServedAdapter`, :func:`prompt_embeds`. torch is imported inside functions only, but importing
this package is for processes that serve (metadata commands never import it).
"""

from __future__ import annotations

from registry.ml.serving.embeds import prompt_embeds
from registry.ml.serving.engine import Completion, Prepared, Request, ServedAdapter, SoftPromptEngine

__all__ = ["Completion", "Prepared", "Request", "ServedAdapter", "SoftPromptEngine", "prompt_embeds"]
