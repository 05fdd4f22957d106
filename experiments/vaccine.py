"""The vaccine experiment on the bundled model: does preventative steering keep data that teaches
pessimism from making the model pessimistic?

    python experiments/vaccine.py --kit KIT_DIR --vector RUN/optimistic.safetensors   # ~1 h, 2 cores

Training data: the kit for 'optimistic' made with --invert (``python experiments/screening.py
--kit-only`` makes the kit and the vector and prints their paths): its ``severe.jsonl`` (every answer
given under one of the trait's pessimistic system prompts, stored without it) for the variants, and
``normal.jsonl`` and ``mild.jsonl`` for plain finetuning on the milder levels. The vector:
'pessimistic' = −optimistic, at its chosen layer. Variants, each LoRA (r 32, α 64, rsLoRA, every linear
layer) trained the same way on the severe set:

1. plain finetuning;
2. preventative steering: +α·v at the chosen layer in training steps (candidate α: `FAMILIES`);
3. multi-layer preventative steering: α·(v_ℓ − v_{ℓ−1}) at every layer (candidate α: `FAMILIES`);
4. CAFT: the direction projected out at the chosen layer in training steps;
5. regularisation: λ·(shift of the assistant tokens' mean projection from the base model)²;
6. plain, then steered with −β·v at inference (post-hoc; candidate β: `BETAS`).

Sizes, fixed before the run for paired differences over questions: `EVALUATION` answers 80 questions
(the trait's 20 evaluation questions and 60 written for this experiment, ``data/optimistic-evaluation.txt``,
disjoint from its extraction questions and from the kit's), each 4 times at temperature 1; a question's
figure is the mean judged optimism of its answers, and a difference between two models is the mean of
their per-question differences with a bootstrap interval over the questions (`_doses.INTERVALS`). With
a per-answer SD of about 25 points and a per-question SD of the true difference of about 10, the
half-width is 1.96·√(2·25²/4 + 10²)/√80 ≈ 4.4 points, under the ±5 aimed at; the page reports the
half-width each difference reached. Plain finetuning and preventative steering at its chosen dose are
trained with `SEEDS` (the seed-to-seed spread is reported beside the within-run interval).

Doses are chosen before the evaluation: every candidate dose is judged on the *validation* questions
(the trait's 20 extraction questions, disjoint from the evaluation questions, 4 sampled answers each)
and `_doses.DOSE_RULE` picks one per variant, on seed 0. Measured on the evaluation questions for the
base model and every trained model: the judged trait (lexicon judge, optimism 0–100; the trait shift is
finetuned − base, negative = more pessimistic), the finetuning shift along v (prompt-last),
capability as the smoke set's accuracy and mean log-probability of the correct letter, and the
held-out loss (mean token NLL) on `TEXT_WINDOWS` windows of the standard library's ``pydoc_data.topics``
prose, which no variant wrote or trained on. Every trained model (each level, variant, dose and seed)
is a point of the finetuning shift against the judged trait shift (the paper: r 0.76–0.97).

Results are cached under a hash of the full configuration (`_cache.Results`), one model at a time: a
rerun resumes; a changed configuration starts fresh. The figures go to ``docs/generated/vaccine.md``
and its plot, which ``docs/vaccine.md`` includes.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from statistics import fmean as mean
from typing import Any

from personavec.core.models import LoadedModel, load_model
from personavec.core.sampling import Sampling
from personavec.core.vectors import PersonaVector, load_vector
from personavec.deploy.capability import load_questions, score
from personavec.deploy.text_loss import ordinary_text, text_sha256, text_windows, window_losses
from personavec.judges.cache import JudgeCache
from personavec.judges.lexicon import LexiconJudge
from personavec.pipeline.config import Sizes
from personavec.pipeline.evaluate import evaluate
from personavec.runs.results import Setting
from personavec.training.shift import finetuning_shift, load_finetuned
from personavec.training.train import TrainConfig, TrainIntervention, train_model
from personavec.traits import load_trait
from personavec.traits.spec import TraitSpec, normalise_question

from _cache import Results
from _doses import DOSE_RULE, INTERVALS, choose_dose
from _vaccine_page import label, write_fragment

MODEL = "smollm2"
QUESTIONS = Path(__file__).parent / "data" / "optimistic-evaluation.txt"
SAMPLED = Sampling(max_new_tokens=64, temperature=1.0, batch_size=32)
EVALUATION = Sizes(questions=80, samples=4, sampling=SAMPLED)
VALIDATION = Sizes(questions=20, samples=4, sampling=SAMPLED)
TEXT_WINDOWS = {"window": 128, "count": 64}
SEEDS = (0, 1, 2)
BETAS = (1.0, 2.0, 3.0)  # post-hoc steering: candidate β
LAMBDA = 1.0
CONFIG = TrainConfig(learning_rate=2e-4, epochs=1.0, batch_size=8, max_length=256, save_steps=1000)
FAMILIES: dict[str, dict[float | None, TrainIntervention]] = {  # variant → candidate dose → training
    "plain": {None: TrainIntervention()},
    "steer (one layer)": {α: TrainIntervention("steer", coef=α) for α in (2.0, 4.0)},
    "steer (all layers)": {α: TrainIntervention("steer", coef=α, all_layers=True) for α in (1.0, 2.0)},
    "CAFT": {None: TrainIntervention("ablate")},
    "regularise": {None: TrainIntervention("regularize", weight=LAMBDA)},
}
SEEDED = ("plain", "steer (one layer)")  # trained with every seed, at the chosen dose
LEVELS = ("normal", "mild")  # plain finetuning on the kit's milder levels (severe: the variants)
POST_HOC = "plain + post-hoc steering"


def load(path: str | None = None) -> LoadedModel:
    """The bundled model (or it finetuned with the adapter at `path`, merged into the weights: it
    answers faster than with the adapter beside them), float32 on the CPU."""
    if path is None:
        return load_model(MODEL, dtype="float32", device="cpu")
    tuned = load_finetuned(MODEL, path, dtype="float32", device="cpu")
    adapted: Any = tuned.model  # a PEFT model
    return replace(tuned, model=adapted.merge_and_unload())


@functools.cache
def evaluation_trait() -> TraitSpec:
    """'optimistic' with the experiment's 60 evaluation questions added (checked disjoint from its
    extraction questions, its own evaluation questions and the kit's question pool)."""
    from personavec.traits.questions import bundled_questions

    trait = load_trait("optimistic")
    added = [line.strip() for line in QUESTIONS.read_text(encoding="utf-8").splitlines() if line.strip()]
    taken = [*trait.extraction_questions, *trait.evaluation_questions, *bundled_questions()]
    clash = {normalise_question(q) for q in added} & {normalise_question(q) for q in taken}
    assert not clash and len({normalise_question(q) for q in added}) == len(added), clash
    return replace(trait, evaluation_questions=[*trait.evaluation_questions, *added])


