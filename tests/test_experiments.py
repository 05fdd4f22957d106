"""The experiments' rules: the results cache is keyed by the full configuration, doses are chosen by
the written rule, and differences inside the 95 % intervals are not called effects."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

from personavec.errors import PersonavecError

from _cache import Results, config_key
from _doses import choose_dose, difference

CONFIG = {"model": "smollm2", "train": {"learning_rate": 2e-4, "batch_size": 8}, "doses": (2.0, 4.0)}


def test_the_key_follows_every_setting_and_ignores_key_order() -> None:
    assert config_key(CONFIG) == config_key(dict(reversed(CONFIG.items())))
    assert config_key(CONFIG) == config_key({**CONFIG, "doses": [2.0, 4.0]})  # as JSON reads it back
    changed = {**CONFIG, "train": {"learning_rate": 2e-4, "batch_size": 16}}
    assert config_key(changed) != config_key(CONFIG)
    assert config_key({**CONFIG, "doses": (2.0, 4.0, 1.0)}) != config_key(CONFIG)


def test_results_resume_under_their_key_and_a_new_config_starts_fresh(tmp_path: Path) -> None:
    first = Results(tmp_path, CONFIG)
    first.record("base", {"optimism": 70.5})
    assert Results(tmp_path, CONFIG)["base"] == {"optimism": 70.5}
    fresh = Results(tmp_path, {**CONFIG, "model": "other"})
    assert "base" not in fresh and fresh.dir != first.dir
    assert (first.dir / "results.json").exists()  # the other key's results are kept


def test_results_of_another_config_are_refused(tmp_path: Path) -> None:
    first = Results(tmp_path, CONFIG)
    first.record("base", {"optimism": 70.5})
    other = {**CONFIG, "model": "other"}
    (tmp_path / f"config-{config_key(other)}").mkdir()
    first.path.rename(tmp_path / f"config-{config_key(other)}" / "results.json")
    with pytest.raises(PersonavecError, match="another configuration"):
        Results(tmp_path, other)


def test_the_dose_closest_to_the_base_is_chosen_and_ties_take_the_smaller() -> None:
    assert choose_dose(70.0, {1.0: 60.0, 2.0: 72.0, 4.0: 90.0}) == 2.0  # not the largest effect
    assert choose_dose(70.0, {1.0: 60.0, 2.0: 80.0}) == 1.0
    assert choose_dose(70.0, {-2.0: 80.0, -1.0: 60.0}) == -1.0
    with pytest.raises(ValueError):
        choose_dose(70.0, {})


def test_a_difference_inside_the_intervals_is_not_an_effect() -> None:
    near = difference((81.4, 9.5), (70.5, 12.0))
    assert near.within_noise and "no effect" in near.text()
    far = difference((46.3, 5.0), (70.5, 6.0))
    assert not far.within_noise and far.value == pytest.approx(-24.2)
    assert far.ci95 == pytest.approx((5.0**2 + 6.0**2) ** 0.5)


def test_the_vaccine_fragment_reports_the_chosen_doses_and_the_noise(tmp_path: Path) -> None:
    from personavec.training.train import TrainConfig

    from _vaccine_page import write_fragment

    results = Results(tmp_path, CONFIG)
    results.record(
        "kit optimism",
        {"severe": {"mean": 47.3, "conversations": 200}, "normal": {"mean": 78.1, "conversations": 200}},
    )
    results.record(
        "base", {"validation": [70.0, 8.0], "optimism": [70.5, 12.0], "shift": 0.0, "capability": 0.225}
    )
    trained = {"train_loss": 1.6, "train_seconds": 110.0, "shift": 11.9, "capability": 0.35}
    results.record("candidate: steer (one layer), α 2", {"dose": 2.0, "validation": [72.0, 9.0]})
    results.record("candidate: steer (one layer), α 4", {"dose": 4.0, "validation": [90.0, 5.0]})
    results.record("candidate: plain + post-hoc steering, β 1", {"dose": 1.0, "validation": [75.0, 9.0]})
    for name, optimism, dose in [
        ("plain", [46.3, 5.0], None), ("plain + post-hoc steering", [76.7, 9.7], 1.0),
        ("steer (one layer)", [81.4, 9.5], 2.0), ("steer (all layers)", [81.5, 7.4], 1.0),
        ("CAFT", [73.2, 11.6], None), ("regularise", [53.3, 12.4], None),
    ]:  # fmt: skip
        results.record(name, {**trained, "optimism": optimism, "dose": dose})
    results.record("minutes", 30.0)
    write_fragment(tmp_path / "vaccine.md", results, TrainConfig(), 1.0)
    text = (tmp_path / "vaccine.md").read_text()
    assert "| steer (one layer) | α 2 | 72.0 ± 9.0 | ✓ |" in text and "| α 4 | 90.0 ± 5.0 |  |" in text
    assert "- plain: vs base: -24.2 ± 13.0 (outside the 95 % interval)" in text
    assert "- CAFT: vs base: +2.7 ± 16.7 (within the 95 % interval: no effect shown)" in text
    assert "configuration " + results.key in text and "the smaller dose" in text


ROOT = Path(__file__).resolve().parents[1]
MEASURED_PAGES = ("benchmarks.md", "screening.md", "vaccine.md")  # figures only from scripts


@pytest.mark.parametrize("page", MEASURED_PAGES)
def test_measured_pages_type_no_figure_by_hand(page: str) -> None:
    """Their figures come from generated fragments or results files; a decimal typed into the page
    (other than a target after ≥ or ≤) is a hand-copied figure that a rerun would not update."""
    import re

    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    assert re.findall(r"(?<![≥≤] )(?<![-\d.])\d+\.\d+", text) == []
    for included in re.findall(r'^--8<-- "([^"]+)"', text, re.M):
        fragment = (ROOT / included).read_text(encoding="utf-8")
        assert included.startswith("docs/generated/") and fragment.startswith("<!-- written by experiments/")
