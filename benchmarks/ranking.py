"""What the judge-free layer ranking saves on the demo: the demo's extraction with a judged layer sweep
over every layer, against the same run (its answers, judgements and vectors) sweeping only the ranking's
K best layers (``--layers top:K``): the answers each judged sweep generates, the wall time of choosing
the layer (ranking included), whether both choose the same layer, and where the full sweep's choice
sits in the ranking. Also writes the docs' figure, docs/generated/ranking.{md,png}.

    python benchmarks/ranking.py     # bundled SmolLM2 on the CPU, about five minutes
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from personavec.core.models import load_model
from personavec.demo import DEMO_CONFIG, DEMO_TRAIT
from personavec.judges.lexicon import LexiconJudge
from personavec.pipeline.extract import extract
from personavec.report.html import save_png
from personavec.report.pages import ranking_figure
from personavec.runs.readers import ExtractionRun
from personavec.runs.stats import spearman
from personavec.traits import load_trait

from _common import Figure, report

K = 3
DOCS = Path(__file__).resolve().parents[1] / "docs" / "generated"


def main() -> None:
    loaded = load_model("smollm2", dtype="float32", device="cpu")
    trait = load_trait(DEMO_TRAIT)
    judge = LexiconJudge(trait.name, trait.sentiment)
    every = tuple(range(1, loaded.identity.n_layers + 1))
    with tempfile.TemporaryDirectory() as tmp:
        full, top = Path(tmp) / "full", Path(tmp) / "top"
        extract(loaded, trait, judge, full, replace(DEMO_CONFIG, layers=every), progress=False)
        shutil.copytree(full, top)  # the same answers and judgements; the filter on is redone
        extract(loaded, trait, judge, top, replace(DEMO_CONFIG, layers=f"top:{K}"), progress=False)
        ranking, full_sweep = ExtractionRun(full).ranking(), ExtractionRun(full).sweep()
        top_sweep = ExtractionRun(top).sweep()
        assert ranking is not None and full_sweep is not None and top_sweep is not None
        full_s = ExtractionRun(full).stages["sweep"]["seconds"]
        rank_s = ExtractionRun(top).stages["ranking"]["seconds"]
        top_s = ExtractionRun(top).stages["sweep"]["seconds"] + rank_s
        chosen = full_sweep.chosen
        judged = full_sweep.judged_order()
        rho = spearman([ranking.score(x) for x in judged], [-float(i) for i in range(len(judged))])
        n = DEMO_CONFIG.sweep_questions
        figures = [
            Figure("judged sweep over every layer: answers generated and judged", (1 + len(every)) * n),
            Figure(f"judged sweep over the top {K}: answers generated and judged", (1 + K) * n),
            Figure("choosing the layer, every layer: the judged sweep", full_s, "s"),
            Figure(f"choosing the layer, top {K}: the ranking and the judged sweep", top_s, "s"),
            Figure(f"of which the ranking (2 passes over {ranking.n_answers} kept answers)", rank_s, "s"),
            Figure(f"wall time of choosing the layer, top {K} / every layer", top_s / full_s, "×"),
            Figure("layer chosen, judged sweep over every layer", chosen),
            Figure(f"layer chosen, top {K}", top_sweep.chosen),
            Figure("same layer chosen (1 yes, 0 no)", float(chosen == top_sweep.chosen)),
            Figure("rank of the full sweep's choice in the judge-free ranking", ranking.rank(chosen)),
            Figure("held-out AUROC at the full sweep's choice", ranking.score(chosen)),
            Figure("best held-out AUROC (any layer)", max(ranking.auroc)),
        ]
        if rho is not None:
            figures.append(Figure("Spearman, judge-free vs judged order over every layer", rho))
    save_png(ranking_figure(ranking, full_sweep), DOCS / "ranking.png")
    (DOCS / "ranking.md").write_text(
        "![The judge-free ranking's held-out AUROC per layer and the judged sweep's trait per layer on "
        "the bundled model](generated/ranking.png)\n\n*Written by `benchmarks/ranking.py`: the demo's "
        f"'{DEMO_TRAIT}' run, its judged sweep at coef {DEMO_CONFIG.coef:g} over all {len(every)} layers "
        f"(orange) and the judge-free ranking (purple). The judged sweep chose layer {chosen}, which the "
        f"ranking puts #{ranking.rank(chosen)}; sweeping only the ranking's {K} best chose layer "
        f"{top_sweep.chosen}.*\n",
        encoding="utf-8",
    )
    report("ranking", figures)


if __name__ == "__main__":
    main()
