"""The built-in texts of the demo, tests and benchmarks, and the demo datasets written from them.

Datasets
--------
Two small datasets in the spirit of the prompt-tuning tutorials (see ``shared/SEEDS.md``), written
by us: :data:`COACH_PROMPTS` (motivational-coach requests, column ``prompt``) and :data:`QUOTES`
(short sayings, column ``quote``), plus :data:`COACH_DIALOGUES` (prompt/completion pairs).
:func:`write_demo_datasets` writes them as JSONL in the shapes ``spr`` accepts:

==================  =============================  ======================================
key                 file                           record
==================  =============================  ======================================
``coach``           ``coach_prompts.jsonl``        ``{"prompt": ...}`` (all rows)
``quotes``          ``quotes.jsonl``               ``{"quote": ...}`` (all rows)
``coach_train``     ``coach_train.jsonl``          ``{"text": ...}`` (training rows)
``coach_eval``      ``coach_eval.jsonl``           ``{"text": ...}`` (held-out rows)
``quotes_train``    ``quotes_train.jsonl``         ``{"text": ...}`` (training rows)
``quotes_eval``     ``quotes_eval.jsonl``          ``{"text": ...}`` (held-out rows)
``coach_dialogues`` ``coach_dialogues.jsonl``      ``{"prompt": ..., "completion": ...}``
==================  =============================  ======================================

The ``text`` files are what training reads (one example per record); the held-out rows are the
last :data:`COACH_HELDOUT` / :data:`QUOTES_HELDOUT` rows of each list and never appear in the
training files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from registry.storage import atomic_write_bytes

__all__ = [
    "COACH_DIALOGUES",
    "COACH_HELDOUT",
    "COACH_PROMPTS",
    "DEMO_SENTENCES",
    "PRETRAIN_SENTENCES",
    "QUOTES",
    "QUOTES_HELDOUT",
    "TEXT_INIT_PROMPT",
    "coach_split",
    "quotes_split",
    "write_demo_datasets",
]

COACH_PROMPTS: list[str] = [
    "I want you to act as a motivational coach. I will tell you about my goals and you will help me keep going. My first request is: I need help getting up early to run.",
    "I want you to act as a motivational coach. My first request is: I keep putting off studying for my exams.",
    "I want you to act as a motivational coach. Give me a plan and a push. My first request is: I want to write a page every day.",
    "I want you to act as a motivational coach. My first request is: I lost my job and I feel stuck.",
    "I want you to act as a motivational coach who speaks plainly. My first request is: I need the courage to ask for a raise.",
    "I want you to act as a motivational coach. Help me stay positive. My first request is: my startup had a bad month.",
    "I want you to act as a motivational coach. My first request is: I want to learn to play the piano at forty.",
    "I want you to act as a motivational coach. My first request is: I feel tired every evening and skip the gym.",
    "I want you to act as a motivational coach. Keep it short. My first request is: I am nervous about a talk tomorrow.",
    "I want you to act as a motivational coach. My first request is: I want to read twelve books this year.",
    "I want you to act as a motivational coach for a student. My first request is: maths feels too hard for me.",
    "I want you to act as a motivational coach. My first request is: I want to cook at home instead of ordering food.",
    "I want you to act as a motivational coach. My first request is: I gave up on my diet after two days.",
    "I want you to act as a motivational coach and give me one small step for today. My first request is: my room is a mess.",
    "I want you to act as a motivational coach. My first request is: I am afraid of failing my driving test again.",
    "I want you to act as a motivational coach. My first request is: I want to save money for a trip.",
    "I want you to act as a motivational coach. Use simple words. My first request is: I want to be kinder to myself.",
    "I want you to act as a motivational coach. My first request is: I want to finish the marathon I signed up for.",
    "I want you to act as a motivational coach. My first request is: I spend too many hours on my phone.",
    "I want you to act as a motivational coach for a team lead. My first request is: my team feels low after a failed launch.",
    "I want you to act as a motivational coach. My first request is: I want to learn a new language in six months.",
    "I want you to act as a motivational coach. My first request is: I cannot stop comparing myself to others.",
    "I want you to act as a motivational coach. My first request is: I want to change careers and become a nurse.",
    "I want you to act as a motivational coach. Be warm but honest. My first request is: I missed my deadline again.",
    "I want you to act as a motivational coach. My first request is: I want to meditate for ten minutes a day.",
    "I want you to act as a motivational coach. My first request is: I am starting a new job on Monday.",
    "I want you to act as a motivational coach. My first request is: I want to sleep before midnight.",
    "I want you to act as a motivational coach. My first request is: my painting never looks the way I imagine.",
    "I want you to act as a motivational coach. My first request is: I want to drink more water and less coffee.",
    "I want you to act as a motivational coach. Ask me one question first. My first request is: I feel lost after school.",
    "I want you to act as a motivational coach. My first request is: I want to get back to climbing after an injury.",
    "I want you to act as a motivational coach. My first request is: I need to finish my thesis this spring.",
    "I want you to act as a motivational coach. My first request is: I want to call my family more often.",
    "I want you to act as a motivational coach. My first request is: I am scared to share my music online.",
    "I want you to act as a motivational coach. My first request is: I want to walk ten thousand steps a day.",
    "I want you to act as a motivational coach. Give me three reasons to keep going. My first request is: my garden keeps dying.",
    "I want you to act as a motivational coach. My first request is: I want to stop saying yes to everything.",
    "I want you to act as a motivational coach. My first request is: I want to pass my coding interview.",
    "I want you to act as a motivational coach. My first request is: I feel alone in a new city.",
    "I want you to act as a motivational coach. My first request is: I want to finish what I start.",
]
"""Forty motivational-coach requests (the ``prompt`` column of the coach dataset)."""

QUOTES: list[str] = [
    "Small steps every day add up to a long road walked.",
    "The best time to plant a tree was years ago; the second best time is today.",
    "A calm sea never made a skilled sailor.",
    "Fall seven times, stand up eight.",
    "What you do today is the shape of your tomorrow.",
    "The river cuts the rock not by force but by staying.",
    "Well begun is half done.",
    "Courage is being afraid and going on anyway.",
    "A journey of a thousand miles begins with a single step.",
    "Done is better than perfect, and started is better than planned.",
    "Every expert was once a beginner who did not quit.",
    "Rest if you must, but do not turn back.",
    "The light you look for is already in your hands.",
    "Practice makes progress, not perfection.",
    "Kind words cost nothing and buy a great deal.",
    "Where there is a will, there is a way.",
    "Be patient with the seed; the roots grow first.",
    "The only way out is through.",
    "Little strokes fell great oaks.",
    "Your pace is your own; keep it.",
    "Hope is a good breakfast but a bad supper.",
    "Knowledge grows when it is shared.",
    "A smooth road never taught anyone to drive.",
    "Make the next hour count, and the day will follow.",
    "Stars cannot shine without darkness.",
    "Start where you are, use what you have, do what you can.",
    "Doubt kills more dreams than failure ever will.",
    "Slow and steady wins the race.",
    "Tomorrow is a blank page; write something good.",
    "The harder the climb, the wider the view.",
]
"""Thirty short quotes and proverbs (the ``quote`` column of the quotes dataset)."""

COACH_DIALOGUES: list[tuple[str, str]] = [
    ("I need help getting up early to run.", "Put your shoes by the door tonight and run for ten minutes tomorrow."),
    ("I keep putting off studying.", "Study for twenty minutes now, then take a short break."),
    ("I am nervous about a talk tomorrow.", "Practice it once out loud tonight; you know more than you think."),
    ("I gave up on my diet.", "One meal does not decide the week; make the next one a good one."),
    ("My room is a mess.", "Pick up ten things, then stop and look at what you did."),
    ("I want to read more books.", "Read five pages before bed every night."),
    ("I missed my deadline again.", "Tell them today, set a new date, and split the work in small parts."),
    ("I feel alone in a new city.", "Say yes to one invitation this week."),
    ("I want to save money.", "Move a small amount to savings on every payday."),
    ("I am scared to share my music.", "Share one song with one friend first."),
    ("I want to sleep earlier.", "Put the phone in another room an hour before bed."),
    ("I want to learn a language.", "Learn ten words a day and say them out loud."),
    ("I cannot finish what I start.", "Choose one project and finish a small part today."),
    ("My team feels low.", "Name one thing that went well and thank the people who did it."),
    ("I want to walk more.", "Take a walk after lunch every day this week."),
    ("I want to meditate.", "Sit still and breathe for two minutes after you wake up."),
]
"""Prompt/completion pairs: a short request and a coach's reply (loss on the reply only)."""

