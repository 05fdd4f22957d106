"""The `Backend` protocol on the transformers backend, and beside it on the test's flat backend (vLLM's
shape: one ``[num_tokens, hidden]`` tensor per step, chunked prefill, a prefix cache, a preemption) and
on real vLLM (`tests/vllm_engine.py`: chunked prefill and a small KV cache): the same answers and
figures, each against an independent recomputation with the model itself."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from flat_backend import FlatBackend
from personavec.core.activations import pooled_activations
from personavec.core.backend import (
    Backend,
    Edit,
    Generation,
    GenerationRequest,
    GuardRule,
    LogprobRequest,
    Probe,
    as_backend,
)
from personavec.core.hf import TransformersBackend
from personavec.core.models import LoadedModel
from vllm_engine import require_vllm, small_engine

QUESTIONS = [
    "Is the sky blue?",
    "Tell me a story about a cat.",
    "What is 2+2?",
    "Name three colours, please, and explain why they are nice.",
]
LAYER = 10


@pytest.fixture(scope="module", params=["flat", "vllm"])
def backends(
    request: pytest.FixtureRequest, smollm2: LoadedModel
) -> Iterator[tuple[TransformersBackend, Any]]:
    """The transformers backend, and the flat backend or vLLM (one engine for the module)."""
    if request.param == "flat":
        yield TransformersBackend(smollm2), FlatBackend(smollm2)
        return
    require_vllm(module=False)
    engine = small_engine()
    yield TransformersBackend(smollm2), engine
    engine.close()


@pytest.fixture(scope="module")
def directions() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    unit = torch.randn(576, generator=generator)
    return unit / unit.norm(), 0.5 * torch.randn(576, generator=generator)


def prompts(backend: Backend) -> list[tuple[int, ...]]:
    return [tuple(backend.encode(backend.chat([{"role": "user", "content": q}]))) for q in QUESTIONS]


def requests(backend: Backend, unit: torch.Tensor, v: torch.Tensor) -> list[GenerationRequest]:
    """Four rows: plain, steered, guarded from the prompt's end, steered and stopped at a full stop."""
    probe = (Probe(LAYER, unit),)
    ids = prompts(backend)
    return [
        GenerationRequest(ids[0], 12, probes=probe, top_logprobs=2),
        GenerationRequest(ids[1], 12, edits=(Edit(LAYER, v, 2.0),), probes=probe, top_logprobs=0),
        GenerationRequest(ids[2], 12, probes=probe, guards=(GuardRule(0, -1e9, 1.0, v),)),
        GenerationRequest(
            ids[3], 16, edits=(Edit(LAYER, v, -1.0, positions="response"),), probes=probe, stops=(".",)
        ),
    ]


@pytest.fixture(scope="module")
def generated(
    backends: tuple[TransformersBackend, Any], directions: tuple[torch.Tensor, torch.Tensor]
) -> tuple[list[Generation], list[Generation]]:
    hf, flat = backends
    return hf.generate(requests(hf, *directions)), flat.generate(requests(flat, *directions))


def test_a_loaded_model_is_a_transformers_backend(smollm2: LoadedModel) -> None:
    backend = as_backend(smollm2)
    assert isinstance(backend, TransformersBackend) and isinstance(backend, Backend)
    assert as_backend(backend) is backend


def test_the_flat_backend_ran_as_vllm_does(
    backends: tuple[TransformersBackend, Any], generated: tuple[list[Generation], list[Generation]]
) -> None:
    """Its steps held several requests, split prompts, skipped a cached prefix and recomputed one."""
    flat = backends[1]
    if not isinstance(flat, FlatBackend):
        pytest.skip("the flat backend's own schedule (vLLM's: tests/core/test_vllm.py)")
    assert max(len(step) for step in flat.steps) >= 3
    firsts: dict[object, int] = {}
    for step in flat.steps:
        for segment in step:
            firsts.setdefault(segment.key, segment.start)
    assert any(start > 0 for start in firsts.values())  # a prefix served from the cache
    lengths = [len(prompt) for prompt in prompts(flat)]
    starts = [(g.key, g.start) for step in flat.steps for g in step if g.length > 1]
    assert any(start + 1 < lengths[int(str(key))] and start > 0 for key, start in starts)  # a chunked prompt
    assert flat.preempted  # and recomputed: prompt and answer so far prefilled again, past the prompt
    prompt_len = lengths[flat.preempted[0]]
    again = [g for step in flat.steps for g in step if g.key == flat.preempted[0] and g.length > 1]
    assert any(g.start + g.length > prompt_len for g in again)


