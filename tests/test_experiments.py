"""The experiments' rules: the results cache is keyed by the full configuration, doses are chosen by
the written rule, and differences inside the 95 % intervals are not called effects."""

from __future__ import annotations

from pathlib import Path

import pytest

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


def test_the_log_shows_long_lists_as_their_mean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Results(tmp_path, CONFIG).record("base", {"optimism": [70.0, 72.0] * 5, "dose": [1.0, 2.0]})
    assert capsys.readouterr().out == 'base {"optimism": "mean 71 of 10", "dose": [1.0, 2.0]}\n'
    assert Results(tmp_path, CONFIG)["base"]["optimism"] == [70.0, 72.0] * 5  # the file keeps them whole


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
    near = difference([70.0, 80.0, 60.0, 75.0], [72.0, 74.0, 66.0, 70.0])  # differences of both signs
    assert near.within_noise and "no effect" in near.text()
    far = difference([40.0, 45.0, 50.0, 42.0], [70.0, 71.0, 76.0, 69.0])
    assert not far.within_noise and far.value == pytest.approx(-27.25)
    assert far.low <= far.value <= far.high and far.half_width == pytest.approx((far.high - far.low) / 2)
    assert "-27.2 [" in far.text() and "(outside the 95 % interval)" in far.text()


QUESTIONS = 30


def _model(offset: float, shift: float, dose: float | None = None, seed: int = 0, **extra: object) -> dict:
    """A measured model whose per-question optimism is 50 + q % 7 moved by `offset`, with noise of its own."""
    noise = [((q * 7919 + int(offset * 13)) % 11 - 5) for q in range(QUESTIONS)]
    noise = [n - sum(noise) / len(noise) for n in noise]  # the mean moves by `offset` exactly
    return {
        "optimism": [50.0 + q % 7 + offset + noise[q] for q in range(QUESTIONS)],
        "shift": shift, "accuracy": 0.3, "correct_logprob": [-1.5 + offset / 100] * 40,
        "loss": [3.0 + i % 4 * 0.1 - offset / 1000 for i in range(64)], "dose": dose, "seed": seed,
        "train_loss": 1.6, "seconds": 60.0, **extra,
    }  # fmt: skip


def _results(tmp_path: Path) -> Results:
    sampling = {"temperature": 1.0, "max_new_tokens": 64}
    config = {**CONFIG, "seeds": [0, 1, 2], "seeded": ["plain", "steer (one layer)"],
              "evaluation": {"questions": QUESTIONS, "samples": 4, "sampling": sampling},
              "validation": {"questions": 20, "samples": 4},
              "text": {"window": 128, "count": 64}}  # fmt: skip
    results = Results(tmp_path, config)
    kit = {level: {"mean": m, "conversations": 200} for level, m in (("normal", 78.1), ("mild", 61.9),
                                                                    ("severe", 47.3))}  # fmt: skip
    results.record("kit optimism", kit)
    results.record("base", {**_model(0.0, 0.0), "validation": [70.0] * 20, "train_loss": None})
    results.record("model: plain", _model(-24.0, 11.9))
    results.record("model: plain, seed 1", _model(-20.0, 10.0, seed=1))
    results.record("model: plain, seed 2", _model(-22.0, 10.5, seed=2))
    results.record("model: steer (one layer), α 2", _model(1.0, -0.8, 2.0, validation=[72.0] * 20))
    results.record("model: steer (one layer), α 4", _model(20.0, -10.0, 4.0, validation=[90.0] * 20))
    results.record("model: steer (one layer), α 2, seed 1", _model(2.0, -0.5, 2.0, seed=1))
    results.record("model: steer (one layer), α 2, seed 2", _model(0.0, -1.0, 2.0, seed=2))
    results.record("model: steer (all layers), α 1", _model(10.0, -1.5, 1.0, validation=[81.0] * 20))
    results.record("model: steer (all layers), α 2", _model(22.0, -17.0, 2.0, validation=[93.0] * 20))
    results.record("model: CAFT", _model(2.7, 9.2))
    results.record("model: regularise", _model(-17.0, 9.9))
    results.record("model: plain on normal", _model(-1.0, 0.5))
    results.record("model: plain on mild", _model(-10.0, 5.0))
    for family, dose in (("plain", None), ("steer (one layer)", 2.0), ("steer (all layers)", 1.0),
                         ("CAFT", None), ("regularise", None)):  # fmt: skip
        results.record(f"chosen: {family}", dose)
    results.record("post-hoc: β 1", {"dose": 1.0, "validation": [75.0] * 20})
    results.record("post-hoc: β 2", {"dose": 2.0, "validation": [69.0] * 20})
    results.record("plain + post-hoc steering", _model(6.0, 11.9, 2.0))
    results.record("minutes", 30.0)
    return results


def test_the_vaccine_fragment_reports_doses_paired_intervals_seeds_and_the_correlation(
    tmp_path: Path,
) -> None:
    from personavec.runs.stats import paired_bootstrap, pearson
    from personavec.training.train import TrainConfig

    from _vaccine_page import shift_points, write_fragment

    results = _results(tmp_path)
    write_fragment(tmp_path / "vaccine.md", results, TrainConfig(), 1.0)
    text = (tmp_path / "vaccine.md").read_text()
    assert (
        "| steer (one layer) | α 2 | 72.0 | ✓ |" in text and "| steer (one layer) | α 4 | 90.0 |  |" in text
    )
    assert "| plain + post-hoc steering | β 2 | 69.0 | ✓ |" in text
    low, high = paired_bootstrap(results["model: plain"]["optimism"], results["base"]["optimism"])[1:]
    assert f"- optimism, plain: vs base: -24.0 [{low:+.1f}, {high:+.1f}] (outside the 95 % interval)" in text
    assert (
        "- optimism, steer (one layer): vs base: +1.0 [" in text
        and "no effect shown); vs plain: +25.0" in text
    )
    assert "within the ±5 aimed at" in text
    assert "- steer (one layer), α 2: trait shift vs base +1.0 over 3 seeds, seed-to-seed SD 1.0" in text
    assert "| plain | 2 | -22.0 [" in text  # each seed's row
    assert "held-out loss" in text and "| CAFT | 30.0 % | -1.473 | +0.027 [+0.027, +0.027] |" in text
    assert "| -0.003 [-0.003, -0.003] | -0.027 [-0.027, -0.027] |" in text  # CAFT's loss vs base, vs plain
    points = shift_points(results)
    assert len(points) == 13 and all(not name.startswith("plain + post-hoc") for name, _, _ in points)
    r = pearson([p[1] for p in points], [p[2] for p in points])
    assert r is not None and r > 0.9 and f"Pearson r = {r:.2f} [" in text
    assert (tmp_path / "vaccine-shift.png").read_bytes()[:4] == b"\x89PNG"
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


def test_every_script_make_bench_runs_has_a_cpu_results_file() -> None:
    """The benchmarks page shows a table per script from its results file: none may be missing."""
    import re

    loop = re.search(r"for b in ([\w ]+); do", (ROOT / "Makefile").read_text())
    assert loop is not None
    scripts = loop.group(1).split()
    assert len(scripts) >= 10
    missing = [
        s
        for s in scripts
        if not list((ROOT / "benchmarks" / "results").glob(f"{s.split('_')[0]}*-cpu-2core.json"))
    ]
    assert missing == []
