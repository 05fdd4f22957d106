"""The reports people read: readable settings, targets met or missed (and why), no empty panels."""

from __future__ import annotations

import base64
import html
import json
import re
import struct
from pathlib import Path

from personavec.report.html import readable
from personavec.report.pages import sweep_section, targets_section, write_report
from personavec.runs.results import Cell, LayerChoice, Target

MANIFEST = {
    "format": "personavec-run/2",
    "kind": "extraction run",
    "model": {"name": "tiny", "architecture": "llama", "n_layers": 3, "hidden_size": 64},
    "trait": "optimistic",
    "generation": {"samples": 3, "questions": 4, "instructions": 2, "max_new_tokens": 6, "temperature": 0.7},
    "stages": {
        "generations": {"seconds": 0.15, "rows": 48},
        "filter": {"seconds": 0.0, "kept_positive": 5, "kept_negative": 1, "dropped": {"pos: low": 14}},
        "vectors": {"seconds": 0.02, "truncated": 0, "norms": [0.0709, 0.0751, 0.0901, 0.105]},
        "sweep": {"seconds": 0.13, "chosen": 2},
    },
    "judge": {"name": "lexicon:vader", "measures_coherence": False, "proxy": "VADER sentiment"},
    "selection": {"trait_threshold": 50.0, "coherence_threshold": 50.0, "pairing": "paired", "min_pairs": 2,
                  "layers": [1, 2], "coef": 2.0, "sweep_questions": 3},
}  # fmt: skip


def cell(layer: int | None, coef: float, trait: float, coherence: float | None = None) -> Cell:
    return Cell(layer, coef, trait, 2.0, coherence, 3, 3)


def extraction_run(path: Path, chosen_trait: float) -> Path:
    """A run directory holding a manifest and a layer sweep (unsteered 40; layer 2 the chosen one)."""
    path.mkdir()
    (path / "manifest.json").write_text(json.dumps(MANIFEST))
    sweep = LayerChoice(
        2.0, "response-avg", cell(None, 0, 40.0), [cell(1, 2, 30.0), cell(2, 2, chosen_trait)], 2
    )
    (path / "sweep.json").write_text(json.dumps(sweep.to_dict()))
    return path


def png_widths(page: str) -> list[int]:
    """The pixel width of each inline PNG (from its IHDR chunk)."""
    found = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    return [struct.unpack(">I", base64.b64decode(data)[16:20])[0] for data in found]


def test_extraction_report_shows_settings_as_a_readable_table(tmp_path) -> None:
    page = write_report(extraction_run(tmp_path / "run", 60.0)).read_text()
    settings = page.split("<h2>Settings</h2>")[1].split("<h2>")[0]
    for row in (
        ("judge measures coherence", "no"),
        ("sampling temperature", "0.7"),
        ("pairing", "paired (a pair is kept only if both sides pass)"),
        ("candidate layers of the layer sweep", "1, 2"),
        ("steering coefficient of the layer sweep", "2"),
        ("coherence threshold (answers ≥)", "50 (not applied: the judge measures no coherence)"),
    ):
        assert "<tr><td>{}</td><td>{}</td></tr>".format(*map(html.escape, row)) in settings, row
    assert "&quot;" not in settings and "{" not in settings and "[" not in settings
    stages = page.split("<h2>Stages</h2>")[1].split("<h2>")[0]
    assert (
        "<tr><td>filter</td><td>0.0</td><td>kept positive: 5; kept negative: 1; dropped: pos: low (14)"
        in stages
    )
    assert "<tr><td>vectors</td><td>0.0</td><td>truncated: 0</td></tr>" in stages  # the norms are plotted
    assert "&quot;" not in stages and "{" not in stages


def test_extraction_report_states_each_check_met_or_missed_with_the_reason(tmp_path) -> None:
    met = write_report(extraction_run(tmp_path / "met", 60.0)).read_text()
    assert (
        "<td>judged trait moved by steering at the chosen layer (coef +2), points</td><td class='num'>20</td>"
        "<td class='num'>&gt; 0</td><td class='met'>met</td>" in met
    )
    missed = write_report(extraction_run(tmp_path / "missed", 35.0)).read_text()
    assert (
        "<td class='missed'>missed: no candidate layer moved the judged trait past the unsteered 40.0 "
        "(chosen layer 2: 35); the vector may not steer this model</td>"
    ) in missed
    # the filter kept 1 negative answer; min_pairs is 2
    assert (
        "<td>answers kept on the scarcer side</td><td class='num'>1</td><td class='num'>≥ 2</td>"
        "<td class='missed'>missed: the filter kept only 1" in met
    )


def test_targets_section_says_met_or_missed_and_why() -> None:
    section = targets_section(
        [
            Target("AUROC", 0.95, "≥ 0.9", True),
            Target("Pearson r", 0.13, "≥ 0.75", False, "prompts barely move it"),
        ]
    )
    assert (
        "<tr><td>AUROC</td><td class='num'>0.95</td><td class='num'>≥ 0.9</td><td class='met'>met</td></tr>"
        in section
    )
    assert (
        "<td>Pearson r</td><td class='num'>0.13</td><td class='num'>≥ 0.75</td>"
        "<td class='missed'>missed: prompts barely move it</td>" in section
    )


def test_sweep_section_draws_no_coherence_panel_when_none_was_measured() -> None:
    without = sweep_section([cell(None, 0, 50.0), cell(3, 1, 60.0), cell(3, -1, 40.0)])
    with_coherence = sweep_section(
        [cell(None, 0, 50.0, 90.0), cell(3, 1, 60.0, 80.0), cell(3, -1, 40.0, 85.0)]
    )
    assert "<th>coherence</th>" not in without and "<th>coherence</th>" in with_coherence
    (one,), (two,) = png_widths(without), png_widths(with_coherence)
    assert two > 1.6 * one  # two panels side by side against one


def test_readable_values_carry_no_json() -> None:
    assert readable([1, 2, 3]) == "1, 2, 3" and readable("paired") == "paired" and readable(2.0) == "2"
    assert (
        readable({"a": 1, "b": [0.5]}) == "a: 1; b: 0.5" and readable(True) == "yes" and readable(None) == ""
    )


def test_the_settings_table_of_a_run_without_a_judge() -> None:
    from personavec.report.settings import settings_table

    manifest = {"judge": {"name": "none"}, "model": {"name": "m"}, "trait": "t", "generation": {},
                "selection": {"coherence_threshold": 50}}  # fmt: skip
    table = settings_table(manifest)
    assert "no judge" in table and "not applied: the judge measures no coherence" in table
