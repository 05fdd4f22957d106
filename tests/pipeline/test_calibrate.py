import json

import numpy as np
import pytest
import torch

from openai_server import FakeOpenAI, judge_reply
from personavec.core.sampling import Sampling
from personavec.core.vectors import PersonaVector
from personavec.deploy.monitor import project
from personavec.errors import PersonavecError
from personavec.judges.openai_compat import OpenAIJudge
from personavec.pipeline.calibrate import calibrate
from personavec.pipeline.config import CalibrateConfig
from personavec.runs.readers import CalibrationRun
from personavec.runs.results import Calibration, CalibrationPoint
from personavec.runs.stats import pearson
from personavec.traits import load_trait

from tiny import N_LAYERS, tiny_loaded

SIZES = CalibrateConfig(questions=3, shots=(0, 2), sampling=Sampling(max_new_tokens=4, batch_size=32))


def test_pearson_by_hand() -> None:
    x, y = [1.0, 2.0, 3.0, 5.0], [2.0, 1.0, 4.0, 9.0]
    mx, my = sum(x) / 4, sum(y) / 4
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    r = cov / (sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y)) ** 0.5
    assert pearson(x, y) == pytest.approx(r)
    assert pearson([1.0, 2.0], [3.0, 4.0]) is None and pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None


def test_calibration_points_and_correlations(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    loaded = tiny_loaded("llama")
    torch.manual_seed(2)
    tensor = torch.randn(N_LAYERS + 1, loaded.identity.hidden_size)
    vector = PersonaVector("evil", tensor, layer=2, metadata={"model": loaded.identity.to_dict()})
    trait = load_trait("evil")
    examples = [("What is evil?", "EXAMPLE-ANSWER-ONE"), ("And good?", "EXAMPLE-ANSWER-TWO")]
    with FakeOpenAI(judge_reply) as server:
        judge = OpenAIJudge("judge", base_url=server.url, backoff=0.01)
        result = calibrate(
            loaded, trait, judge, vector, tmp_path, SIZES, examples=examples, progress=False,
        )  # fmt: skip
        requests = len(server.requests)
        again = calibrate(
            loaded, trait, judge, vector, tmp_path, SIZES, examples=examples, progress=False,
        )  # fmt: skip
        assert len(server.requests) == requests  # resumed from files: nothing asked twice
    assert again.points == result.points
    assert CalibrationRun(tmp_path).result() == result  # the reader gives the typed result back
    assert len(result.points) == (8 + 2) * 3
    graded = [p for p in result.points if p.condition == "graded"]
    prompts = [
        loaded.chat(q, trait.graded_prompts[level])
        for level in range(8)
        for q in trait.evaluation_questions[:3]
    ]
    expected = project(loaded, [vector], prompts, progress=False)[:, 0].tolist()
    assert [p.projection for p in graded] == pytest.approx(expected, abs=1e-4)
    shots = (tmp_path / "calibration" / "shots-2.jsonl").read_text()
    assert "shots-2" not in shots and len(shots.splitlines()) == 3
    scored = [p for p in graded if p.trait is not None]
    summary = json.loads((tmp_path / "calibration.json").read_text())["summary"]
    r = np.corrcoef([p.projection for p in scored], [p.trait for p in scored])[0, 1]
    assert summary["conditions"]["graded"]["r"] == pytest.approx(r)
    assert set(summary["conditions"]["shots"]["r_within_level"]) == {"0", "2"}
    page = CalibrationRun(tmp_path).file(CalibrationRun.REPORT).read_text()  # calibrate wrote its page
    assert "<h2>Target</h2>" in page and result.target().name in page and page.count("<img") == 1


def test_k_shot_prompts_hold_the_examples() -> None:
    from personavec.pipeline.calibrate import _requests

    trait = load_trait("evil")
    examples = [("q1", "EXAMPLE-ONE"), ("q2", "EXAMPLE-TWO")]
    requests = _requests(trait, 2, (0, 2), examples)
    loaded = tiny_loaded("llama")
    two_shot = requests["shots", 2][0].prompt(loaded)
    assert (
        "EXAMPLE-ONE" in two_shot and "EXAMPLE-TWO" in two_shot and trait.evaluation_questions[0] in two_shot
    )
    assert "EXAMPLE" not in requests["shots", 0][0].prompt(loaded)
    with pytest.raises(PersonavecError, match="need 5 example answers; 2 given"):
        _requests(trait, 2, (5,), examples)


def test_calibration_target_is_met_or_says_why_not() -> None:
    def points(traits: list[float], projections: list[float]) -> list[CalibrationPoint]:
        return [
            CalibrationPoint("graded", i // 2, "q", p, t)
            for i, (t, p) in enumerate(zip(traits, projections, strict=True))
        ]

    follows = Calibration(points([10, 12, 50, 52, 90, 94], [1, 1.1, 2, 2.1, 3, 3.2])).target()
    assert follows.met and follows.goal == "≥ 0.75" and follows.reason == ""
    flat = Calibration(points([60, 70, 65, 62, 70, 61], [3, 1, 2, 2.5, 1, 3])).target()
    assert not flat.met and flat.reason.startswith("the model barely follows the graded prompts")
    assert "most suppressing first: 65, 64, 66)" in flat.reason
    unfollowed = Calibration(points([10, 12, 50, 52, 90, 94], [3, 1, 2, 2.5, 1, 3])).target()
    assert not unfollowed.met and unfollowed.reason == (
        "the judged trait moves with the prompts (11, 51, 92) but the projection does not follow it"
    )