COACH_HELDOUT = 8
"""How many coach prompts (the last ones) are held out for evaluation."""

QUOTES_HELDOUT = 6
"""How many quotes (the last ones) are held out for evaluation."""

TEXT_INIT_PROMPT = "You are a warm motivational coach."
"""The init text the demo and fixtures use for TEXT-initialised prompt tuning."""

DEMO_SENTENCES: list[str] = [
    "The following is a dialog between a human and a robot.",
    TEXT_INIT_PROMPT,
    "Human: ",
    "Assistant: ",
    "Soft prompts are small trained vectors placed before the input.",
    "A registry records the base model, the dataset and the scores.",
    *COACH_PROMPTS,
    *QUOTES,
    *(p + " " + c for p, c in COACH_DIALOGUES),
]
"""The sentences the demo tokenizer is trained on: everything the demo datasets contain."""

PRETRAIN_SENTENCES: list[str] = [
    s
    for s in DEMO_SENTENCES
    if s not in COACH_PROMPTS[-COACH_HELDOUT:] and s not in QUOTES[-QUOTES_HELDOUT:]
]
"""What ``make_base_model(pretrain_steps=N)`` trains on: :data:`DEMO_SENTENCES` minus held-out rows."""


def coach_split() -> tuple[list[str], list[str]]:
    """Return ``(train, held_out)`` coach prompts; held-out rows are the last :data:`COACH_HELDOUT`."""
    return COACH_PROMPTS[:-COACH_HELDOUT], COACH_PROMPTS[-COACH_HELDOUT:]


