"""Upstream mode: chat requests are forwarded to the engine you already run, and scored here by prefill.

Before forwarding, one batched prefill of the prompt (formatted with the local chat template) gives the
prompt-last projections, so a request predicted to show a trait can be refused before a token is
generated (``--on-flag``). The request is forwarded as a chat request (tools and response formats keep
working); its answer (a streamed one relayed chunk by chunk) is scored by a prefill of prompt + answer
when complete. Steering needs the model in-process: a request that asks for it gets a 400.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import AsyncIterator
from typing import Any

import openai
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from transformers import PreTrainedTokenizerBase

from personavec._internal.deprecation import renamed
from personavec.core.engine import PROBE_CHAT, probe_tokens, remote_tokens
from personavec.errors import ConfigError
from personavec.serve import protocol as p
from personavec.serve.config import ServeConfig
from personavec.serve.engine import QueueFull, ScoreJob, Stopping
from personavec.serve.http import ClientError, call_of
from personavec.serve.record import Record
from personavec.serve.state import State, vector_figures


def client(config: ServeConfig) -> openai.AsyncOpenAI:
    """The client that forwards requests (no retries: a gateway does not resend a completion)."""
    key = config.upstream_api_key or "none"
    return openai.AsyncOpenAI(
        base_url=config.upstream, api_key=key, timeout=config.upstream_timeout, max_retries=0
    )


def check(config: ServeConfig, tokenizer: PreTrainedTokenizerBase) -> None:
    """At start-up: the upstream answers and serves ``--upstream-model`` (else a ConfigError), and it
    tokenises the remote engine's probe conversation as the local template does (else a warning).

    Less strict than `RemoteEngine.check` (which refuses), by design: a remote engine answers prompts
    formatted here, whose activations are then computed here, so another tokenisation makes every
    figure wrong; upstream mode forwards chat requests that the engine renders with its own template
    (tools and response formats need that), and a small template difference only blurs the figures of
    answers that are the engine's own either way."""
    url, model, api_key = str(config.upstream), str(config.upstream_model), config.upstream_api_key
    probe = openai.OpenAI(base_url=url, api_key=api_key or "none", timeout=10, max_retries=0)
    try:
        ids = [m.id for m in probe.models.list()]
    except openai.AuthenticationError:
        raise ConfigError(
            f"the upstream {url} refused the key (401): set upstream_api_key", ("upstream_api_key",)
        ) from None
    except openai.APIError as error:
        raise ConfigError(
            f"the upstream {url} does not answer ({error}): start it, or fix its URL",
            {"its URL": "upstream"},
        ) from None
    if model not in ids:
        raise ConfigError(
            f"the upstream {url} serves {ids}, not {model!r}: set upstream_model to one of them",
            ("upstream_model",),
        )
    text, local = probe_tokens(tokenizer)
    # vLLM renders the conversation with its own template; llama-cpp-python tokenises text
    attempts: list[tuple[str, dict[str, Any]]] = [
        ("/tokenize", {"model": model, "messages": PROBE_CHAT, "add_generation_prompt": True}),
        ("/extras/tokenize", {"input": text}),
    ]
    checked = ("its template", "its tokenizer (its chat template is not checked)")
    answered, tokens, _ = remote_tokens(url, attempts, api_key)
    if answered is None or tokens is None:
        warnings.warn(
            f"cannot check the upstream's tokenisation (no /tokenize or /extras/tokenize at {url}): make "
            "sure it serves the same model and chat template as --model",
            stacklevel=2,
        )
    elif tokens != local:
        warnings.warn(
            f"the upstream renders a probe conversation to other tokens than the local template "
            f"({len(tokens)} vs {len(local)} tokens, checked with {attempts[answered][0]}): the figures "
            "may describe a prompt the engine did not see; serve the same model and chat template",
            stacklevel=2,
        )
    else:
        print(f"upstream {url}: {model}, the same tokens as here (checked {checked[answered]})", flush=True)


async def _score(state: State, prompt: str, answer: str | None) -> list[float]:
    assert state.engine is not None
    loop = asyncio.get_running_loop()
    job = ScoreJob(prompt, answer, loop, loop.create_future())
    try:
        state.engine.submit(job)
    except QueueFull as error:
        raise ClientError(429, f"too many requests waiting ({error})", "rate_limit_error",
                          headers={"Retry-After": "1"}) from None  # fmt: skip
    except Stopping:
        raise ClientError(
            503, "the server is shutting down", "server_error", headers={"Retry-After": "5"}
        ) from None
    return await job.result


