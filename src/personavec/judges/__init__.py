"""Judges: score answers 0–100 for a trait and for coherence (OpenAI-compatible, local HF, lexicon)."""

from __future__ import annotations

from personavec.errors import ConfigError
from personavec.judges.base import COHERENCE_RUBRIC, Judge, Score, logprob_score
from personavec.judges.cache import JudgeCache
from personavec.traits.spec import TraitSpec

JUDGE_SPECS = "openai:MODEL, hf:PATH, lexicon or none"

__all__ = ["COHERENCE_RUBRIC", "Judge", "JudgeCache", "Score", "logprob_score", "make_judge"]


def make_judge(
    spec: str, trait: TraitSpec, base_url: str | None = None, concurrency: int = 8
) -> Judge | None:
    """The judge named by `spec` (``openai:MODEL``, ``hf:PATH``, ``lexicon``), or None for ``none``."""
    kind, _, target = spec.partition(":")
    if kind == "none" and not target:
        return None
    if kind == "lexicon" and not target:
        from personavec.judges.lexicon import LexiconJudge

        return LexiconJudge(trait.name, trait.sentiment)
    if kind == "openai" and target:
        from personavec.judges.openai_compat import OpenAIJudge

        return OpenAIJudge(target, base_url=base_url, concurrency=concurrency)
    if kind == "hf" and target:
        from personavec.judges.local import LocalJudge

        return LocalJudge(target)
    raise ConfigError(f"unknown judge {spec!r}: use {JUDGE_SPECS}")
