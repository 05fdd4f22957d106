"""An offline proxy judge for sentiment-like traits: the VADER lexicon's compound score mapped to 0–100."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from personavec.errors import ConfigError
from personavec.judges.base import Judge, Score


class LexiconJudge(Judge):
    """VADER compound c ∈ [−1, 1] → 50·(1 + c) for a positive-sentiment trait, 50·(1 − c) for a negative one.

    It reads no rubric and cannot judge coherence; it is a stand-in for an LLM judge when none is at hand.
    """

    measures_coherence = False

    def __init__(self, trait: str, sentiment: str | None) -> None:
        if sentiment not in ("positive", "negative"):
            raise ConfigError(
                f"the lexicon judge only scores sentiment-like traits; {trait!r} has no 'sentiment' field "
                "(use --judge openai:MODEL or hf:PATH)"
            )
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._analyzer = SentimentIntensityAnalyzer()
        self._sign = 1.0 if sentiment == "positive" else -1.0
        self.name = f"lexicon:vader:{sentiment}"
        self.proxy = (
            f"offline proxy: {trait} scored by VADER {sentiment} sentiment, not by an LLM judge; "
            "coherence not measured"
        )

    def score(self, rubric: str, items: Sequence[tuple[str, str]]) -> Iterator[tuple[int, Score]]:
        for i, (_, answer) in enumerate(items):
            compound = self._analyzer.polarity_scores(answer)["compound"]
            yield i, Score(50.0 * (1.0 + self._sign * compound), "lexicon")
