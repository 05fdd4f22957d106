"""Ordinary questions that belong to no trait: the shipped everyday set, or a user's file."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def bundled_questions() -> list[str]:
    """240 ordinary chat questions shipped with personavec (none is a built-in trait's question)."""
    text = resources.files("personavec").joinpath("traits/builtin/everyday-questions.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_questions(path: str | Path) -> list[str]:
    """One question per line; blank lines are ignored."""
    lines = [line.strip() for line in Path(path).read_text().splitlines()]
    return [line for line in lines if line]
