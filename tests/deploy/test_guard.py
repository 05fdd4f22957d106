import pytest
import torch

from personavec.core.sampling import Sampling
from personavec.core.vectors import PersonaVector
from personavec.deploy.guard import Guard
from personavec.deploy.monitor import project
from personavec.errors import PersonavecError

from tiny import N_LAYERS, tiny_loaded

PROMPTS = ["Tell me a story.", "What is two plus two?", "Describe the sea at night, please.", "Hi"]


def setup():
    loaded = tiny_loaded("llama")
    torch.manual_seed(5)
    tensor = torch.randn(N_LAYERS + 1, loaded.identity.hidden_size) * 8
    vector = PersonaVector("t", tensor, layer=2, metadata={"model": loaded.identity.to_dict()})
    prompts = [loaded.chat(p) for p in PROMPTS]
    batch = loaded.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    return loaded, vector, prompts, batch


def generate(loaded, batch) -> torch.Tensor:
    return loaded.model.generate(**batch, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)


def test_only_sequences_over_the_threshold_are_steered() -> None:
    loaded, vector, prompts, batch = setup()
    projections = project(loaded, [vector], prompts, progress=False)[:, 0]
    threshold = float(projections.median())  # two above, two below
    plain = generate(loaded, batch)
    with Guard(loaded.model, vector, threshold=threshold, coef=4.0) as guard:
        guarded = generate(loaded, batch)
    expected = projections > threshold
    assert guard.fired.tolist() == expected.tolist() and guard.rate == 0.5
    for row in range(len(prompts)):
        same = torch.equal(guarded[row], plain[row])
        assert same != bool(expected[row])  # untouched rows bit-identical; steered rows changed


def test_per_token_guard_fires_later_and_never_above_infinity() -> None:
    loaded, vector, prompts, batch = setup()
    plain = generate(loaded, batch)
    with Guard(loaded.model, vector, threshold=float("inf"), coef=4.0, per_token=True) as guard:
        assert torch.equal(generate(loaded, batch), plain)
    assert guard.rate == 0.0 and guard.fired_at.tolist() == [-1] * len(prompts)
    projections = project(loaded, [vector], prompts, progress=False)[:, 0]
    with Guard(
        loaded.model, vector, threshold=float(projections.max()) + 1e-3, coef=4.0, per_token=True
    ) as guard:
        generate(loaded, batch)
    assert (guard.fired_at != 0).all()  # nobody crossed at the end of the prompt


def test_bad_coefficient() -> None:
    loaded, vector, _, _ = setup()
    with pytest.raises(PersonavecError, match="use > 0"):
        Guard(loaded.model, vector, threshold=0.0, coef=-1.0)


def test_counts_cover_every_batch_of_a_generate_call() -> None:
    from personavec.core.generate import generate as answer

    loaded, vector, prompts, _ = setup()
    with Guard(loaded.model, vector, threshold=-1e9, coef=1.0) as guard:
        answer(loaded, prompts, Sampling(max_new_tokens=3, batch_size=3), progress=False)  # batches 3 + 1
    assert (guard.steered, guard.seen) == (4, 4) and guard.fired_at.tolist() == [0]


def test_right_padding_is_refused() -> None:
    loaded, vector, prompts, _ = setup()
    loaded.tokenizer.padding_side = "right"
    batch = loaded.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with pytest.raises(PersonavecError, match="needs left padding"), Guard(loaded.model, vector, 0.0, 1.0):
        loaded.model(**batch)
