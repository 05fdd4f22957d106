"""Tensor parallelism on vLLM's CPU build: three ranks (the bundled model's 9 attention heads allow 1, 3
or 9; this machine's 2 cores are shared between them). Each rank applies the edits; rank 0 reports.
Steered answers, readings and pooled activations equal the transformers backend's."""

from __future__ import annotations

import pytest
import torch

from personavec.core.backend import Edit, GenerationRequest, Probe
from personavec.core.hf import TransformersBackend
from personavec.core.models import LoadedModel
from vllm_engine import require_vllm, small_engine

require_vllm()


def test_three_ranks_give_one_ranks_figures(smollm2: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1|0")  # a core per rank, one of them shared
    engine = small_engine(tensor_parallel_size=3)
    hf = TransformersBackend(smollm2)
    try:
        engine.start()
        assert [rank["tp_rank"] for rank in engine.ranks] == [0, 1, 2]
        questions = ["Is the sky blue?", "Tell me a story about a cat.", "What is 2+2?"]
        texts = [hf.chat([{"role": "user", "content": q}]) for q in questions]
        unit = torch.randn(576, generator=torch.Generator().manual_seed(0))
        unit = unit / unit.norm()
        asked = [
            GenerationRequest(
                tuple(hf.encode(t)), 16, probes=(Probe(12, unit),), edits=(Edit(10, unit, 8.0),) * (i % 2)
            )
            for i, t in enumerate(texts)
        ]
        for got, want in zip(engine.generate(asked), hf.generate(asked), strict=True):
            assert got.token_ids == want.token_ids
            assert torch.allclose(torch.tensor(got.readings), torch.tensor(want.readings), atol=1e-3)
        answers = [" Yes.", " Once upon a time.", " Four."]
        ((_, got_pooled),) = list(engine.pooled(texts, answers, layers=[5, 20], progress=False))
        for i, text in enumerate(texts):
            ((_, want_pooled),) = list(hf.pooled([text], [answers[i]], layers=[5, 20], progress=False))
            a, b = got_pooled.response_avg[i].double(), want_pooled.response_avg[0].double()
            assert ((a - b).norm(dim=-1) / b.norm(dim=-1)).max() <= 1e-4
    finally:
        engine.close()
