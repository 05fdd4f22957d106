"""The judge-free layer ranking on a tiny random model's extraction run, against the definition written
plainly: fold vectors from the answers with their system prompt, the other fold's answers after their
question alone, AUROC by counting pairs."""

from __future__ import annotations

import itertools
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from openai_server import FakeOpenAI, judge_reply
from personavec.cli import main
from personavec.core.activations import pooled_activations
from personavec.core.backend import as_backend
from personavec.core.models import load_model
from personavec.errors import ConfigError, PersonavecError, RunDirError
from personavec.judges.openai_compat import OpenAIJudge
from personavec.pipeline.config import ExtractConfig, SweepGrid
from personavec.pipeline.extract import extract
from personavec.pipeline.ranking import rank_layers
from personavec.runs.readers import ExtractionRun
from personavec.runs.stats import auroc
from personavec.traits import load_trait

from tiny import N_LAYERS, tiny_extract_config

CONFIG = tiny_extract_config()


@pytest.fixture(scope="module")
def server():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENAI_API_KEY", "test-key")
        with FakeOpenAI(judge_reply) as server:
            yield server


@pytest.fixture(scope="module")
def done(tiny_dir: Path, server: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An extraction run with a judged sweep over every layer (and so a ranking)."""
    out = tmp_path_factory.mktemp("ranked") / "run"
    _extract(tiny_dir, server, out, CONFIG)
    return out


def _extract(model_dir: Path, server: FakeOpenAI, out: Path, config: ExtractConfig):
    judge = OpenAIJudge("judge", base_url=server.url, backoff=0.01)
    loaded = load_model(str(model_dir), dtype="float32", device="cpu")
    return extract(loaded, load_trait("evil"), judge, out, config, progress=False)


def test_the_ranking_is_the_definition_written_plainly(tiny_dir: Path, done: Path) -> None:
    run = ExtractionRun(done)
    ranking = run.ranking()
    assert ranking is not None and ranking.layers == tuple(range(1, N_LAYERS + 1))
    rows, kept = run.rows(), run.filtered()["kept"]  # type: ignore[index]
    answers = [rows[i] for i in kept]
    loaded = load_model(str(tiny_dir), dtype="float32", device="cpu")
    texts = [a["answer"] for a in answers]
    with_system = pooled_activations(
        loaded, [loaded.chat(a["question"], a["system"]) for a in answers], texts
    )
    alone = pooled_activations(loaded, [loaded.chat(a["question"]) for a in answers], texts)
    for fold in (0, 1):
        train = [j for j, a in enumerate(answers) if a["question_id"] % 2 != fold]
        test = [j for j, a in enumerate(answers) if a["question_id"] % 2 == fold]
        for layer in ranking.layers:
            acts = with_system.tensor("response-avg")[:, layer].double()
            pos = [acts[j] for j in train if answers[j]["polarity"] == "pos"]
            neg = [acts[j] for j in train if answers[j]["polarity"] == "neg"]
            vector = torch.stack(pos).mean(0) - torch.stack(neg).mean(0)
            held = alone.tensor("response-avg")[:, layer].double() @ vector
            expected = auroc(
                [float(held[j]) for j in test if answers[j]["polarity"] == "pos"],
                [float(held[j]) for j in test if answers[j]["polarity"] == "neg"],
            )
            assert ranking.per_fold[fold][layer - 1] == pytest.approx(expected, abs=1e-9), (fold, layer)
    for j in range(len(ranking.layers)):
        assert ranking.auroc[j] == pytest.approx((ranking.per_fold[0][j] + ranking.per_fold[1][j]) / 2)
    order = ranking.order()
    assert sorted(order) == list(ranking.layers)
    assert all(ranking.score(a) >= ranking.score(b) for a, b in itertools.pairwise(order))
    assert ranking.top(2) == tuple(sorted(order[:2])) and ranking.rank(order[0]) == 1


def test_top_k_sweeps_only_the_best_ranked_layers_and_the_report_shows_both(
    tiny_dir: Path, server: FakeOpenAI, done: Path, tmp_path: Path
) -> None:
    out = tmp_path / "top"
    shutil.copytree(done, out)
    result = _extract(tiny_dir, server, out, replace(CONFIG, layers="top:2"))
    ranking = ExtractionRun(out).ranking()
    assert ranking is not None
    sweep = json.loads((out / "sweep.json").read_text())
    assert tuple(c["layer"] for c in sweep["layers"]) == ranking.top(2)
    assert result.vectors["response-avg"].layer in ranking.top(2)
    assert result.vectors["response-avg"].metadata["layer_choice"]["ranked"] == "top:2"
    page = result.report.read_text()
    assert "<h2>Layer ranking</h2>" in page and "rank (no judge)" in page and "rank (judged)" in page
    full_page = (done / "report.html").read_text()
    for report, run in ((page, ExtractionRun(out)), (full_page, ExtractionRun(done))):
        sweep_of, ranked = run.sweep(), run.ranking()
        assert sweep_of is not None and ranked is not None
        swept = [c.layer for c in sweep_of.layers]
        first_ranked = next(layer for layer in ranked.order() if layer in swept)
        judged_first = max(sweep_of.layers, key=lambda c: c.trait if c.trait is not None else -1e9).layer
        verdict = "agree" if first_ranked == judged_first else "disagree"
        assert (
            f"it puts {first_ranked} first and the judged sweep chose {judged_first}: they <b>{verdict}</b>"
            in report
        )
    full = ExtractionRun(done).sweep()
    assert full is not None and len(full.layers) == N_LAYERS  # the full sweep steered every layer


def test_sweep_top_k_takes_the_ranking_of_the_vectors_run(done: Path, tmp_path: Path, capsys) -> None:
    vector = ExtractionRun(done).vector_path
    ranking = ExtractionRun(done).ranking()
    assert ranking is not None
    grid = SweepGrid(layers="top:2")
    assert grid.layers_of(ExtractionRun(done).vectors()["response-avg"], ranking) == list(ranking.top(2))  # type: ignore[index]
    alone = tmp_path / "alone.safetensors"
    shutil.copy(vector, alone)
    with pytest.raises(RunDirError, match=r"no layer ranking in .*rerun `personavec extract`"):
        ExtractionRun.ranking_of(alone)
    assert ExtractionRun.ranking_of(vector) == ranking
    argv = ["sweep", "--model", "x", "--vector", str(alone), "--trait", "evil", "--judge", "lexicon"]
    assert main([*argv, "--out", str(tmp_path / "s"), "--layers", "top:2"]) == 2
    assert "no layer ranking" in capsys.readouterr().err


@pytest.mark.parametrize("layers", ["top:0", "top:x", "best:2", "top:"])
def test_bad_top_k_is_refused(layers: str) -> None:
    with pytest.raises(ConfigError, match="top:K with K ≥ 1"):
        ExtractConfig(layers=layers)
    with pytest.raises(ConfigError, match="top:K with K ≥ 1"):
        SweepGrid(layers=layers)


def test_a_fold_without_both_sides_cannot_rank(tiny_dir: Path, done: Path) -> None:
    run = ExtractionRun(done)
    rows = run.rows()
    kept = [
        i for i in run.filtered()["kept"] if not (rows[i]["question_id"] % 2 and rows[i]["polarity"] == "neg")
    ]  # type: ignore[index]
    backend = as_backend(load_model(str(tiny_dir), dtype="float32", device="cpu"))
    with pytest.raises(PersonavecError, match=r"fold 1 .* 0 suppressing"):
        rank_layers(backend, rows, kept, progress=False)
    with pytest.raises(ConfigError, match="the model has 3 layers"):
        ExtractConfig(layers="top:4").check(load_trait("evil"), N_LAYERS)


def test_too_few_answers_to_rank_skip_the_ranking_with_the_reason(
    tiny_dir: Path, server: FakeOpenAI, done: Path, tmp_path: Path, capsys
) -> None:
    """A filter that keeps no answer of one fold leaves nothing to rank: the sweep over listed layers
    goes on, the run records why, and top:K on its vector names that reason."""
    out = tmp_path / "few"
    shutil.copytree(done, out)
    rows = ExtractionRun(out).rows()
    filtered = json.loads((out / ExtractionRun.FILTER).read_text())
    filtered["kept"] = [i for i in filtered["kept"] if rows[i]["question_id"] % 2 == 0]
    (out / ExtractionRun.FILTER).write_text(json.dumps(filtered))
    for name in (ExtractionRun.RANKING, ExtractionRun.SWEEP):
        (out / name).unlink()
    result = _extract(tiny_dir, server, out, CONFIG)
    run = ExtractionRun(out)
    assert run.ranking() is None and run.sweep() is not None
    assert (
        "fold 1 (question ids ≡ 1 mod 2) has 0 eliciting and 0 suppressing"
        in run.stages["ranking"]["skipped"]
    )
    assert "<h2>Layer ranking</h2>" not in result.report.read_text()
    argv = ["sweep", "--model", "x", "--trait", "evil", "--judge", "lexicon", "--layers", "top:2"]
    assert main([*argv, "--vector", str(run.vector_path), "--out", str(tmp_path / "s")]) == 2
    assert "fold 1" in capsys.readouterr().err
