"""Find the decoder blocks of a Hugging Face causal language model.

Layer numbering used everywhere in personavec: layer 0 is the residual stream entering the first
block (the embeddings, after any scaling the model applies), layer ℓ ≥ 1 is the output of block ℓ
(1-based). A model with L blocks has L + 1 layers. Layer L is the last block's output *before* the
model's final norm (Hugging Face's `output_hidden_states[-1]` is after it).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from personavec.errors import ModelError

# Module paths of the block list, relative to the *ForCausalLM model, tried in order. They cover
# Llama, Qwen2/2.5, Qwen3, Mistral, Mixtral, Qwen2-MoE, Gemma 2, Gemma 3 (text), Phi-3, OLMo 2
# ("model.layers"), GPT-2 ("transformer.h"), GPT-NeoX/Pythia ("gpt_neox.layers") and several others.
KNOWN_BLOCK_PATHS = (
    "model.layers",
    "model.language_model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
    "transformer.blocks",
    "transformer.layers",
)

_OVERRIDE_ATTR = "_personavec_blocks_path"


@dataclass(frozen=True)
class Blocks:
    """The decoder blocks of a model and the module that runs them (the backbone)."""

    path: str
    backbone: nn.Module
    layers: nn.ModuleList

    @property
    def n_layers(self) -> int:
        return len(self.layers)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain transformers model inside a PEFT wrapper (or the model itself)."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def set_blocks_path(model: nn.Module, path: str) -> None:
    """Name the block list of an architecture personavec does not know, e.g. ``"model.layers"``."""
    setattr(unwrap(model), _OVERRIDE_ATTR, path)
    find_blocks(model)  # fail now, with the path named, if it is wrong


def _module_at(root: nn.Module, path: str) -> nn.Module | None:
    module: nn.Module | None = root
    for name in path.split("."):
        module = getattr(module, name, None)
        if not isinstance(module, nn.Module):
            return None
    return module


def find_blocks(model: nn.Module) -> Blocks:
    """Locate the decoder blocks; a clear error names how to point at them when that fails."""
    root = unwrap(model)
    override = getattr(root, _OVERRIDE_ATTR, None)
    for path in (override,) if override else KNOWN_BLOCK_PATHS:
        layers = _module_at(root, path)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            backbone_path = path.rsplit(".", 1)[0]
            backbone = _module_at(root, backbone_path) if "." in path else root
            assert backbone is not None
            return Blocks(path=path, backbone=backbone, layers=layers)
        if override:
            raise ModelError(
                f"blocks path {path!r} is not a non-empty torch.nn.ModuleList in {type(root).__name__}"
            )
    arch = getattr(getattr(root, "config", None), "model_type", type(root).__name__)
    raise ModelError(
        f"unknown architecture {arch!r}: cannot find its decoder blocks; name their module path with "
        "personavec.set_blocks_path(model, 'model.layers') or load_model(..., blocks='model.layers') "
        "(personavec models inspect --blocks PATH tries one)"
    )


def check_layer(layer: int, n_layers: int) -> int:
    """Return `layer` if it is a valid residual-stream index (0..L), else raise a clear error."""
    if not 0 <= layer <= n_layers:
        raise ModelError(
            f"layer {layer} is out of range: this model has layers 0..{n_layers} "
            f"(0 = embeddings, {n_layers} = last block)"
        )
    return layer
