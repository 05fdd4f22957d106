"""The bundled SmolLM2-135M-Instruct: the real-model check (loaded once per session)."""

import torch

from personavec import LoadedModel, capture, pooled_activations, steer
from personavec.generate import generate


def test_identity_and_chat(smollm2: LoadedModel) -> None:
    identity = smollm2.identity
    assert (identity.n_layers, identity.hidden_size, identity.architecture) == (30, 576, "llama")
    assert identity.sha256 is not None and len(identity.sha256) == 64
    prompt = smollm2.chat("How are you?", system="You are a gloomy assistant.")
    assert prompt.startswith("<|im_start|>system\nYou are a gloomy assistant.<|im_end|>")
    assert prompt.endswith("<|im_start|>assistant\n")


def test_generates_and_steering_changes_the_answer(smollm2: LoadedModel) -> None:
    prompts = [smollm2.chat("Name a colour."), smollm2.chat("What is the capital of France?")]
    plain = generate(smollm2, prompts, max_new_tokens=12, progress=False)
    assert all(len(answer) > 0 for answer in plain)
    assert "Paris" in plain[1]
    again = generate(smollm2, prompts, max_new_tokens=12, progress=False)
    assert again == plain  # greedy decoding is deterministic
    with steer(smollm2.model, {15: torch.randn(576) * 40}, coef=1.0):
        steered = generate(smollm2, prompts, max_new_tokens=12, progress=False)
    assert steered != plain


def test_pooled_activations_match_capture(smollm2: LoadedModel) -> None:
    prompt = smollm2.chat("Say hi.")
    response = "Hello there!"
    pooled = pooled_activations(smollm2, [prompt], [response], progress=False)
    ids = smollm2.tokenizer(prompt + response, add_special_tokens=False, return_tensors="pt")["input_ids"]
    n_prompt = len(smollm2.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    with torch.no_grad(), capture(smollm2.model, [0, 15, 30]) as cap:
        smollm2.model(input_ids=ids)
    for layer in (0, 15, 30):
        torch.testing.assert_close(
            pooled.response_avg[0, layer], cap[layer][0, n_prompt:].mean(0), atol=1e-4, rtol=1e-4
        )
        torch.testing.assert_close(
            pooled.prompt_last[0, layer], cap[layer][0, n_prompt - 1], atol=1e-4, rtol=1e-4
        )


def test_engine_demo(smollm2: LoadedModel, tmp_path) -> None:
    from personavec import load_vector
    from personavec.demo import run_demo

    result = run_demo(tmp_path, loaded=smollm2, max_new_tokens=24)
    saved = load_vector(tmp_path / "optimistic.safetensors")
    assert torch.equal(saved.tensor, result.vector.tensor) and saved.layer == 15
    assert saved.model is not None and saved.model.n_layers == 30
    # steering along the vector moves the answers' own activations along it, in order
    low, zero, high = (result.projections[c] for c in (-4.0, 0.0, 4.0))
    assert low < zero < high
