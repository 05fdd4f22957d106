"""Local mode: a chat completion answered by the in-process engine, with its persona figures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from personavec._internal.deprecation import renamed
from personavec.core.units import CoefUnits
from personavec.errors import ConfigError
from personavec.serve import protocol as p
from personavec.serve.config import MAX_COEF
from personavec.serve.engine import Job, Outcome, QueueFull, Stopping, Token
from personavec.serve.http import Call, ClientError, ClientGone, call_of, log
from personavec.serve.record import Record
from personavec.serve.rows import GuardPlan, RowPlan
from personavec.serve.state import State, vector_figures


def _figures(state: State, outcome: Outcome, plan: RowPlan) -> dict[str, dict[str, Any]]:
    """The response's ``persona.vectors``: per vector, its projections, thresholds and flags."""
    out = {}
    for j, w in enumerate(state.watched):
        steered = None
        if plan.steer.get(j):
            steered = p.Steered(by="steer", coef=plan.steer[j], from_token=0)
        elif plan.guard is not None and plan.guard.index == j and outcome.fired_at >= 0:
            steered = p.Steered(by="guard", coef=-plan.guard.coef, from_token=outcome.fired_at)
        values = [t.projections[j] for t in outcome.tokens]
        out[w.name] = vector_figures(state, j, outcome.prompt_last[j], values, steered)
    return out


def _requested(
    state: State, persona: p.PersonaRequest | None
) -> tuple[list[p.SteerRequest], p.GuardRequest | None]:
    """The request's steering and guard, or the server's defaults where it names none."""
    given = persona.model_fields_set if persona is not None else set()
    c = state.config
    steer = [p.SteerRequest(vector=name, coef=coef, units=c.coef_units) for name, coef in c.steer]
    guard = None
    if c.guard is not None:
        guard = p.GuardRequest(vector=c.guard, threshold=c.guard_threshold, coef=c.guard_coef,
                               units=c.coef_units, per_token=c.guard_per_token)  # fmt: skip
    if persona is not None:
        steer = persona.steer if "steer" in given else steer
        guard = persona.guard if "guard" in given else guard
    return steer, guard


def _plan(state: State, persona: p.PersonaRequest | None) -> RowPlan:
    """A request's steering and guard, checked against the vectors served."""
    steers, g = _requested(state, persona)
    index = {w.name: j for j, w in enumerate(state.watched)}

    def find(name: str, param: str) -> int:
        if name not in index:
            raise ClientError(400, f"unknown vector {name!r}; this server has {sorted(index)}", param=param)
        return index[name]

    def raw(j: int, coef: float, units: CoefUnits, param: str) -> float:
        """The coefficient as a multiple of vector j, within the bound."""
        try:
            value = state.watched[j].vector.raw_coef(coef, state.watched[j].layer, units)
        except ConfigError as error:  # norm units, and the vector records no residual norm
            raise ClientError(400, str(error), param=param) from None
        if not abs(value) <= MAX_COEF:
            message = f"coef {coef} ({units}) is {value:g} × the vector; at most {MAX_COEF:g}"
            raise ClientError(400, message, param=param)
        return value

    steer = {}
    for i, s in enumerate(steers):
        j = find(s.vector, f"persona.steer[{i}].vector")
        steer[j] = raw(j, s.coef, s.units, f"persona.steer[{i}].coef")
    guard = None
    if g is not None:
        j = find(g.vector, "persona.guard.vector")
        threshold = g.threshold if g.threshold is not None else state.thresholds[g.vector]["prompt_last"]
        if threshold is None:
            raise ClientError(
                400, f"no threshold for {g.vector!r} yet (calibrating): give persona.guard.threshold",
                param="persona.guard.threshold",
            )  # fmt: skip
        guard = GuardPlan(j, threshold, raw(j, g.coef, g.units, "persona.guard.coef"), g.per_token)
    return RowPlan(steer, guard)


