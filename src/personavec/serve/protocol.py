"""The wire format: OpenAI's chat completion request and response, plus the ``persona`` fields.

A request with a field this server does not support is refused (400 naming the field) rather than
silently ignored; ``persona`` is personavec's own (the openai SDK sends it through ``extra_body``).
Every number is bounded by what the code below it accepts (a seed fits in 64 bits, a coefficient in
`MAX_COEF`), and every string is made valid Unicode before anything reads it (`wire.clean`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from personavec._internal.deprecation import renamed
from personavec.core.units import CoefUnits
from personavec.serve.config import MAX_COEF, MAX_THRESHOLD
from personavec.serve.wire import clean

MIN_TEMPERATURE = 1e-3
"""A lower temperature decodes greedily: its distribution is already one token (a logit gap of 0.01 leaves
the runner-up e^-10), and logits divided by a far smaller one overflow to NaN."""
MAX_TOP_LOGPROBS = 20
"""The most alternatives a token's ``top_logprobs`` lists (OpenAI's bound, and the paper's judge's)."""


class _Request(BaseModel):
    """A request's top-level model: made valid Unicode with finite numbers (`wire.clean`) before any
    field is read, so that its text reaches the tokenizer, the log and the engine as it can take it; the
    fields both modes read themselves."""

    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # 64 bits, as torch and engines take
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="before")
    @classmethod
    def _clean(cls, data: Any) -> Any:
        return clean(data)[0]

    @field_validator("top_logprobs")
    @classmethod
    def _with_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and not info.data.get("logprobs"):
            raise ValueError("needs logprobs: true")
        return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class SteerRequest(_Strict):
    """Add coef × the named vector at its layer, to every token of this request (`units`: see
    `personavec.core.units`)."""

    vector: str
    coef: float = Field(ge=-MAX_COEF, le=MAX_COEF)
    units: CoefUnits = "raw"


class GuardRequest(_Strict):
    """Steer by −coef·v only once the named vector's projection exceeds `threshold` (default: the
    vector's prompt-last threshold), checked at the end of the prompt or, `per_token`, at every token."""

    vector: str
    threshold: float | None = Field(default=None, ge=-MAX_THRESHOLD, le=MAX_THRESHOLD)
    coef: float = Field(gt=0, le=MAX_COEF)
    units: CoefUnits = "raw"
    per_token: bool = False


class PersonaRequest(_Strict):
    """personavec's options: a per-token `trace` in streams, `steer` and `guard` (local mode)."""

    trace: bool = False
    steer: list[SteerRequest] = []
    guard: GuardRequest | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatRequest(_Strict, _Request):
    """``POST /v1/chat/completions``: the OpenAI fields this server honours."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] = 1
    user: str | None = None
    persona: PersonaRequest | None = None

    @field_validator("temperature")
    @classmethod
    def _greedy_below_minimum(cls, value: float) -> float:
        return 0.0 if value < MIN_TEMPERATURE else value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("up to 4 non-empty stop sequences")
        return value

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class UpstreamMessage(BaseModel):
    """A message forwarded to an upstream engine as it came (tool calls and all); its text is scored."""

    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class UpstreamChatRequest(_Request):
    """``POST /v1/chat/completions`` in upstream mode: fields this server does not read are forwarded."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[UpstreamMessage] = Field(min_length=1)
    stream: bool = False
    n: Literal[1] = 1
    persona: PersonaRequest | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Steered(BaseModel):
    """How the answer was steered along this vector: by a request's `steer` or its `guard`, from which
    token on (0: from the prompt's end)."""

    by: Literal["steer", "guard"]
    coef: float
    from_token: int


class VectorFigures(BaseModel):
    """One vector's figures for one answer, each read at its layer before any steering edit there."""

    layer: int
    prompt_last: float
    response_avg: float | None
    token_max: float | None
    thresholds: dict[str, float | None]
    predicted: bool | None
    flagged: bool | None
    steered: Steered | None


class Persona(BaseModel):
    """The ``persona`` object of a response: figures per vector."""

    vectors: dict[str, VectorFigures]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class TopLogprob(BaseModel):
    """A candidate token: its text, its log-probability and its UTF-8 bytes."""

    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    """An answer token's log-probability and the most likely tokens at its place."""

    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "content_filter"]
    logprobs: ChoiceLogprobs | None = None


class ChatResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    persona: Persona


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "personavec"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class VectorCard(BaseModel):
    name: str
    trait: str
    layer: int
    norm: float
    thresholds: dict[str, float | None]
    fingerprint: str
    file: str


class VectorList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VectorCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """OpenAI's error body."""

    error: ErrorDetail


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return ErrorBody(error=ErrorDetail(message=message, type=kind, param=param, code=code)).model_dump()


__getattr__ = renamed(__name__, {"Message": "ChatMessage", "Logprobs": "ChoiceLogprobs"})