@functools.cache
def validation_trait() -> TraitSpec:
    """'optimistic' whose evaluation questions are its extraction questions (the doses' split)."""
    trait = load_trait("optimistic")
    return replace(trait, evaluation_questions=trait.extraction_questions)


def judged(
    loaded: LoadedModel, trait: TraitSpec, sizes: Sizes, vector: PersonaVector, out: Path, coef: float
) -> list[float]:
    """Per question of `trait` (as many as `sizes` says), the mean judged optimism of its sampled
    answers, the model steered by coef·v."""
    judge, cache = LexiconJudge(trait.name, trait.sentiment), JudgeCache(out / "judge-cache.jsonl")
    setting = Setting(vector.layer if coef else None, coef)
    evaluate(loaded, trait, judge, cache, out / "answers.jsonl", vector, setting, sizes, progress=False)
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text(encoding="utf-8").splitlines()]
    scores = cache.judge(judge, trait.rubric, [(r["question"], r["answer"]) for r in rows], "", False)
    per_question: dict[int, list[float]] = {}
    for row, s in zip(rows, scores, strict=True):
        if s.value is not None:
            per_question.setdefault(row["question_id"], []).append(s.value)
    assert len(per_question) == sizes.questions, "a question has no scored answer"
    return [sum(v) / len(v) for _, v in sorted(per_question.items())]