def _job(state: State, body: p.ChatRequest) -> tuple[Job, int, str]:
    """The engine job of a request, its prompt length and prompt text; a bad request raises."""
    if body.model not in state.names:
        raise ClientError(
            404, f"the model {body.model!r} does not exist; use one of {state.names}", param="model",
            code="model_not_found",
        )  # fmt: skip
    limits = state.config.limits
    max_tokens = body.max_completion_tokens or body.max_tokens or limits.answer_tokens
    if max_tokens > limits.max_tokens:
        param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        raise ClientError(400, f"{param} may be at most {limits.max_tokens}, got {max_tokens}", param=param)
    plan = _plan(state, body.persona)
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages
    ]
    try:
        prompt = state.backend.chat(messages)
    except Exception as error:  # the template refused these messages (e.g. roles out of order)
        message = f"the chat template cannot render these messages: {error}"
        raise ClientError(400, message, param="messages") from None
    ids = state.backend.encode(prompt)
    if len(ids) > limits.max_prompt_tokens:
        raise ClientError(
            400, f"the prompt has {len(ids)} tokens; this server takes at most {limits.max_prompt_tokens}",
            param="messages", code="context_length_exceeded",
        )  # fmt: skip
    top = (body.top_logprobs or 0) if body.logprobs else None
    loop = asyncio.get_running_loop()
    job = Job(ids, max_tokens, body.temperature, body.top_p, body.seed, body.stops(), plan, loop, top)
    return job, len(ids), prompt


def _submit(state: State, job: Job) -> None:
    assert state.engine is not None
    try:
        state.engine.submit(job)
    except QueueFull as error:
        raise ClientError(
            429, f"too many requests waiting ({error}); retry shortly", kind="rate_limit_error",
            headers={"Retry-After": "1"},
        ) from None  # fmt: skip
    except Stopping:
        raise ClientError(
            503, "the server is shutting down", kind="server_error", headers={"Retry-After": "5"}
        ) from None


async def _next(job: Job, request: Request, deadline: float) -> Token | Outcome:
    """The job's next event; stops the job when the client left or the deadline passed."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            job.cancelled = True
            raise ClientError(504, "the request took longer than the server allows", kind="timeout")
        try:
            event = await asyncio.wait_for(job.events.get(), timeout=min(remaining, 0.5))
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                job.cancelled = True
                raise ClientGone from None
            continue
        if isinstance(event, BaseException):
            if isinstance(event, Stopping):
                raise ClientError(503, str(event), kind="server_error", headers={"Retry-After": "5"})
            raise event
        return event


class _Exchange:
    """One chat completion in flight: its job, timings and the record it leaves."""

    def __init__(self, state: State, body: p.ChatRequest, request: Request, call: Call) -> None:
        self.state, self.body, self.request, self.call = state, body, request, call
        self.id, self.start = call.id, call.start
        self.created = int(time.time())
        self.first: float | None = None
        self.job, self.prompt_tokens, self.prompt = _job(state, body)
        self.deadline = self.start + state.config.limits.request_timeout

    async def next(self) -> Token | Outcome:
        event = await _next(self.job, self.request, self.deadline)
        if self.first is None and isinstance(event, Token):
            self.first = time.monotonic()
            self.state.metrics.ttft.observe(self.first - self.start)
        return event

    def finish(
        self, outcome: Outcome | None, status: int, figures: dict[str, Any] | None,
        error: ClientError | None = None,
    ) -> None:  # fmt: skip
        """Leave the request's record (the audit line is written once the response is over)."""
        self.call.record = Record(
            self.id, self.body.model, status, self.start, self.prompt_tokens,
            len(outcome.tokens) if outcome else 0, outcome.finish_reason if outcome else None, figures,
            [m.model_dump() for m in self.body.messages], outcome.text if outcome else None,
            str(error) if error else None, outcome.tokens if outcome else None,
            error.kind if error else None,
        )  # fmt: skip

    def logprobs(self, tokens: list[Token]) -> dict[str, Any] | None:
        """OpenAI's ``logprobs`` of `tokens`, or None when the request did not ask for them."""
        if not self.body.logprobs:
            return None
        backend = self.state.backend

        def entry(text: str, logprob: float) -> dict[str, Any]:
            return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

        content = [
            {**entry(t.text, t.scored.logprob),
             "top_logprobs": [entry(backend.decode([i], special=True), lp) for i, lp in t.scored.top]}
            for t in tokens if t.scored is not None
        ]  # fmt: skip
        return {"content": content, "refusal": None}

    def usage(self, outcome: Outcome) -> dict[str, int]:
        n = len(outcome.tokens)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": n,
            "total_tokens": self.prompt_tokens + n,
        }

    def chunk(
        self, delta: dict[str, Any] | None, finish: str | None = None, logprobs: dict[str, Any] | None = None,
        **extra: Any,
    ) -> str:  # fmt: skip
        """One SSE event: a chunk with `delta` (None: no choices, as the usage chunk has) and `extra`."""
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
        data = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.body.model, "choices": [] if delta is None else [choice], **extra}  # fmt: skip
        return self.state.wire.sse(data)


