"""Coefficients in norm units: c stands for c·‖h‖_ℓ / ‖v_ℓ‖ × v, with ‖h‖_ℓ the vector's recorded mean
residual norm; every library entry point that takes a coefficient converts it to that raw one."""

from __future__ import annotations

import pytest
import torch

from personavec.core.generate import generate
from personavec.core.sampling import Sampling
from personavec.core.vectors import RESIDUAL_NORM, PersonaVector, export_gguf, read_gguf
from personavec.deploy.capability import SMOKE, load_questions, score_steered
from personavec.deploy.guard import Guard
from personavec.deploy.steering import Parts, Steering
from personavec.errors import ConfigError
from personavec.training.config import TrainIntervention

from tiny import N_LAYERS, tiny_loaded

NORMS = [3.0 + 1.5 * layer for layer in range(N_LAYERS + 1)]


def _vector(norms: list[float] | None = NORMS) -> PersonaVector:
    loaded = tiny_loaded()
    tensor = torch.randn(
        N_LAYERS + 1, loaded.identity.hidden_size, generator=torch.Generator().manual_seed(3)
    )
    metadata = {"model": loaded.identity.to_dict(), **({RESIDUAL_NORM: norms} if norms else {})}
    return PersonaVector("t", tensor, layer=2, metadata=metadata)


def _raw(vector: PersonaVector, coef: float, layer: int) -> float:
    """The definition written plainly, in float64."""
    return coef * NORMS[layer] / float(vector.tensor[layer].double().norm())


def test_the_conversion_is_the_definition() -> None:
    v = _vector()
    for layer in range(N_LAYERS + 1):
        assert v.raw_coef(0.3, layer, "norm") == pytest.approx(_raw(v, 0.3, layer), rel=1e-6)
    assert v.raw_coef(0.3, None, "norm") == pytest.approx(_raw(v, 0.3, 2), rel=1e-6)  # the chosen layer
    assert v.raw_coef(0.3, 1, "raw") == 0.3
    assert v.negated("u").raw_coef(0.3, 1, "norm") == pytest.approx(_raw(v, 0.3, 1), rel=1e-6)
    with pytest.raises(ConfigError, match="units must be one of raw, norm"):
        v.raw_coef(0.3, 1, "sigma")  # type: ignore[arg-type]


def test_a_vector_without_the_norm_is_refused_with_the_fix() -> None:
    v = _vector(norms=None)
    assert v.raw_coef(1.5, 2, "raw") == 1.5  # raw coefficients need nothing
    with pytest.raises(ConfigError, match=r"records no residual norm.*rerun `personavec extract`"):
        v.raw_coef(1.5, 2, "norm")
    with pytest.raises(ConfigError, match="records no residual norm"):
        Steering(v, 1.5, units="norm")  # refused when made, before any model runs


def test_edits_steerings_guards_and_training_take_the_raw_conversion() -> None:
    v = _vector()
    assert v.edit(0.4, 1, units="norm").coef == pytest.approx(_raw(v, 0.4, 1), rel=1e-6)
    assert Steering(v, 0.4, layer=1, units="norm").raw == pytest.approx(_raw(v, 0.4, 1), rel=1e-6)
    (edit,) = Parts.of([Steering(v, -0.4, units="norm")]).edits
    assert edit.coef == pytest.approx(_raw(v, -0.4, 2), rel=1e-6)
    (rule,) = Parts.of([Steering(v, -0.4, units="norm")], guard=1.0).guards
    assert rule.coef == pytest.approx(abs(_raw(v, -0.4, 2)), rel=1e-6)
    guard = Guard(tiny_loaded().model, v, threshold=1.0, coef=0.4, layer=3, units="norm")
    assert guard.rule.coef == pytest.approx(_raw(v, 0.4, 3), rel=1e-6)
    spec = TrainIntervention("steer", coef=0.5, layer=1, coef_units="norm")
    assert spec.raw_coef(v) == pytest.approx(_raw(v, 0.5, 1), rel=1e-6)
    with pytest.raises(ConfigError, match="no single layer"):
        TrainIntervention("steer", coef=0.5, all_layers=True, coef_units="norm")
    with pytest.raises(ConfigError, match="records no residual norm"):
        TrainIntervention("steer", coef=0.5, coef_units="norm").check(_vector(None), N_LAYERS, lora=True)


def test_steering_a_model_in_norm_units_equals_its_raw_coefficient() -> None:
    loaded, v = tiny_loaded(), _vector()
    prompts, greedy = [loaded.chat("Hi"), loaded.chat("Tell me about bread")], Sampling(max_new_tokens=5)
    with v.apply(loaded.model, 0.8, units="norm"):
        normed = generate(loaded, prompts, greedy, progress=False)
    with v.apply(loaded.model, _raw(v, 0.8, 2)):
        raw = generate(loaded, prompts, greedy, progress=False)
    assert normed == raw != generate(loaded, prompts, greedy, progress=False)
    questions = load_questions(SMOKE)[:4]
    scored = score_steered(loaded, questions, v, [0.8], units="norm")["steered +0.8"]
    plain = score_steered(loaded, questions, v, [_raw(v, 0.8, 2)])
    (want,) = plain.values()
    assert scored.correct_logprob == pytest.approx(want.correct_logprob, abs=1e-6)


def test_an_exported_control_vector_holds_the_raw_conversion_per_layer(tmp_path) -> None:
    v = _vector()
    export_gguf(v, tmp_path / "n.gguf", layers=[2, 3], coef=0.5, units="norm")
    directions = read_gguf(tmp_path / "n.gguf")
    for layer in (2, 3):
        want = (_raw(v, 0.5, layer) * v.tensor[layer].double()).float()
        assert torch.allclose(directions[layer - 1], want, rtol=1e-5, atol=1e-6)
