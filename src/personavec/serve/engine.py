"""The in-process engine: requests queue up and stream through the backend, run by one worker thread.

The backend admits waiting requests whenever it has room, at most ``max_batch`` running at once: the
transformers backend between its batches (a batch holds requests of one decoding, oldest first), one
that schedules per step (as vLLM does) at every step. Each row has its own answer length, stop
sequences, steering and guard (request edits and guards), and every served vector is read on every
row (a probe each). Every row's tokens reach its request as they are made, each with its projections,
read where the token sits (its own residual, fed back), so that the answer's mean is `project`'s
response-avg of prompt + answer.

Log-probabilities (a request's ``logprobs``) are read off the model's own logits at each step, the
ones the token was sampled from: before temperature and top-p, under the row's steering.

Seeds: a batch is seeded with its first request's seed. A request alone in its batch gets exactly the
answer the library's ``generate`` gives with that seed; in a shared batch its sampled tokens also depend
on the other rows (greedy answers do not, up to float rounding of padded batches).
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

from personavec.core.backend import (
    Admitted,
    Backend,
    Finished,
    GenerationRequest,
    TokenEvent,
    TokenScore,
    as_backend,
)
from personavec.core.models import LoadedModel
from personavec.core.pooling import Pooling
from personavec.deploy.monitor import Watched, project
from personavec.serve.rows import RowPlan


class QueueFull(Exception):
    """More requests wait than the server takes (a 429)."""


class Stopping(Exception):
    """The server is shutting down (a 503)."""


@dataclass
class Token:
    """One answer token: its id, text and projection per vector (in the engine's vector order),
    `delta`, the answer's text that can now be shown (held back while a stop sequence may begin), and
    its log-probabilities when the request asked for them."""

    id: int
    text: str
    projections: list[float]
    delta: str = ""
    scored: TokenScore | None = None


@dataclass
class Outcome:
    """A finished answer: text, tokens, the prompt-last projections and the guard's firing step."""

    text: str
    tokens: list[Token]
    prompt_last: list[float]
    fired_at: int
    finish_reason: str
    started: float
    tail: str  # the answer's text not yet sent as a delta


@dataclass
class Job:
    """One request to answer. Events reach `events` on the request's event loop: a `Token`, then the
    `Outcome` (or an exception)."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stops: Sequence[str]
    plan: RowPlan
    loop: asyncio.AbstractEventLoop
    top_logprobs: int | None = None  # None: no log-probabilities; k: the token's and the k most likely
    events: asyncio.Queue[Token | Outcome | BaseException] = field(default_factory=asyncio.Queue)
    cancelled: bool = False

    @property
    def decoding(self) -> tuple[float, float]:
        """Requests with the same decoding share a batch."""
        return (0.0, 1.0) if self.temperature == 0 else (self.temperature, self.top_p)

    def send(self, event: Token | Outcome | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters might still become a stop sequence (or complete a character)."""
    if text.endswith("\ufffd"):
        return 1
    return max((k for stop in stops for k in range(1, len(stop)) if text.endswith(stop[:k])), default=0)


class _Row:
    """One job's answer so far, as the backend streams it."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.tokens: list[Token] = []
        self.sent = ""  # the text sent as deltas
        self.started = time.monotonic()


@dataclass
class ScoreJob:
    """Projections by prefill (the upstream mode's scoring): the prompt-last projection of `prompt`, or,
    with an `answer`, the response-average of prompt + answer; one value per vector, or the error."""

    prompt: str
    answer: str | None
    loop: asyncio.AbstractEventLoop
    result: asyncio.Future[list[float]]
    cancelled: bool = False

    @property
    def decoding(self) -> tuple[float, float]:
        return (-1.0, 0.0 if self.answer is None else 1.0)  # never a generation's: scores batch alone

    def send(self, event: list[float] | BaseException) -> None:
        def deliver() -> None:
            if self.result.done():
                return
            if isinstance(event, BaseException):
                self.result.set_exception(event)
            else:
                self.result.set_result(event)

        self.loop.call_soon_threadsafe(deliver)


class LocalEngine:
    """Answers jobs on a backend, in a worker thread (see the module's docstring).

    All work on the model runs in that one thread: `first` (e.g. a calibration) runs there before the
    first job; jobs submitted meanwhile wait.
    """

    def __init__(
        self,
        model: Backend | LoadedModel,
        watched: Sequence[Watched],
        max_batch: int,
        max_queue: int,
        first: Callable[[], None] | None = None,
    ):
        self.backend, self.watched, self._first = as_backend(model), list(watched), first
        self.max_batch, self.max_queue = max_batch, max_queue
        self._queue: deque[Job | ScoreJob] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self.running = 0
        self.batch_sizes: list[int] = []  # requests admitted at once; read (and cleared) by the telemetry
        self._live: dict[int, Job] = {}  # the jobs the backend runs, by key
        self._thread = threading.Thread(target=self._work, name="personavec-engine", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        """Requests waiting for a batch (those whose client has gone do not count)."""
        return sum(not job.cancelled for job in self._queue)

    def submit(self, job: Job | ScoreJob) -> None:
        """Queue `job`; QueueFull when `max_batch` + `max_queue` requests already wait."""
        with self._cond:
            if self._stopping:
                raise Stopping("the server is shutting down")
            self._queue = deque(j for j in self._queue if not j.cancelled)  # gone clients free their place
            if len(self._queue) >= self.max_queue + self.max_batch:
                raise QueueFull(f"{len(self._queue)} requests are already waiting")
            self._queue.append(job)
            self._cond.notify()

    def stop(self) -> None:
        """Finish the running batch, fail what still waits, and end the worker."""
        with self._cond:
            self._stopping = True
            while self._queue:
                self._queue.popleft().send(Stopping("the server is shutting down"))
            self._cond.notify()
        self._thread.join(timeout=60)

    def _wait(self) -> bool:
        """Wait for work; False once stopping."""
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            return not self._stopping

    def _take_scores(self) -> list[ScoreJob]:
        """The prefill jobs at the head of the queue of its kind (with or without answers)."""
        with self._cond:
            self._queue = deque(j for j in self._queue if not j.cancelled)
            if not self._queue or not isinstance(self._queue[0], ScoreJob):
                return []
            kind = self._queue[0].decoding
            scores = [j for j in self._queue if isinstance(j, ScoreJob) and j.decoding == kind]
            scores = scores[: self.max_batch * 4]  # prefills are cheaper
            for job in scores:
                self._queue.remove(job)
            self.running = len(scores)
            return scores

    def _take_jobs(self, n: int) -> list[Job]:
        """Up to `n` generation jobs from the head of the queue (up to the first prefill job)."""
        with self._cond:
            jobs: list[Job] = []
            while self._queue and len(jobs) < n and not self._stopping:
                head = self._queue[0]
                if isinstance(head, ScoreJob):
                    break
                self._queue.popleft()
                if not head.cancelled:
                    jobs.append(head)
            if jobs:
                self.batch_sizes.append(len(jobs))
            self.running += len(jobs)
            return jobs

    def _work(self) -> None:
        if self._first is not None:
            self._first()
        while self._wait():
            scores = self._take_scores()
            try:
                if scores:
                    self._score(scores)
                else:
                    self._generate()
            except Exception as error:  # the requests fail; the server goes on
                failed: list[Job | ScoreJob] = [*scores, *self._live.values()]
                for job in failed:
                    job.send(error)
            finally:
                self.running = 0
                self._live.clear()

    def _score(self, scores: list[ScoreJob]) -> None:
        """One batched prefill for `scores` (all prompt-last, or all response-average)."""
        vectors = [w.vector for w in self.watched]
        with_answer = scores[0].answer is not None
        todo = [s for s in scores if not with_answer or s.answer]
        for s in scores:
            if s not in todo:  # an empty answer has no response tokens
                s.send([float("nan")] * len(vectors))
        if not todo:
            return
        prompts = [s.prompt for s in todo]
        answers = [s.answer or "" for s in todo] if with_answer else None
        pooling: Pooling = "response-avg" if with_answer else "prompt-last"
        values = project(self.backend, vectors, prompts, answers, pooling, progress=False)
        for s, row in zip(todo, values.tolist(), strict=True):
            s.send(row)

    def _request(self, job: Job) -> GenerationRequest:
        """The backend request of `job`: every served vector read, its steering and guard."""
        edits, probes, guards = job.plan.parts(self.watched)
        return GenerationRequest(
            tuple(job.prompt_ids), job.max_tokens, job.temperature, job.top_p, tuple(job.stops),
            edits, probes, guards, job.top_logprobs,
        )  # fmt: skip

    def _generate(self) -> None:
        """Stream the queued generation jobs through the backend until none runs or waits."""
        self._live.clear()
        rows: dict[int, _Row] = {}
        keys = itertools.count()

        def take(n: int) -> list[Admitted]:
            admitted = []
            for job in self._take_jobs(n):
                key = next(keys)
                self._live[key], rows[key] = job, _Row(job)
                seed = job.seed if job.seed is not None else secrets.randbits(63)
                admitted.append(Admitted(key, self._request(job), seed))
            return admitted

        def emit(event: TokenEvent | Finished) -> None:
            key = cast(int, event.key)
            if isinstance(event, TokenEvent):
                self._token(rows[key], event)
                return
            self._live.pop(key)
            self.running -= 1
            self._outcome(rows.pop(key), event)

        self.backend.stream(take, emit, lambda key: self._live[cast(int, key)].cancelled, self.max_batch)

    def _token(self, row: _Row, event: TokenEvent) -> None:
        """Send the token; its text goes out once no stop sequence can still claim it."""
        scored = event.score if row.job.top_logprobs is not None else None
        text = self.backend.decode([event.token_id], special=True)
        token = Token(event.token_id, text, event.readings, scored=scored)
        row.tokens.append(token)
        text, stops = self.backend.decode([t.id for t in row.tokens]), row.job.stops
        hit = min((text.find(s) for s in stops if s in text), default=-1)
        text = text[:hit] if hit >= 0 else text
        safe = text if hit >= 0 else text[: len(text) - _held_back(text, stops)]
        if safe.startswith(row.sent):
            token.delta, row.sent = safe[len(row.sent) :], safe
        row.job.send(token)

    def _outcome(self, row: _Row, event: Finished) -> None:
        g = event.generation
        tail = g.text[len(row.sent) :] if g.text.startswith(row.sent) else ""
        finish = "cancelled" if event.cancelled else g.finish_reason
        prompt_last = g.readings[0] if g.readings else []
        fired_at = g.fired_at[0] if g.fired_at else -1
        row.job.send(Outcome(g.text, row.tokens, prompt_last, fired_at, finish, row.started, tail))