def quotes_split() -> tuple[list[str], list[str]]:
    """Return ``(train, held_out)`` quotes; held-out rows are the last :data:`QUOTES_HELDOUT`."""
    return QUOTES[:-QUOTES_HELDOUT], QUOTES[-QUOTES_HELDOUT:]


def _jsonl(records: Iterable[Mapping[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def write_demo_datasets(directory: str | os.PathLike[str]) -> dict[str, Path]:
    """Write the demo datasets as JSONL files into ``directory`` (created if missing).

    Returns a dict from key to file path; the keys, files and record shapes are listed in the
    module docstring (``coach``, ``quotes``, ``coach_train``, ``coach_eval``, ``quotes_train``,
    ``quotes_eval``, ``coach_dialogues``). The bytes are the same on every call (UTF-8, one JSON
    object per line, ``\\n`` endings), so dataset digests are stable. Each file is written
    atomically. Raises ``OSError`` if the directory cannot be written.
    """
    out = Path(directory)
    coach_train, coach_eval = coach_split()
    quotes_train, quotes_eval = quotes_split()
    files: dict[str, tuple[str, list[dict[str, str]]]] = {
        "coach": ("coach_prompts.jsonl", [{"prompt": p} for p in COACH_PROMPTS]),
        "quotes": ("quotes.jsonl", [{"quote": q} for q in QUOTES]),
        "coach_train": ("coach_train.jsonl", [{"text": p} for p in coach_train]),
        "coach_eval": ("coach_eval.jsonl", [{"text": p} for p in coach_eval]),
        "quotes_train": ("quotes_train.jsonl", [{"text": q} for q in quotes_train]),
        "quotes_eval": ("quotes_eval.jsonl", [{"text": q} for q in quotes_eval]),
        "coach_dialogues": (
            "coach_dialogues.jsonl",
            [{"prompt": p, "completion": c} for p, c in COACH_DIALOGUES],
        ),
    }
    paths: dict[str, Path] = {}
    for key, (name, records) in files.items():
        path = out / name
        atomic_write_bytes(path, _jsonl(records))
        paths[key] = path
    return paths
