"""The offline demo: the whole pipeline for `optimistic` on the bundled SmolLM2, judged by a lexicon.

Contrastive answers → lexicon judge → filter → vectors → layer sweep; then, at the chosen layer, a
steering sweep over coefficients, calibration over the trait's graded system prompts, multiple-choice
capability on the smoke set (unsteered and at the coefficients that move the trait halfway), a few
evaluation questions answered at −coef, 0 and +coef, the held-out separation (answers to questions no
earlier stage asked, projected with no system prompt in context), and ``report.html`` with each
target met or missed, and why. Sized to finish in a few
minutes on 2 CPU cores; the lexicon judge is an offline proxy for an LLM judge, and says so.
`run_demo` prints nothing; `summary` is the text the CLI shows.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personavec.core.backend import GenerationRequest, as_backend
from personavec.core.models import LoadedModel, load_model
from personavec.core.sampling import Sampling
from personavec.core.vectors import PersonaVector
from personavec.deploy import capability
from personavec.judges.lexicon import LexiconJudge
from personavec.pipeline.calibrate import calibrate
from personavec.pipeline.config import CalibrateConfig, Sizes
from personavec.pipeline.evaluate import halfway_coefs, sweep
from personavec.pipeline.extract import ExtractConfig, ExtractResult, extract
from personavec.pipeline.separation import held_out_answers, separation
from personavec.report.pages import (
    SteeredExample,
    calibration_section,
    capability_section,
    separation_section,
    sweep_section,
    targets_section,
    write_report,
)
from personavec.runs.readers import CalibrationRun, SweepRun
from personavec.runs.results import Calibration, Cell, Separation, Target
from personavec.runs.stats import spearman
from personavec.traits.spec import TraitSpec, load_trait

DEMO_TRAIT = "optimistic"
DEMO_CONFIG = ExtractConfig(
    samples=2,
    sampling=Sampling(max_new_tokens=48, temperature=0.7, batch_size=32),
    questions=10,
    instructions=5,
    min_pairs=5,
    sweep_questions=8,
    coef=2.0,
)
N_EXAMPLES = 3  # evaluation questions after the sweep's, answered at −coef, 0, +coef
SWEEP_COEFS = (-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0)
SWEEP_QUESTIONS = 10
CALIBRATION_QUESTIONS = 10
HELD_OUT_PAIRS = 3  # instruction pairs eliciting the held-out answers (only the answers are pooled)
GREEDY = Sampling(max_new_tokens=DEMO_CONFIG.sampling.max_new_tokens, batch_size=32)  # after extraction


@dataclass
class DemoResult:
    run: ExtractResult
    examples: list[SteeredExample]
    sweep: list[Cell]  # cells of the steering sweep at the chosen layer
    calibration: Calibration
    capability: dict[str, dict[str, Any]]  # setting → CapabilityResult.to_dict()
    separation: Separation  # held-out answers projected with no system prompt in context
    targets: dict[str, Target]  # the figures the issues set targets for, met or missed and why
    seconds: dict[str, float]  # per stage, this invocation (stages done by an earlier one are absent)
    judge: str  # what the judge is (an offline proxy)
    report: Path


def run_demo(
    out: Path,
    model_ref: str = "smollm2",
    loaded: LoadedModel | None = None,
    progress: bool = True,
    force: bool = False,
) -> DemoResult:
    """Run the demo into the run directory `out` (resumable), write the report, return what it shows.

    `force` starts over a directory left by a demo run with other settings.
    """
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    if loaded is None:
        loaded = load_model(model_ref)
        seconds["load model"] = time.perf_counter() - started
    trait = load_trait(DEMO_TRAIT)
    judge = LexiconJudge(trait.name, trait.sentiment)
    result = extract(loaded, trait, judge, out, DEMO_CONFIG, force=force, progress=progress)
    seconds.update({stage: s for stage, s in result.summary.seconds.items() if s is not None})
    vector = result.vectors["response-avg"]
    assert vector.layer is not None
    _drop_stale(out, vector, force)
    with _timed(seconds, "steering sweep"):
        cells = sweep(
            loaded, trait, judge, vector, out / "steering", [vector.layer], SWEEP_COEFS,
            Sizes(questions=SWEEP_QUESTIONS, sampling=GREEDY), progress,
        )  # fmt: skip
    with _timed(seconds, "calibration"):
        sizes = CalibrateConfig(questions=CALIBRATION_QUESTIONS, shots=(), sampling=GREEDY)
        calibration = calibrate(loaded, trait, judge, vector, out / "calibration", sizes, progress=progress)
    with _timed(seconds, "capability"):
        scores = _capability(loaded, vector, halfway_coefs(cells, vector.layer))
    with _timed(seconds, "steered examples"):
        questions = trait.evaluation_questions[SWEEP_QUESTIONS : SWEEP_QUESTIONS + N_EXAMPLES]
        examples = _steered_examples(loaded, vector, questions)
    with _timed(seconds, "held-out separation"):
        pairs = trait.instructions[:HELD_OUT_PAIRS]
        kept = held_out_answers(loaded, trait, judge, held_out_questions(trait), pairs, GREEDY)
        held_out = separation(loaded, vector, kept)

    targets = demo_targets(cells, calibration, scores, held_out)
    extra = [
        targets_section(list(targets.values())),
        sweep_section(cells),
        calibration_section(calibration.summary(), calibration.points),
        capability_section(scores),
        separation_section(held_out),
    ]
    report = write_report(out, examples, extra)
    seconds["total"] = time.perf_counter() - started
    return DemoResult(
        run=result, examples=examples, sweep=cells, calibration=calibration, capability=scores,
        separation=held_out, targets=targets, seconds=seconds, judge=str(judge.proxy), report=report,
    )  # fmt: skip


def held_out_questions(trait: TraitSpec) -> list[str]:
    """Questions no earlier stage of the demo asks: the extraction questions after those extraction
    used, and the evaluation questions after those of the sweeps, calibration and steered examples."""
    used = max(DEMO_CONFIG.sweep_questions, SWEEP_QUESTIONS, CALIBRATION_QUESTIONS) + N_EXAMPLES
    return trait.extraction_questions[DEMO_CONFIG.questions :] + trait.evaluation_questions[used:]


def demo_targets(
    cells: list[Cell], calibration: Calibration, scores: dict[str, dict[str, Any]], held_out: Separation
) -> dict[str, Target]:
    """Each figure the issues set a target for, met or not, with the reason read off the data when not."""
    scored = [(c.coef, c.trait) for c in cells if c.trait is not None]
    rho = spearman([coef for coef, _ in scored], [value for _, value in scored])
    means = ", ".join(f"{coef:+g}: {value:.0f}" for coef, value in scored)
    targets = {
        "spearman_trait_vs_coef": Target.at_least(
            "Spearman ρ of the judged trait against the steering coefficient", rho, 0.9,
            f"the judged trait does not rise steadily with the coefficient (means {means})",
        ),
        "calibration_r_graded": calibration.target(),
        "held_out_auroc": Target.at_least(
            "AUROC of held-out answers projected with no system prompt in context", held_out.auroc, 0.9,
            _separation_reason(held_out),
        ),
    }  # fmt: skip
    targets.update(_capability_targets(scores))
    return targets


def _capability_targets(scores: dict[str, dict[str, Any]]) -> dict[str, Target]:
    """Accuracy lost at each steered setting (target ≤ 1 point); unreadable when the model is at chance."""
    base, targets = scores["unsteered"]["accuracy"], {}
    for name, r in scores.items():
        drop = 100 * (base - r["accuracy"])
        if name == "unsteered":
            continue
        why = f"steering costs {drop:.1f} points"
        if base < 0.35:  # 4 choices: chance is 25 %
            why = f"the unsteered model is near chance ({100 * base:.1f} %), so a drop cannot be read"
        targets[f"capability_drop {name}"] = Target(
            f"multiple-choice accuracy lost (points), {name}",
            drop,
            "≤ 1",
            drop <= 1,
            "" if drop <= 1 else why,
        )
    return targets


def _separation_reason(held_out: Separation) -> str:
    """Why held-out answers are not separated: too few kept on a side, or their projections overlap."""
    pos, neg = held_out.counts()
    if min(pos, neg) < 5:
        return f"too few held-out answers kept ({pos} eliciting, {neg} suppressing)"
    return f"the answers' projections overlap ({pos} eliciting and {neg} suppressing answers kept)"


@contextmanager
def _timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    """Record the block's wall time as ``seconds[stage]``."""
    t0 = time.perf_counter()
    yield
    seconds[stage] = time.perf_counter() - t0