def test_both_backends_give_the_same_answers_and_readings(
    generated: tuple[list[Generation], list[Generation]],
) -> None:
    for a, b in zip(*generated, strict=True):
        assert a.token_ids == b.token_ids and a.text == b.text and a.finish_reason == b.finish_reason
        assert a.fired_at == b.fired_at
        assert len(a.readings) == len(a.token_ids) + 1 == len(b.readings)
        assert torch.allclose(torch.tensor(a.readings), torch.tensor(b.readings), atol=1e-3)
        if a.scores is not None:
            assert b.scores is not None and len(a.scores) == len(b.scores) == len(a.token_ids)
            for x, y in zip(a.scores, b.scores, strict=True):
                assert x.logprob == pytest.approx(y.logprob, abs=1e-4)
                assert [t for t, _ in x.top] == [t for t, _ in y.top]
    plain, steered, guarded, stopped = generated[0]
    assert guarded.fired_at == [0] and plain.fired_at == []
    assert stopped.finish_reason == "stop" and "." not in stopped.text
    assert plain.scores is not None and len(plain.scores[0].top) == 2
    assert steered.scores is not None and steered.scores[0].top == []


def test_readings_are_the_models_own_projections(
    smollm2: LoadedModel,
    generated: tuple[list[Generation], list[Generation]],
    directions: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """Step s reads the residual after block LAYER at the prompt's last position + s (float64)."""
    unit = directions[0]
    ids = prompts(as_backend(smollm2))
    plain = generated[0][0]
    sequence = torch.tensor([list(ids[0]) + plain.token_ids])
    with torch.inference_mode():
        hidden = smollm2.model(sequence, output_hidden_states=True).hidden_states[LAYER][0]
    want = hidden[len(ids[0]) - 1 :].double() @ unit.double()
    assert torch.allclose(torch.tensor([r[0] for r in plain.readings], dtype=torch.float64), want, atol=1e-3)


def test_an_edit_steers_as_the_vector_context_does(
    smollm2: LoadedModel,
    backends: tuple[TransformersBackend, Any],
    directions: tuple[torch.Tensor, torch.Tensor],
) -> None:
    from personavec.core.hooks import steer

    v = directions[1]
    hf = backends[0]
    prompt = prompts(hf)[1]
    model: Any = smollm2.model
    with steer(model, {LAYER: v}, coef=2.0), torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)
    want = out[0, len(prompt) :].tolist()
    for backend in backends:
        (got,) = backend.generate([GenerationRequest(prompt, 12, edits=(Edit(LAYER, v, 2.0),))])
        assert got.token_ids == want[: len(got.token_ids)] and len(got.token_ids) >= 1
        (plain,) = backend.generate([GenerationRequest(prompt, 12)])
        assert plain.token_ids != got.token_ids  # the edit changed the answer


