"""A persistent judgement cache (JSONL, append-only): no rerun pays for the same judgement twice."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from personavec.errors import PersonavecError
from personavec.judges.base import Judge, Score

FAIL_FAST = 8


def cache_key(judge: str, rubric: str, question: str, answer: str) -> str:
    """sha256 of (judge identity, rubric hash, question, answer)."""
    rubric_hash = hashlib.sha256(rubric.encode()).hexdigest()
    return hashlib.sha256(json.dumps([judge, rubric_hash, question, answer]).encode()).hexdigest()


class JudgeCache:
    """Completed judgements by key; each is appended (and flushed) the moment it arrives.

    Failed judgements are not stored, so a rerun tries them again. A torn last line (a crash while
    writing) is ignored on reading.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.scores: dict[str, Score] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                    self.scores[entry["key"]] = Score(entry["value"], entry["method"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue

    def __len__(self) -> int:
        return len(self.scores)

    def judge(
        self,
        judge: Judge,
        rubric: str,
        items: Sequence[tuple[str, str]],
        desc: str = "judge",
        progress: bool = True,
    ) -> list[Score]:
        """Scores for `items`: cached ones looked up, the others asked of `judge` and cached.

        Raises a clear error as soon as the first `FAIL_FAST` judgements have all failed (an unreachable
        endpoint, a wrong key) rather than recording every item as missing.
        """
        keys = [cache_key(judge.name, rubric, q, a) for q, a in items]
        scores: list[Score | None] = [self.scores.get(k) for k in keys]
        todo = [i for i, s in enumerate(scores) if s is None]
        if not todo:
            return [s for s in scores if s is not None]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        succeeded = failed = 0
        with open(self.path, "a") as out, tqdm(total=len(todo), desc=desc, disable=not progress) as bar:
            for j, score in judge.score(rubric, [items[i] for i in todo]):
                i = todo[j]
                scores[i] = score
                bar.update()
                if score.method == "failed":
                    failed += 1
                    if not succeeded and failed >= min(FAIL_FAST, len(todo)):
                        raise PersonavecError(
                            f"the judge {judge.name} failed for the first {failed} items and succeeded "
                            f"for none: {score.error}"
                        )
                    continue
                succeeded += 1
                self.scores[keys[i]] = score
                out.write(json.dumps({"key": keys[i], "value": score.value, "method": score.method}) + "\n")
                out.flush()  # survives a kill -9 of this process
            os.fsync(out.fileno())
        return [s for s in scores if s is not None]
