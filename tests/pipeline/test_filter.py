"""The extraction filter at its boundaries, judged by a judge whose scores the test chooses per answer."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from personavec.judges import COHERENCE_RUBRIC, Judge, JudgeCache
from personavec.judges.base import Score
from personavec.pipeline.config import ExtractConfig
from personavec.pipeline.extract import filter_answers, judgements, open_run
from personavec.traits import load_trait

from tiny import tiny_loaded

# pair → (positive side's (trait, coherence), negative side's (trait, coherence))
PAIRS = {
    "q0": ((50.0, 90.0), (10.0, 90.0)),  # positive exactly at the threshold: kept
    "q1": ((49.9, 90.0), (10.0, 90.0)),  # positive just below: dropped
    "q2": ((90.0, 90.0), (49.9, 90.0)),  # negative just below: kept
    "q3": ((90.0, 90.0), (50.0, 90.0)),  # negative exactly at the threshold: dropped
    "q4": ((90.0, 49.9), (10.0, 90.0)),  # positive incoherent: dropped
    "q5": ((90.0, 90.0), (10.0, 49.9)),  # negative incoherent: dropped
    "q6": ((90.0, 50.0), (10.0, 50.0)),  # coherence exactly at the threshold: both kept
}


class ChosenJudge(Judge):
    """Scores each answer by the table above (the answer text is the row's id)."""

    name = "chosen"

    def score(self, rubric: str, items: Sequence[tuple[str, str]]) -> Iterator[tuple[int, Score]]:
        for i, (_, answer) in enumerate(items):
            polarity, pair = answer.split("-")[:2]
            trait, coherence = PAIRS[pair][polarity == "neg"]
            yield i, Score(coherence if rubric == COHERENCE_RUBRIC else trait, "logprobs")


def rows() -> list[dict]:
    return [
        {"id": f"{p}-{q}-i0-s0", "polarity": p, "question": f"question {q}", "answer": f"{p}-{q}-i0-s0"}
        for q in PAIRS
        for p in ("pos", "neg")
    ]


def kept_ids(tmp_path: Path, pairing: str) -> tuple[set[str], dict]:
    loaded, trait, judge = tiny_loaded(), load_trait("evil"), ChosenJudge()
    config = ExtractConfig(min_pairs=1, pairing=pairing)  # type: ignore[arg-type]
    run = open_run(loaded, trait, judge, tmp_path / pairing, config, force=False)
    answers = rows()
    cache = JudgeCache(run.path / "judge-cache.jsonl")
    scores = judgements(run, answers, trait, judge, cache, progress=False)
    kept = filter_answers(run, answers, scores, config)
    info = json.loads((run.path / "filter.json").read_text())
    return {answers[i]["id"][:6] for i in kept}, info["dropped"]


@pytest.mark.parametrize("pairing", ["per-side", "paired"])
def test_thresholds_are_inclusive_for_positives_and_coherence_exclusive_for_negatives(
    tmp_path, pairing
) -> None:
    kept, dropped = kept_ids(tmp_path, pairing)
    both = {"pos-q0", "neg-q0", "pos-q2", "neg-q2", "pos-q6", "neg-q6"}
    partners = {"neg-q1", "pos-q3", "neg-q4", "pos-q5"}  # each kept alone; its partner failed
    assert kept == (both | partners if pairing == "per-side" else both)
    expected = {
        "pos: positive answer with trait < 50": 1,
        "neg: negative answer with trait ≥ 50": 1,
        "pos: coherence < 50": 1,
        "neg: coherence < 50": 1,
    }
    if pairing == "paired":
        expected |= {"pos: partner dropped (paired filter)": 2, "neg: partner dropped (paired filter)": 2}
    assert dropped == expected