def _refused(body: p.ChatRequest, call: Call, error: ClientError) -> Record:
    """The record of a request refused before it reached the engine."""
    messages = [m.model_dump() for m in body.messages]
    return Record(
        call.id,
        body.model,
        error.status,
        call.start,
        messages=messages,
        error=str(error),
        error_type=error.kind,
    )


def _finish_reason(outcome: Outcome) -> Literal["stop", "length"]:
    return "length" if outcome.finish_reason == "length" else "stop"


async def _complete(x: _Exchange) -> Response:
    while not isinstance(event := await x.next(), Outcome):
        pass
    figures = _figures(x.state, event, x.job.plan)
    message = p.AssistantMessage(content=event.text)
    logprobs = x.logprobs(event.tokens)
    choice = p.Choice(
        message=message, finish_reason=_finish_reason(event),
        logprobs=None if logprobs is None else p.ChoiceLogprobs.model_validate(logprobs),
    )  # fmt: skip
    response = p.ChatResponse(
        id=x.id, created=x.created, model=x.body.model, choices=[choice],
        usage=p.Usage(**x.usage(event)), persona=p.Persona.model_validate({"vectors": figures}),
    )  # fmt: skip
    x.finish(event, 200, figures)
    return x.state.wire.response(response.model_dump())


async def _stream(x: _Exchange) -> AsyncIterator[str]:
    names = [w.name for w in x.state.watched]
    trace = bool(x.body.persona and x.body.persona.trace)
    outcome: Outcome | None = None
    failure: ClientError | None = None
    status = 499  # the client went away before the end
    try:
        yield x.chunk({"role": "assistant", "content": ""})
        while not isinstance(event := await x.next(), Outcome):
            extra: dict[str, Any] = {}
            if trace:
                values = dict(zip(names, event.projections, strict=True))
                extra["persona"] = {"tokens": [{"id": event.id, "text": event.text, "projections": values}]}
            logprobs = x.logprobs([event])
            if event.delta or trace or logprobs:
                yield x.chunk({"content": event.delta}, None, logprobs, **extra)
        outcome = event
        yield x.chunk({"content": outcome.tail}, _finish_reason(outcome))
        figures = _figures(x.state, outcome, x.job.plan)
        summary: dict[str, Any] = {}
        if x.body.stream_options and x.body.stream_options.include_usage:
            summary["usage"] = x.usage(outcome)
        if x.body.persona is not None or summary:
            summary["persona"] = {"vectors": figures}
            yield x.chunk(None, None, **summary)
        yield "data: [DONE]\n\n"
        status = 200
        x.finish(outcome, status, figures)
    except ClientError as error:
        status, failure = error.status, error
        yield x.state.wire.sse(p.error_body(str(error), error.kind, error.param, error.code))
    except Exception:  # a bug, mid-stream: the stream ends with an error event, the log has the traceback
        log.exception("%s: the answer failed mid-stream", x.id)
        status, failure = 500, ClientError(500, "internal error; see the server's log", "server_error")
        yield x.state.wire.sse(p.error_body(str(failure), failure.kind))
    finally:
        x.job.cancelled = True  # a client gone mid-stream frees its row
        if status != 200:
            x.finish(outcome, status, None, failure)


async def answer_here(state: State, body: p.ChatRequest, request: Request) -> Response:
    """Answer one chat completion request (streamed or not)."""
    call = call_of(request)
    try:
        exchange = _Exchange(state, body, request, call)
        _submit(state, exchange.job)
    except ClientError as error:
        call.record = _refused(body, call, error)
        raise
    if body.stream:
        return StreamingResponse(_stream(exchange), media_type="text/event-stream")
    try:
        return await _complete(exchange)
    except ClientError as error:
        exchange.finish(None, error.status, None, error)
        raise
    except ClientGone:
        exchange.finish(None, 499, None)
        raise


__getattr__ = renamed(__name__, {"answer": "answer_here"})