def _drop_stale(out: Path, vector: PersonaVector, force: bool) -> None:
    """Remove the demo's own sweep and calibration when made with another vector (or when forced)."""
    for reader, made_with_it in ((SweepRun, out / "steering"), (CalibrationRun, out / "calibration")):
        found = reader.find(made_with_it)
        if found is not None and (force or found.manifest["vector"] != vector.fingerprint()):
            shutil.rmtree(made_with_it)


def _capability(
    loaded: LoadedModel, vector: PersonaVector, halfway: dict[str, float | None]
) -> dict[str, dict[str, Any]]:
    """Multiple-choice scores on the smoke set, unsteered and at each halfway coefficient."""
    questions = capability.load_questions(capability.SMOKE)
    settings = {"unsteered": 0.0, **{f"halfway {k} ({c:+g})": c for k, c in halfway.items() if c is not None}}
    scores = {}
    for name, c in settings.items():
        edits = [vector.edit(c)] if c else []
        scores[name] = capability.score(loaded, questions, progress=False, edits=edits).to_dict()
    return scores


def _steered_examples(
    loaded: LoadedModel, vector: PersonaVector, questions: list[str]
) -> list[SteeredExample]:
    """Each question answered at −coef, 0 and +coef, greedily, all in one batch (each request its own
    steering)."""
    backend = as_backend(loaded)
    settings = [(q, c) for c in (-DEMO_CONFIG.coef, 0.0, DEMO_CONFIG.coef) for q in questions]
    requests = [
        GenerationRequest(
            tuple(backend.encode(loaded.chat(q))), GREEDY.max_new_tokens, edits=(vector.edit(c),) if c else ()
        )
        for q, c in settings
    ]
    answers = backend.generate(requests, GREEDY.seed, batch_size=len(requests))
    return [SteeredExample(q, c, a.text.strip()) for (q, c), a in zip(settings, answers, strict=True)]


