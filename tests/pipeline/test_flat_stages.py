"""Extraction (with its judged layer sweep), calibration and screening on the test's flat backend
(vLLM's shape: one flat tensor per step, chunked prefill, a prefix cache, a preemption) give the
transformers backend's figures, on a tiny random Llama judged by a real local OpenAI-compatible server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from flat_backend import FlatBackend
from openai_server import FakeOpenAI, judge_reply
from personavec.core.backend import Backend
from personavec.core.hf import TransformersBackend
from personavec.core.models import LoadedModel
from personavec.core.sampling import Sampling
from personavec.core.vectors import PersonaVector
from personavec.data.config import ScreenConfig
from personavec.data.samples import DataFile
from personavec.data.scoring import deltas, score_samples
from personavec.judges.openai_compat import OpenAIJudge
from personavec.pipeline.calibrate import calibrate
from personavec.pipeline.config import CalibrateConfig
from personavec.pipeline.extract import ExtractConfig, extract
from personavec.runs.readers import ExtractionRun
from personavec.traits import load_trait

from tiny import tiny_loaded

GREEDY = Sampling(max_new_tokens=6, temperature=0.0, batch_size=8)  # the same answers on both backends
EXTRACT = ExtractConfig(
    samples=1, sampling=GREEDY, questions=4, instructions=2, min_pairs=1, layers=(1, 2, 3), sweep_questions=3
)


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return tiny_loaded()


@pytest.fixture(scope="module")
def backends(loaded: LoadedModel) -> list[Backend]:
    return [TransformersBackend(loaded), FlatBackend(loaded, token_budget=16)]


@pytest.fixture
def judge(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with FakeOpenAI(judge_reply) as server:
        yield OpenAIJudge("judge", base_url=server.url, backoff=0.01)


def test_extraction_gives_equal_vectors_and_the_same_layer(
    backends: list[Backend], judge: OpenAIJudge, tmp_path: Path
) -> None:
    trait = load_trait("evil")
    runs = [
        extract(b, trait, judge, tmp_path / str(i), EXTRACT, progress=False) for i, b in enumerate(backends)
    ]
    assert runs[0].summary.chosen == runs[1].summary.chosen is not None
    for pooling, vector in runs[0].vectors.items():
        other = runs[1].vectors[pooling].tensor
        assert torch.allclose(vector.tensor, other, atol=1e-4 * float(vector.tensor.abs().max())), pooling
    sweeps = [json.loads((run.dir / ExtractionRun.SWEEP).read_text()) for run in runs]
    assert sweeps[0] == sweeps[1]  # the steered answers were judged the same


def test_calibration_gives_equal_points(
    loaded: LoadedModel, backends: list[Backend], judge: OpenAIJudge, tmp_path: Path
) -> None:
    torch.manual_seed(2)
    tensor = torch.randn(loaded.identity.n_layers + 1, loaded.identity.hidden_size)
    vector = PersonaVector("evil", tensor, layer=2, metadata={"model": loaded.identity.to_dict()})
    config = CalibrateConfig(questions=2, shots=(0,), sampling=Sampling(max_new_tokens=4))
    results = [
        calibrate(b, load_trait("evil"), judge, vector, tmp_path / str(i), config, progress=False)
        for i, b in enumerate(backends)
    ]
    a, b = results[0].points, results[1].points
    assert [(p.condition, p.level, p.question, p.trait) for p in a] == [
        (p.condition, p.level, p.question, p.trait) for p in b
    ]
    assert [p.projection for p in a] == pytest.approx([p.projection for p in b], abs=1e-4)


def test_screening_gives_equal_deltas(loaded: LoadedModel, backends: list[Backend], tmp_path: Path) -> None:
    lines = [
        {
            "messages": [
                {"role": "user", "content": f"Tell me about bread {i}"},
                {"role": "assistant", "content": "w " * i},
            ]
        }
        for i in range(1, 7)
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    generator = torch.Generator().manual_seed(0)
    shape = (loaded.identity.n_layers + 1, loaded.identity.hidden_size)
    vectors = [
        PersonaVector(
            "t",
            torch.randn(shape, generator=generator),
            layer=2,
            metadata={"model": loaded.identity.to_dict()},
        )
    ]
    config = ScreenConfig(chunk_size=4, sampling=Sampling(max_new_tokens=6, batch_size=4))
    found = [
        deltas(score_samples(b, vectors, DataFile(path), tmp_path / f"s{i}", config, progress=False))["t"]
        for i, b in enumerate(backends)
    ]
    assert len(found[0]) == 6 and found[0] == pytest.approx(found[1], abs=1e-3)
    assert abs(found[0]).max() > 1e-2  # the deltas are not all zero
