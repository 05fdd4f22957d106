"""`RowHooks` in process on the bundled model: its readings against transformers' own hidden states, its
guard against the library's `Guard` (independent paths to the same rules)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from personavec.core.models import LoadedModel, format_chat
from personavec.core.vectors import PersonaVector, load_vector
from personavec.deploy.guard import Guard
from personavec.serve.rows import GuardPlan, RowHooks, RowPlan, Watched

from server import random_vectors

QUESTION = "Describe the sea."  # its answer rises above its prompt-last projection on "evil" (test_server)
STEPS = 24


def _ids(loaded: LoadedModel, rows: int) -> torch.Tensor:
    prompt = format_chat(loaded.tokenizer, [{"role": "user", "content": QUESTION}])
    ids = loaded.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    return ids.repeat(rows, 1)


def _generate(loaded: LoadedModel, ids: torch.Tensor, steps: int) -> torch.Tensor:
    model: Any = loaded.model
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps, do_sample=False,
            pad_token_id=loaded.tokenizer.pad_token_id,
        )  # fmt: skip
    return out[:, ids.shape[1] :]


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
    ids = _ids(smollm2, 2)
    plans = [RowPlan(steer={0: 6.0}), RowPlan()]  # row 0 steered, row 1 not
    with RowHooks(smollm2.model, [Watched("evil", evil, evil.layer)], plans) as hooks:
        _generate(smollm2, ids, 1)  # one forward call: the prompt
        got = hooks.latest()[:, 0].double()
    expected = float(_readings(smollm2, ids, evil)[-1])
    assert torch.allclose(got, torch.tensor([expected, expected], dtype=torch.float64), atol=1e-3), got


def test_the_guard_fires_and_pushes_as_the_library_guard(smollm2: LoadedModel, tmp_path: Path) -> None:
    evil = _evil(tmp_path)
    ids = _ids(smollm2, 1)
    plain = _generate(smollm2, ids, STEPS)
    values = _readings(smollm2, torch.cat([ids, plain], dim=1), evil)[ids.shape[1] - 1 :]
    x, later = float(values[0]), values[1:-1]
    assert float(later.max()) > x, "the answer never rises above its prompt-last projection"
    between = (x + float(later.max())) / 2  # the prompt's end stays under it, a later token crosses it
    watched = [Watched("evil", evil, evil.layer)]
    for threshold in (x - 0.01, between):
        for per_token in (False, True):
            with Guard(smollm2.model, evil, threshold=threshold, coef=4.0, per_token=per_token) as guard:
                expected = _generate(smollm2, ids, STEPS)
            plan = RowPlan(guard=GuardPlan(0, threshold, 4.0, per_token))
            with RowHooks(smollm2.model, watched, [plan]) as hooks:
                got = _generate(smollm2, ids, STEPS)
            case = (threshold, per_token, guard.fired_at.tolist(), hooks.fired_at.tolist())
            assert hooks.fired_at.tolist() == guard.fired_at.tolist(), case
            assert torch.equal(got, expected), case
            assert torch.equal(got, plain) == (int(guard.fired_at[0]) < 0), case  # the push changes it
    assert int(guard.fired_at[0]) > 0  # the last case (between, per token) fired after the prompt
