"""An OpenAI-compatible client (any server speaking the chat completions API) and its retry loop."""

from __future__ import annotations

import json
import os
import random
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from personavec.errors import ConfigError

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


def describe(error: Exception) -> str:
    """One short phrase for an API failure."""
    import openai

    if isinstance(error, openai.APIStatusError):
        return f"HTTP {error.status_code}"
    if isinstance(error, openai.APITimeoutError):
        return "timeout"
    if isinstance(error, openai.APIConnectionError):
        return "connection failed"
    if isinstance(error, json.JSONDecodeError):
        return "a reply that is not JSON"
    return f"{type(error).__name__}: {error}"[:200]


def is_transient(error: Exception) -> bool:
    """429, 5xx, timeouts, refused connections and unusable replies are retried; other errors are not."""
    import openai

    if isinstance(error, openai.APIStatusError):
        return error.status_code == 429 or error.status_code >= 500
    unusable = (Garbage, json.JSONDecodeError, openai.APIResponseValidationError)  # a body that is not JSON
    return isinstance(error, (openai.APIConnectionError, *unusable))


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
