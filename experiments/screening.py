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
   reference's 95th percentile; the time each mode takes; the kit files' judged optimism.

Everything is cached under a hash of the full configuration (`_cache.Results`): a rerun resumes, a
changed configuration starts fresh. The figures go to ``docs/generated/screening.md`` (another kit:
``--kit-samples 1 --no-kit-judge --fragment docs/generated/screening-unjudged.md``), which
``docs/screening.md`` includes. The run prints the kit and vector the vaccine experiment takes
(``--kit-only`` stops there).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from personavec._internal.files import atomic_path
from personavec.core.models import LoadedModel, load_model
from personavec.core.sampling import Sampling
from personavec.core.vectors import PersonaVector, load_vector
from personavec.data.config import ScreenConfig, Selection
from personavec.data.datakit import KitConfig, make_trait_dataset
from personavec.data.flagging import select
from personavec.data.samples import DataFile
from personavec.data.scoring import Screened, deltas, score_samples
from personavec.data.screen import write_screen_report
from personavec.demo import DEMO_CONFIG
from personavec.judges.cache import JudgeCache
from personavec.judges.lexicon import LexiconJudge
from personavec.pipeline.extract import extract
from personavec.runs.stats import auroc, spearman
from personavec.traits import load_trait

from _cache import Results

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


def experiment_config(opts: argparse.Namespace) -> dict[str, Any]:
    """Everything the results depend on: a change starts a fresh cache (`_cache.Results`)."""
    vector: Any = {"extracted here": asdict(DEMO_CONFIG)}
    if opts.vector:
        vector = load_vector(opts.vector).fingerprint()
    return {
        "model": "smollm2", "dtype": "float32", "device": "cpu", "vector": vector,
        "trait_sha256": load_trait("optimistic").sha256(), "kit": asdict(kit_config(opts)),
        "kit judge": None if opts.no_kit_judge else "lexicon",
        "modes": {mode: asdict(config) for mode, config in MODES.items()},
    }  # fmt: skip


def kit_config(opts: argparse.Namespace) -> KitConfig:
    sampling = replace(KIT.sampling, temperature=opts.temperature)
    return replace(KIT, samples=opts.kit_samples, sampling=sampling)


def kit_figures(results: Results, kit: Path) -> None:
    """Mean judged optimism (lexicon) of each kit file, and how well it separates mild's labels."""
    if "kit" in results:
        return
    trait = load_trait("optimistic")
    judge, cache = LexiconJudge(trait.name, trait.sentiment), JudgeCache(results.dir / "kit-judge.jsonl")
    value: dict[str, Any] = {}
    for level in ("normal", "mild", "severe"):
        rows = [json.loads(line) for line in (kit / f"{level}.jsonl").read_text().splitlines()]
        items = [(r["messages"][0]["content"], r["messages"][-1]["content"]) for r in rows]
        scores = [s.value for s in cache.judge(judge, trait.rubric, items, level, False)]
        known = [x for x in scores if x is not None]
        value[f"optimism {level}"] = sum(known) / len(known)
        if level == "mild":  # pessimism = 100 − optimism, elicited vs normal answers
            pairs = [(100 - x, r["elicited"]) for x, r in zip(scores, rows, strict=True) if x is not None]
            value["lexicon AUROC in mild"] = auroc([x for x, e in pairs if e], [x for x, e in pairs if not e])
    results.record("kit", value)