def summary(demo: DemoResult) -> str:
    """What the demo shows, as the CLI prints it: the steered examples, the sweep, capability, each
    target met or not (and why), the files written and the seconds per stage."""
    vector, coef = demo.run.vectors["response-avg"], DEMO_CONFIG.coef
    lines = [
        f"judge: {demo.judge}",
        "",
        f"chosen layer {vector.layer}; steering there with coef −{coef:g} / 0 / +{coef:g}:",
    ]
    for question in dict.fromkeys(e.question for e in demo.examples):
        lines += ["", f"Q: {question}"]
        lines += [f"  {e.coef:+4.1f}: {e.answer}" for e in demo.examples if e.question == question]
    scored = [(c.coef, c.trait) for c in demo.sweep if c.trait is not None]
    lines += ["", "steering sweep at the chosen layer (coef: mean trait score):"]
    lines.append("  " + ", ".join(f"{coef:+g}: {value:.1f}" for coef, value in scored))
    for name, r in demo.capability.items():
        lines.append(f"smoke-set multiple choice, {name}: {100 * r['accuracy']:.1f} %")
    pos, neg = demo.separation.counts()
    lines.append(
        f"held-out separation: AUROC {_fmt(demo.separation.auroc)} ({pos} eliciting vs {neg} suppressing "
        "answers to unseen questions, no system prompt in context)"
    )
    lines += ["", "targets:"]
    for t in demo.targets.values():
        verdict = "met" if t.met else f"NOT met: {t.reason}"
        lines.append(f"  {t.name}: {_fmt(t.value)} (target {t.goal}) {verdict}")
    lines += ["", f"wrote {demo.run.dir / (vector.trait + '.safetensors')} and {demo.report}"]
    lines.append("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in demo.seconds.items()))
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
