"""The batching scheduler's own rules, on a tiny model, with its worker held so that every count is exact:
the queue's bound, cancelled and timed-out jobs never taken, each row's own length, and the
log-probabilities read off the model's own logits."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from personavec.core.generate import generate
from personavec.core.models import LoadedModel, format_chat
from personavec.core.sampling import Sampling
from personavec.core.vectors import PersonaVector
from personavec.deploy.monitor import Watched
from personavec.serve.engine import Job, LocalEngine, Outcome, QueueFull
from personavec.serve.http import ClientError
from personavec.serve.local import _next
from personavec.serve.rows import RowPlan

from tiny import tiny_loaded


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return tiny_loaded()


@pytest.fixture(scope="module")
def vector(loaded: LoadedModel) -> PersonaVector:
    tensor = torch.randn(
        loaded.identity.n_layers + 1, loaded.identity.hidden_size, generator=torch.Generator().manual_seed(1)
    )
    return PersonaVector("opt", tensor, layer=2, metadata={"model": loaded.identity.to_dict()})


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


class Held:
    """An engine whose worker waits (in its `first` step) until `release()`."""

    def __init__(self, loaded: LoadedModel, vector: PersonaVector, max_batch: int, max_queue: int) -> None:
        self.gate = threading.Event()
        watched = [Watched("opt", vector, 2)]
        self.engine = LocalEngine(loaded, watched, max_batch, max_queue, first=self.gate.wait)

    def release(self) -> None:
        self.gate.set()

    def __enter__(self) -> Held:
        return self

    def __exit__(self, *exc: object) -> None:
        self.gate.set()
        self.engine.stop()


def _prompt(loaded: LoadedModel, question: str) -> list[int]:
    text = format_chat(loaded.tokenizer, [{"role": "user", "content": question}])
    return list(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])


def _job(
    loaded: LoadedModel, loop: asyncio.AbstractEventLoop, question: str = "hi", max_tokens: int = 4, **kw: Any
) -> Job:
    settings: dict[str, Any] = {"temperature": 0.0, "top_p": 1.0, "seed": None, **kw}
    plan = settings.pop("plan", RowPlan())
    return Job(
        _prompt(loaded, question), max_tokens, settings.pop("temperature"), settings.pop("top_p"),
        settings.pop("seed"), [], plan, loop, **settings,
    )  # fmt: skip


def _outcome(loop: asyncio.AbstractEventLoop, job: Job) -> Outcome:
    async def wait() -> Outcome:
        while True:
            event = await asyncio.wait_for(job.events.get(), timeout=60)
            if isinstance(event, BaseException):
                raise event
            if isinstance(event, Outcome):
                return event

    return loop.run_until_complete(wait())


def test_the_queue_refuses_exactly_past_max_batch_plus_max_queue(
    loaded: LoadedModel, vector: PersonaVector, loop: asyncio.AbstractEventLoop
) -> None:
    with Held(loaded, vector, max_batch=2, max_queue=3) as held:
        jobs = [_job(loaded, loop) for _ in range(5)]
        for job in jobs:
            held.engine.submit(job)  # 2 + 3 wait: all taken in
        with pytest.raises(QueueFull):
            held.engine.submit(_job(loaded, loop))
        jobs[0].cancelled = jobs[3].cancelled = True  # their clients left
        assert held.engine.waiting == 3
        held.engine.submit(_job(loaded, loop))
        held.engine.submit(_job(loaded, loop))  # the two places are free again, at once
        with pytest.raises(QueueFull):
            held.engine.submit(_job(loaded, loop))


def test_a_job_cancelled_or_timed_out_while_waiting_is_never_taken(
    loaded: LoadedModel, vector: PersonaVector, loop: asyncio.AbstractEventLoop
) -> None:
    inputs: list[list[int]] = []
    hook = loaded.model.register_forward_pre_hook(
        lambda _m, args, kwargs: inputs.append(list(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        with Held(loaded, vector, max_batch=4, max_queue=4) as held:
            sampled = {"temperature": 1.0, "top_p": 1.0}
            gone = _job(loaded, loop, "Tell me about the weather.", 6, seed=1, **sampled)
            late = _job(loaded, loop, "Tell me about the weather.", 6, seed=2, **sampled)
            kept = _job(loaded, loop, "How do I bake bread?", 6, seed=7, **sampled)
            for job in (gone, late, kept):
                held.engine.submit(job)
            gone.cancelled = True  # its client left
            with pytest.raises(ClientError) as timed_out:  # its deadline passed while it waited
                loop.run_until_complete(_next(late, None, deadline=0.0))  # type: ignore[arg-type]
            assert timed_out.value.status == 504 and late.cancelled
            held.release()
            outcome = _outcome(loop, kept)
            assert held.engine.batch_sizes == [1]  # the batch held `kept` alone
            assert gone.events.empty() and late.events.empty()
    finally:
        hook.remove()
    assert {shape[0] for shape in inputs} == {1}  # no prefill of the others' prompts
    assert inputs[0][1] == len(kept.prompt_ids)
    text = format_chat(loaded.tokenizer, [{"role": "user", "content": "How do I bake bread?"}])
    alone = generate(
        loaded, [text], Sampling(max_new_tokens=6, seed=7, batch_size=1, **sampled), progress=False
    )
    assert (
        loaded.tokenizer.decode([t.id for t in outcome.tokens], skip_special_tokens=True).strip() == alone[0]
    )


def test_each_row_of_a_shared_batch_stops_at_its_own_max_tokens(
    loaded: LoadedModel, vector: PersonaVector, loop: asyncio.AbstractEventLoop
) -> None:
    with Held(loaded, vector, max_batch=4, max_queue=4) as held:
        short, long = _job(loaded, loop, "hi", 4), _job(loaded, loop, "Tell me a story.", 32)
        held.engine.submit(short)
        held.engine.submit(long)
        held.release()
        a, b = _outcome(loop, short), _outcome(loop, long)
        assert held.engine.batch_sizes == [2]
    assert (len(a.tokens), a.finish_reason) == (4, "length")
    assert (len(b.tokens), b.finish_reason) == (32, "length")


def _reference_logprobs(loaded: LoadedModel, prompt: list[int], answer: list[int]) -> torch.Tensor:
    """log-softmax of the model's own logits, in float64, at each answer token's place (one prefill)."""
    ids = torch.tensor([prompt + answer])
    with torch.inference_mode():
        logits = loaded.model(ids).logits[0].double()
    return torch.log_softmax(logits, dim=-1)[len(prompt) - 1 : len(prompt) - 1 + len(answer)]


@pytest.mark.parametrize("steer", [0.0, 6.0])
def test_logprobs_are_the_models_own_before_temperature_and_under_steering(
    loaded: LoadedModel, vector: PersonaVector, loop: asyncio.AbstractEventLoop, steer: float
) -> None:
    plan = RowPlan({0: steer}) if steer else RowPlan()
    with Held(loaded, vector, max_batch=2, max_queue=2) as held:
        job = _job(
            loaded, loop, "How do I bake bread?", 12, temperature=0.7, seed=3, top_logprobs=5, plan=plan
        )
        held.engine.submit(job)
        held.release()
        outcome = _outcome(loop, job)
    answer = [t.id for t in outcome.tokens]
    if steer:
        with vector.apply(loaded.model, steer):
            reference = _reference_logprobs(loaded, job.prompt_ids, answer)
    else:
        reference = _reference_logprobs(loaded, job.prompt_ids, answer)
    for token, row in zip(outcome.tokens, reference, strict=True):
        assert token.scored is not None and len(token.scored.top) == 5
        assert token.scored.logprob == pytest.approx(float(row[token.id]), abs=1e-4)
        values, indices = row.topk(5)
        assert [i for i, _ in token.scored.top] == indices.tolist()
        assert [lp for _, lp in token.scored.top] == pytest.approx(values.tolist(), abs=1e-4)


def test_the_engine_on_the_flat_backend_answers_as_on_transformers(
    loaded: LoadedModel, vector: PersonaVector, loop: asyncio.AbstractEventLoop
) -> None:
    """Serve's local mode on vLLM's shape (flat steps, chunked prefill, a prefix cache, a preemption):
    the same tokens, projections, guard step and finish for plain, steered, guarded and stopped rows."""
    from flat_backend import FlatBackend
    from personavec.serve.rows import GuardPlan

    def answers(model: Any) -> list[Outcome]:
        gate = threading.Event()
        engine = LocalEngine(model, [Watched("opt", vector, 2)], 4, 4, first=gate.wait)
        jobs = [
            _job(loaded, loop, "hi", 6),
            _job(loaded, loop, "Tell me a story.", 8, plan=RowPlan({0: 3.0})),
            _job(loaded, loop, "How do I bake bread?", 8, plan=RowPlan(guard=GuardPlan(0, -1e9, 2.0))),
            _job(loaded, loop, "Tell me about the weather.", 8, top_logprobs=2),
        ]
        for job in jobs:
            engine.submit(job)
        gate.set()
        try:
            return [_outcome(loop, job) for job in jobs]
        finally:
            engine.stop()

    flat = FlatBackend(loaded, token_budget=12)
    here, there = answers(loaded), answers(flat)
    assert flat.preempted and max(len(step) for step in flat.steps) >= 3
    for a, b in zip(here, there, strict=True):
        assert [t.id for t in a.tokens] == [t.id for t in b.tokens] and a.text == b.text
        assert (a.fired_at, a.finish_reason) == (b.fired_at, b.finish_reason)
        assert a.prompt_last == pytest.approx(b.prompt_last, abs=1e-4)
        for x, y in zip(a.tokens, b.tokens, strict=True):
            assert x.projections == pytest.approx(y.projections, abs=1e-4) and x.delta == y.delta
            assert (x.scored is None) == (y.scored is None)
            if x.scored is not None and y.scored is not None:
                assert x.scored.logprob == pytest.approx(y.scored.logprob, abs=1e-4)
    assert here[2].fired_at == 0 and [t.id for t in here[1].tokens] != [t.id for t in here[0].tokens]
    assert here[3].tokens[0].scored is not None and len(here[3].tokens[0].scored.top) == 2