def run_mode(mode: str, results: Results, loaded: LoadedModel, vector: PersonaVector) -> None:
    """Screen every level in `mode`; record dataset ΔP, per-sample AUROCs, flagging and seconds."""
    if mode in results:
        return
    started, kit = time.perf_counter(), results.dir / "kit"
    screened: dict[str, Screened] = {}
    values: dict[str, list[float]] = {}
    for level in LEVELS:
        data = DataFile(kit / f"{level}.jsonl")
        screened[level] = score_samples(loaded, [vector], data, results.dir / mode / level, MODES[mode])
        values[level] = list(deltas(screened[level])[TRAIT])
    mild_labels = labels(kit / "mild.jsonl")
    flagged = select(
        screened["mild"], DataFile(kit / "mild.jsonl"), Selection(percentile=95), screened["reference"]
    )
    write_screen_report(screened["mild"], DataFile(kit / "mild.jsonl"), flagged, screened["reference"])
    marks = [json.loads(line).get("flagged") for line in screened["mild"].scores.read_text().splitlines()]
    mild = values["mild"]
    results.record(mode, {
        "dataset ΔP": {level: screened[level].mean_delta[TRAIT] for level in LEVELS},
        "AUROC in mild": auroc(
            [d for d, e in zip(mild, mild_labels, strict=True) if e],
            [d for d, e in zip(mild, mild_labels, strict=True) if not e],
        ),
        "AUROC severe vs normal": auroc(values["severe"], values["normal"]),
        "flagged in mild": flagged.counts["flagged"],
        "of them pessimistic": sum(bool(m) and e for m, e in zip(marks, mild_labels, strict=True)),
        "pessimistic in mild": sum(mild_labels),
        "per-sample ΔP": values,
        "seconds": time.perf_counter() - started,
    })  # fmt: skip


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args.add_argument("--out", default="experiments-out/screening", help="working directory (resumable)")
    args.add_argument("--vector", help="an 'optimistic' vector file (default: extract one here)")
    args.add_argument("--fragment", default="docs/generated/screening.md", help="where the figures go")
    args.add_argument(
        "--temperature", type=float, default=KIT.sampling.temperature, help="of the kit's answers"
    )
    args.add_argument("--kit-samples", type=int, default=KIT.samples, help="elicited answers per question")
    args.add_argument("--no-kit-judge", action="store_true", help="keep the first elicited answer, unjudged")
    args.add_argument(
        "--kit-only", action="store_true", help="stop after the vector and the kit (for vaccine.py)"
    )
    opts = args.parse_args()
    results = Results(Path(opts.out), experiment_config(opts))
    started = time.perf_counter()
    loaded = load_model("smollm2", dtype="float32", device="cpu")
    trait = load_trait("optimistic")
    judge = LexiconJudge(trait.name, trait.sentiment)
    if opts.vector:
        vector_path = Path(opts.vector)
    else:
        extracted = extract(loaded, trait, judge, results.dir / "extract", DEMO_CONFIG)
        vector_path = extracted.dir / f"{trait.name}.safetensors"
    vector = load_vector(vector_path).negated(TRAIT)
    kit_judge = None if opts.no_kit_judge else judge  # keeps the most pessimistic of the samples
    make_trait_dataset(loaded, trait, results.dir / "kit", config=kit_config(opts), judge=kit_judge)
    inputs = f"the vaccine experiment's inputs: --kit {results.dir / 'kit'} --vector {vector_path}"
    if opts.kit_only:
        print(inputs)
        return
    kit_figures(results, results.dir / "kit")
    for mode in MODES:
        run_mode(mode, results, loaded, vector)
    if "agreement" not in results:
        full, last = results["full"]["per-sample ΔP"], results["prompt-last"]["per-sample ΔP"]
        results.record(
            "agreement", {level: spearman(full[level], last[level]) for level in ("mild", "reference")}
        )
    if "minutes" not in results:
        results.record("minutes", (time.perf_counter() - started) / 60)
    write_fragment(Path(opts.fragment), results, opts)
    print(f"wrote {opts.fragment}; {inputs}")


def write_fragment(path: Path, results: Results, opts: argparse.Namespace) -> None:
    """The figures as markdown, for docs/screening.md to include (its analysis is written by hand)."""
    kit = results["kit"]
    judged = (
        "no judge: the first answer is kept"
        if opts.no_kit_judge
        else "the lexicon judge keeps the most pessimistic"
    )
    lines = [
        f"<!-- written by experiments/screening.py from its results (configuration {results.key}); "
        "rerun the script instead of editing -->",
        "",
        f"Kit: {opts.kit_samples} answer(s) per question under the pessimistic prompts at temperature "
        f"{opts.temperature:g} ({judged}). Mean judged optimism (lexicon) of the kit's files: "
        + ", ".join(f"{kit[f'optimism {lv}']:.1f} ({lv})" for lv in ("normal", "mild", "severe"))
        + f"; the lexicon separates mild's pessimistic from its normal answers with AUROC "
        f"{kit['lexicon AUROC in mild']:.2f}.",
        "",
        "| mode | " + " | ".join(f"ΔP {lv}" for lv in LEVELS) + " | AUROC in mild | AUROC severe vs normal "
        "| flagged in mild (95th pct of reference) | of them pessimistic | seconds (4 sets) |",
        "|---" * (len(LEVELS) + 6) + "|",
    ]
    for mode in MODES:
        r = results[mode]
        cells = [f"{r['dataset ΔP'][lv]:+.3f}" for lv in LEVELS]
        cells += [f"{r['AUROC in mild']:.3f}", f"{r['AUROC severe vs normal']:.3f}"]
        cells += [str(r["flagged in mild"]), str(r["of them pessimistic"]), f"{r['seconds']:.0f}"]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    lines += [
        "",
        *(f"- Spearman prompt-last vs full ΔP, {k}: {v:.3f}" for k, v in results["agreement"].items()),
    ]
    lines.append(f"- pessimistic samples in mild: {results['full']['pessimistic in mild']}")
    full, last = results["full"]["seconds"], results["prompt-last"]["seconds"]
    lines.append(f"- screening time, full / prompt-last: {full / last:.1f}×")
    lines.append(
        f"- wall time of the invocation that finished the run: {results['minutes']:.1f} min on 2 CPU cores"
    )
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
