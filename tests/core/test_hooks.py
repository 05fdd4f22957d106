import peft
import pytest
import torch
from torch import nn

from personavec import PersonavecError, ablate, capture, steer

from tiny import N_LAYERS, tiny_loaded, tiny_model


def _batch(
    model_tokens: int = 400, batch: int = 3, length: int = 8, pad: str = "left"
) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(3, model_tokens, (batch, length))
    mask = torch.ones_like(ids)
    if pad == "left":
        mask[1, :3] = 0
    else:
        mask[1, -3:] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _no_hooks_left(model: nn.Module) -> bool:
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not getattr(m, "_forward_hooks_with_kwargs", {})
        for m in model.modules()
    )


def test_coefficient_zero_is_bit_identical() -> None:
    model = tiny_model("llama")
    batch = _batch()
    plain = model(**batch).logits
    with steer(model, {2: torch.randn(64)}, coef=0.0):
        steered = model(**batch).logits
    assert torch.equal(plain, steered)


@pytest.mark.parametrize("layer", [0, 1, N_LAYERS])
def test_steer_equals_hand_edit(layer: int) -> None:
    model = tiny_model("llama").double()
    ids = torch.randint(3, 400, (2, 6))
    v, alpha = torch.randn(64).double(), 1.7  # vectors are kept in float32: start from one
    with torch.no_grad():
        if layer == 0:  # by hand: edit the embeddings that enter block 1
            embeds = model.get_input_embeddings()(ids) + alpha * v
            reference = model(inputs_embeds=embeds).logits
        else:  # by hand: a raw torch hook on block ℓ that adds alpha * v
            handle = model.model.layers[layer - 1].register_forward_hook(lambda m, a, out: out + alpha * v)
            reference = model(input_ids=ids).logits
            handle.remove()
        with steer(model, {layer: v}, coef=alpha):
            steered = model(input_ids=ids).logits
        plain = model(input_ids=ids).logits
    torch.testing.assert_close(steered, reference, atol=1e-10, rtol=0)
    assert (steered - plain).abs().max() > 1e-3


