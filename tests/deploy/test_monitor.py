import pytest
import torch

from personavec.core.sampling import Sampling
from personavec.core.vectors import PersonaVector
from personavec.deploy.monitor import LiveMonitor, project
from personavec.errors import PersonavecError

from tiny import N_LAYERS, tiny_loaded

PROMPTS = ["Hello there, how are you today?", "Hi", "What is the weather like in the mountains?"]


def vectors(loaded, layers=(1, 2)) -> list[PersonaVector]:
    torch.manual_seed(3)
    identity = loaded.identity.to_dict()
    shape = (N_LAYERS + 1, loaded.identity.hidden_size)
    return [
        PersonaVector(f"t{i}", torch.randn(shape), layer=layer, metadata={"model": identity})
        for i, layer in enumerate(layers)
    ]


def hidden_states(loaded, text: str) -> tuple[torch.Tensor, ...]:
    ids = loaded.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        return loaded.model(ids, output_hidden_states=True).hidden_states


def test_projections_match_a_float64_recomputation() -> None:
    loaded = tiny_loaded("qwen2")
    vs = vectors(loaded)
    prompts = [loaded.chat(p) for p in PROMPTS]
    got = project(loaded, vs, prompts, progress=False)  # one batch, left-padded
    answers = ["Fine, thanks.", "Yo", "Cold and windy, with snow."]
    got_avg = project(loaded, vs, prompts, answers, pooling="response-avg", progress=False)
    for i, prompt in enumerate(prompts):
        n_prompt = len(loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        states = hidden_states(loaded, prompt)
        full = hidden_states(loaded, prompt + answers[i])
        for j, v in enumerate(vs):
            unit = v.tensor[v.layer].double() / v.tensor[v.layer].double().norm()
            assert got[i, j].item() == pytest.approx(float(states[v.layer][0, -1].double() @ unit), abs=1e-4)
            response = full[v.layer][0, n_prompt:].double().mean(0)
            assert got_avg[i, j].item() == pytest.approx(float(response @ unit), abs=1e-4)


def test_live_monitor_matches_a_post_hoc_forward() -> None:
    loaded = tiny_loaded("llama")
    vs = vectors(loaded)
    prompts = [loaded.chat(p) for p in PROMPTS[:2]]
    batch = loaded.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    seen: list[int] = []
    steps = 6
    with LiveMonitor(loaded.model, vs, callback=lambda step, values: seen.append(step)) as watch:
        out = loaded.model.generate(
            **batch, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, pad_token_id=0
        )
    trace = watch.trace()
    assert trace.shape == (2, steps, 2) and seen == list(range(steps))
    new = out[:, batch["input_ids"].shape[1] :]
    for row, prompt in enumerate(prompts):
        ids = loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        n = len(ids)
        full = torch.tensor([ids + new[row].tolist()])
        with torch.no_grad():
            states = loaded.model(full, output_hidden_states=True).hidden_states
        for j, v in enumerate(vs):
            expected = states[v.layer][0, n - 1 : n - 1 + steps].double() @ v.unit().double()
            torch.testing.assert_close(trace[row, :, j].double(), expected, atol=1e-4, rtol=1e-4)


def test_a_second_generation_starts_a_new_trace() -> None:
    loaded = tiny_loaded("llama")
    batch = loaded.tokenizer([loaded.chat("Hi")], return_tensors="pt", add_special_tokens=False)
    with LiveMonitor(loaded.model, vectors(loaded)[:1]) as watch:
        for steps in (5, 3):
            loaded.model.generate(
                **batch, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, pad_token_id=0
            )
    assert watch.trace().shape == (1, 3, 1)


def test_bad_input() -> None:
    loaded = tiny_loaded("llama")
    vs = vectors(loaded)
    with pytest.raises(PersonavecError, match="no prompts"):
        project(loaded, vs, [], progress=False)
    with pytest.raises(PersonavecError, match="unknown pooling"):
        project(loaded, vs, ["x"], pooling="last", progress=False)
    with pytest.raises(PersonavecError, match="need the responses"):
        project(loaded, vs, ["x"], pooling="response-avg", progress=False)
    other = PersonaVector("big", torch.randn(31, 576), layer=10)
    with pytest.raises(PersonavecError, match="30 blocks, hidden 576"):
        project(loaded, [other], ["x"], progress=False)
    with pytest.raises(PersonavecError, match="layer 9"):
        project(loaded, vs, ["x"], layer=9, progress=False)


def test_monitor_generation_is_the_greedy_answer_and_its_trace() -> None:
    from personavec.deploy.monitor import monitor_generation

    loaded = tiny_loaded("llama")
    v = vectors(loaded)[1]
    watched = monitor_generation(loaded, v, "Hi", sampling=Sampling(max_new_tokens=4))
    batch = loaded.tokenizer([loaded.chat("Hi")], return_tensors="pt", add_special_tokens=False)
    with LiveMonitor(loaded.model, [v]) as watch:
        out = loaded.model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=0)
    new = out[0, batch["input_ids"].shape[1] :].tolist()
    assert watched.tokens == [loaded.tokenizer.decode([t]) for t in new] and len(new) == 4
    assert watched.projections == pytest.approx(watch.trace()[0, :, 0].tolist(), abs=1e-5)
    assert (watched.trait, watched.layer) == ("t1", 2) and watched.to_dict()["layer"] == 2
    with pytest.raises(PersonavecError, match="at least 1"):
        monitor_generation(loaded, v, "Hi", sampling=Sampling(max_new_tokens=0))
