import json
import math
from dataclasses import replace

import pytest
import torch

import personavec.pipeline.evaluate as evaluate_module
from openai_server import FakeOpenAI, judge_reply
from personavec.core.sampling import Sampling
from personavec.core.vectors import PersonaVector
from personavec.errors import PersonavecError
from personavec.judges.openai_compat import OpenAIJudge
from personavec.pipeline.config import Sizes, SweepGrid
from personavec.pipeline.evaluate import sweep
from personavec.runs.results import Cell, Setting
from personavec.runs.stats import mean_ci
from personavec.traits import load_trait

from tiny import N_LAYERS, tiny_loaded

SIZES = Sizes(questions=3, sampling=Sampling(max_new_tokens=5, batch_size=8))


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with FakeOpenAI(judge_reply) as server:
        yield server


def setup(server):
    loaded = tiny_loaded("llama")
    torch.manual_seed(1)
    tensor = torch.randn(N_LAYERS + 1, loaded.identity.hidden_size) * 4
    vector = PersonaVector("evil", tensor, layer=2, metadata={"model": loaded.identity.to_dict()})
    judge = OpenAIJudge("judge", base_url=server.url, backoff=0.01, concurrency=2)
    return loaded, vector, judge


def test_mean_ci_by_hand() -> None:
    values = [10.0, 20.0, None, 60.0]
    mean, ci, n = mean_ci(values)
    sd = math.sqrt(((10 - 30) ** 2 + (20 - 30) ** 2 + (60 - 30) ** 2) / 2)
    assert (mean, n) == (30.0, 3) and ci == pytest.approx(1.96 * sd / math.sqrt(3))
    assert mean_ci([None]) == (None, None, 0) and mean_ci([5.0]) == (5.0, None, 1)


def test_sweep_covers_every_cell_once_and_resumes(server, tmp_path, monkeypatch) -> None:
    loaded, vector, judge = setup(server)
    trait = load_trait("evil")
    real, calls = evaluate_module.evaluate, []

    def interrupted(*args, **kwargs):
        calls.append(args[6])
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user stops the sweep in its third cell
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sweep(loaded, trait, judge, vector, tmp_path, [1, 2], [-1.0, 0.0, 1.0], SIZES, progress=False)
    before = len(server.requests)
    assert len(server.judgements()) == 2 * 3 * 2  # two cells × three questions × (trait, coherence)
    assert before == 1 + 2 * 3 * 2  # and the judge's one probe
    monkeypatch.setattr(evaluate_module, "evaluate", real)
    cells = sweep(loaded, trait, judge, vector, tmp_path, [1, 2], [-1.0, 0.0, 1.0], SIZES, progress=False)
    settings = [(c.layer, c.coef) for c in cells]
    assert settings == [(None, 0.0), (1, -1.0), (1, 1.0), (2, -1.0), (2, 1.0)]  # each cell once
    assert all(len(p.read_text().splitlines()) == 3 for p in (tmp_path / "cells").glob("*.jsonl"))
    assert len(server.requests) - len(server.judgements()) == 1  # one probe: the judge object is reused
    asked = [json.dumps(r["messages"]) for r in server.judgements()]
    assert len(set(asked)) == len(asked)  # no judgement asked twice, across the interruption
    pairs = {
        (row["question"], row["answer"])
        for path in (tmp_path / "cells").glob("*.jsonl")
        for row in map(json.loads, path.read_text().splitlines())
    }
    assert len(asked) == 2 * len(pairs)  # every distinct answer judged (trait, coherence), once
    table = (tmp_path / "sweep.csv").read_text().splitlines()
    assert table[0].startswith("layer,coef,trait") and len(table) == 6
    assert json.loads((tmp_path / "sweep.json").read_text())["cells"] == [c.to_dict() for c in cells]
    answers = {
        c.coef: (tmp_path / "cells" / f"{Setting(c.layer, c.coef).name}.jsonl").read_text()
        for c in cells
        if c.layer in (None, 2)
    }
    assert answers[1.0] != answers[0.0] != answers[-1.0]  # steering changed the answers
    # a cell's numbers are the judged scores, written out plainly
    for cell in cells:
        rows = [
            json.loads(line)
            for line in (tmp_path / "cells" / f"{Setting(cell.layer, cell.coef).name}.jsonl")
            .read_text()
            .splitlines()
        ]
        scores = [
            float(
                judge_reply(
                    {
                        "messages": [
                            {
                                "content": trait.rubric.replace("{question}", r["question"]).replace(
                                    "{answer}", r["answer"]
                                )
                            }
                        ]
                    }
                )[0]
            )
            for r in rows
        ]
        assert cell.trait == pytest.approx(sum(scores) / len(scores), abs=0.1)
        assert cell.coherence == pytest.approx(90.0)


def test_sweep_bad_input(server, tmp_path) -> None:
    loaded, vector, judge = setup(server)
    with pytest.raises(PersonavecError, match="at least one layer"):
        sweep(loaded, load_trait("evil"), judge, vector, tmp_path, [], [1.0])
    with pytest.raises(PersonavecError, match="layer 7"):
        sweep(loaded, load_trait("evil"), judge, vector, tmp_path, [7], [1.0])


