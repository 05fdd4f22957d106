import pytest
import torch

from personavec.core.hooks import capture
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


def guarded(loaded, vector, batch, **guard):
    """Generate under a guard, with the residual at its layer captured before and after its edit."""
    with (  # hooks run in the order they were entered
        capture(loaded.model, [2]) as before,
        Guard(loaded.model, vector, **guard) as g,
        capture(loaded.model, [2]) as after,
    ):
        tokens = generate(loaded, batch)
    return tokens, g, before[2], after[2]


def assert_pushed(vector, coef, fired_at, before, after, prompt_len) -> None:
    """Rows that fired at step s get −coef·v̂·‖v‖ at the last prompt position + s and after; nothing else."""
    v = vector.tensor[2]
    push = -coef * (v / v.norm()) * v.norm()
    assert (fired_at >= 0).any(), "nothing fired: the check would be vacuous"
    for row, step in enumerate(fired_at.tolist()):
        start = after.shape[1] if step < 0 else prompt_len - 1 + step
        diff = after[row] - before[row]
        assert torch.equal(diff[:start], torch.zeros_like(diff[:start]))
        torch.testing.assert_close(diff[start:], push.expand_as(diff[start:]), atol=1e-4, rtol=1e-4)


def test_the_push_is_minus_coef_times_v_on_the_steered_rows_only() -> None:
    loaded, vector, prompts, batch = setup()
    projections = project(loaded, [vector], prompts, progress=False)[:, 0]
    _, guard, before, after = guarded(loaded, vector, batch, threshold=float(projections.median()), coef=3.0)
    assert guard.fired.sum() == 2
    assert_pushed(vector, 3.0, guard.fired_at, before, after, batch["input_ids"].shape[1])


def test_per_token_fires_when_a_row_crosses_after_the_prompt_and_the_prompt_check_does_not() -> None:
    loaded, vector, _, batch = setup()
    n = batch["input_ids"].shape[1]
    with capture(loaded.model, [2]) as cap:
        plain = generate(loaded, batch)
    projections = cap[2][:, n - 1 :] @ vector.unit(2)  # [row, step]: what the guard compares
    at_prompt, later = float(projections[:, 0].max()), float(projections[:, 1:].max())
    assert later > at_prompt, "the fixture needs a row that crosses only after its prompt"
    threshold = (at_prompt + later) / 2
    over = projections > threshold
    expected = [int(row.nonzero()[0]) if row.any() else -1 for row in over]
    tokens, guard, before, after = guarded(
        loaded, vector, batch, threshold=threshold, coef=3.0, per_token=True
    )
    assert guard.fired_at.tolist() == expected and all(s != 0 for s in expected)
    assert_pushed(vector, 3.0, guard.fired_at, before, after, n)
    assert not torch.equal(tokens, plain)
    for prompt_only in (threshold, at_prompt):  # at_prompt: a projection equal to it does not fire
        with Guard(loaded.model, vector, threshold=prompt_only, coef=3.0) as once:
            assert torch.equal(generate(loaded, batch), plain)
        assert once.fired_at.tolist() == [-1] * len(expected)


def test_per_token_keeps_the_step_a_row_first_fired_at() -> None:
    loaded, vector, prompts, batch = setup()
    with Guard(loaded.model, vector, threshold=-1e9, coef=1.0, per_token=True) as guard:
        generate(loaded, batch)  # every row stays above the threshold at every step
    assert guard.fired_at.tolist() == [0] * len(prompts)
