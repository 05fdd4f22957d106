import peft
import pytest
import torch
from torch import nn

from personavec import PersonavecError, capture, find_blocks, set_blocks_path
from personavec.core.layers import unwrap

from tiny import ARCHITECTURES, N_LAYERS, tiny_model

FINAL_NORM = {"gpt2": "transformer.ln_f", "gpt_neox": "gpt_neox.final_layer_norm"}


def _final_norm(model: nn.Module, arch: str) -> nn.Module:
    return model.get_submodule(FINAL_NORM.get(arch, "model.norm"))


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_capture_equals_output_hidden_states(arch: str) -> None:
    model = tiny_model(arch)
    # MoE expert kernels have no float64 path: those stay float32 (capture is exact either way)
    if arch not in ("qwen2_moe", "mixtral"):
        model = model.double()
    blocks = find_blocks(model)
    assert blocks.n_layers == N_LAYERS
    ids = torch.randint(3, 400, (2, 9))
    with capture(model, range(N_LAYERS + 1)) as cap:
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
    reference = [h.double() for h in out.hidden_states]
    for layer in range(N_LAYERS):  # rows 0..L-1: identical to output_hidden_states
        torch.testing.assert_close(cap[layer].double(), reference[layer], atol=1e-5, rtol=0)
    # row L is the last block's output before the final norm; output_hidden_states[-1] is after it
    with torch.no_grad():
        normed = _final_norm(model, arch)(cap[N_LAYERS])
    torch.testing.assert_close(normed.double(), reference[N_LAYERS], atol=1e-5, rtol=0)
    assert not torch.allclose(cap[N_LAYERS].double(), reference[N_LAYERS], atol=1e-3)


class _Opaque(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stack = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return input_ids


def test_unknown_architecture_names_the_fix() -> None:
    with pytest.raises(PersonavecError, match=r"unknown architecture '_Opaque'.*set_blocks_path"):
        find_blocks(_Opaque())


def test_blocks_path_override() -> None:
    model = _Opaque()
    set_blocks_path(model, "stack")
    blocks = find_blocks(model)
    assert blocks.layers is model.stack and blocks.backbone is model
    with pytest.raises(PersonavecError, match="'nowhere' is not a non-empty"):
        set_blocks_path(_Opaque(), "nowhere")


def test_peft_wrapper_is_unwrapped() -> None:
    model = tiny_model("llama")
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj"]))
    assert unwrap(wrapped) is model
    assert find_blocks(wrapped).layers is model.model.layers
