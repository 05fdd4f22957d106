"""The vLLM backend on real vLLM (the CPU build), beyond the protocol suite it shares with the other
backends (tests/core/test_backends.py): the cases a serving engine brings (a prefix served from the
cache, a preemption, mixed batches, many aborted streams), an extraction end to end, and its refusals.
One engine for the module (`vllm_engine.small_engine`); every figure is held to the transformers
backend's on the same model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from openai_server import FakeOpenAI, judge_reply
from personavec.core.backend import Admitted, Edit, Finished, GenerationRequest, GuardRule, Probe, TokenEvent
from personavec.core.hf import TransformersBackend
from personavec.core.models import LoadedModel, ModelRef
from personavec.errors import ConfigError
from vllm_engine import require_vllm, small_engine

require_vllm()

LONG = (
    "I am writing a long letter to my grandmother about the garden, the weather this spring, the new "
    "neighbours, the price of bread, the cat that visits every morning and the book I am reading. "
    "Could you suggest a warm closing sentence?"
)
QUESTIONS = ["Is the sky blue?", "Tell me a story about a cat.", "What is 2+2?", "Name a colour."]
QUESTIONS += ["Why do birds sing?", "What is bread made of?", "Say hello.", "Count to three."]


@pytest.fixture(scope="module")
def vllm() -> Iterator[Any]:
    engine = small_engine()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def hf(smollm2: LoadedModel) -> TransformersBackend:
    return TransformersBackend(smollm2)


@pytest.fixture(scope="module")
def unit() -> torch.Tensor:
    v = torch.randn(576, generator=torch.Generator().manual_seed(3))
    return v / v.norm()


def ids(backend: Any, question: str) -> tuple[int, ...]:
    return tuple(backend.encode(backend.chat([{"role": "user", "content": question}])))


def readings(generation: Any) -> torch.Tensor:
    return torch.tensor(generation.readings, dtype=torch.float64)


def test_it_is_the_same_model(vllm: Any, hf: TransformersBackend) -> None:
    assert vllm.identity == hf.identity == ModelRef("smollm2").identity()
    assert vllm.dtype == hf.dtype == "torch.float32"


def test_pooled_activations_equal_the_transformers_backend(vllm: Any, hf: TransformersBackend) -> None:
    """Per sample and layer, ≤ 1e-4 relative: prompts longer than a step (chunked), one sent twice."""
    texts = [hf.chat([{"role": "user", "content": q}]) for q in (LONG, QUESTIONS[0], LONG)]
    answers = [" Dear Grandma, with all my love.", " Yes.", " Dear Grandma, with all my love."]
    layers = [0, 1, 15, 30]
    (_, got), *rest = list(vllm.pooled(texts, answers, layers=layers, max_batch_size=2, progress=False))
    got_all = [got, *(p for _, p in rest)]
    for i, text in enumerate(texts):
        ((_, want),) = list(hf.pooled([text], [answers[i]], layers=layers, progress=False))
        mine = got_all[i // 2]
        for name in ("prompt_last", "prompt_avg", "response_avg"):
            a, b = getattr(mine, name)[i % 2].double(), getattr(want, name)[0].double()
            assert ((a - b).norm(dim=-1) / b.norm(dim=-1)).max() <= 1e-4, (i, name)
        assert torch.allclose(mine.norm[i % 2], want.norm[0], rtol=1e-4), i
    assert vllm.stats()["chunked"] > 0


def test_a_cached_prefix_changes_no_reading(vllm: Any, hf: TransformersBackend, unit: torch.Tensor) -> None:
    """The same long prompt twice: the second starts past its cached first block, and reads the same."""
    before = vllm.stats()["cached"]
    request = GenerationRequest(ids(vllm, LONG), 8, probes=(Probe(12, unit),))
    first, second = vllm.generate([request]), vllm.generate([request])
    assert vllm.stats()["cached"] > before
    (want,) = hf.generate([request])
    for got in (first[0], second[0]):
        assert got.token_ids == want.token_ids
        assert torch.allclose(readings(got), readings(want), atol=1e-3)


def test_a_preempted_request_is_edited_and_read_as_if_it_never_was(
    vllm: Any, hf: TransformersBackend, unit: torch.Tensor
) -> None:
    """Four answers of 40 tokens outgrow the KV cache: requests are preempted and recomputed."""
    before = vllm.stats()["recomputed"]
    edits = (Edit(8, unit, 4.0, positions="response"),)
    asked = [
        GenerationRequest(ids(vllm, q), 40, edits=edits if i % 2 else (), probes=(Probe(12, unit),))
        for i, q in enumerate(QUESTIONS[:4])
    ]
    got, want = vllm.generate(asked), hf.generate(asked)
    assert vllm.stats()["recomputed"] > before
    for a, b in zip(got, want, strict=True):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
        assert torch.allclose(readings(a), readings(b), atol=1e-3)


def test_only_the_rows_that_asked_are_steered(vllm: Any, hf: TransformersBackend, unit: torch.Tensor) -> None:
    """Eight prompts, every other one steered: the steered answers are the transformers backend's (16
    tokens at least), the others the unsteered run's; after a steered long prompt, the same prompt
    unsteered answers as before (no cached block carries the steering)."""
    prompts = [ids(vllm, q) for q in QUESTIONS]
    steer = (Edit(10, unit, 12.0),)
    plain = vllm.generate([GenerationRequest(p, 16) for p in prompts])
    mixed = [GenerationRequest(p, 16, edits=steer if i % 2 else ()) for i, p in enumerate(prompts)]
    got, want = vllm.generate(mixed), hf.generate(mixed)
    for i, (a, b, c) in enumerate(zip(got, want, plain, strict=True)):
        assert a.token_ids == b.token_ids and len(a.token_ids) >= min(16, len(b.token_ids))
        if i % 2 == 0:
            assert a.token_ids == c.token_ids
    assert any(got[i].token_ids != plain[i].token_ids for i in range(1, 8, 2))  # the steering bit
    # cached blocks: a steered request neither reads an unsteered one's nor leaves its own to others
    for question in (LONG, LONG.replace("grandmother", "grandfather")):
        plain = GenerationRequest(ids(vllm, question), 12)
        steered = GenerationRequest(plain.prompt_ids, 12, edits=(Edit(3, unit, 30.0, positions="prompt"),))
        order = [plain, steered, plain] if question == LONG else [steered, plain]
        got = [vllm.generate([r])[0].token_ids for r in order]
        want = [g.token_ids for g in hf.generate([plain, steered])]
        assert want[0] != want[1]
        assert got == ([want[0], want[1], want[0]] if question == LONG else [want[1], want[0]])


def test_a_sampled_request_prefilled_in_chunks_runs(vllm: Any) -> None:
    """vLLM's CPU build fails on a seeded request whose prompt is split over steps: none is seeded there."""
    got = vllm.generate([GenerationRequest(ids(vllm, LONG), 6, temperature=1.0, top_p=0.9)] * 2, seed=5)
    assert all(len(g.token_ids) >= 1 for g in got)


