import pytest
import torch

from personavec.core.generate import generate
from personavec.core.sampling import Sampling
from personavec.core.vectors import PersonaVector
from personavec.deploy.config import SteerConfig
from personavec.deploy.steering import Steering, steer_answers, steering
from personavec.errors import PersonavecError

from tiny import N_LAYERS, tiny_loaded


def vector(loaded, seed: int, layer: int) -> PersonaVector:
    generator = torch.Generator().manual_seed(seed)
    tensor = torch.randn(N_LAYERS + 1, loaded.identity.hidden_size, generator=generator) * 4
    return PersonaVector(f"t{seed}", tensor, layer=layer, metadata={"model": loaded.identity.to_dict()})


def test_steering_stacks_the_vectors_as_nested_interventions_do() -> None:
    loaded = tiny_loaded()
    a, b = vector(loaded, 0, 1), vector(loaded, 1, 2)
    prompts = [loaded.chat("Hi"), loaded.chat("Tell me about bread")]
    with steering(loaded, [Steering(a, 2.0), Steering(b, -1.0, layer=1)]) as guards:
        stacked = generate(loaded, prompts, Sampling(max_new_tokens=5), progress=False)
    with a.apply(loaded.model, 2.0), b.apply(loaded.model, -1.0, 1):
        nested = generate(loaded, prompts, Sampling(max_new_tokens=5), progress=False)
    assert stacked == nested and guards == []
    assert stacked != generate(loaded, prompts, Sampling(max_new_tokens=5), progress=False)


def test_steer_answers_is_the_steer_command() -> None:
    loaded = tiny_loaded()
    a = vector(loaded, 0, 2)
    config = SteerConfig(guard=-1e9, compare=True, sampling=Sampling(max_new_tokens=4))
    answers = steer_answers(loaded, ["Hi", "Yo"], [Steering(a, 2.0)], config=config)
    assert [(g.layer, g.steered, g.seen) for g in answers.guards] == [(2, 2, 2)]
    plain = generate(
        loaded, [loaded.chat("Hi"), loaded.chat("Yo")], Sampling(max_new_tokens=4), progress=False
    )
    assert answers.unsteered == plain and answers.prompts == ["Hi", "Yo"]
    assert answers.to_dict()["guards"] == [{"layer": 2, "steered": 2, "seen": 2}]
    with pytest.raises(PersonavecError, match="nothing to answer"):
        steer_answers(loaded, [], [Steering(a, 1.0)])
    other = PersonaVector("big", torch.randn(31, 576), layer=10)
    with pytest.raises(PersonavecError, match="30 blocks"):
        steer_answers(loaded, ["Hi"], [Steering(other, 1.0)])
