"""The in-process engine: requests queue up and are answered in shared batches by one worker thread.

A request that arrives while a batch runs joins the next one. A batch holds requests of one decoding
(greedy, or one temperature and top-p), at most ``max_batch`` of them, oldest first; each row has its own
answer length, stop sequences, steering and guard. Every row's tokens reach its request as they are
made, each with its projections, read where the token sits (its own residual, fed back), so that the
answer's mean is `project`'s response-avg of prompt + answer. To read the last token's residual the
batch runs one step past the longest answer; that token is dropped.

Log-probabilities (a request's ``logprobs``) are read off the model's own logits at each step, the
ones the token was sampled from: before temperature and top-p, under the row's steering.

Seeds: a batch is seeded with its first request's seed. A request alone in its batch gets exactly the
answer the library's ``generate`` gives with that seed; in a shared batch its sampled tokens also depend
on the other rows (greedy answers do not, up to float rounding of padded batches).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from personavec.core.models import LoadedModel
from personavec.core.pooling import Pooling
from personavec.core.sampling import Sampling
from personavec.deploy.monitor import project
from personavec.serve.rows import RowHooks, RowPlan, Watched


class QueueFull(Exception):
    """More requests wait than the server takes (a 429)."""


class Stopping(Exception):
    """The server is shutting down (a 503)."""


@dataclass(frozen=True)
class Scored:
    """A sampled token's log-probability under the model, and the most likely tokens at its place
    (id, log-probability), most likely first."""

    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Token:
    """One answer token: its id, text and projection per vector (in the engine's vector order),
    `delta`, the answer's text that can now be shown (held back while a stop sequence may begin), and
    its log-probabilities when the request asked for them."""

    id: int
    text: str
    projections: list[float]
    delta: str = ""
    scored: Scored | None = None


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
    """One row's progress through a batch."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.tokens: list[Token] = []
        self.pending: int | None = None  # the newest token, until its own residual is read
        self.pending_scored: Scored | None = None
        self.prompt_last: list[float] = []
        self.finish: str | None = None
        self.text = ""
        self.sent = ""  # the text sent as deltas


class _Logits:
    """The last position's logits of each forward call of `model` (its output's, after any final
    soft-capping), while entered."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.latest = model, torch.empty(0)

    def __enter__(self) -> _Logits:
        def keep(_module: torch.nn.Module, _args: Any, output: Any) -> None:
            self.latest = output.logits[:, -1].float()

        self._handle = self.model.register_forward_hook(keep)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()

    def scored(self, tokens: list[int], k: int) -> list[Scored]:
        """Each row's sampled token's log-probability and its row's `k` most likely tokens."""
        logprobs = torch.log_softmax(self.latest, dim=-1).cpu()
        top = logprobs.topk(k, dim=-1) if k else None
        out = []
        for r, token in enumerate(tokens):
            best = (
                [] if top is None else list(zip(top.indices[r].tolist(), top.values[r].tolist(), strict=True))
            )
            out.append(Scored(float(logprobs[r, token]), best))
        return out


class _Batch(BaseStreamer, StoppingCriteria):
    """Follows a running ``generate``: as its streamer it gets each step's new tokens, as its stopping
    criterion it tells which rows are done."""

    def __init__(
        self, jobs: Sequence[Job], hooks: RowHooks, loaded: LoadedModel, logits: _Logits | None = None
    ) -> None:
        self.rows = [_Row(job) for job in jobs]
        self.logits = logits
        self.top_k = max((job.top_logprobs or 0 for job in jobs), default=0)
        self.hooks, self.tokenizer = hooks, loaded.tokenizer
        eos = loaded.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.started = time.monotonic()
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate first hands over the prompts
            self._prompt_seen = True
            return
        readings = self.hooks.latest().tolist()
        new_tokens = [int(t) for t in value.tolist()]
        scored: list[Scored | None] = [None] * len(new_tokens)
        if self.logits is not None:
            scored = list(self.logits.scored(new_tokens, self.top_k))
        for row, new, values, score in zip(self.rows, new_tokens, readings, scored, strict=True):
            if row.finish is None:
                self._advance(row, new, values, score)

    def _advance(self, row: _Row, new: int, values: list[float], scored: Scored | None) -> None:
        if row.pending is None and not row.tokens:
            row.prompt_last = values  # the first step's reading is the prompt's last token
        else:
            assert row.pending is not None
            text = str(self.tokenizer.decode([row.pending]))
            token = Token(row.pending, text, values, scored=row.pending_scored)
            row.tokens.append(token)
            self._emit(row, token)
            row.pending, row.pending_scored = None, None
        if row.finish is not None:
            return
        if row.job.cancelled:
            row.finish = "cancelled"
        elif len(row.tokens) >= row.job.max_tokens:
            row.finish = "length"  # `new` is the extra step's token: dropped
        elif new in self.eos:
            row.finish = "stop"
        else:
            row.pending = new
            if row.job.top_logprobs is not None and scored is not None:
                k = row.job.top_logprobs
                row.pending_scored = Scored(scored.logprob, scored.top[:k])
        if row.finish is not None:
            self._close(row)

    def _emit(self, row: _Row, token: Token) -> None:
        """Send the token; its text goes out once no stop sequence can still claim it."""
        text = str(self.tokenizer.decode([t.id for t in row.tokens], skip_special_tokens=True))
        stops = row.job.stops
        hit = min((text.find(s) for s in stops if s in text), default=-1)
        if hit >= 0:
            row.text, row.finish = text[:hit], "stop"
        else:
            row.text = text
        safe = row.text[: len(row.text) - _held_back(row.text, stops)] if row.finish is None else row.text
        if safe.startswith(row.sent):
            token.delta, row.sent = safe[len(row.sent) :], safe
        row.job.send(token)
        if row.finish is not None:
            self._close(row)

    def _close(self, row: _Row) -> None:
        fired_at = int(self.hooks.fired_at[self.rows.index(row)])
        tail = row.text[len(row.sent) :] if row.text.startswith(row.sent) else ""
        finish = row.finish or "length"
        row.job.send(Outcome(row.text, row.tokens, row.prompt_last, fired_at, finish, self.started, tail))

    def end(self) -> None:
        for row in self.rows:
            if row.finish is None:  # generate stopped before this row finished: it ran out of length
                row.finish = "length"
                self._close(row)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        done = [row.finish is not None or row.job.cancelled for row in self.rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


@dataclass
class Score:
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
    """Answers jobs in shared batches on the model, in a worker thread (see the module's docstring).

    Hooks act on the whole model, so all work on it runs in that one thread: `first` (e.g. a
    calibration) runs there before the first batch; jobs submitted meanwhile wait.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        watched: Sequence[Watched],
        max_batch: int,
        max_queue: int,
        first: Callable[[], None] | None = None,
    ):
        self.loaded, self.watched, self._first = loaded, list(watched), first
        self.max_batch, self.max_queue = max_batch, max_queue
        self._queue: deque[Job | Score] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self.running = 0
        self.batch_sizes: list[int] = []  # read (and cleared) by the telemetry
        self._thread = threading.Thread(target=self._work, name="personavec-engine", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        """Requests waiting for a batch (those whose client has gone do not count)."""
        return sum(not job.cancelled for job in self._queue)

    def submit(self, job: Job | Score) -> None:
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

    def _take(self) -> list[Job | Score]:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return []
            decoding = self._queue[0].decoding
            jobs = [job for job in self._queue if job.decoding == decoding and not job.cancelled]
            jobs = jobs[: self.max_batch * (4 if decoding[0] < 0 else 1)]  # prefills are cheaper
            for job in [j for j in self._queue if j.cancelled or j in jobs]:
                self._queue.remove(job)
            self.running = len(jobs)
            return jobs

    def _work(self) -> None:
        if self._first is not None:
            self._first()
        while True:
            jobs = self._take()
            if not jobs:
                if self._stopping:
                    return
                continue
            try:
                if isinstance(jobs[0], Score):
                    self._score([j for j in jobs if isinstance(j, Score)])
                else:
                    self._generate([j for j in jobs if isinstance(j, Job)])
            except Exception as error:  # the batch's requests fail; the server goes on
                for job in jobs:
                    job.send(error)
            finally:
                self.running = 0

    def _score(self, scores: list[Score]) -> None:
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
        values = project(self.loaded, vectors, prompts, answers, pooling, progress=False)
        for s, row in zip(todo, values.tolist(), strict=True):
            s.send(row)

    def _generate(self, jobs: list[Job]) -> None:
        loaded, first = self.loaded, jobs[0]
        pad = loaded.tokenizer.pad_token_id
        width = max(len(job.prompt_ids) for job in jobs)
        ids = torch.tensor([[pad] * (width - len(j.prompt_ids)) + j.prompt_ids for j in jobs])
        mask = torch.tensor([[0] * (width - len(j.prompt_ids)) + [1] * len(j.prompt_ids) for j in jobs])
        torch.manual_seed(first.seed if first.seed is not None else secrets.randbits(63))
        decoding = Sampling(temperature=first.temperature, top_p=first.top_p).decoding()  # as `generate`
        self.batch_sizes.append(len(jobs))
        model: Any = loaded.model
        wants_logprobs = any(job.top_logprobs is not None for job in jobs)
        with (
            RowHooks(model, self.watched, [job.plan for job in jobs]) as hooks,
            contextlib.ExitStack() as stack,
        ):
            logits = stack.enter_context(_Logits(model)) if wants_logprobs else None
            batch = _Batch(jobs, hooks, loaded, logits)
            with torch.inference_mode():
                model.generate(
                    input_ids=ids.to(loaded.device),
                    attention_mask=mask.to(loaded.device),
                    max_new_tokens=max(job.max_tokens for job in jobs) + 1,  # + the step that reads the last
                    pad_token_id=pad,
                    streamer=batch,
                    stopping_criteria=StoppingCriteriaList([batch]),
                    **decoding,
                )
            batch.end()
