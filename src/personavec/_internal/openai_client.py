"""An OpenAI-compatible client (any server speaking the chat completions API) and its retry loop."""

from __future__ import annotations

import json
import os
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from personavec.errors import ConfigError, JudgeError, PersonavecError

if TYPE_CHECKING:
    import openai

T = TypeVar("T")
KEY_VARIABLE = "OPENAI_API_KEY"


class Garbage(Exception):
    """A reply that arrived but cannot be used (malformed, or no score in it): worth another try."""


def make_client(base_url: str | None, timeout: float) -> openai.OpenAI:
    """A client with the key from the environment; the SDK's own retries are off (ours are below)."""
    import openai

    key = os.environ.get(KEY_VARIABLE)
    if not key:
        raise ConfigError(
            f"the OpenAI-compatible backend needs an API key: set {KEY_VARIABLE} "
            "(any non-empty value for a local server that does not check it)"
        )
    return openai.OpenAI(api_key=key, base_url=base_url, timeout=timeout, max_retries=0)


@dataclass(frozen=True)
class Names:
    """How an endpoint is set, as the library's arguments name it (its URL, key and concurrency): the
    fixes name them; `fields` maps each to the command line's field for it (its flag)."""

    url: str = "base_url"
    key: str = KEY_VARIABLE
    concurrency: str = "concurrency"
    serves: str = "chat completions"
    fields: Mapping[str, str] = field(
        default_factory=lambda: {"base_url": "base_url", "concurrency": "concurrency"}
    )


JUDGE = Names()

# what to try for each HTTP status that no retry can fix (the probe's one line names it)
_FIXES = {
    400: "the server refused the request: check the model name and that it serves {serves}",
    401: "a bad API key: check {key}",
    403: "the key may not use this model: check {key} and the account's access",
    404: "an unknown model or a wrong path: check the model name, and {url} (it usually ends in /v1)",
    429: "rate limited: wait, or lower {concurrency}",
}


def _refused(error: Exception) -> bool:
    """A connection that never opened (refused, or an unknown host): no retry can fix the URL.

    The SDK raises it from its HTTP library's ``ConnectError`` (httpx or httpx2, by SDK version); a
    timeout comes from a ``...Timeout`` instead.
    """
    import openai

    return isinstance(error, openai.APIConnectionError) and type(error.__cause__).__name__ == "ConnectError"


def describe(error: Exception) -> str:
    """One short phrase for an API failure."""
    import openai

    if isinstance(error, openai.APIStatusError):
        said = error.body.get("message") if isinstance(error.body, dict) else None
        # a 400 says what was wrong with the request (a prompt over the context, ...)
        return (
            f"HTTP {error.status_code} ({str(said)[:200]})"
            if error.status_code == 400 and said
            else f"HTTP {error.status_code}"
        )
    if isinstance(error, openai.APITimeoutError):
        return "timeout"
    if _refused(error):
        reason = str(error.__cause__)
        return "connection refused" if "refused" in reason.lower() else f"cannot connect ({reason})"
    if isinstance(error, openai.APIConnectionError):
        return "connection failed"
    if isinstance(error, json.JSONDecodeError):
        return "a reply that is not JSON"
    return f"{type(error).__name__}: {error}"[:200]


def fix(error: Exception, names: Names = JUDGE) -> str:
    """What to try about an API failure, in the words of `names`."""
    import openai

    if isinstance(error, openai.APIStatusError):
        if error.status_code >= 500:
            return "the server failed: see its logs, or try again later"
        default = "check the model name, {url} and {key}"
        return _FIXES.get(error.status_code, default).format_map(vars(names))
    if isinstance(error, openai.APITimeoutError):
        return f"no reply in time: is the server overloaded, or {names.url} another kind of server?"
    if _refused(error):
        return f"is the server running, and {names.url} right?"
    return f"is {names.url} an OpenAI-compatible endpoint (usually ending in /v1)?"


def is_transient(error: Exception) -> bool:
    """What may pass on another try: 429, 5xx, timeouts, a dropped connection and unusable replies.

    A refused connection, an unknown host and the other 4xx (a bad key, an unknown model or path) are
    not retried: they fail again at once.
    """
    import openai

    if isinstance(error, openai.APIStatusError):
        return error.status_code == 429 or error.status_code >= 500
    unusable = (Garbage, json.JSONDecodeError, openai.APIResponseValidationError)  # a body that is not JSON
    return isinstance(error, (openai.APIConnectionError, *unusable)) and not _refused(error)


def with_retries(
    call: Callable[[], T], retries: int, backoff: float, stop: threading.Event | None = None
) -> T:
    """``call()``, retried up to `retries` times on transient failures with exponential backoff + jitter.

    The last failure is raised again once the retries are spent, or at once when `stop` is set.
    """
    stop = stop or threading.Event()
    for attempt in range(retries + 1):
        try:
            return call()
        except Exception as error:  # classified just below
            if attempt == retries or not is_transient(error):
                raise
            if stop.wait(backoff * 2**attempt * random.uniform(0.5, 1.5)):
                raise
    raise AssertionError("unreachable")


def call_endpoint(
    call: Callable[[], T],
    url: str,
    model: str,
    retries: int,
    backoff: float,
    names: Names = JUDGE,
    error: type[PersonavecError] = JudgeError,
    stop: threading.Event | None = None,
) -> T:
    """``call()`` with retries; a failure that remains is an `error` (a `JudgeError` unless told) of one
    line naming the endpoint `url`, the `model`, the cause and the fix (in the words of `names`)."""
    try:
        return with_retries(call, retries, backoff, stop)
    except Exception as failure:  # any API failure, classified by describe and fix
        retried = f" after {retries} retries" if retries and is_transient(failure) else ""
        cause = f"{describe(failure)}{retried}; {fix(failure, names)}"
        raise error(
            f"the endpoint {url} (model {model}) cannot answer: {cause}", dict(names.fields)
        ) from failure


def post_json(url: str, body: dict[str, Any], api_key: str | None, timeout: float = 10.0) -> Any:
    """The JSON reply to a POST of `body` to `url` (for an engine's own endpoints, such as /tokenize);
    raises ``OSError`` (``urllib.error.URLError`` among them) or ``ValueError`` when there is none."""
    import urllib.request

    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())
