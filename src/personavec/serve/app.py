"""The HTTP app: OpenAI's chat completions with persona figures, plus models, vectors, health and metrics.

``build_app(model, vectors, config)`` returns a FastAPI app to run with uvicorn or mount in another
ASGI app. Every error a client can cause is a 4xx with OpenAI's error body; nothing answers a 500 with a
traceback.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from personavec.core.backend import Backend, as_backend
from personavec.core.models import LoadedModel
from personavec.core.vectors import PersonaVector
from personavec.deploy.monitor import Watched
from personavec.deploy.thresholds import calibrate_thresholds
from personavec.serve import dashboard, local, upstream
from personavec.serve import protocol as p
from personavec.serve.config import ServeConfig
from personavec.serve.engine import LocalEngine
from personavec.serve.http import BodyLimit, ChatRequests, authorise, install_error_handlers
from personavec.serve.state import State, settle
from personavec.serve.telemetry import AuditLog


def _calibrate(state: State, model_key: str) -> None:
    try:
        state.thresholds = calibrate_thresholds(
            state.backend, state.watched, state.config.calibration, state.thresholds, model_key
        )
        state.ready = True
    except Exception as error:  # reported by /ready; the server keeps answering without thresholds
        state.calibration_error = f"{type(error).__name__}: {error}"


def build_app(
    model: Backend | LoadedModel,
    vectors: Mapping[str, PersonaVector],
    config: ServeConfig,
    model_name: str | None = None,
    model_key: str | None = None,
) -> FastAPI:
    """The server's ASGI app for `model` (a backend; a loaded model runs on the transformers one)
    measuring `vectors` (name → vector, read at each one's chosen layer; none: no persona figures, the
    benchmarks' baseline). `model_name` is the id clients use besides ``config.name``; `model_key`
    names the model for the calibration caches (default: its identity)."""
    backend = as_backend(model)
    watched = [Watched(name, v, v.resolve_layer(None)) for name, v in vectors.items()]
    for w in watched:
        w.vector.check_model(backend.identity)
    given = (config.name, model_name or backend.identity.name, config.upstream_model)
    names = list(dict.fromkeys(n for n in given if n))
    files = dict(config.vectors)
    state = State(backend, watched, files, config, names, config.fixed_thresholds())
    state.ready = all(v is not None for t in state.thresholds.values() for v in t.values())
    if config.upstream:
        state.upstream = upstream.client(config)
    key = model_key or json.dumps(backend.identity.to_dict(), sort_keys=True)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        first = None if state.ready else lambda: _calibrate(state, key)  # in the engine's thread
        limits = config.limits
        state.engine = LocalEngine(backend, watched, limits.max_batch, limits.max_queue, first)
        state.audit = AuditLog(config.audit, config.audit_text, state.wire) if config.audit else None
        try:
            yield
        finally:
            state.engine.stop()
            if state.audit is not None:
                state.audit.close()

    app = FastAPI(title="personavec serve", version="1", lifespan=lifespan)
    app.state.persona = state
    _routes(app, state)
    dashboard.install(app, state)
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=config.limits.max_body_bytes)
    app.add_middleware(ChatRequests, done=lambda call: settle(state, call))
    return app


# the OpenAPI schema's error responses (OpenAI's error body)
_ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": p.ErrorBody} for s in (400, 401, 404, 413, 429, 500, 502, 503, 504)
}


def _chat_route(app: FastAPI, state: State) -> None:
    """``/v1/chat/completions``: answered here (local mode) or forwarded (upstream mode)."""
    streamed = {"content": {"text/event-stream": {}}, "description": "with stream: true, SSE chunks"}
    chat_responses: dict[int | str, dict[str, Any]] = {**_ERRORS, 200: streamed}

    if state.upstream is None:

        @app.post("/v1/chat/completions", response_model=p.ChatResponse, responses=chat_responses)
        async def chat(body: p.ChatRequest, request: Request) -> Response:
            authorise(state.config.api_key, request)
            return await local.answer_here(state, body, request)

    else:  # fields this server does not read are the engine's to judge

        @app.post("/v1/chat/completions", responses=chat_responses)
        async def forward(body: p.UpstreamChatRequest, request: Request) -> Response:
            authorise(state.config.api_key, request)
            return await upstream.answer_upstream(state, body, request)


def _routes(app: FastAPI, state: State) -> None:
    _chat_route(app, state)
    errors = _ERRORS

    @app.get("/v1/models", response_model=p.ModelList, responses=errors)
    async def models(request: Request) -> p.ModelList:
        authorise(state.config.api_key, request)
        now = int(time.time())
        return p.ModelList(data=[p.ModelCard(id=name, created=now) for name in state.names])

    @app.get("/v1/persona/vectors", response_model=p.VectorList, responses=errors)
    async def vectors(request: Request) -> p.VectorList:
        authorise(state.config.api_key, request)
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
        authorise(state.config.api_key, request)
        if state.engine is not None:
            state.metrics.queue.set(state.engine.waiting)
            state.metrics.running.set(state.engine.running)
            sizes, state.engine.batch_sizes[:] = list(state.engine.batch_sizes), []
            for size in sizes:
                state.metrics.batch_size.observe(size)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
