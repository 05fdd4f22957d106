"""A server row's plan as backend requests, in process on the bundled model: its readings against
transformers' own hidden states, its guard against the library's `Guard` hooks (independent paths to
the same rules)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from personavec.core.backend import Generation, GenerationRequest
from personavec.core.hf import TransformersBackend
from personavec.core.models import LoadedModel, format_chat
from personavec.core.vectors import PersonaVector, load_vector
from personavec.deploy.guard import Guard
from personavec.deploy.monitor import Watched
from personavec.serve.rows import GuardPlan, RowPlan

from server import random_vectors

QUESTION = "Describe the sea."  # its answer rises above its prompt-last projection on "evil" (test_server)
STEPS = 24


def _ids(loaded: LoadedModel) -> torch.Tensor:
    prompt = format_chat(loaded.tokenizer, [{"role": "user", "content": QUESTION}])
    return loaded.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]


def _generate(loaded: LoadedModel, ids: torch.Tensor, steps: int) -> list[int]:
    model: Any = loaded.model
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps, do_sample=False,
            pad_token_id=loaded.tokenizer.pad_token_id,
        )  # fmt: skip
    return out[0, ids.shape[1] :].tolist()


def _row(loaded: LoadedModel, ids: torch.Tensor, plan: RowPlan, watched: list[Watched]) -> Generation:
    edits, probes, guards = plan.parts(watched)
    request = GenerationRequest(tuple(ids[0].tolist()), STEPS, edits=edits, probes=probes, guards=guards)
    return TransformersBackend(loaded).generate([request])[0]


def _readings(loaded: LoadedModel, ids: torch.Tensor, vector: PersonaVector) -> torch.Tensor:
    """The projection at every token of `ids` (one row), from transformers' hidden states."""
    with torch.inference_mode():
        hidden = loaded.model(ids[:1], output_hidden_states=True).hidden_states[vector.layer][0].double()
    raw = vector.tensor[vector.layer].double()
    return hidden @ (raw / raw.norm())


def _evil(tmp_path: Path) -> PersonaVector:
    return load_vector(random_vectors(tmp_path)["evil"])


def test_the_projection_is_read_before_the_steering_at_its_layer(
    smollm2: LoadedModel, tmp_path: Path
) -> None:
    evil = _evil(tmp_path)
    ids = _ids(smollm2)
    watched = [Watched("evil", evil, evil.layer)]
    steered, plain = (_row(smollm2, ids, plan, watched) for plan in (RowPlan(steer={0: 6.0}), RowPlan()))
    expected = float(_readings(smollm2, ids, evil)[-1])
    got = [steered.readings[0][0], plain.readings[0][0]]
    assert got == pytest.approx([expected, expected], abs=1e-3), got
    assert steered.token_ids != plain.token_ids  # the steering acts after the reading


def test_the_guard_fires_and_pushes_as_the_library_guard(smollm2: LoadedModel, tmp_path: Path) -> None:
    evil = _evil(tmp_path)
    ids = _ids(smollm2)
    plain = _generate(smollm2, ids, STEPS)
    values = _readings(smollm2, torch.cat([ids, torch.tensor([plain])], dim=1), evil)[ids.shape[1] - 1 :]
    x, later = float(values[0]), values[1:-1]
    assert float(later.max()) > x, "the answer never rises above its prompt-last projection"
    between = (x + float(later.max())) / 2  # the prompt's end stays under it, a later token crosses it
    watched = [Watched("evil", evil, evil.layer)]
    for threshold in (x - 0.01, between):
        for per_token in (False, True):
            with Guard(smollm2.model, evil, threshold=threshold, coef=4.0, per_token=per_token) as guard:
                expected = _generate(smollm2, ids, STEPS)
            got = _row(smollm2, ids, RowPlan(guard=GuardPlan(0, threshold, 4.0, per_token)), watched)
            case = (threshold, per_token, guard.fired_at.tolist(), got.fired_at)
            assert got.fired_at == guard.fired_at.tolist(), case
            assert got.token_ids == expected[: len(got.token_ids)] and len(got.token_ids) >= 8, case
            assert (got.token_ids == plain[: len(got.token_ids)]) == (int(guard.fired_at[0]) < 0), case
    assert int(guard.fired_at[0]) > 0  # the last case (between, per token) fired after the prompt