def test_logprobs_match_a_full_forward(
    smollm2: LoadedModel,
    backends: tuple[TransformersBackend, Any],
    directions: tuple[torch.Tensor, torch.Tensor],
) -> None:
    hf = backends[0]
    ids = prompts(hf)
    continuation = tuple(hf.encode(" Yes, it is blue."))
    asked = [
        LogprobRequest(ids[0], candidates=(33, 504), top_k=3, continuation=continuation),
        LogprobRequest(ids[2], candidates=(33,), top_k=0),
    ]
    with torch.inference_mode():
        logits = smollm2.model(torch.tensor([list(ids[0]) + list(continuation)])).logits[0].double()
    reference = logits.log_softmax(-1)
    start = len(ids[0]) - 1
    for backend in backends:
        first, second = backend.logprobs(asked)
        assert first.candidates == pytest.approx(reference[start, [33, 504]].tolist(), abs=1e-4)
        assert [t for t, _ in first.top] == reference[start].topk(3).indices.tolist()
        want = [float(reference[start + j, t]) for j, t in enumerate(continuation)]
        assert first.continuation == pytest.approx(want, abs=1e-4)
        assert second.top == [] and second.continuation == [] and len(second.candidates) == 1
    steered = LogprobRequest(ids[0], candidates=(33, 504), edits=(Edit(LAYER, directions[1], 3.0),))
    results = [backend.logprobs([steered])[0].candidates for backend in backends]
    assert results[0] == pytest.approx(results[1], abs=1e-4)
    assert results[0] != pytest.approx(first.candidates, abs=1e-3)


def test_pooled_activations_are_equal(
    backends: tuple[TransformersBackend, Any], generated: tuple[list[Generation], list[Generation]]
) -> None:
    hf, flat = backends
    texts = [hf.chat([{"role": "user", "content": q}]) for q in QUESTIONS]
    answers = [g.text for g in generated[0]]
    a = pooled_activations(hf, texts, answers, layers=[0, 5, 30], progress=False)
    b = pooled_activations(flat, texts, answers, layers=[0, 5, 30], progress=False)
    for name in ("prompt_last", "prompt_avg", "response_avg", "norm"):
        x, y = getattr(a, name), getattr(b, name)
        assert torch.allclose(x, y, atol=1e-4 * float(x.abs().max())), name