def measure(
    loaded: LoadedModel,
    base: LoadedModel | None,
    vector: PersonaVector,
    windows: Sequence[Sequence[int]],
    out: Path,
    coef: float = 0.0,
) -> dict[str, Any]:
    """On the evaluation split, `loaded` steered by coef·v: per-question optimism, the finetuning
    shift (against `base`, unsteered), the smoke set's accuracy and per-question log-probability of
    the correct letter, and the held-out loss per text window."""
    trait = evaluation_trait()
    edits = [vector.edit(coef)] if coef else []
    capability = score(loaded, load_questions("smoke"), progress=False, edits=edits)
    prompts = [loaded.chat(q) for q in trait.evaluation_questions]
    return {
        "optimism": judged(loaded, trait, EVALUATION, vector, out, coef),
        "shift": finetuning_shift(base, loaded, [vector], prompts)[vector.trait] if base else 0.0,
        "accuracy": capability.accuracy,
        "correct_logprob": [q.correct_logprob for q in capability.questions],
        "loss": window_losses(loaded, windows, edits),
    }


def folder_name(label: str) -> str:
    return "".join(c for c in label.replace(" ", "-") if c.isalnum() or c in "-.")


class Experiment:
    """The runs of one configuration: the base model, the kit, the vector, the text windows."""

    def __init__(self, results: Results, kit: Path, vector: PersonaVector) -> None:
        self.results, self.kit, self.vector = results, kit, vector
        self.base = load()
        self.windows = text_windows(self.base, ordinary_text(), **TEXT_WINDOWS)

    def validated(self, loaded: LoadedModel, out: Path, coef: float = 0.0) -> list[float]:
        """Per validation question, the mean judged optimism of `loaded` steered by coef·v."""
        return judged(loaded, validation_trait(), VALIDATION, self.vector, out, coef)

    def run_base(self) -> None:
        if "base" in self.results:
            return
        started, folder = time.perf_counter(), self.results.dir / "base"
        validation = self.validated(self.base, folder / "validation")
        measured = measure(self.base, None, self.vector, self.windows, folder / "evaluation")
        seconds = time.perf_counter() - started
        self.results.record("base", {"validation": validation, **measured, "seconds": seconds})

    def trained(
        self, label: str, level: str, spec: TrainIntervention, seed: int = 0, validate: bool = False
    ) -> dict[str, Any]:
        """Train (or resume) the model `label` on the kit's `level` set, judge it on the validation
        split if asked, measure it on the evaluation split; recorded as ``model: label``."""
        name = f"model: {label}"
        if name in self.results:
            return dict(self.results[name])
        started, folder = time.perf_counter(), self.results.dir / folder_name(label)
        config = replace(CONFIG, intervention=spec, seed=seed)
        done = train_model(load(), self.kit / f"{level}.jsonl", folder, config, self.vector)
        value: dict[str, Any] = {"level": level, "seed": seed, "dose": spec.coef or None}
        value |= {"adapter": str(done.out), "train_loss": done.train_loss, "train_seconds": done.seconds}
        tuned = load(value["adapter"])
        if validate:
            value["validation"] = self.validated(tuned, folder / "validation")
        value |= measure(tuned, self.base, self.vector, self.windows, folder / "evaluation")
        self.results.record(name, {**value, "seconds": time.perf_counter() - started})
        return value

    def run_family(self, family: str) -> None:
        """Every candidate dose of `family` on seed 0; the dose `DOSE_RULE` picks, with every seed
        where the family is seeded."""
        doses = FAMILIES[family]
        validation = {
            dose: self.trained(label(family, dose), "severe", spec, validate=len(doses) > 1)
            for dose, spec in doses.items()
        }
        chosen = next(iter(doses))
        if len(doses) > 1:
            base = self.results["base"]["validation"]
            judged_doses = {d: mean(v["validation"]) for d, v in validation.items() if d is not None}
            chosen = choose_dose(mean(base), judged_doses)
        if f"chosen: {family}" not in self.results:
            self.results.record(f"chosen: {family}", chosen)
        if family in SEEDED:
            for seed in SEEDS[1:]:
                self.trained(label(family, chosen, seed), "severe", doses[chosen], seed)

    def run_post_hoc(self) -> None:
        """The plain model steered by −β·v at inference: β chosen on the validation split."""
        if POST_HOC in self.results:
            return
        started, plain = time.perf_counter(), self.results["model: plain"]
        tuned, folder = load(plain["adapter"]), self.results.dir / "post-hoc"
        valid = {}
        for beta in BETAS:
            name = f"post-hoc: β {beta:g}"
            if name not in self.results:
                scores = self.validated(tuned, folder / f"validation-beta-{beta:g}", -beta)
                self.results.record(name, {"dose": beta, "validation": scores})
            valid[beta] = mean(self.results[name]["validation"])
        beta = choose_dose(mean(self.results["base"]["validation"]), valid)
        out = folder / f"evaluation-beta-{beta:g}"
        measured = measure(tuned, self.base, self.vector, self.windows, out, -beta)
        measured["shift"] = plain["shift"]  # the weights are the plain model's
        seconds = time.perf_counter() - started
        self.results.record(POST_HOC, {**measured, "dose": beta, "seconds": seconds})


