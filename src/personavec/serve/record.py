"""One chat request's record: what it leaves in the metrics, the audit log and the dashboard's ring."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from personavec.serve.engine import Token


@dataclass
class Record:
    """What one chat request leaves in the metrics, the audit log and the dashboard, whatever its
    outcome (`error_type` and `error`: the OpenAI error it was answered with)."""

    id: str
    model: str | None
    status: int
    start: float  # time.monotonic() when it arrived
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    figures: dict[str, Any] | None = None
    messages: list[Any] | None = None
    answer: str | None = None
    error: str | None = None
    tokens: list[Token] | None = None  # the answer's tokens with their projections (local mode)
    error_type: str | None = None