def test_stages_give_equal_figures_on_both_backends(
    backends: tuple[TransformersBackend, Any], directions: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """generate (steered by an edit), capability scoring (steered) and projections, on each backend."""
    from personavec.core.generate import generate
    from personavec.core.sampling import Sampling
    from personavec.core.vectors import PersonaVector
    from personavec.deploy.capability import SMOKE, load_questions, score_steered
    from personavec.deploy.monitor import project

    hf = backends[0]
    tensor = torch.zeros(hf.identity.n_layers + 1, hf.identity.hidden_size)
    tensor[LAYER] = directions[1]
    vector = PersonaVector("test", tensor, layer=LAYER, metadata={"model": hf.identity.to_dict()})
    texts = [hf.chat([{"role": "user", "content": q}]) for q in QUESTIONS]
    greedy = Sampling(max_new_tokens=8)
    answers = [generate(b, texts, greedy, progress=False, edits=[vector.edit(2.0)]) for b in backends]
    assert answers[0] == answers[1] != generate(hf, texts, greedy, progress=False)
    questions = load_questions(SMOKE)[:8]
    scores = [score_steered(b, questions, vector, [0.0, 3.0]) for b in backends]
    for name in ("unsteered", "steered +3"):
        a, b = (s[name] for s in scores)
        assert a.accuracy == b.accuracy
        for x, y in zip(a.questions, b.questions, strict=True):
            assert x.logliks == pytest.approx(y.logliks, abs=1e-4)
    assert scores[0]["unsteered"].questions[0].logliks != pytest.approx(
        scores[0]["steered +3"].questions[0].logliks, abs=1e-3
    )
    projected = [project(b, [vector], texts, answers[0], "response-avg", progress=False) for b in backends]
    assert torch.allclose(projected[0], projected[1], atol=1e-3)


def test_steer_monitor_and_the_local_judge_give_equal_figures_on_both_backends(
    backends: tuple[TransformersBackend, Any], directions: tuple[torch.Tensor, torch.Tensor]
) -> None:
    from personavec.core.sampling import Sampling
    from personavec.core.vectors import PersonaVector
    from personavec.deploy.config import SteerConfig
    from personavec.deploy.monitor import monitor_generation
    from personavec.deploy.steering import Steering, steer_answers
    from personavec.judges.local import LocalJudge

    hf = backends[0]
    tensor = torch.zeros(hf.identity.n_layers + 1, hf.identity.hidden_size)
    tensor[LAYER], tensor[LAYER + 4] = directions[1], directions[0] * 3
    vector = PersonaVector("test", tensor, layer=LAYER, metadata={"model": hf.identity.to_dict()})
    config = SteerConfig(guard=0.0, per_token=True, sampling=Sampling(max_new_tokens=8))
    steerings = [Steering(vector, 2.0), Steering(vector, -1.0, layer=LAYER + 4)]
    steered = [steer_answers(b, QUESTIONS, steerings, config=config) for b in backends]
    assert steered[0] == steered[1]
    assert steered[0].steered != steer_answers(hf, QUESTIONS, [Steering(vector, 0.01)]).steered
    watched = [
        monitor_generation(b, vector, QUESTIONS[1], sampling=Sampling(max_new_tokens=8)) for b in backends
    ]
    assert watched[0].tokens == watched[1].tokens and len(watched[0].tokens) == 8
    assert watched[0].projections == pytest.approx(watched[1].projections, abs=1e-3)
    items = [(q, "Yes. " * (i + 1)) for i, q in enumerate(QUESTIONS)]
    rubric = "Rate from 0 to 100 how sure this answer is.\nQ: {question}\nA: {answer}\nScore:"
    scores = [dict(LocalJudge(b, batch_size=3).score(rubric, items)) for b in backends]
    assert scores[0].keys() == set(range(len(items)))
    assert any(score.value is not None for score in scores[0].values())
    for i in scores[0]:
        a, b = scores[0][i].value, scores[1][i].value
        assert (a is None) == (b is None) and (a is None or a == pytest.approx(b, abs=1e-2))


@pytest.mark.parametrize("which", [0, 1])
def test_streams_send_each_token_with_its_reading_admit_late_requests_and_cancel(
    which: int,
    backends: tuple[TransformersBackend, Any],
    generated: tuple[list[Generation], list[Generation]],
    directions: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """Three requests first, a fourth handed over once the first has sent two tokens, the second
    cancelled after its third: tokens as `generate` makes them, each with its own reading."""
    from personavec.core.backend import Admitted, Finished, TokenEvent

    backend, whole = backends[which], generated[which]
    asked = requests(backend, *directions)
    queue = [Admitted(k, asked[k]) for k in range(4)]
    events: list[TokenEvent | Finished] = []

    def take(n: int) -> list[Admitted]:
        late = sum(e.key == 0 for e in events) >= 2  # the fourth waits for the first's two tokens
        handed = queue[: min(n, len(queue) if late else len(queue) - 1)]
        del queue[: len(handed)]
        return handed

    def cancelled(key: object) -> bool:
        return key == 1 and sum(e.key == 1 and isinstance(e, TokenEvent) for e in events) >= 3

    backend.stream(take, events.append, cancelled, max_running=8)
    ends = {e.key: e for e in events if isinstance(e, Finished)}
    assert sorted(ends) == [0, 1, 2, 3] and [ends[k].cancelled for k in range(4)] == [
        False,
        True,
        False,
        False,
    ]
    for k in (0, 2, 3):
        tokens = [e for e in events if isinstance(e, TokenEvent) and e.key == k]
        want = whole[k]
        assert [e.index for e in tokens] == list(range(len(want.token_ids)))
        assert [e.token_id for e in tokens] == want.token_ids == ends[k].generation.token_ids
        got = torch.tensor([e.readings for e in tokens])
        assert torch.allclose(got, torch.tensor(want.readings[1:]), atol=1e-3)
    stopped = [e for e in events if e.key == 1 and isinstance(e, TokenEvent)]
    assert len(stopped) == 3 == len(ends[1].generation.token_ids)
    assert stopped[0].score is not None and stopped[0].score.top == []  # asked for no alternatives
    late = events.index(next(e for e in events if e.key == 3))
    first_end = events.index(ends[0])
    if type(backend) is not TransformersBackend:  # admitted at the next step, while the others run
        assert late < first_end
    else:  # generate cannot take rows: the next batch
        assert late > max(events.index(ends[k]) for k in (0, 1, 2))
