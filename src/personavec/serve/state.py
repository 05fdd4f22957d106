"""What the server serves and how it is doing, and the ``persona`` figures it reports."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from personavec.core.backend import Backend
from personavec.deploy.monitor import Watched
from personavec.deploy.thresholds import Thresholds
from personavec.serve import protocol as p
from personavec.serve.config import ServeConfig
from personavec.serve.engine import LocalEngine
from personavec.serve.http import Call, log
from personavec.serve.record import Record
from personavec.serve.ring import Ring
from personavec.serve.telemetry import AuditLog, Metrics
from personavec.serve.wire import Wire


@dataclass
class State:
    """What the app serves and how it is doing."""

    backend: Backend
    watched: list[Watched]
    files: dict[str, str]
    config: ServeConfig
    names: list[str]
    thresholds: Thresholds
    metrics: Metrics = field(default_factory=Metrics)
    audit: AuditLog | None = None
    engine: LocalEngine | None = None
    upstream: Any = None  # an openai.AsyncOpenAI forwarding requests, in upstream mode
    ready: bool = False
    calibration_error: str | None = None
    ring: Ring | None = None  # the dashboard's recent requests
    upstream_logprobs: bool | None = None  # whether the upstream answers logprobs (None: not asked yet)
    wire: Wire = field(init=False)

    def __post_init__(self) -> None:
        self.wire = Wire(self.metrics.nonfinite)


def vector_figures(
    state: State, j: int, prompt_last: float, values: list[float] | None, steered: p.Steered | None = None,
    response_avg: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Vector j's figures: its prompt-last projection, the answer's per-token `values` (or its
    `response_avg` alone), thresholds and flags."""
    w = state.watched[j]
    if values:
        response_avg = sum(values) / len(values)
    limits = state.thresholds[w.name]
    return p.VectorFigures(
        layer=w.layer,
        prompt_last=prompt_last,
        response_avg=response_avg,
        token_max=max(values) if values else None,
        thresholds=dict(limits),
        predicted=None if limits["prompt_last"] is None else prompt_last > limits["prompt_last"],
        flagged=None
        if limits["response_avg"] is None or response_avg is None
        else response_avg > limits["response_avg"],
        steered=steered,
    ).model_dump()


def settle(state: State, call: Call) -> None:
    """Record a chat request once it is over: the record its handler left, with the status and error it
    was answered with where the handler did not say (a refusal, a failure, a client gone)."""
    status = call.status if call.status is not None else 499
    r = call.record if isinstance(call.record, Record) else Record(call.id, None, status, call.start)
    if status >= 500 and r.status < 400:  # a failure after the handler's word (a 499 never overrides it:
        r.status = status  # the handler knows whether its answer was complete)
    if r.status >= 400 and r.error is None and call.error is not None:
        r.error_type, r.error = call.error
    if r.status == 499:
        r.error_type, r.error = "client_gone", r.error or "the client left before its answer was complete"
        log.info("%s: %s (499)", r.id, r.error)
    _record(state, r)


def _record(state: State, r: Record) -> None:
    """Count `r` in the metrics, append it to the audit log and show it on the dashboard."""
    m, latency = state.metrics, time.monotonic() - r.start
    m.requests.labels(str(r.status)).inc()
    m.prompt_tokens.inc(r.prompt_tokens)
    m.generated_tokens.inc(r.completion_tokens)
    m.latency.observe(latency)
    if r.figures:
        m.answer(r.figures)
    if state.audit is not None:
        line = {
            "id": r.id, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "model": r.model,
            "status": r.status, "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
            "finish_reason": r.finish_reason, "latency_s": round(latency, 4), "persona": r.figures,
            "messages": r.messages, "answer": r.answer,
        }  # fmt: skip
        error = {"error_type": r.error_type, "error": r.error} if r.status >= 400 else {}
        state.audit.write({**line, **error})
    if state.ring is not None:
        state.ring.add(r, latency)
