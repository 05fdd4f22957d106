"""The screening experiment on the bundled model: does ΔP find the data that teaches pessimism?

    python experiments/screening.py                       # everything, about 20 minutes on 2 cores
    python experiments/screening.py --vector RUN/optimistic.safetensors   # reuse an extraction

1. The 'optimistic' vector (extracted here with the demo's settings unless --vector is given), negated
   into 'pessimistic', so that a positive ΔP means "teaches pessimism".
2. The experiment kit, inverted: 200 bundled questions answered by SmolLM2 normally, and 3 times
   under the trait's pessimistic (suppressing) prompts, of which the lexicon judge's most pessimistic
   is kept → normal / mild (50 % pessimistic) / severe sets, and 40 other questions answered normally
   as the reference.
3. Every set screened in full (the model's own greedy answers y′) and with --approx prompt-last.
4. Figures: dataset ΔP per level; AUROC of per-sample ΔP, pessimistic vs normal answers (inside mild,
   and severe against normal); Spearman of the prompt-last ΔP against the full one; flagging at the
   reference's 95th percentile. Rerunning resumes; the table goes to docs/screening.md.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from personavec.core.models import load_model
from personavec.core.sampling import Sampling
from personavec.core.vectors import load_vector
from personavec.data.config import ScreenConfig, Selection
from personavec.data.datakit import KitConfig, make_trait_dataset
from personavec.data.flagging import select
from personavec.data.samples import DataFile
from personavec.data.scoring import Screened, deltas, screen
from personavec.data.screen import write_screen_report
from personavec.demo import DEMO_CONFIG
from personavec.judges.lexicon import LexiconJudge
from personavec.pipeline.evaluate import auroc, spearman
from personavec.pipeline.extract import extract
from personavec.traits import load_trait

TRAIT = "pessimistic"
LEVELS = ("reference", "normal", "mild", "severe")
KIT = KitConfig(
    invert=True, samples=3, mild=0.5, reference=40,
    sampling=Sampling(max_new_tokens=64, temperature=0.7, batch_size=16),
)  # fmt: skip
MODES = {
    "full": ScreenConfig(sampling=Sampling(max_new_tokens=64, batch_size=16)),
    "prompt-last": ScreenConfig(approx="prompt-last"),
}


def labels(path: Path) -> list[bool]:
    return [json.loads(line)["elicited"] for line in path.read_text().splitlines()]


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args.add_argument("--out", default="experiments-out/screening", help="working directory (resumable)")
    args.add_argument("--vector", help="an 'optimistic' vector file (default: extract one here)")
    args.add_argument("--table", default="docs/screening.md", help="where the result table goes")
    args.add_argument(
        "--temperature", type=float, default=KIT.sampling.temperature, help="of the kit's answers"
    )
    opts = args.parse_args()
    out, started = Path(opts.out), time.perf_counter()
    loaded = load_model("smollm2", dtype="float32", device="cpu")
    trait = load_trait("optimistic")
    if opts.vector:
        optimistic = load_vector(opts.vector)
    else:
        judge = LexiconJudge(trait.name, trait.sentiment)
        optimistic = extract(loaded, trait, judge, out / "extract", DEMO_CONFIG).vectors["response-avg"]
    vector = optimistic.negated(TRAIT)
    kit_judge = LexiconJudge(trait.name, trait.sentiment)  # keeps the most pessimistic of 3 samples
    make_trait_dataset(
        loaded,
        trait,
        out / "kit",
        config=replace(KIT, sampling=replace(KIT.sampling, temperature=opts.temperature)),
        judge=kit_judge,
    )

    results: dict[str, dict[str, object]] = {}
    screened: dict[tuple[str, str], Screened] = {}
    values: dict[tuple[str, str], list[float]] = {}
    for mode, config in MODES.items():
        for level in LEVELS:
            data = DataFile(out / "kit" / f"{level}.jsonl")
            screened[mode, level] = screen(loaded, [vector], data, out / mode / level, config)
            values[mode, level] = list(deltas(screened[mode, level])[TRAIT])
        kit_labels = {level: labels(out / "kit" / f"{level}.jsonl") for level in ("mild", "severe", "normal")}
        mild = values[mode, "mild"]
        flagged = select(
            screened[mode, "mild"], DataFile(out / "kit" / "mild.jsonl"), Selection(percentile=95),
            screened[mode, "reference"],
        )  # fmt: skip
        write_screen_report(
            screened[mode, "mild"], DataFile(out / "kit" / "mild.jsonl"), flagged, screened[mode, "reference"]
        )
        marks = [
            json.loads(line).get("flagged") for line in screened[mode, "mild"].scores.read_text().splitlines()
        ]
        hits = sum(bool(m) and e for m, e in zip(marks, kit_labels["mild"], strict=True))
        results[mode] = {
            "dataset ΔP": {level: screened[mode, level].mean_delta[TRAIT] for level in LEVELS},
            "AUROC in mild": auroc(
                [d for d, e in zip(mild, kit_labels["mild"], strict=True) if e],
                [d for d, e in zip(mild, kit_labels["mild"], strict=True) if not e],
            ),
            "AUROC severe vs normal": auroc(values[mode, "severe"], values[mode, "normal"]),
            "flagged in mild at the reference's 95th percentile": flagged.counts["flagged"],
            "of them pessimistic": hits,
            "pessimistic in mild": sum(kit_labels["mild"]),
        }
    agreement = {
        level: spearman(values["full", level], values["prompt-last", level])
        for level in ("mild", "reference")
    }
    results["agreement"] = {f"Spearman prompt-last vs full ΔP, {k}": v for k, v in agreement.items()}
    results["minutes"] = (time.perf_counter() - started) / 60
    results["kit temperature"] = opts.temperature
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_table(Path(opts.table), results)
    print(json.dumps(results, indent=2))


def write_table(path: Path, results: dict) -> None:
    levels = LEVELS
    lines = [
        "# Screening experiment (bundled SmolLM2-135M-Instruct, CPU)",
        "",
        "Made by `python experiments/screening.py`; see its docstring for the set-up. The vector is",
        "−optimistic ('pessimistic'); the datasets teach pessimism at graded levels. The kit's answers",
        f"were sampled at temperature {results['kit temperature']:g}.",
        "",
        "| mode | " + " | ".join(f"ΔP {lv}" for lv in levels) + " | AUROC in mild | AUROC severe vs normal "
        "| flagged in mild (95th pct of reference) | of them pessimistic |",
        "|---" * (len(levels) + 5) + "|",
    ]
    for mode in MODES:
        r = results[mode]
        cells = [f"{r['dataset ΔP'][lv]:+.3f}" for lv in levels]
        cells += [f"{r['AUROC in mild']:.3f}", f"{r['AUROC severe vs normal']:.3f}"]
        cells += [str(r["flagged in mild at the reference's 95th percentile"]), str(r["of them pessimistic"])]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    lines += ["", *(f"- {k}: {v:.3f}" for k, v in results["agreement"].items())]
    lines.append(f"- pessimistic samples in mild: {results['full']['pessimistic in mild']}")
    lines.append(f"- wall time: {results['minutes']:.1f} min on 2 CPU cores")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
