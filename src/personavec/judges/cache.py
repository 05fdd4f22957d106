"""A persistent judgement cache (JSONL, append-only): no rerun pays for the same judgement twice."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from personavec._internal.files import open_append
from personavec.errors import JudgeError
from personavec.judges.base import Judge, Score

FAIL_FAST = 8


def cache_key(judge: str, rubric: str, question: str, answer: str) -> str:
    """sha256 of (judge identity, rubric hash, question, answer)."""
    rubric_hash = hashlib.sha256(rubric.encode()).hexdigest()
    return hashlib.sha256(json.dumps([judge, rubric_hash, question, answer]).encode()).hexdigest()


class JudgeCache:
    """Completed judgements by key; each is appended (and flushed) the moment it arrives.

    Failed judgements are not stored, so a rerun tries them again. A torn last line (a crash while
    writing) is ignored on reading and cut off before the next append.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.scores: dict[str, Score] = {}
        self.judges: set[str] = set()  # judges with at least one judgement here
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                    self.scores[entry["key"]] = Score(entry["value"], entry["method"])
                    self.judges.add(entry["judge"])
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

        A judge that has never succeeded here and fails its first `FAIL_FAST` judgements (an
        unreachable endpoint, a wrong key) stops the run with a clear error instead of recording every
        item as missing.
        """
        keys = [cache_key(judge.name, rubric, q, a) for q, a in items]
        scores: list[Score | None] = [self.scores.get(k) for k in keys]
        todo = [i for i, s in enumerate(scores) if s is None]
        if not todo:
            return [s for s in scores if s is not None]
        succeeded = judge.name in self.judges
        failed = 0
        with open_append(self.path) as out, tqdm(total=len(todo), desc=desc, disable=not progress) as bar:
            for j, score in judge.score(rubric, [items[i] for i in todo]):
                i = todo[j]
                scores[i] = score
                bar.update()
                if score.method == "failed":
                    failed += 1
                    if not succeeded and failed >= min(FAIL_FAST, len(todo)):
                        raise JudgeError(
                            f"the judge {judge.name} failed for the first {failed} items and succeeded "
                            f"for none: {score.error}"
                        )
                    continue
                succeeded = True
                self.judges.add(judge.name)
                self.scores[keys[i]] = score
                entry = {"key": keys[i], "judge": judge.name, "value": score.value, "method": score.method}
                out.write(json.dumps(entry) + "\n")
                out.flush()  # survives a kill -9 of this process
            os.fsync(out.fileno())
        missing = [i for i in todo if scores[i] is None]
        if missing:
            raise AssertionError(f"judge {judge.name} returned no score for items {missing[:5]}")
        return [s for s in scores if s is not None]
