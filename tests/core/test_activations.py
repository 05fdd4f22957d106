import pytest
import torch

from personavec import PersonavecError, pooled_activations
from personavec.core.activations import iter_pooled
from personavec.core.pooling import encode_samples, length_batches

from tiny import N_LAYERS, tiny_loaded

QUESTIONS = ["How is the weather?", "Tell me about bread.", "What about the Roman empire and its emperors?"]
ANSWERS = ["Lovely, happy sunshine!", "Mix flour, water, salt and yeast, then wait a while.", "Terrible."]


def _reference(loaded, prompt: str, response: str) -> dict[str, torch.Tensor]:
    """The paper's definition written plainly: one sample, float64, rows from hooks on every block."""
    model = loaded.model.double()
    ids_prompt = loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([loaded.tokenizer(prompt + response, add_special_tokens=False)["input_ids"]])
    n = len(ids_prompt)  # no token merges across these boundaries, so this count is right here
    rows: list[torch.Tensor] = []
    handles = [model.model.layers[0].register_forward_pre_hook(lambda m, a: rows.append(a[0][0]))]
    handles += [b.register_forward_hook(lambda m, a, out: rows.append(out[0])) for b in model.model.layers]
    with torch.no_grad():
        model(input_ids=ids)
    for h in handles:
        h.remove()
    model.float()
    hidden = torch.stack(rows)  # [L+1, T, H]
    return {
        "prompt-last": hidden[:, n - 1],
        "prompt-avg": hidden[:, :n].mean(1),
        "response-avg": hidden[:, n:].mean(1),
        "norm": hidden[:, 1:].norm(dim=-1).mean(1),  # every token after the first
    }


def test_pooled_equals_float64_definition() -> None:
    loaded = tiny_loaded("llama")
    prompts = [loaded.chat(q, system="You are upbeat.") for q in QUESTIONS]
    pooled = pooled_activations(loaded, prompts, ANSWERS, progress=False)
    assert pooled.prompt_last.shape == (3, N_LAYERS + 1, 64)
    for i, (p, r) in enumerate(zip(prompts, ANSWERS, strict=True)):
        ref = _reference(loaded, p, r)
        torch.testing.assert_close(pooled.norm[i].double(), ref.pop("norm"), atol=1e-5, rtol=1e-5)
        for pooling, expected in ref.items():
            torch.testing.assert_close(pooled.tensor(pooling)[i].double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("arch", "side"), [("llama", "left"), ("gpt2", "left"), ("gemma2", "left"), ("llama", "right")]
)
def test_alone_equals_inside_a_padded_batch(arch: str, side: str) -> None:
    loaded = tiny_loaded(arch)
    loaded.tokenizer.padding_side = side
    prompts = [loaded.chat(q) for q in QUESTIONS]
    batched = pooled_activations(loaded, prompts, ANSWERS, progress=False)
    for i in range(3):
        alone = pooled_activations(loaded, prompts[i : i + 1], ANSWERS[i : i + 1], progress=False)
        for pooling in ("prompt-last", "prompt-avg", "response-avg"):
            torch.testing.assert_close(
                batched.tensor(pooling)[i], alone.tensor(pooling)[0], atol=1e-4, rtol=1e-4
            )
        torch.testing.assert_close(batched.norm[i], alone.norm[0], atol=1e-4, rtol=1e-4)


def test_token_merging_across_the_boundary_counts_as_response() -> None:
    loaded = tiny_loaded("llama")
    prompt, response = "The weath", "er is lovely"
    tok = loaded.tokenizer
    full = tok(prompt + response, add_special_tokens=False, return_offsets_mapping=True)
    alone = tok(prompt, add_special_tokens=False)["input_ids"]
    merged = [i for i, (s, e) in enumerate(full["offset_mapping"]) if s < len(prompt) < e]
    assert merged, "the test needs a token that spans the boundary"
    (sample,) = encode_samples(loaded.tokenizer, [prompt], [response], None)
    assert sample.n_prompt == merged[0] < len(alone)


def test_batches_respect_the_token_budget() -> None:
    lengths = [5, 50, 7, 30, 30, 12, 3, 49]
    batches = length_batches(lengths, token_budget=100, max_batch_size=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 100


def test_prompt_only_and_streaming() -> None:
    loaded = tiny_loaded("llama")
    prompts = [loaded.chat(q) for q in QUESTIONS]
    pooled = pooled_activations(loaded, prompts, progress=False)
    assert pooled.response_avg is None
    with pytest.raises(PersonavecError, match="no 'response-avg' activations"):
        pooled.tensor("response-avg")
    seen = []
    for indices, part in iter_pooled(loaded, prompts, token_budget=1, progress=False):
        assert part.prompt_last.shape[0] == len(indices) == 1  # the budget forces one sample a batch
        torch.testing.assert_close(part.prompt_last[0], pooled.prompt_last[indices[0]], atol=1e-5, rtol=1e-5)
        seen += indices
    assert sorted(seen) == [0, 1, 2]


def test_streaming_leaves_the_caller_alone() -> None:
    loaded = tiny_loaded("llama")
    prompts = [loaded.chat(q) for q in QUESTIONS]
    for _ in iter_pooled(loaded, prompts, token_budget=1, progress=False):
        assert not torch.is_inference_mode_enabled()
        loaded.model(input_ids=torch.randint(3, 400, (1, 5)))  # the caller's own forward: no pooling hooks
        break
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in loaded.model.modules())


def test_truncation_and_errors() -> None:
    loaded = tiny_loaded("llama")
    prompt = loaded.chat("How is the weather?")
    n_prompt = len(loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    pooled = pooled_activations(
        loaded,
        [prompt, prompt],
        ["Lovely sunshine all day long!", "!"],
        max_length=n_prompt + 3,
        progress=False,
    )
    assert pooled.n_truncated == 1
    with pytest.raises(PersonavecError, match="sample 1: the response is empty"):
        pooled_activations(loaded, [prompt, prompt], ["Fine.", ""], progress=False)
    with pytest.raises(PersonavecError, match=f"sample 0: its prompt has {n_prompt} tokens"):
        pooled_activations(loaded, [prompt], ["Fine."], max_length=n_prompt, progress=False)
    with pytest.raises(PersonavecError, match="2 prompts but 1 responses"):
        pooled_activations(loaded, [prompt, prompt], ["Fine."], progress=False)


def test_nan_at_pad_positions_does_not_leak_into_pooling() -> None:
    loaded = tiny_loaded("llama")
    loaded.tokenizer.pad_token = "<|endoftext|>"  # a token the chat text never uses
    with torch.no_grad():  # pad tokens embed to NaN: layer 0 then holds NaN exactly at pad positions
        loaded.model.get_input_embeddings().weight[loaded.tokenizer.pad_token_id] = float("nan")
    prompts = [loaded.chat(q) for q in QUESTIONS]
    batched = pooled_activations(loaded, prompts, ANSWERS, progress=False)
    alone = pooled_activations(loaded, prompts[2:], ANSWERS[2:], progress=False)  # the longest: no pads
    for pooling in ("prompt-last", "prompt-avg", "response-avg"):
        assert torch.isfinite(batched.tensor(pooling)[:, 0]).all()
        torch.testing.assert_close(
            batched.tensor(pooling)[2, 0], alone.tensor(pooling)[0, 0], atol=1e-5, rtol=1e-5
        )
