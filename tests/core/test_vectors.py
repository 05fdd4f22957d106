import json

import numpy as np
import pytest
import torch

from personavec import PersonavecError, PersonaVector, capture, load_vector, load_vectors, save_vectors
from personavec.core.models import ModelIdentity
from personavec.core.pooling import Pooling
from personavec.core.vectors import export_gguf, import_official_pt, read_gguf

from tiny import N_LAYERS, tiny_loaded

IDENTITY = ModelIdentity(name="tiny-llama", architecture="llama", n_layers=N_LAYERS, hidden_size=64)


def _vector(pooling: Pooling = "response-avg", layer: int | None = 2, seed: int = 0) -> PersonaVector:
    torch.manual_seed(seed)
    return PersonaVector(
        "evil",
        torch.randn(N_LAYERS + 1, 64),
        pooling=pooling,
        layer=layer,
        metadata={"model": IDENTITY.to_dict(), "n_pairs": 7},
    )


def test_save_load_round_trip(tmp_path) -> None:
    vectors = [_vector(k, seed=i) for i, k in enumerate(("response-avg", "prompt-avg", "prompt-last"))]
    save_vectors(tmp_path / "evil.safetensors", vectors)
    loaded = load_vectors(tmp_path / "evil.safetensors")
    assert list(loaded) == ["response-avg", "prompt-avg", "prompt-last"]
    for original in vectors:
        back = loaded[original.pooling]
        assert torch.equal(back.tensor, original.tensor)
        assert (back.trait, back.layer, back.metadata) == (original.trait, original.layer, original.metadata)
    assert back.model == IDENTITY
    assert load_vector(tmp_path / "evil.safetensors", "prompt-last").pooling == "prompt-last"
    with pytest.raises(PersonavecError, match="has no 'prompt-last' vector"):
        save_vectors(tmp_path / "one.safetensors", [_vector()])
        load_vector(tmp_path / "one.safetensors", "prompt-last")
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_projection_and_unit() -> None:
    vector = _vector()
    acts = torch.randn(5, 64)
    expected = (acts.double() @ vector.tensor[2].double()) / vector.tensor[2].double().norm()
    torch.testing.assert_close(vector.project(acts).double(), expected, atol=1e-5, rtol=1e-5)
    assert abs(float(vector.unit(1).norm()) - 1) < 1e-6


def test_apply_and_ablate_use_the_chosen_layer() -> None:
    loaded = tiny_loaded("llama")
    vector = _vector()
    ids = torch.randint(3, 400, (1, 5))
    with (
        torch.no_grad(),
        capture(loaded.model, [2]) as before,
        vector.apply(loaded.model, 2.0),
        capture(loaded.model, [2]) as after,
    ):
        loaded.model(input_ids=ids)
    torch.testing.assert_close(after[2] - before[2], (2.0 * vector.tensor[2]).expand(1, 5, 64))
    with torch.no_grad(), vector.ablate(loaded.model), capture(loaded.model, [2]) as ablated:
        loaded.model(input_ids=ids)
    assert vector.project(ablated[2]).abs().max() < 1e-5


def test_model_mismatch_names_both(tmp_path) -> None:
    other = ModelIdentity(name="big-model", architecture="qwen2", n_layers=28, hidden_size=3584)
    with pytest.raises(
        PersonavecError, match=r"made for tiny-llama \(3 blocks, hidden 64\); big-model has 28 blocks"
    ):
        _vector().check_model(other)
    _vector().check_model(IDENTITY)  # the right model passes
    save_vectors(tmp_path / "v.safetensors", [_vector()])
    assert load_vector(tmp_path / "v.safetensors", model=IDENTITY).layer == 2
    with pytest.raises(PersonavecError, match="big-model has 28 blocks, hidden 3584"):
        load_vector(tmp_path / "v.safetensors", model=other)


@pytest.mark.parametrize(
    ("tensor", "kwargs", "message"),
    [
        (torch.randn(64), {}, "rank 1"),
        (torch.full((4, 64), float("inf")), {}, r"NaN or inf values at layers \[0, 1, 2, 3\]"),
        (torch.randn(4, 64), {"layer": 4}, "layer 4 is out of range"),
        (torch.randn(4, 64), {"pooling": "mean"}, "unknown pooling 'mean'"),
    ],
)
def test_invalid_vectors(tensor: torch.Tensor, kwargs: dict, message: str) -> None:
    with pytest.raises(PersonavecError, match=message):
        PersonaVector("evil", tensor, **kwargs)


def test_load_rejects_other_files(tmp_path) -> None:
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(PersonavecError, match="not a personavec vector file"):
        load_vectors(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(PersonavecError, match="cannot read vector file"):
        load_vectors(tmp_path / "junk.safetensors")
    with pytest.raises(PersonavecError, match="vector file not found"):
        load_vectors(tmp_path / "missing.safetensors")


def test_import_official_pt(tmp_path) -> None:
    tensor = torch.randn(N_LAYERS + 1, 64)
    torch.save(tensor, tmp_path / "evil_response_avg_diff.pt")
    vector = import_official_pt(tmp_path / "evil_response_avg_diff.pt", "evil", IDENTITY)
    assert torch.equal(vector.tensor, tensor) and vector.metadata["last_row_after_final_norm"] is True
    torch.save(torch.randn(5, 64), tmp_path / "wrong.pt")
    with pytest.raises(PersonavecError, match="4 blocks, hidden 64"):
        import_official_pt(tmp_path / "wrong.pt", "evil", IDENTITY)
    torch.save({"not": "a tensor"}, tmp_path / "dict.pt")
    with pytest.raises(PersonavecError, match="holds a dict, not a tensor"):
        import_official_pt(tmp_path / "dict.pt", "evil", IDENTITY)


def test_gguf_export_reads_back(tmp_path) -> None:
    vector = _vector(layer=3)
    written = export_gguf(vector, tmp_path / "cv.gguf", coef=1.5)
    assert written == [2]  # personavec layer 3 = llama.cpp direction.2 (output of its 0-based block 2)
    directions = read_gguf(tmp_path / "cv.gguf")
    assert list(directions) == [2]
    np.testing.assert_allclose(directions[2].numpy(), 1.5 * vector.tensor[3].numpy(), rtol=1e-6)
    import gguf

    reader = gguf.GGUFReader(str(tmp_path / "cv.gguf"))
    assert reader.get_field("controlvector.layer_count").contents() == 1
    assert reader.get_field("controlvector.model_hint").contents() == "llama"
    export_gguf(vector, tmp_path / "two.gguf", layers=[2, 3])
    assert sorted(read_gguf(tmp_path / "two.gguf")) == [1, 2]
    with pytest.raises(PersonavecError, match="layer 1 cannot be expressed"):
        export_gguf(vector, tmp_path / "bad.gguf", layers=[1])
    with pytest.raises(PersonavecError, match="no chosen layer"):
        export_gguf(_vector(layer=None), tmp_path / "bad.gguf")


def test_header_is_plain_json(tmp_path) -> None:
    from safetensors import safe_open

    save_vectors(tmp_path / "v.safetensors", [_vector()])
    with safe_open(str(tmp_path / "v.safetensors"), framework="pt") as f:
        header = json.loads(f.metadata()["personavec"])
    assert header["response-avg"]["layer"] == 2 and header["response-avg"]["metadata"]["n_pairs"] == 7
