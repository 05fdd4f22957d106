"""SAE hook names in personavec's layer numbering, and the checks made before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _sae import save, train_sae
from personavec.analysis.sae import check_sae, load_sae, sae_layer
from personavec.cli import main
from personavec.core.models import model_identity
from personavec.core.vectors import PersonaVector, save_vectors
from personavec.errors import DataError, ModelError, PersonavecError


@pytest.mark.parametrize(
    ("hook", "layer"),
    [
        ("blocks.0.hook_resid_pre", 0),  # the input of the first block: the embeddings
        ("blocks.12.hook_resid_pre", 12),
        ("blocks.11.hook_resid_post", 12),  # the output of 0-based block 11 is personavec's layer 12
        ("blocks.29.hook_resid_post", 30),
        ("model.layers.11", 12),  # a Hugging Face decoder layer's output
        ("layers.11", 12),
    ],
)
def test_hook_names_map_to_personavecs_layers(hook: str, layer: int) -> None:
    assert sae_layer(hook, 30) == layer


@pytest.mark.parametrize(
    ("hook", "problem"),
    [
        ("blocks.3.hook_resid_mid", "not a residual-stream point"),
        ("blocks.3.attn.hook_z", "not a residual-stream point"),
        ("blocks.30.hook_resid_post", "layer 31"),
    ],
)
def test_other_hooks_are_refused(hook: str, problem: str) -> None:
    with pytest.raises(PersonavecError, match=problem):
        sae_layer(hook, 30)


def test_an_sae_folder_is_checked_before_any_model_loads(tmp_path: Path, capsys) -> None:
    identity = model_identity("smollm2")
    vector = PersonaVector("t", torch.randn(31, 576), layer=12, metadata={"model": identity.to_dict()})
    narrow = load_sae(save(train_sae(torch.randn(64, 8), layer=12, d_sae=4, steps=2), tmp_path / "narrow"))
    with pytest.raises(ModelError, match="8-wide activations; 't' is 576-wide"):
        check_sae(narrow, vector)
    assert check_sae(narrow, PersonaVector("t", torch.randn(31, 8)), layer=3) == ("layer 3 (given)", 3)
    with pytest.raises(DataError, match="not an SAE folder"):
        load_sae(tmp_path)
    save_vectors(tmp_path / "t.safetensors", [vector])
    argv = ["vectors", "decompose", str(tmp_path / "t.safetensors"), "--model", "smollm2", "--sae"]
    assert main([*argv, str(tmp_path / "narrow")]) == 2
    assert "not in an extraction run directory" in capsys.readouterr().err