def _text(message: p.UpstreamMessage) -> str:
    content = message.content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if part.get("type") == "text")
    return content or ""


def _figures(state: State, last: list[float], avg: list[float] | None) -> dict[str, Any]:
    out = {}
    for j, w in enumerate(state.watched):
        value = None if avg is None or avg[j] != avg[j] else avg[j]  # NaN: an empty answer
        out[w.name] = vector_figures(state, j, last[j], None, response_avg=value)
    return out


def _upstream_error(error: openai.APIError, url: str) -> ClientError:
    if isinstance(error, openai.APITimeoutError):
        return ClientError(504, f"the upstream {url} did not answer in time", "upstream_error")
    if isinstance(error, openai.APIStatusError):
        body = error.body if isinstance(error.body, dict) else {}
        detail = body.get("error", body)
        message = detail.get("message") if isinstance(detail, dict) else None
        status = error.status_code
        text = f"the upstream answered {status}: {message or error}"
        return ClientError(status if status < 500 else 502, text, "upstream_error")
    return ClientError(502, f"the upstream {url} does not answer: {error}", "upstream_error")


def _prompt(state: State, body: p.UpstreamChatRequest) -> tuple[str, int]:
    """The request checked, its prompt as the local template formats it, and the prompt's length."""
    persona = body.persona
    if persona is not None and (persona.steer or persona.guard):
        message = "steering needs the model in-process; this server forwards to an upstream engine"
        param = "persona.steer" if persona.steer else "persona.guard"
        raise ClientError(400, f"{message} (--upstream): it can measure but not steer", param=param)
    if body.model not in state.names:
        message = f"the model {body.model!r} does not exist; use one of {state.names}"
        raise ClientError(404, message, param="model", code="model_not_found")
    backend, most = state.backend, state.config.limits.max_prompt_tokens
    prompt = backend.chat([{"role": m.role, "content": _text(m)} for m in body.messages])
    n_prompt = len(backend.encode(prompt))
    if n_prompt > most:
        message = f"the prompt has {n_prompt} tokens; this server takes at most {most}"
        raise ClientError(400, message, param="messages", code="context_length_exceeded")
    return prompt, n_prompt


async def answer_upstream(state: State, body: p.UpstreamChatRequest, request: Request) -> Response:
    """ScoreJob, forward and score again one chat completion request."""
    call = call_of(request)
    messages = [m.model_dump(exclude_unset=True) for m in body.messages]
    base = call.record = Record(call.id, body.model, 200, call.start, messages=messages)
    try:
        return await _answer(state, body, base)
    except ClientError as error:
        base.status, base.error, base.error_type = error.status, str(error), error.kind
        raise


async def _answer(state: State, body: p.UpstreamChatRequest, base: Record) -> Response:
    config = state.config
    prompt, base.prompt_tokens = _prompt(state, body)
    if body.logprobs:
        await _check_logprobs(state)
    last = await _score(state, prompt, None)
    figures = _figures(state, last, None)
    predicted = [name for name, f in figures.items() if f["predicted"]]
    if predicted and config.on_flag == "refuse":
        return _refusal(state, body, base, figures, predicted)
    annotate = predicted and config.on_flag == "annotate"
    headers = {"X-Persona-Predicted": ",".join(predicted)} if annotate else {}
    own = ("persona", "model", "messages", "stream")
    forwarded = {k: v for k, v in body.model_dump(exclude_unset=True).items() if k not in own}
    try:
        reply = await state.upstream.chat.completions.create(
            model=str(config.upstream_model), messages=base.messages, stream=body.stream, extra_body=forwarded
        )
    except openai.APIError as error:
        raise _upstream_error(error, str(config.upstream)) from None
    if body.stream:
        relay = _relay(state, body, base, prompt, last, reply)
        return StreamingResponse(relay, media_type="text/event-stream", headers=headers)
    data = reply.model_dump(mode="json", exclude_unset=True)
    choice = (data.get("choices") or [{}])[0]
    content = (choice.get("message") or {}).get("content") or ""
    figures = _figures(state, last, await _score(state, prompt, content))
    data["model"], data["persona"] = body.model, {"vectors": figures}
    base.completion_tokens = int((data.get("usage") or {}).get("completion_tokens") or 0)
    base.finish_reason, base.figures, base.answer = choice.get("finish_reason"), figures, content
    return state.wire.response(data, headers=headers)