def experiment_config(kit: Path, vector: PersonaVector) -> dict[str, Any]:
    """Everything the results depend on: a change starts a fresh cache."""
    text = ordinary_text()
    return {
        "model": MODEL, "dtype": "float32", "device": "cpu",
        "data_sha256": {
            level: hashlib.sha256((kit / f"{level}.jsonl").read_bytes()).hexdigest()
            for level in ("severe", *LEVELS)
        },
        "vector": vector.fingerprint(), "vector_layer": vector.layer,
        "train": asdict(CONFIG), "seeds": SEEDS, "seeded": SEEDED, "levels": LEVELS,
        "families": {f: {str(d): asdict(s) for d, s in c.items()} for f, c in FAMILIES.items()},
        "post-hoc betas": BETAS, "judge": "lexicon",
        "evaluation": asdict(EVALUATION), "validation": asdict(VALIDATION),
        "trait_sha256": evaluation_trait().sha256(), "validation_sha256": validation_trait().sha256(),
        "capability": "smoke", "text": {**TEXT_WINDOWS, "sha256": text_sha256(text)},
        "python": platform.python_version(), "dose rule": DOSE_RULE, "intervals": INTERVALS,
    }  # fmt: skip


def kit_optimism(results: Results, kit: Path) -> None:
    """Mean judged optimism of each of the kit's files."""
    if "kit optimism" in results:
        return
    trait = load_trait("optimistic")
    judge, cache = LexiconJudge(trait.name, trait.sentiment), JudgeCache(results.dir / "kit-judge.jsonl")
    means = {}
    for level in ("severe", *LEVELS):
        rows = [json.loads(line) for line in (kit / f"{level}.jsonl").read_text().splitlines()]
        items = [(r["messages"][0]["content"], r["messages"][-1]["content"]) for r in rows]
        scores = [
            s.value for s in cache.judge(judge, trait.rubric, items, level, False) if s.value is not None
        ]
        means[level] = {"mean": mean(scores), "conversations": len(rows)}
    results.record("kit optimism", means)


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args.add_argument("--kit", required=True, help="a kit made for 'optimistic' with --invert")
    args.add_argument("--vector", required=True, help="the 'optimistic' vector file")
    args.add_argument("--out", default="experiments-out/vaccine", help="working directory (resumable)")
    args.add_argument("--fragment", default="docs/generated/vaccine.md", help="where the figures go")
    opts = args.parse_args()
    kit = Path(opts.kit)
    vector = load_vector(opts.vector).negated("pessimistic")
    results = Results(Path(opts.out), experiment_config(kit, vector))
    started = time.perf_counter()
    kit_optimism(results, kit)
    experiment = Experiment(results, kit, vector)
    experiment.run_base()
    for family in FAMILIES:
        experiment.run_family(family)
    for level in LEVELS:
        experiment.trained(f"plain on {level}", level, TrainIntervention())
    experiment.run_post_hoc()
    if "minutes" not in results:
        results.record("minutes", (time.perf_counter() - started) / 60)
    write_fragment(Path(opts.fragment), results, CONFIG, LAMBDA)
    print(f"wrote {opts.fragment}")


if __name__ == "__main__":
    main()