def test_guards_fire_where_the_transformers_backend_fires(
    vllm: Any, hf: TransformersBackend, unit: torch.Tensor
) -> None:
    probe = (Probe(12, unit),)
    prompts = [ids(vllm, q) for q in QUESTIONS[:3]]
    (first,) = hf.generate([GenerationRequest(prompts[1], 12, probes=probe)])
    threshold = sorted(r[0] for r in first.readings)[len(first.readings) // 2]  # crossed mid-answer
    asked = [
        GenerationRequest(prompts[0], 12, probes=probe, guards=(GuardRule(0, -1e9, 8.0, unit),)),
        GenerationRequest(prompts[1], 12, probes=probe, guards=(GuardRule(0, threshold, 8.0, unit, True),)),
        GenerationRequest(prompts[2], 12, probes=probe, guards=(GuardRule(0, 1e9, 8.0, unit, True),)),
    ]
    got, want = vllm.generate(asked), hf.generate(asked)
    assert [g.fired_at for g in got] == [g.fired_at for g in want]
    assert got[0].fired_at == [0] and got[2].fired_at == [-1] and got[1].fired_at[0] > 0
    for a, b in zip(got, want, strict=True):
        assert a.token_ids == b.token_ids
        assert torch.allclose(readings(a), readings(b), atol=1e-3)


def test_aborted_streams_leave_nothing_behind(vllm: Any, unit: torch.Tensor) -> None:
    """100 probed and steered streams, each cancelled after its first token: every one ends cancelled,
    and once the next request has run no worker and no channel holds state for any of them."""
    prompt = ids(vllm, QUESTIONS[1])
    queue = [
        Admitted(k, GenerationRequest(prompt, 64, edits=(Edit(10, unit, 1.0),), probes=(Probe(12, unit),)))
        for k in range(100)
    ]
    events: list[TokenEvent | Finished] = []

    def take(n: int) -> list[Admitted]:
        handed = queue[:n]
        del queue[:n]
        return handed

    def cancelled(key: object) -> bool:
        return any(isinstance(e, TokenEvent) and e.key == key for e in events)

    vllm.stream(take, events.append, cancelled, max_running=16)
    ends = [e for e in events if isinstance(e, Finished)]
    assert len(ends) == 100 and all(e.cancelled and len(e.generation.token_ids) == 1 for e in ends)
    vllm.generate([GenerationRequest(prompt, 2)])  # a step that sees them gone
    assert vllm.stats()["open"] == 0
    assert not (vllm.channel.readings or vllm.channel.fired or vllm.channel.pooled)


def test_an_extraction_gives_the_transformers_backends_vector(
    vllm: Any, hf: TransformersBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end, judged by a local server: the same chosen layer, cosine ≥ 0.9999 at every layer."""
    from personavec.core.sampling import Sampling
    from personavec.judges.openai_compat import OpenAIJudge
    from personavec.pipeline.extract import ExtractConfig, extract
    from personavec.runs.readers import ExtractionRun
    from personavec.traits import load_trait

    config = ExtractConfig(
        samples=1, sampling=Sampling(max_new_tokens=8, temperature=0.0, batch_size=8), questions=6,
        instructions=3, min_pairs=1, layers=(10, 15, 20), sweep_questions=2,
    )  # fmt: skip
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with FakeOpenAI(judge_reply) as server:
        judge = OpenAIJudge("judge", base_url=server.url, backoff=0.01)
        runs = [
            extract(b, load_trait("evil"), judge, tmp_path / n, config, progress=False)
            for b, n in ((vllm, "v"), (hf, "t"))
        ]
    assert runs[0].summary.chosen == runs[1].summary.chosen
    for pooling, vector in runs[0].vectors.items():
        a, b = vector.tensor[1:].double(), runs[1].vectors[pooling].tensor[1:].double()
        assert torch.nn.functional.cosine_similarity(a, b, dim=-1).min() >= 0.9999, pooling
        assert vector.metadata["model"] == runs[1].vectors[pooling].metadata["model"]
    sweeps = [json.loads((run.dir / ExtractionRun.SWEEP).read_text()) for run in runs]
    assert sweeps[0] == sweeps[1]


def test_engine_settings_that_would_break_the_hooks_are_refused() -> None:
    from personavec.core.vllm_backend import VllmBackend, parse_engine_args

    assert parse_engine_args(["tensor_parallel_size=2", "gpu-memory-utilization=0.5"]) == {
        "tensor_parallel_size": 2,
        "gpu_memory_utilization": 0.5,
    }
    for bad in ("enforce_eager=false", "speculative_config={}", "compilation_config=3", "noequals"):
        with pytest.raises(ConfigError):
            parse_engine_args([bad])
    with pytest.raises(ConfigError, match="enforce_eager"):
        VllmBackend(ModelRef("smollm2"), {"enforce_eager": False})


def test_an_untested_vllm_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import vllm

    from personavec.core.vllm_backend import check_vllm

    assert check_vllm() == vllm.__version__.split("+")[0]
    monkeypatch.setattr(vllm, "__version__", "0.33.1")
    with pytest.raises(ConfigError, match=r"vLLM 0\.33\.1 is not supported"):
        check_vllm()
