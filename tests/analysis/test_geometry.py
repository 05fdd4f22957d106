import json
import math

import pytest
import torch

from personavec import PersonavecError
from personavec.analysis.geometry import compare, plot
from personavec.cli import main
from personavec.core.models import ModelIdentity
from personavec.core.vectors import PersonaVector, save_vectors

MODEL = ModelIdentity("tiny", "llama", 5, 8, sha256="a" * 64)


def _vector(trait: str, seed: int, layer: int | None = 3, model: ModelIdentity = MODEL) -> PersonaVector:
    tensor = torch.randn(model.n_layers + 1, model.hidden_size, generator=torch.Generator().manual_seed(seed))
    return PersonaVector(trait, tensor, layer=layer, metadata={"model": model.to_dict()})


def _cosine(a: list[float], b: list[float]) -> float:
    """The definition written plainly, in Python floats."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_cosines_equal_the_definition_at_every_layer_and_across_layers() -> None:
    vectors = [_vector("evil", 0), _vector("sycophantic", 1), _vector("humorous", 2)]
    geometry = compare(vectors)
    rows = [v.tensor.tolist() for v in vectors]
    for layer in range(MODEL.n_layers + 1):
        for i in range(3):
            for j in range(3):
                expected = _cosine(rows[i][layer], rows[j][layer])
                assert geometry.across_vectors[layer, i, j] == pytest.approx(expected, abs=1e-9)
    for i in range(3):
        for a in range(MODEL.n_layers + 1):
            for b in range(MODEL.n_layers + 1):
                assert geometry.across_layers[i, a, b] == pytest.approx(
                    _cosine(rows[i][a], rows[i][b]), abs=1e-9
                )
    negated = compare([vectors[0], vectors[0].negated("kind")])
    assert negated.across_vectors[:, 0, 1] == pytest.approx([-1.0] * (MODEL.n_layers + 1))


def test_a_zero_layer_has_no_direction() -> None:
    vector = _vector("evil", 0)
    vector.tensor[0] = 0
    geometry = compare([vector, _vector("kind", 1)])
    assert math.isnan(geometry.across_vectors[0, 0, 1]) and not math.isnan(geometry.across_vectors[1, 0, 1])
    assert geometry.to_dict()["across_vectors"][0][0][1] is None


def test_vectors_of_different_models_are_refused() -> None:
    other = ModelIdentity("other", "llama", 5, 8, sha256="b" * 64)
    with pytest.raises(PersonavecError, match=r"'kind' belongs to other .* 'evil' to tiny .*one model"):
        compare([_vector("evil", 0), _vector("kind", 1, model=other)])
    retrained = ModelIdentity("tiny", "llama", 5, 8, sha256="c" * 64)  # same name, other weights
    with pytest.raises(PersonavecError, match="one model"):
        compare([_vector("evil", 0), _vector("kind", 1, model=retrained)])
    wider = ModelIdentity("tiny", "llama", 5, 16, sha256="a" * 64)
    with pytest.raises(PersonavecError, match="hidden 16"):
        compare([_vector("evil", 0), _vector("kind", 1, model=wider)])


def test_the_span_is_where_the_direction_holds() -> None:
    base = torch.randn(8, generator=torch.Generator().manual_seed(0))
    turn = torch.randn(8, generator=torch.Generator().manual_seed(1))
    rows = [turn, turn, base + 0.1 * turn, base, base + 0.2 * turn, turn]  # layers 2..4 share a direction
    vector = PersonaVector("evil", torch.stack(rows), layer=3, metadata={"model": MODEL.to_dict()})
    geometry = compare([vector])
    assert geometry.span(0, 3) == (2, 4)
    assert geometry.span(0, 3, threshold=1.0 - 1e-12) == (3, 3)
    at_threshold = float(geometry.across_layers[0, 3, 4])
    assert geometry.span(0, 3, threshold=at_threshold) == (2, 4)  # a cosine equal to the threshold counts
    assert geometry.span(0, 1) == (0, 1)  # reaches the first layer
    assert geometry.span(0, 5) == (5, 5)


def test_the_default_layer_is_the_first_chosen_one() -> None:
    assert (
        compare(
            [_vector("evil", 0, layer=None), _vector("kind", 1, layer=4), _vector("x", 2, 2)]
        ).default_layer()
        == 4
    )
    assert compare([_vector("evil", 0, layer=None)]).default_layer() == MODEL.n_layers // 2


def test_the_command_prints_json_a_table_and_a_plot(tmp_path, capsys) -> None:
    paths = []
    for trait, seed in (("evil", 0), ("kind", 1), ("evil", 2)):  # the same trait twice: labelled by file
        paths.append(tmp_path / f"{trait}-{seed}.safetensors")
        save_vectors(paths[-1], [_vector(trait, seed)])
    assert main(["vectors", "compare", *map(str, paths), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["labels"] == ["evil (evil-0)", "kind (kind-1)", "evil (evil-2)"]
    expected = compare([_vector("evil", 0), _vector("kind", 1)])
    assert data["across_vectors"][3][0][1] == pytest.approx(float(expected.across_vectors[3, 0, 1]))
    png = tmp_path / "geometry.png"
    assert main(["vectors", "compare", *map(str, paths[:2]), "--layer", "2", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("cosine at layer 2") and f"{expected.across_vectors[2, 0, 1]:.3f}" in out
    assert "chosen layer 3" in out and png.read_bytes()[:4] == b"\x89PNG"
    assert main(["vectors", "compare", str(paths[0]), "--layer", "9"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_plot_writes_one_panel_per_vector_and_the_pairs(tmp_path) -> None:
    import matplotlib.image

    path = plot(compare([_vector("evil", 0), _vector("kind", 1)]), tmp_path / "two.png")
    one = plot(compare([_vector("evil", 0)]), tmp_path / "one.png")
    assert (
        matplotlib.image.imread(path).shape[1] > matplotlib.image.imread(one).shape[1]
    )  # three panels, not one