def test_a_sweep_in_norm_units_steers_each_cell_by_its_raw_conversion(server, tmp_path) -> None:
    loaded, vector, judge = setup(server)
    norms = [2.0, 5.0, 7.0, 11.0]
    vector.metadata["residual_norm"] = norms
    trait = load_trait("evil")
    normed = sweep(loaded, trait, judge, vector, tmp_path / "n", [1, 3], [0.0, 0.5], SIZES, False, "norm")
    raw = [0.0] + [0.5 * norms[ly] / float(vector.tensor[ly].double().norm()) for ly in (1, 3)]
    assert [c.coef for c in normed] == pytest.approx(raw)
    plain = sweep(loaded, trait, judge, vector, tmp_path / "r", [1], [raw[1]], SIZES, progress=False)
    assert normed[1].trait == plain[0].trait and normed[1].coherence == plain[0].coherence
    with pytest.raises(PersonavecError, match="records no residual norm"):
        del vector.metadata["residual_norm"]
        sweep(loaded, trait, judge, vector, tmp_path / "x", [1], [0.5], SIZES, False, "norm")
    assert not (tmp_path / "x").exists()  # refused before anything ran


def test_a_sweep_directory_is_tied_to_its_settings(server, tmp_path) -> None:
    loaded, vector, judge = setup(server)
    trait = load_trait("evil")
    sweep(loaded, trait, judge, vector, tmp_path, [1], [0.0, 1.0], SIZES, progress=False)
    more = sweep(loaded, trait, judge, vector, tmp_path, [1, 2], [0.0, 1.0], SIZES, progress=False)
    assert len(more) == 3  # adding layers or coefficients resumes the same sweep
    with pytest.raises(PersonavecError, match=r"other settings \(differs in questions\)"):
        sweep(loaded, trait, judge, vector, tmp_path, [1], [1.0], replace(SIZES, questions=2), progress=False)
    other = PersonaVector("evil", vector.tensor * 2, layer=2, metadata=vector.metadata)
    assert other.fingerprint() != vector.fingerprint()
    with pytest.raises(PersonavecError, match=r"differs in vector"):
        sweep(loaded, trait, judge, other, tmp_path, [1], [1.0], SIZES, progress=False)


def test_spearman_and_halfway_by_hand() -> None:
    from personavec.pipeline.evaluate import halfway_coefs
    from personavec.runs.stats import spearman

    # ranks of x: 1, 2.5, 2.5, 4 (a tie); of y: 1, 2, 3, 4 → Pearson of the ranks
    x, y = [1.0, 2.0, 2.0, 5.0], [10.0, 20.0, 30.0, 40.0]
    rx, ry = [1, 2.5, 2.5, 4], [1, 2, 3, 4]
    mx, my = sum(rx) / 4, sum(ry) / 4
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    expected = cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    assert spearman(x, y) == pytest.approx(expected) and spearman([1.0, 2.0], [1.0, 2.0]) is None
    cells = [
        Cell(None, 0.0, 50.0, None, None, 1, 1),
        *(Cell(3, c, t, None, None, 1, 1) for c, t in [(-2.0, 10.0), (-1.0, 35.0), (1.0, 55.0), (2.0, 80.0)]),
    ]
    # negative: largest shift 40 (at -2); -1 shifts 15 < 20 → -2. positive: 30 at +2; +1 shifts 5 → +2
    assert halfway_coefs(cells, 3) == {"negative": -2.0, "positive": 2.0}
    assert halfway_coefs(cells[1:], 3) == {"negative": None, "positive": None}  # no unsteered cell


def test_sampling_settings_and_cell_names(server, tmp_path) -> None:
    loaded, vector, judge = setup(server)
    with pytest.raises(PersonavecError, match="needs a temperature > 0"):
        sweep(
            loaded, load_trait("evil"), judge, vector, tmp_path, [1], [1.0], Sizes(samples=3), progress=False
        )
    with pytest.raises(PersonavecError, match="questions must be between 1 and 20, got -1"):
        sweep(
            loaded,
            load_trait("evil"),
            judge,
            vector,
            tmp_path / "b",
            [1],
            [1.0],
            Sizes(questions=-1),
            progress=False,
        )
    assert Setting(1, 0.1234567).name != Setting(1, 0.1234568).name
    cells = sweep(
        loaded, load_trait("evil"), judge, vector, tmp_path / "c", [1, 1], [1, 1.0], SIZES, progress=False
    )
    assert len(cells) == 1


def test_an_evaluation_run_resumes_and_is_tied_to_its_settings(server, tmp_path) -> None:
    from personavec.pipeline.evaluate import evaluate_run
    from personavec.runs.readers import EvaluationRun

    loaded, _, judge = setup(server)
    trait = load_trait("evil")
    cell = evaluate_run(loaded, trait, judge, tmp_path, SIZES, progress=False)
    requests = len(server.requests)
    assert cell.n == 3 and cell.layer is None and cell.coef == 0.0
    assert evaluate_run(loaded, trait, judge, tmp_path, SIZES, progress=False) == cell
    assert len(server.requests) == requests  # answers and judgements read back, none asked again
    assert EvaluationRun(tmp_path).cell() == cell  # the reader gives back what the run returned
    with pytest.raises(PersonavecError, match=r"other settings \(differs in questions\)"):
        evaluate_run(loaded, trait, judge, tmp_path, replace(SIZES, questions=2), progress=False)


def test_a_sweep_grid_without_layers_steers_at_the_chosen_layer() -> None:
    vector = PersonaVector("t", torch.zeros(N_LAYERS + 1, 8), layer=2)
    assert SweepGrid().layers_of(vector) == [2] and SweepGrid(layers=(1, 3)).layers_of(vector) == [1, 3]
    assert SweepGrid().coefs == (-2.0, -1.0, 0.0, 1.0, 2.0)
