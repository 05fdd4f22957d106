"""The HTTP app: OpenAI's chat completions with persona figures, plus models, vectors, health and metrics.

``build_app(loaded, vectors, config)`` returns a FastAPI app to run with uvicorn or mount in another
ASGI app. Every error a client can cause is a 4xx with OpenAI's error body; nothing answers a 500 with a
traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from personavec.core.models import LoadedModel, format_chat
from personavec.core.vectors import PersonaVector
from personavec.serve import protocol as p
from personavec.serve.config import ServeConfig
from personavec.serve.engine import Job, LocalEngine, Outcome, QueueFull, Stopping, Token
from personavec.serve.rows import GuardPlan, RowPlan, Watched
from personavec.serve.telemetry import AuditLog, Metrics
from personavec.serve.thresholds import Thresholds, calibrate, fixed


class ClientError(HTTPException):
    """A request the server refuses: HTTP `status`, OpenAI error `kind`, `param` and `code`. (An
    HTTPException, so that FastAPI passes it through while it reads a body.)"""

    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
        code: str | None = None, headers: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(status, message, headers)
        self.status, self.kind, self.param, self.code = status, kind, param, code

    def __str__(self) -> str:
        return str(self.detail)

    def response(self) -> JSONResponse:
        body = p.error_body(str(self), self.kind, self.param, self.code)
        return JSONResponse(body, status_code=self.status, headers=self.headers)


@dataclass
class State:
    """What the app serves and how it is doing."""

    loaded: LoadedModel
    watched: list[Watched]
    files: dict[str, str]
    config: ServeConfig
    names: list[str]
    thresholds: Thresholds
    metrics: Metrics = field(default_factory=Metrics)
    audit: AuditLog | None = None
    engine: LocalEngine | None = None
    ready: bool = False
    calibration_error: str | None = None


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(x) for x in loc if x != "body"]
    return "".join(f"[{x}]" if x.isdigit() else f".{x}" for x in parts).lstrip(".")


def _validation_error(error: RequestValidationError) -> ClientError:
    first = error.errors()[0]
    where, kind = _loc(tuple(first.get("loc", ()))), first.get("type", "")
    if kind == "json_invalid":
        return ClientError(400, "the request body is not valid JSON")
    if kind == "extra_forbidden":
        return ClientError(
            400, f"unsupported field {where!r}: this server does not implement it", param=where
        )
    if where == "n":
        return ClientError(400, "only n=1 is supported", param="n")
    if kind == "missing":
        return ClientError(400, f"missing required field {where!r}", param=where)
    return ClientError(400, f"{where}: {first.get('msg', 'invalid value')}", param=where or None)


class BodyLimit:
    """Refuse request bodies over `limit` bytes with a 413, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = ClientError(413, f"the request body exceeds {self.limit} bytes", code="body_too_large")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await too_big.response()(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise too_big
            return message

        await self.app(scope, counted, send)


class CountRequests:
    """Count chat completion requests by the status they were answered with."""

    def __init__(self, app: ASGIApp, counter: Any) -> None:
        self.app, self.counter = app, counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            await self.app(scope, receive, send)
            return

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.counter.labels(str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counted)


def _figures(state: State, outcome: Outcome, plan: RowPlan) -> dict[str, dict[str, Any]]:
    """The response's ``persona.vectors``: per vector, its projections, thresholds and flags."""
    out = {}
    for j, w in enumerate(state.watched):
        values = [t.projections[j] for t in outcome.tokens]
        avg = sum(values) / len(values) if values else None
        limits = state.thresholds[w.name]
        steered = None
        if plan.steer.get(j):
            steered = p.Steered(by="steer", coef=plan.steer[j], from_token=0)
        elif plan.guard is not None and plan.guard.index == j and outcome.fired_at >= 0:
            steered = p.Steered(by="guard", coef=-plan.guard.coef, from_token=outcome.fired_at)
        last = outcome.prompt_last[j]
        out[w.name] = p.VectorFigures(
            layer=w.layer,
            prompt_last=last,
            response_avg=avg,
            token_max=max(values) if values else None,
            thresholds=dict(limits),
            predicted=None if limits["prompt_last"] is None else last > limits["prompt_last"],
            flagged=None if limits["response_avg"] is None or avg is None else avg > limits["response_avg"],
            steered=steered,
        ).model_dump()
    return out


def _requested(
    state: State, persona: p.PersonaRequest | None
) -> tuple[list[p.SteerRequest], p.GuardRequest | None]:
    """The request's steering and guard, or the server's defaults where it names none."""
    given = persona.model_fields_set if persona is not None else set()
    c = state.config
    steer = [p.SteerRequest(vector=name, coef=coef) for name, coef in c.steer]
    guard = None
    if c.guard is not None:
        guard = p.GuardRequest(vector=c.guard, threshold=c.guard_threshold, coef=c.guard_coef,
                               per_token=c.guard_per_token)  # fmt: skip
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

    steer = {find(s.vector, f"persona.steer[{i}].vector"): s.coef for i, s in enumerate(steers)}
    guard = None
    if g is not None:
        j = find(g.vector, "persona.guard.vector")
        threshold = g.threshold if g.threshold is not None else state.thresholds[g.vector]["prompt_last"]
        if threshold is None:
            raise ClientError(
                400, f"no threshold for {g.vector!r} yet (calibrating): give persona.guard.threshold",
                param="persona.guard.threshold",
            )  # fmt: skip
        guard = GuardPlan(j, threshold, g.coef, g.per_token)
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
        prompt = format_chat(state.loaded.tokenizer, messages)
    except Exception as error:  # the template refused these messages (e.g. roles out of order)
        message = f"the chat template cannot render these messages: {error}"
        raise ClientError(400, message, param="messages") from None
    ids = list(state.loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if len(ids) > limits.max_prompt_tokens:
        raise ClientError(
            400, f"the prompt has {len(ids)} tokens; this server takes at most {limits.max_prompt_tokens}",
            param="messages", code="context_length_exceeded",
        )  # fmt: skip
    job = Job(
        ids,
        max_tokens,
        body.temperature,
        body.top_p,
        body.seed,
        body.stops(),
        plan,
        asyncio.get_running_loop(),
    )
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
                raise asyncio.CancelledError from None
            continue
        if isinstance(event, BaseException):
            if isinstance(event, Stopping):
                raise ClientError(503, str(event), kind="server_error", headers={"Retry-After": "5"})
            raise event
        return event


class _Exchange:
    """One chat completion in flight: its job, timings and the record it leaves."""

    def __init__(self, state: State, body: p.ChatRequest, request: Request) -> None:
        self.state, self.body, self.request = state, body, request
        self.id = "chatcmpl-" + secrets.token_hex(12)
        self.created = int(time.time())
        self.start = time.monotonic()
        self.first: float | None = None
        self.job, self.prompt_tokens, self.prompt = _job(state, body)
        self.deadline = self.start + state.config.limits.request_timeout

    async def next(self) -> Token | Outcome:
        event = await _next(self.job, self.request, self.deadline)
        if self.first is None and isinstance(event, Token):
            self.first = time.monotonic()
            self.state.metrics.ttft.observe(self.first - self.start)
        return event

    def finish(self, outcome: Outcome | None, status: int, figures: dict[str, Any] | None) -> None:
        state, m = self.state, self.state.metrics
        m.prompt_tokens.inc(self.prompt_tokens)
        tokens = len(outcome.tokens) if outcome else 0
        m.generated_tokens.inc(tokens)
        m.latency.observe(time.monotonic() - self.start)
        if figures:
            m.answer(figures)
        if state.audit is not None:
            state.audit.write({
                "id": self.id, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "model": self.body.model, "status": status, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": tokens, "finish_reason": outcome.finish_reason if outcome else None,
                "latency_s": round(time.monotonic() - self.start, 4), "persona": figures,
                "messages": [m.model_dump() for m in self.body.messages],
                "answer": outcome.text if outcome else None,
            })  # fmt: skip

    def usage(self, outcome: Outcome) -> dict[str, int]:
        n = len(outcome.tokens)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": n,
            "total_tokens": self.prompt_tokens + n,
        }

    def chunk(self, delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> str:
        """One SSE event: a chunk with `delta` (None: no choices, as the usage chunk has) and `extra`."""
        choices = (
            [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
        )
        data = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.body.model, "choices": choices, **extra}  # fmt: skip
        return f"data: {json.dumps(data)}\n\n"


def _refused(state: State, body: p.ChatRequest, error: ClientError) -> None:
    """The audit line of a request refused before it reached the engine."""
    if state.audit is not None:
        state.audit.write({
            "id": None, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "model": body.model,
            "status": error.status, "error": str(error), "messages": [m.model_dump() for m in body.messages],
        })  # fmt: skip


def _finish_reason(outcome: Outcome) -> Literal["stop", "length"]:
    return "length" if outcome.finish_reason == "length" else "stop"


async def _complete(x: _Exchange) -> JSONResponse:
    while not isinstance(event := await x.next(), Outcome):
        pass
    figures = _figures(x.state, event, x.job.plan)
    message = p.AssistantMessage(content=event.text)
    response = p.ChatResponse(
        id=x.id, created=x.created, model=x.body.model,
        choices=[p.Choice(message=message, finish_reason=_finish_reason(event))],
        usage=p.Usage(**x.usage(event)), persona=p.Persona.model_validate({"vectors": figures}),
    )  # fmt: skip
    x.finish(event, 200, figures)
    return JSONResponse(response.model_dump())


async def _stream(x: _Exchange) -> AsyncIterator[str]:
    names = [w.name for w in x.state.watched]
    trace = bool(x.body.persona and x.body.persona.trace)
    outcome: Outcome | None = None
    status = 499  # the client went away before the end
    try:
        yield x.chunk({"role": "assistant", "content": ""})
        while not isinstance(event := await x.next(), Outcome):
            extra: dict[str, Any] = {}
            if trace:
                values = dict(zip(names, event.projections, strict=True))
                extra["persona"] = {"tokens": [{"id": event.id, "text": event.text, "projections": values}]}
            if event.delta or trace:
                yield x.chunk({"content": event.delta}, None, **extra)
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
        status = error.status
        yield f"data: {json.dumps(p.error_body(str(error), error.kind, error.param, error.code))}\n\n"
    finally:
        x.job.cancelled = True  # a client gone mid-stream frees its row
        if status != 200:
            x.finish(outcome, status, None)


def _calibrate(state: State, model_key: str) -> None:
    try:
        state.thresholds = calibrate(
            state.loaded, state.watched, state.config.calibration, state.thresholds, model_key
        )
        state.ready = True
    except Exception as error:  # reported by /ready; the server keeps answering without thresholds
        state.calibration_error = f"{type(error).__name__}: {error}"


def build_app(
    loaded: LoadedModel,
    vectors: Mapping[str, PersonaVector],
    config: ServeConfig,
    model_name: str | None = None,
    model_key: str | None = None,
) -> FastAPI:
    """The server's ASGI app for `loaded` measuring `vectors` (name → vector, read at each one's chosen
    layer; none: no persona figures, the benchmarks' baseline). `model_name` is the id clients use
    besides ``config.name``; `model_key` names the model for the calibration caches (default: its
    identity)."""
    watched = [Watched(name, v, v.resolve_layer(None)) for name, v in vectors.items()]
    for w in watched:
        w.vector.check_model(loaded.identity)
    names = list(dict.fromkeys(n for n in (config.name, model_name or loaded.identity.name) if n))
    files = dict(config.vectors)
    state = State(loaded, watched, files, config, names, fixed(config))
    state.ready = all(v is not None for t in state.thresholds.values() for v in t.values())
    key = model_key or json.dumps(loaded.identity.to_dict(), sort_keys=True)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        first = None if state.ready else lambda: _calibrate(state, key)  # in the engine's thread
        limits = config.limits
        state.engine = LocalEngine(loaded, watched, limits.max_batch, limits.max_queue, first)
        state.audit = AuditLog(config.audit, config.audit_text) if config.audit else None
        try:
            yield
        finally:
            state.engine.stop()
            if state.audit is not None:
                state.audit.close()

    app = FastAPI(title="personavec serve", version="1", lifespan=lifespan)
    app.state.persona = state
    _routes(app, state)
    _errors(app)
    app.add_middleware(BodyLimit, limit=config.limits.max_body_bytes)
    app.add_middleware(CountRequests, counter=state.metrics.requests)
    return app


def _authorised(state: State, request: Request) -> None:
    key = state.config.api_key
    if not key:
        return
    given = request.headers.get("authorization", "")
    token = given[7:] if given.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(token.encode(), key.encode()):
        raise ClientError(401, "missing or wrong API key (Authorization: Bearer KEY)", code="invalid_api_key")


def _routes(app: FastAPI, state: State) -> None:
    errors: dict[int | str, dict[str, Any]] = {
        s: {"model": p.ErrorBody} for s in (400, 401, 404, 413, 429, 503)
    }

    streamed = {"content": {"text/event-stream": {}}, "description": "with stream: true, SSE chunks"}
    chat_responses: dict[int | str, dict[str, Any]] = {**errors, 200: streamed}

    @app.post("/v1/chat/completions", response_model=p.ChatResponse, responses=chat_responses)
    async def chat(body: p.ChatRequest, request: Request) -> Response:
        _authorised(state, request)
        try:
            exchange = _Exchange(state, body, request)
            _submit(state, exchange.job)
        except ClientError as error:
            _refused(state, body, error)
            raise
        if body.stream:
            return StreamingResponse(_stream(exchange), media_type="text/event-stream")
        try:
            return await _complete(exchange)
        except ClientError as error:
            exchange.finish(None, error.status, None)
            raise
        except asyncio.CancelledError:
            exchange.finish(None, 499, None)
            raise

    @app.get("/v1/models", response_model=p.ModelList, responses=errors)
    async def models(request: Request) -> p.ModelList:
        _authorised(state, request)
        now = int(time.time())
        return p.ModelList(data=[p.ModelCard(id=name, created=now) for name in state.names])

    @app.get("/v1/persona/vectors", response_model=p.VectorList, responses=errors)
    async def vectors(request: Request) -> p.VectorList:
        _authorised(state, request)
        cards = [
            p.VectorCard(
                name=w.name,
                trait=w.vector.trait,
                layer=w.layer,
                norm=float(w.vector.at(w.layer).norm()),
                thresholds=dict(state.thresholds[w.name]),
                fingerprint=w.vector.fingerprint(),
                file=state.files.get(w.name, ""),
            )
            for w in state.watched
        ]
        return p.VectorList(data=cards)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        if state.ready:
            return JSONResponse({"ready": True})
        reason = state.calibration_error or "calibrating thresholds"
        return JSONResponse({"ready": False, "reason": reason}, status_code=503)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        _authorised(state, request)
        if state.engine is not None:
            state.metrics.queue.set(state.engine.waiting)
            state.metrics.running.set(state.engine.running)
            sizes, state.engine.batch_sizes[:] = list(state.engine.batch_sizes), []
            for size in sizes:
                state.metrics.batch_size.observe(size)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _errors(app: FastAPI) -> None:
    async def client(_request: Request, error: Exception) -> Response:
        assert isinstance(error, ClientError)
        return error.response()

    async def invalid(_request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        return _validation_error(error).response()

    async def http(_request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return ClientError(error.status_code, str(error.detail), kind).response()

    async def internal(_request: Request, _error: Exception) -> Response:
        return ClientError(500, "internal error; see the server's log", "server_error").response()

    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        ClientError: client, RequestValidationError: invalid, HTTPException: http, Exception: internal,
    }  # fmt: skip
    for kind, handler in handlers.items():
        app.add_exception_handler(kind, handler)
