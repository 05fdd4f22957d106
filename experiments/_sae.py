"""A small SAE of one's own, for a model no public SAE covers (the bundled one): trained on the model's
residual stream (every token but the first of the given texts, at one layer) with SAELens' standard
architecture, and saved by SAELens in its folder format. The tests train theirs with it and plant one
feature along a direction; experiments/sae.py trains the docs' one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from personavec.core.models import LoadedModel


def token_activations(loaded: LoadedModel, texts: Sequence[str], layer: int) -> torch.Tensor:
    """``[tokens, hidden]``: the residual stream at personavec `layer` (block `layer`'s output) of every
    token but the first of each text, from transformers' own hidden states."""
    rows = []
    with torch.no_grad():
        for text in texts:
            ids = loaded.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
            hidden = loaded.model(input_ids=ids, output_hidden_states=True).hidden_states[layer]
            rows.append(hidden[0, 1:].float())
    return torch.cat(rows)


def train_sae(
    activations: torch.Tensor, layer: int, d_sae: int = 128, steps: int = 300, seed: int = 0
) -> Any:
    """A ReLU SAE (L1 penalty) fitted to `activations`, reading TransformerLens' hook after block
    ``layer - 1`` (0-based), that is personavec's `layer`."""
    torch.manual_seed(seed)
    hook = f"blocks.{layer - 1}.hook_resid_post"
    sae = StandardSAE(
        StandardSAEConfig(d_in=activations.shape[1], d_sae=d_sae, metadata=SAEMetadata(hook_name=hook))
    )
    scale = float(activations.norm(dim=1).mean())
    optimiser = torch.optim.Adam(sae.parameters(), lr=1e-3)
    for _ in range(steps):
        batch = activations[torch.randint(len(activations), (256,))]
        features = sae.encode(batch)
        loss = ((sae.decode(features) - batch) ** 2).sum(-1).mean() / scale**2 + 1e-3 * features.sum(
            -1
        ).mean() / scale
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return sae


def plant(sae: Any, feature: int, direction: torch.Tensor, mean: torch.Tensor) -> None:
    """Make `feature` read and write along `direction`, with a larger encoder norm than any other
    feature, and just active at `mean` (so that adding the direction raises it linearly)."""
    unit = direction.float() / direction.float().norm()
    with torch.no_grad():
        gain = 2 * float(sae.W_enc.norm(dim=0).max())
        sae.W_dec[feature] = unit
        sae.W_enc[:, feature] = gain * unit
        sae.b_enc[feature] = 1e-3 - float((mean.float() - sae.b_dec) @ sae.W_enc[:, feature])


def save(sae: Any, path: Path) -> Path:
    sae.save_model(path)
    return path