async def _check_logprobs(state: State) -> None:
    """Refuse ``logprobs`` (400) when the upstream does not return them; asked once, with a one-token
    probe, on the first request that wants them."""
    if state.upstream_logprobs is None:
        try:
            reply = await state.upstream.chat.completions.create(
                model=str(state.config.upstream_model), messages=PROBE_CHAT, max_tokens=1, logprobs=True,
                top_logprobs=1,
            )  # fmt: skip
            logprobs = reply.choices[0].logprobs if reply.choices else None
            state.upstream_logprobs = bool(logprobs is not None and logprobs.content)
        except openai.BadRequestError:
            state.upstream_logprobs = False
        except openai.APIError as error:
            raise _upstream_error(error, str(state.config.upstream)) from None
    if not state.upstream_logprobs:
        raise ClientError(
            400, f"the upstream {state.config.upstream} returns no logprobs: drop logprobs, or serve an "
            "engine that returns them (vLLM, SGLang)", param="logprobs",
        )  # fmt: skip


def _sse(state: State, base: Record, choices: list[dict[str, Any]], **extra: Any) -> str:
    """One chunk of this request's stream, as a server-sent event."""
    data = {
        "id": base.id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": base.model,
    }
    return state.wire.sse({**data, "choices": choices, **extra})


def _refusal(
    state: State, body: p.UpstreamChatRequest, base: Record, figures: dict[str, Any], predicted: list[str]
) -> Response:
    """A 200 that declines: empty content, ``content_filter``, and the figures saying why."""
    reason = f"the prompt's projection exceeds the prompt_last threshold of {', '.join(predicted)}"
    persona = {"vectors": figures, "refused": reason}
    base.finish_reason, base.figures = "content_filter", figures
    message = {"role": "assistant", "content": ""}
    if body.stream:
        choice = {"index": 0, "delta": message, "finish_reason": "content_filter"}

        async def events() -> AsyncIterator[str]:
            yield _sse(state, base, [choice], persona=persona)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")
    usage = {"prompt_tokens": base.prompt_tokens, "completion_tokens": 0, "total_tokens": base.prompt_tokens}
    choice = {"index": 0, "message": message, "finish_reason": "content_filter", "logprobs": None}
    data = {"id": base.id, "object": "chat.completion", "created": int(time.time()), "model": body.model}
    return state.wire.response({**data, "choices": [choice], "usage": usage, "persona": persona})


async def _relay(
    state: State, body: p.UpstreamChatRequest, base: Record, prompt: str, last: list[float], stream: Any
) -> AsyncIterator[str]:
    """The engine's chunks as they come; then the persona summary and ``[DONE]``."""
    parts: list[str] = []
    done = False
    try:
        async for chunk in stream:
            data = chunk.model_dump(mode="json", exclude_unset=True)
            data["model"] = body.model
            for choice in data.get("choices") or []:
                parts.append((choice.get("delta") or {}).get("content") or "")
                base.finish_reason = choice.get("finish_reason") or base.finish_reason
            if data.get("usage"):
                base.completion_tokens = int(data["usage"].get("completion_tokens") or 0)
            yield state.wire.sse(data)
        done = True
    except Exception as error:  # the upstream went away mid-stream (transport errors come unwrapped here)
        base.status, base.error = 502, f"the upstream {state.config.upstream} went away mid-stream: {error}"
        base.error_type = "upstream_error"
        yield state.wire.sse(p.error_body(base.error, "upstream_error", code="upstream_unavailable"))
        return
    finally:
        if not done:
            if base.status == 200:  # our client left mid-stream (cancelled, not an error)
                base.status, base.answer = 499, "".join(parts)
            await stream.close()  # stop the engine's generation
    content = "".join(parts)
    figures = _figures(state, last, await _score(state, prompt, content))
    counted = len(state.backend.encode(content))
    base.figures, base.answer, base.completion_tokens = figures, content, base.completion_tokens or counted
    yield _sse(state, base, [], persona={"vectors": figures})
    yield "data: [DONE]\n\n"


__getattr__ = renamed(__name__, {"answer": "answer_upstream"})
