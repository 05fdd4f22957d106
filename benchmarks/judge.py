"""Judge throughput against a local OpenAI-compatible server with 50 ms latency: concurrency 1, 8, 32.

python benchmarks/judge.py
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from openai_server import FakeOpenAI
from personavec.judges.lexicon import LexiconJudge
from personavec.judges.openai_compat import OpenAIJudge

from _common import Figure, report

RUBRIC = "Rate the answer 0-100 or REFUSAL.\nQ: {question}\nA: {answer}"
ITEMS = [(f"question {i}", f"An answer, number {i}, that is quite hopeful.") for i in range(256)]
LATENCY = 0.05


def main() -> None:
    os.environ.setdefault("OPENAI_API_KEY", "benchmark")
    top = [("80", math.log(0.6)), ("90", math.log(0.3))]
    rates = {}
    with FakeOpenAI(lambda body: ("80", top), delay=LATENCY) as server:
        for concurrency in (1, 8, 32):
            judge = OpenAIJudge("bench", base_url=server.url, concurrency=concurrency)
            items = ITEMS if concurrency > 1 else ITEMS[:64]
            start = time.perf_counter()
            scores = [s for _, s in judge.score(RUBRIC, items)]
            rates[concurrency] = len(items) / (time.perf_counter() - start)
            assert all(s.value is not None for s in scores)

    lexicon = LexiconJudge("optimistic", "positive")
    start = time.perf_counter()
    list(lexicon.score(RUBRIC, ITEMS))
    rate = len(ITEMS) / (time.perf_counter() - start)
    print(f"server latency {LATENCY * 1000:.0f} ms per request; ideal concurrency-8 speed-up 8.0")
    report(
        "judge",
        [
            *(Figure(f"openai-compatible, concurrency {c}", r, "judgements/s") for c, r in rates.items()),
            Figure("lexicon (VADER)", rate, "judgements/s"),
            Figure("concurrency 8 / 1", rates[8] / rates[1], "×"),
        ],
    )


if __name__ == "__main__":
    main()
