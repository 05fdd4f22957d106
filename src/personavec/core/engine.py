"""Generation on the engine you already run (vLLM, SGLang, llama.cpp's server): an OpenAI-compatible
server writes the answers, every activation stays local (a prefill over prompt + answer, as always).

Exactness: the engine must see exactly the prompt whose activations personavec computes. So the prompt
is formatted here, with the local chat template, and sent as text to the completions endpoint (the
chat endpoint would apply the engine's own template). `RemoteEngine.check`, run before any generation,
refuses an engine that does not serve ``--engine-model`` exactly, that tokenises a probe prompt to other
ids than the local tokenizer (a doubled BOS shows here) or that does not answer a short greedy probe;
each answer's prompt token count is checked against the local count, and an answer the engine cut
short of ``max_new_tokens`` (a context too small) is refused.

Every sampling parameter is sent, the engine-specific ones at their neutral values: engines' defaults
differ (llama-cpp-python's server samples with top-k 40, min-p 0.05 and a repeat penalty of 1.1 unless
told otherwise). Each request carries its own seed, derived from the run's seed and the request's id,
so answers do not depend on how requests are batched into chunks. Failures follow the judge's rules
(`personavec._internal.openai_client`): 429, 5xx and timeouts are retried with backoff; a refused
connection, a bad key or an unknown model fail at once, in one line.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from personavec._internal.deprecation import renamed
from personavec._internal.openai_client import Garbage, Names, call_endpoint, post_json
from personavec.core.models import format_chat, token_counts
from personavec.core.sampling import Sampling
from personavec.errors import ConfigError, EngineError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

KIND = "openai"
KEY_VARIABLE = "PERSONAVEC_ENGINE_API_KEY"
NAMES = Names(
    url="url", key=f"api_key (or ${KEY_VARIABLE})", concurrency="concurrency",
    serves="completions (not only chat)",
    fields={"url": "engine", "api_key": "engine_api_key", "concurrency": "engine_concurrency"},
)  # fmt: skip
PROBE_CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Is the sky blue?"},
]
CONTEXT_FLAGS = "vLLM --max-model-len, SGLang --context-length, llama.cpp --n_ctx"


@dataclass(frozen=True)
class Dialect:
    """Where a kind of engine tokenises text, and the neutral values of the samplers it adds to
    temperature and top-p, under its own names (sent so that its defaults never apply)."""

    servers: str
    tokenize: str  # the path under the server's root
    text_field: str  # the tokenize request's field holding the text
    neutral: dict[str, Any] = field(default_factory=dict)


_OFF = {"min_p": 0.0}  # the samplers both dialects name alike, off
DIALECTS = (
    Dialect("vLLM or SGLang", "/tokenize", "prompt", {**_OFF, "top_k": -1, "repetition_penalty": 1.0}),
    Dialect("llama-cpp-python", "/extras/tokenize", "input", {**_OFF, "top_k": 0, "repeat_penalty": 1.0}),
)
SERVERS = " or ".join(d.servers for d in DIALECTS)  # the engines whose tokenisation can be checked


def probe_tokens(tokenizer: PreTrainedTokenizerBase) -> tuple[str, list[int]]:
    """The probe conversation as the local chat template writes it, and its token ids."""
    text = format_chat(tokenizer, [dict(m) for m in PROBE_CHAT])
    return text, list(tokenizer(text, add_special_tokens=False)["input_ids"])


def remote_tokens(
    url: str, attempts: Sequence[tuple[str, dict[str, Any]]], api_key: str | None
) -> tuple[int | None, list[int] | None, list[str]]:
    """Ask the server at `url` (an OpenAI-compatible base URL) to tokenise, trying each (path under
    its root, request body) of `attempts` in turn: the index of the first that answers with token ids,
    the ids, and why the ones before failed (None, None and every failure when none answers)."""
    root = url.rstrip("/").removesuffix("/v1")
    failures = []
    for i, (path, body) in enumerate(attempts):
        try:
            tokens = post_json(root + path, body, api_key).get("tokens")
        except (OSError, ValueError, AttributeError) as error:
            failures.append(f"{path}: {error}")
            continue
        if isinstance(tokens, list) and all(isinstance(t, int) for t in tokens):
            return i, tokens, failures
        failures.append(f"{path}: no token ids in the reply")
    return None, None, failures


def request_seed(seed: int, request_id: str) -> int:
    """The seed of one request: a hash of the run's `seed` and the request's id (31 bits)."""
    digest = hashlib.sha256(f"{seed}:{request_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class Pending:
    """Answers on their way: `result()` waits for them, in order (the first failure is raised, and the
    requests not yet sent are cancelled)."""

    def __init__(self, futures: list[Future[str]], stop: threading.Event) -> None:
        self.futures, self.stop = futures, stop

    def result(self) -> list[str]:
        try:
            return [future.result() for future in self.futures]
        except BaseException:
            self.stop.set()
            for future in self.futures:
                future.cancel()
            raise


class RemoteEngine:
    """An OpenAI-compatible server (``--engine openai:URL``) that answers locally formatted prompts.

    `model` must be one of the ids its ``/v1/models`` lists; `concurrency` requests are in flight at
    once; `api_key` (else ``$PERSONAVEC_ENGINE_API_KEY``) is the engine's own key, not the judge's.
    """

    kind = KIND

    def __init__(
        self,
        url: str,
        model: str,
        concurrency: int = 16,
        api_key: str | None = None,
        timeout: float = 600.0,
        retries: int = 4,
        backoff: float = 1.0,
    ) -> None:
        import openai

        if not url.startswith(("http://", "https://")):
            raise ConfigError(
                f"url {url!r} is not a server's URL such as http://127.0.0.1:8000/v1",
                {"url": "engine"},
            )
        if not model:
            raise ConfigError(
                "an engine needs a model: one of the ids the engine lists at /v1/models",
                {"model": "engine_model"},
            )
        if concurrency < 1:
            raise ConfigError(f"the engine's concurrency must be at least 1, got {concurrency}")
        self.api_key = api_key or os.environ.get(KEY_VARIABLE)
        self.client = openai.OpenAI(
            base_url=url, api_key=self.api_key or "none", timeout=timeout, max_retries=0
        )
        self.url, self.model = str(self.client.base_url), model
        self.concurrency, self.retries, self.backoff = concurrency, retries, backoff
        self.dialect: Dialect | None = None  # known once checked
        self._checked: list[int] | None = None  # the probe's tokens of the tokenizer checked against
        self.tokenizer: PreTrainedTokenizerBase | None = None  # the one checked against
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def from_spec(
        cls, spec: str, model: str | None, concurrency: int = 16, api_key: str | None = None
    ) -> RemoteEngine:
        """The engine of ``--engine openai:URL`` and ``--engine-model``."""
        kind, _, url = spec.partition(":")
        if kind != KIND or not url:
            raise ConfigError(f"--engine {spec!r}: use openai:URL, e.g. openai:http://127.0.0.1:8000/v1")
        return cls(url, model or "", concurrency, api_key)

    def identity(self) -> dict[str, str]:
        """What a run's identity records: the kind of engine and the model it serves (not the URL)."""
        return {"kind": self.kind, "model": self.model}

    def _call(self, call: Any, stop: threading.Event | None = None) -> Any:
        return call_endpoint(call, self.url, self.model, self.retries, self.backoff, NAMES, EngineError, stop)

    def check(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Refuse an engine that cannot stand in for the local model (see the module docstring); once
        checked against a tokenizer, checking again costs nothing."""
        text, local = probe_tokens(tokenizer)
        if self._checked == local:
            return
        served = self._call(lambda: [m.id for m in self.client.models.list()])
        if self.model not in served:
            raise EngineError(
                f"the engine {self.url} serves {served}, not {self.model!r}: set model to one of them",
                {"model": "engine_model"},
            )
        self.dialect, tokens = self._tokenize(text)
        if tokens != local:
            raise EngineError(_mismatch(self.url, tokens, local))
        self.tokenizer = tokenizer
        self.submit([text], Sampling(max_new_tokens=4), [0]).result()
        self._checked = local

    def _tokenize(self, text: str) -> tuple[Dialect, list[int]]:
        attempts = [(d.tokenize, {"model": self.model, d.text_field: text}) for d in DIALECTS]
        answered, tokens, failures = remote_tokens(self.url, attempts, self.api_key)
        if answered is not None and tokens is not None:
            return DIALECTS[answered], tokens
        raise EngineError(
            f"the engine {self.url} tokenises no text ({'; '.join(failures)}): personavec cannot check that "
            f"it sees the prompts whose activations it computes; serve the model with {SERVERS}"
        )

    def submit(self, prompts: Sequence[str], sampling: Sampling, seeds: Sequence[int]) -> Pending:
        """Send chat-formatted `prompts` for answers sampled as `sampling` says, request i with seed
        ``seeds[i]``; return at once (call from one thread: the prompts are tokenised here)."""
        if self.dialect is None or self.tokenizer is None:
            raise EngineError("the engine was not checked: call RemoteEngine.check(tokenizer) first")
        lengths = token_counts(self.tokenizer, prompts)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="engine")
        stop = threading.Event()
        futures = [
            self._pool.submit(self._answer, prompt, n, sampling, seed, stop)
            for prompt, n, seed in zip(prompts, lengths, seeds, strict=True)
        ]
        return Pending(futures, stop)

    def _answer(
        self, prompt: str, n_prompt: int, sampling: Sampling, seed: int, stop: threading.Event
    ) -> str:
        if stop.is_set():
            raise EngineError("cancelled: another request failed")
        assert self.dialect is not None
        greedy = sampling.greedy
        kwargs: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": sampling.max_new_tokens,
            "temperature": 0.0 if greedy else sampling.temperature,
            "top_p": 1.0 if greedy else sampling.top_p,
            "seed": seed,
            "n": 1,
            "frequency_penalty": 0.0,
            "presence_penalty": 0.0,
            "extra_body": self.dialect.neutral,
        }

        def ask() -> Any:
            reply = self.client.completions.create(**kwargs)
            if not reply.choices or reply.usage is None:
                raise Garbage("a reply without choices or token usage")
            return reply

        reply = self._call(ask, stop)
        choice, usage = reply.choices[0], reply.usage
        if usage.prompt_tokens != n_prompt:
            raise EngineError(
                f"the engine {self.url} read a prompt as {usage.prompt_tokens} tokens, the local tokenizer "
                f"as {n_prompt}: it does not see the prompts whose activations personavec computes; serve "
                "the same model and tokenizer as the local one"
            )
        if choice.finish_reason == "length" and usage.completion_tokens < sampling.max_new_tokens:
            raise EngineError(
                f"the engine {self.url} cut an answer at {usage.completion_tokens} of the "
                f"{sampling.max_new_tokens} tokens asked (prompt {n_prompt} tokens): its context is too "
                f"short; start it with a longer one ({CONTEXT_FLAGS}) or lower max_new_tokens",
                ("max_new_tokens",),
            )
        return str(choice.text).strip()


def _mismatch(url: str, tokens: list[int], local: list[int]) -> str:
    """The one line refusing an engine that tokenises the probe prompt otherwise."""
    why = ""
    if tokens[1:] == local:
        doubled = bool(local) and tokens[0] == local[0]
        why = (
            " (a doubled BOS: the local chat template writes one and the engine adds another)"
            if doubled
            else " (the engine adds a BOS token that the local template does not write)"
        )
    return (
        f"the engine {url} tokenises a probe prompt to {len(tokens)} tokens, the local tokenizer to "
        f"{len(local)}{why}: it would not see the prompts whose activations personavec computes; serve "
        "the same model and tokenizer as the local one"
    )


__getattr__ = renamed(__name__, {"Engine": "RemoteEngine", "PROBE": "PROBE_CHAT"})