def test_ablation_removes_the_direction() -> None:
    model = tiny_model("qwen2")
    batch = _batch()
    real = batch["attention_mask"].bool()
    with torch.no_grad(), capture(model, [2]) as before:
        model(**batch)
    v = before[2][real].mean(0) + 0.1 * torch.randn(64)  # a direction the activations really have
    unit = v / v.norm()
    with torch.no_grad(), ablate(model, {2: v}), capture(model, [2]) as after:
        model(**batch)
    assert (before[2] @ unit)[real].abs().mean() > 0.05
    assert (after[2] @ unit)[real].abs().max() < 1e-5
    # the orthogonal part is untouched
    ortho = before[2] - (before[2] @ unit).unsqueeze(-1) * unit
    torch.testing.assert_close(after[2][real], ortho[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("pad", ["left", "right"])
def test_pad_positions_are_never_edited(pad: str) -> None:
    model = tiny_model("llama")
    batch = _batch(pad=pad)
    v = torch.randn(64)
    with (
        torch.no_grad(),
        capture(model, [1]) as before,
        steer(model, {1: v}, coef=2.0),
        capture(model, [1]) as after,
    ):
        model(**batch)
    delta = after[1] - before[1]
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(delta[real], (2.0 * v).expand(int(real.sum()), 64))
    assert torch.equal(delta[~real], torch.zeros_like(delta[~real]))


def _generate_deltas(positions: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per forward call of generate: what the steering hook added, and which tokens were real."""
    loaded = tiny_loaded("llama")
    tok = loaded.tokenizer
    prompts = [loaded.chat("How is the weather?"), loaded.chat("Tell me about bread and flour, please.")]
    batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    v = torch.randn(64)
    model = loaded.model
    with (
        torch.no_grad(),
        capture(model, [2]) as before,
        steer(model, {2: v}, 1.0, positions),
        capture(model, [2]) as after,
    ):
        model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    deltas = [a - b for a, b in zip(after.calls[2], before.calls[2], strict=True)]
    return deltas, [batch["attention_mask"].bool()] + [torch.ones(2, 1, dtype=torch.bool)] * (len(deltas) - 1)


@pytest.mark.parametrize("positions", ["prompt", "response", "all"])
def test_positions_inside_generate(positions: str) -> None:
    deltas, real = _generate_deltas(positions)
    assert len(deltas) == 4 and deltas[0].shape[1] > 1 and all(d.shape[1] == 1 for d in deltas[1:])
    changed = [d.abs().amax(-1) > 0 for d in deltas]
    prompt_on = positions in ("prompt", "all")
    response_on = positions in ("response", "all")
    assert torch.equal(changed[0], real[0] & prompt_on)  # prefill: prompt tokens, never pads
    for step in changed[1:]:
        assert bool(step.all()) is response_on and bool(step.any()) is response_on


def test_explicit_mask_positions() -> None:
    model = tiny_model("llama")
    batch = _batch(pad="right")
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[:, 4:] = True
    with (
        torch.no_grad(),
        capture(model, [1]) as b,
        steer(model, {1: torch.randn(64)}, 1.0, mask),
        capture(model, [1]) as a,
    ):
        model(**batch)
    changed = (a[1] - b[1]).abs().amax(-1) > 0
    assert torch.equal(changed, mask & batch["attention_mask"].bool())


def test_hooks_removed_after_exception_and_nesting_composes() -> None:
    model = tiny_model("llama")
    ids = torch.randint(3, 400, (1, 5))
    v1, v2 = torch.randn(64), torch.randn(64)
    with pytest.raises(ValueError), steer(model, {1: v1}, 1.0):
        raise ValueError("boom")
    assert _no_hooks_left(model)
    with torch.no_grad():
        with steer(model, {1: v1}, 0.5), steer(model, {1: v2}, 2.0), capture(model, [1]) as both:
            model(input_ids=ids)
        with steer(model, {1: 0.5 * v1 + 2.0 * v2}, 1.0), capture(model, [1]) as summed:
            model(input_ids=ids)
    torch.testing.assert_close(both[1], summed[1], atol=1e-5, rtol=0)
    assert _no_hooks_left(model)


def test_vector_follows_model_dtype() -> None:
    model = tiny_model("llama").to(torch.bfloat16)
    ids = torch.randint(3, 400, (1, 5))
    with (
        torch.no_grad(),
        steer(model, {2: torch.randn(64, dtype=torch.float64)}, 1.0),
        capture(model, [2]) as cap,
    ):
        logits = model(input_ids=ids).logits
    assert cap[2].dtype == torch.bfloat16 and logits.dtype == torch.bfloat16


def test_training_step_under_steering_reaches_lora() -> None:
    base = tiny_model("llama")
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"]))
    model.train()
    ids = torch.randint(3, 400, (2, 7))

    def lora_grads(coef: float) -> torch.Tensor:
        model.zero_grad()
        with steer(model, {1: torch.ones(64)}, coef) as hook:
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
        assert hook.calls == 1
        grads = [p.grad.flatten() for n, p in model.named_parameters() if "lora_" in n and p.grad is not None]
        return torch.cat(grads)

    steered, plain = lora_grads(3.0), lora_grads(0.0)
    assert steered.abs().sum() > 0 and not torch.allclose(steered, plain)
    assert _no_hooks_left(model)


@pytest.mark.parametrize(
    ("vector", "message"),
    [
        (torch.randn(63), r"shape \(63,\); this model needs \(64,\)"),
        (torch.randn(2, 64), r"shape \(2, 64\)"),
        (torch.full((64,), float("nan")), "NaN or inf"),
    ],
)
def test_bad_vectors(vector: torch.Tensor, message: str) -> None:
    with pytest.raises(PersonavecError, match=message):
        steer(tiny_model("llama"), {1: vector})


def test_bad_layer_and_positions() -> None:
    model = tiny_model("llama")
    with pytest.raises(PersonavecError, match=r"layer 4 is out of range: this model has layers 0\.\.3"):
        steer(model, {4: torch.randn(64)})
    with pytest.raises(PersonavecError, match="unknown positions 'middle'"):
        steer(model, {1: torch.randn(64)}, positions="middle")  # type: ignore[arg-type]


def test_static_cache_and_bad_arguments_fail_clearly() -> None:
    loaded = tiny_loaded("llama")
    tok, model = loaded.tokenizer, loaded.model
    batch = tok([loaded.chat("Hi?"), loaded.chat("Tell me about bread.")], return_tensors="pt", padding=True)
    with pytest.raises(PersonavecError, match="dynamic cache"), steer(model, {1: torch.randn(64)}):
        model.generate(
            **batch, max_new_tokens=2, pad_token_id=tok.pad_token_id, cache_implementation="static"
        )
    two_rows = torch.ones(2, 8, dtype=torch.bool)
    with (
        pytest.raises(PersonavecError, match="mask has 2 rows"),
        steer(model, {1: torch.randn(64)}, 1.0, two_rows),
    ):
        model(**_batch())
    with pytest.raises(PersonavecError, match="cannot ablate a zero vector"):
        ablate(model, {1: torch.zeros(64)})
    with pytest.raises(PersonavecError, match="finite number, got nan"):
        steer(model, {1: torch.randn(64)}, coef=float("nan"))
    assert _no_hooks_left(model)


def test_explicit_mask_is_read_at_absolute_positions_inside_generate() -> None:
    model = tiny_model("llama")
    batch = _batch()  # 8 prompt positions; 4 new tokens: decode calls at positions 8, 9, 10
    mask = torch.zeros(3, 12, dtype=torch.bool)
    mask[:, 9] = True
    with (
        torch.no_grad(),
        capture(model, [1]) as b,
        steer(model, {1: torch.randn(64)}, 1.0, mask),
        capture(model, [1]) as a,
    ):
        model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
    changed = (a[1] - b[1]).abs().amax(-1) > 0
    assert torch.equal(changed, mask[:, :11])


def test_ablation_edits_only_the_chosen_positions() -> None:
    model = tiny_model("qwen2")
    batch = _batch()
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[:, 5:] = True
    v = torch.randn(64)
    with torch.no_grad(), capture(model, [2]) as b, ablate(model, {2: v}, mask), capture(model, [2]) as a:
        model(**batch)
    changed = (a[2] - b[2]).abs().amax(-1) > 0
    assert torch.equal(changed, mask & batch["attention_mask"].bool())
    assert (a[2][mask] @ (v / v.norm())).abs().max() < 1e-5
