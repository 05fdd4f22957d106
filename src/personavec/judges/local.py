"""A judge that is a local chat model: the same top-20 logprob rule, on any backend."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from personavec.core.backend import Backend, LogprobRequest, as_backend, user_turn
from personavec.core.models import LoadedModel, load_model
from personavec.judges.base import Judge, Score, fill, logprob_score
from personavec.judges.openai_compat import TOP_LOGPROBS


class LocalJudge(Judge):
    """Scores from the next-token distribution of a local model after the filled rubric (one forward)."""

    def __init__(self, model: str | Backend | LoadedModel, batch_size: int = 8) -> None:
        self.backend = as_backend(load_model(model) if isinstance(model, str) else model)
        identity = self.backend.identity
        self.name = f"hf:{identity.name}" + (
            f"@{identity.revision or identity.sha256}" if identity.revision or identity.sha256 else ""
        )
        self.batch_size = batch_size

    def score(self, rubric: str, items: Sequence[tuple[str, str]]) -> Iterator[tuple[int, Score]]:
        backend = self.backend
        requests = [
            LogprobRequest(tuple(backend.encode(user_turn(backend, fill(rubric, q, a)))), top_k=TOP_LOGPROBS)
            for q, a in items
        ]
        order = sorted(range(len(requests)), key=lambda i: len(requests[i].prompt_ids))
        for start in range(0, len(order), self.batch_size):  # scores reach the caller batch by batch
            chunk = order[start : start + self.batch_size]
            for i, result in zip(
                chunk, backend.logprobs([requests[i] for i in chunk], self.batch_size), strict=True
            ):
                pairs = [(backend.decode([token], special=True), logprob) for token, logprob in result.top]
                yield i, Score(logprob_score(pairs), "logprobs")
