"""A judge behind any OpenAI-compatible chat completions endpoint (OpenAI, vLLM, llama.cpp server, ...)."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from personavec._internal.openai_client import (
    Garbage,
    call_endpoint,
    describe,
    is_transient,
    make_client,
    with_retries,
)
from personavec.errors import ConfigError
from personavec.judges.base import Judge, Score, fill, logprob_score

TOP_LOGPROBS = 20
SAMPLED_TOKENS = 8  # enough for "100" in tokenizers that split digits
_INTEGER = re.compile(r"\b(\d{1,3})\b")
PROBE = "Reply with the number 50 and nothing else."


def _sampled_score(text: str) -> float | None:
    """The integer in a sampled reply; None for a refusal; `Garbage` when there is neither."""
    if text.strip().upper().startswith("REFUSAL"):
        return None
    match = _INTEGER.search(text)
    if match is None or int(match.group(1)) > 100:
        raise Garbage(f"no score in the reply {text[:60]!r}")
    return float(match.group(1))


class OpenAIJudge(Judge):
    """One output token and its top-20 logprobs per judgement (the paper's rule), many requests at once.

    When the server returns no logprobs, the judge switches to sampling a few tokens and parsing the
    integer, and marks those scores ``sampled``. Transient failures (429, 5xx, timeouts, dropped
    connections, unusable replies) are retried with exponential backoff and jitter; an item that still
    fails is a ``failed`` score with its error, never an exception.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        concurrency: int = 8,
        retries: int = 4,
        timeout: float = 60.0,
        backoff: float = 1.0,
    ) -> None:
        if concurrency < 1:
            raise ConfigError(f"the judge's concurrency must be at least 1, got {concurrency}")
        self.client = make_client(base_url, timeout)
        self.model = model
        self.base_url = str(self.client.base_url)
        self.name = f"openai:{model}@{self.base_url}"
        self.concurrency, self.retries, self.backoff = concurrency, retries, backoff
        self.sampled = False  # set once the server has answered without logprobs
        self.probed = False  # set once a probe has had an answer: a second probe costs nothing

    def probe(self) -> None:
        """One request shaped like a judgement: a `JudgeError` naming the endpoint, the model, the cause
        and the fix when it fails (refused, 401, 404: at once; 429, 5xx, timeouts: after the retries)."""
        if self.probed:
            return
        kwargs = self._kwargs(PROBE, self.sampled)

        def ask() -> None:
            if not self.client.chat.completions.create(**kwargs).choices:
                raise Garbage("a reply without choices")

        call_endpoint(ask, self.base_url, self.model, self.retries, self.backoff)
        self.probed = True

    def _kwargs(self, prompt: str, sampled: bool) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0.0,
            "seed": 0,
        }
        if sampled:
            kwargs.update(max_tokens=SAMPLED_TOKENS)
        else:
            kwargs.update(max_tokens=1, logprobs=True, top_logprobs=TOP_LOGPROBS)
        return kwargs

    def _request(self, prompt: str) -> Score:
        sampled = self.sampled  # read once: another thread may switch modes while this one waits
        reply = self.client.chat.completions.create(**self._kwargs(prompt, sampled))
        try:
            choice = reply.choices[0]
        except (AttributeError, IndexError, TypeError) as error:
            raise Garbage(f"a reply without choices: {error}") from error
        if sampled:
            return Score(_sampled_score(choice.message.content or ""), "sampled")
        content = choice.logprobs.content if choice.logprobs is not None else None
        if content:
            top = content[0].top_logprobs or []
            return Score(logprob_score((t.token, t.logprob) for t in top), "logprobs")
        self.sampled = True  # the server gives no logprobs: ask this item (and all later ones) again
        return self._request(prompt)

    def _judge_one(self, prompt: str, stop: threading.Event) -> Score:
        if stop.is_set():
            return Score(None, "failed", "cancelled")
        try:
            return with_retries(lambda: self._request(prompt), self.retries, self.backoff, stop)
        except Exception as error:  # recorded as a missing item: the run goes on
            retried = f" after {self.retries} retries" if is_transient(error) else ""
            return Score(None, "failed", f"{describe(error)}{retried} ({self.base_url})")

    def score(self, rubric: str, items: Sequence[tuple[str, str]]) -> Iterator[tuple[int, Score]]:
        pool = ThreadPoolExecutor(self.concurrency)
        stop = threading.Event()
        try:
            futures = {
                pool.submit(self._judge_one, fill(rubric, q, a), stop): i for i, (q, a) in enumerate(items)
            }
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:  # a caller that stops early (an abort, Ctrl-C) waits for no queued request or retry
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
