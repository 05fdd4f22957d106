"""The ``persona`` figures' rules, written plainly: predicted is prompt_last above its threshold, flagged
is response_avg above its own; upstream mode's figures carry the scored response-average."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from personavec.serve import upstream
from personavec.serve.state import vector_figures


def _state(prompt_last: float | None, response_avg: float | None) -> Any:
    watched = [SimpleNamespace(name="evil", layer=20)]
    return SimpleNamespace(
        watched=watched, thresholds={"evil": {"prompt_last": prompt_last, "response_avg": response_avg}}
    )


@pytest.mark.parametrize(
    ("last", "avg", "predicted", "flagged"),
    [(5.0, 1.0, True, False), (1.0, 2.5, False, True), (2.5, 5.0, False, True), (5.0, 5.0, True, True)],
)
def test_predicted_and_flagged_each_use_their_own_threshold(
    last: float, avg: float, predicted: bool, flagged: bool
) -> None:
    state = _state(prompt_last=3.0, response_avg=2.0)  # values between the two thresholds tell them apart
    f = vector_figures(state, 0, last, [avg - 1.0, avg + 1.0])
    assert f["response_avg"] == avg and f["token_max"] == avg + 1.0
    assert (f["predicted"], f["flagged"]) == (predicted, flagged)
    assert f["thresholds"] == {"prompt_last": 3.0, "response_avg": 2.0}


def test_a_missing_threshold_or_answer_leaves_the_flag_unset() -> None:
    f = vector_figures(_state(None, None), 0, 9.0, [9.0])
    assert f["predicted"] is None and f["flagged"] is None
    f = vector_figures(_state(0.0, 0.0), 0, 9.0, None)
    assert f["predicted"] is True and f["flagged"] is None and f["response_avg"] is None


def test_upstream_figures_carry_the_scored_response_average() -> None:
    state = _state(prompt_last=3.0, response_avg=2.0)
    f = upstream._figures(state, [1.0], [5.0])["evil"]
    assert (f["prompt_last"], f["response_avg"], f["token_max"]) == (1.0, 5.0, None)
    assert (f["predicted"], f["flagged"]) == (False, True)
    nan = upstream._figures(state, [4.0], [float("nan")])["evil"]  # an empty answer: no response tokens
    assert nan["response_avg"] is None and nan["flagged"] is None and nan["predicted"] is True
    assert upstream._figures(state, [4.0], None)["evil"]["response_avg"] is None
