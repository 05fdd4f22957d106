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


@pytest.mark.parametrize("per_token", [False, True])
def test_guarded_answers_are_the_guard_hooks_answers(per_token: bool) -> None:
    """Two guards as request parts, against two `Guard` hooks around the model's own generate."""
    from personavec.deploy.guard import Guard

    loaded = tiny_loaded()
    a, b = vector(loaded, 0, 2), vector(loaded, 1, 3)  # b after a: a reads the unsteered residual
    prompts = ["Hi", "Tell me about bread", "Yo"]
    chats = [loaded.chat(p) for p in prompts]
    threshold = sorted(project_last(loaded, a, chats))[1] - 1e-3  # between the prompts' projections
    config = SteerConfig(guard=threshold, per_token=per_token, sampling=Sampling(max_new_tokens=5))
    answers = steer_answers(loaded, prompts, [Steering(a, 3.0), Steering(b, -2.0)], config=config)
    with (
        Guard(loaded.model, a, threshold, 3.0, per_token=per_token) as ga,
        Guard(loaded.model, b, threshold, 2.0, per_token=per_token) as gb,
    ):
        hooked = generate(loaded, chats, Sampling(max_new_tokens=5, batch_size=1), progress=False)
    assert answers.steered == hooked
    assert [(g.layer, g.steered, g.seen) for g in answers.guards] == [(2, ga.steered, 3), (3, gb.steered, 3)]
    # at the prompt's end the threshold stops two answers and lets one through (later, per token)
    assert answers.guards[0].steered == 2 + (per_token and answers.guards[0].steered == 3)
    with pytest.raises(PersonavecError, match="nonzero"):
        steer_answers(loaded, ["Hi"], [Steering(a, 0.0)], config=config)


def project_last(loaded, v: PersonaVector, chats: list[str]) -> list[float]:
    from personavec.deploy.monitor import project

    return project(loaded, [v], chats, progress=False)[:, 0].tolist()
