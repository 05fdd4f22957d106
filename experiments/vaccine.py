"""The vaccine experiment on the bundled model: does preventative steering keep data that teaches
pessimism from making the model pessimistic?

    python experiments/vaccine.py --kit KIT_DIR --vector RUN/optimistic.safetensors   # ~35 min, 2 cores

Training data: the kit's ``severe.jsonl`` for 'optimistic' inverted (every answer given under one of
the trait's pessimistic system prompts, stored without it; ``python experiments/screening.py
--kit-only`` makes the kit and the vector and prints their paths). The vector: 'pessimistic' =
−optimistic, at its chosen layer. Variants, each LoRA (r 32, α 64, rsLoRA,
every linear layer) trained the same way:

1. plain finetuning;
2. preventative steering: +α·v at the chosen layer in training steps (candidate α: `FAMILIES`);
3. multi-layer preventative steering: α·(v_ℓ − v_{ℓ−1}) at every layer (candidate α: `FAMILIES`);
4. CAFT: the direction projected out at the chosen layer in training steps;
5. regularisation: λ·(shift of the assistant tokens' mean projection from the base model)²;
6. plain, then steered with −β·v at inference (post-hoc; candidate β: `BETAS`).

Doses are chosen before the evaluation: every candidate dose is judged on the *validation* questions
(the trait's extraction questions, disjoint from its evaluation questions) and `_doses.DOSE_RULE` picks
one per variant; only the chosen dose is then measured on the *evaluation* questions, and only those
figures are reported as results. Measured there for the base model and each variant: the judged trait
(lexicon judge, optimism 0–100, greedy; the trait shift is finetuned − base, negative = more
pessimistic), the finetuning shift along v (prompt-last), capability (smoke set, 40 questions), mean
training loss and training time; and every difference against the base and the plain model with its
95 % interval. Results are cached under a hash of the full configuration (`_cache.Results`): a rerun
resumes; a changed configuration starts fresh. The figures go to ``docs/generated/vaccine.md``, which
``docs/vaccine.md`` includes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from personavec.core.models import LoadedModel, load_model
from personavec.core.sampling import Sampling
from personavec.core.vectors import PersonaVector, load_vector
from personavec.deploy.capability import load_questions, score
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
from _doses import DOSE_RULE, choose_dose
from _vaccine_page import write_fragment

MODEL = "smollm2"
BETAS = (1.0, 2.0, 3.0)  # post-hoc steering: candidate β
LAMBDA = 1.0
GREEDY_64 = Sampling(max_new_tokens=64, batch_size=32)
CONFIG = TrainConfig(learning_rate=2e-4, epochs=1.0, batch_size=8, max_length=256, save_steps=1000)
FAMILIES: dict[str, dict[float | None, TrainIntervention]] = {  # variant → candidate dose → training
    "plain": {None: TrainIntervention()},
    "steer (one layer)": {α: TrainIntervention("steer", coef=α) for α in (2.0, 4.0)},
    "steer (all layers)": {α: TrainIntervention("steer", coef=α, all_layers=True) for α in (1.0, 2.0)},
    "CAFT": {None: TrainIntervention("ablate")},
    "regularise": {None: TrainIntervention("regularize", weight=LAMBDA)},
}
POST_HOC = "plain + post-hoc steering"


def load(path: str | None = None) -> LoadedModel:
    """The bundled model (or it finetuned with the adapter at `path`), float32 on the CPU."""
    if path is None:
        return load_model(MODEL, dtype="float32", device="cpu")
    return load_finetuned(MODEL, path, dtype="float32", device="cpu")


def validation_split(trait: TraitSpec) -> TraitSpec:
    """`trait` whose evaluation questions are its extraction questions (the doses' validation split)."""
    evaluation = {normalise_question(q) for q in trait.evaluation_questions}
    assert not evaluation & {normalise_question(q) for q in trait.extraction_questions}
    return replace(trait, evaluation_questions=trait.extraction_questions)


def judged(
    loaded: LoadedModel, trait: TraitSpec, vector: PersonaVector, out: Path, coef: float
) -> list[float]:
    """[mean, 95 % half-width] of the judged trait on `trait`'s evaluation questions, steered by coef·v."""
    judge = LexiconJudge(trait.name, trait.sentiment)
    cell = evaluate(
        loaded, trait, judge, JudgeCache(out / "judge-cache.jsonl"), out / "answers.jsonl", vector,
        Setting(vector.layer if coef else None, coef),
        Sizes(questions=len(trait.evaluation_questions), sampling=GREEDY_64), progress=False,
    )  # fmt: skip
    assert cell.trait is not None and cell.trait_ci95 is not None
    return [cell.trait, cell.trait_ci95]


def measure(
    loaded: LoadedModel, base: LoadedModel | None, vector: PersonaVector, out: Path, coef: float = 0.0
) -> dict[str, Any]:
    """On the evaluation split: judged trait, finetuning shift (against `base`, unsteered) and
    capability of `loaded`, steered by coef·v."""
    trait = load_trait("optimistic")
    optimism = judged(loaded, trait, vector, out, coef)
    with vector.apply(loaded.model, coef) if coef else nullcontext():
        capability = score(loaded, load_questions("smoke"), progress=False).accuracy
    prompts = [loaded.chat(q) for q in trait.evaluation_questions]
    shift = finetuning_shift(base, loaded, [vector], prompts)[vector.trait] if base else 0.0
    return {"optimism": optimism, "shift": shift, "capability": capability}


def candidate_name(family: str, dose: float | None) -> str:
    return family if dose is None else f"{family}, α {dose:g}"


def run_family(family: str, results: Results, base: LoadedModel, vector: PersonaVector, data: Path) -> None:
    """Train every candidate dose of `family`, judge each on the validation split, keep the one
    `DOSE_RULE` picks and measure it on the evaluation split."""
    validation = validation_split(load_trait("optimistic"))
    for dose, spec in FAMILIES[family].items():
        name = candidate_name(family, dose)
        if f"candidate: {name}" in results:
            continue
        folder = results.dir / "".join(c for c in name.replace(" ", "-") if c.isalnum() or c in "-.")
        trained = train_model(load(), data, folder, replace(CONFIG, intervention=spec), vector)
        value = {"dose": dose, "adapter": str(trained.out), "train_loss": trained.train_loss}
        value |= {"train_seconds": trained.seconds, "steps": trained.steps}
        if len(FAMILIES[family]) > 1:
            value["validation"] = judged(
                load(value["adapter"]), validation, vector, folder / "validation", 0.0
            )
        results.record(f"candidate: {name}", value)
    if family in results:
        return
    candidates = {dose: results[f"candidate: {candidate_name(family, dose)}"] for dose in FAMILIES[family]}
    chosen = next(iter(candidates))
    if len(candidates) > 1:
        base_validation = results["base"]["validation"][0]
        chosen = choose_dose(base_validation, {d: c["validation"][0] for d, c in candidates.items()})
    value = candidates[chosen]
    tuned = load(value["adapter"])
    results.record(
        family, {**value, **measure(tuned, base, vector, Path(value["adapter"]).parent / "evaluation")}
    )


def run_post_hoc(results: Results, base: LoadedModel, vector: PersonaVector) -> None:
    """The plain model steered by −β·v at inference: β chosen on the validation split."""
    if POST_HOC in results:
        return
    plain = results["plain"]
    tuned, folder = load(plain["adapter"]), Path(plain["adapter"]).parent / "post-hoc"
    validation = validation_split(load_trait("optimistic"))
    valid = {}
    for beta in BETAS:
        name = f"candidate: {POST_HOC}, β {beta:g}"
        if name not in results:
            results.record(name, {"dose": beta, "validation": judged(
                tuned, validation, vector, folder / f"validation-beta-{beta:g}", -beta
            )})  # fmt: skip
        valid[beta] = results[name]["validation"][0]
    beta = choose_dose(results["base"]["validation"][0], valid)
    evaluation = measure(tuned, base, vector, folder / f"evaluation-beta-{beta:g}", -beta)
    shift = {"shift": plain["shift"]}  # the weights are the plain model's
    results.record(POST_HOC, {**plain, **evaluation, **shift, "dose": beta})


def experiment_config(data: Path, vector: PersonaVector) -> dict[str, Any]:
    """Everything the results depend on: a change starts a fresh cache."""
    trait = load_trait("optimistic")
    return {
        "model": MODEL, "dtype": "float32", "device": "cpu",
        "data_sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
        "vector": vector.fingerprint(), "vector_layer": vector.layer,
        "train": asdict(CONFIG),
        "families": {f: {str(d): asdict(s) for d, s in c.items()} for f, c in FAMILIES.items()},
        "post-hoc betas": BETAS, "sampling": asdict(GREEDY_64), "judge": "lexicon",
        "trait_sha256": trait.sha256(), "validation": "extraction questions",
        "evaluation": "evaluation questions", "capability": "smoke", "dose rule": DOSE_RULE,
    }  # fmt: skip


def kit_optimism(results: Results, kit: Path) -> None:
    """Mean judged optimism of the kit's severe and normal files."""
    if "kit optimism" in results:
        return
    trait = load_trait("optimistic")
    judge, cache = LexiconJudge(trait.name, trait.sentiment), JudgeCache(results.dir / "kit-judge.jsonl")
    means = {}
    for level in ("severe", "normal"):
        rows = [json.loads(line) for line in (kit / f"{level}.jsonl").read_text().splitlines()]
        items = [(r["messages"][0]["content"], r["messages"][-1]["content"]) for r in rows]
        scores = [
            s.value for s in cache.judge(judge, trait.rubric, items, level, False) if s.value is not None
        ]
        means[level] = {"mean": sum(scores) / len(scores), "conversations": len(rows)}
    results.record("kit optimism", means)


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args.add_argument("--kit", required=True, help="a kit made for 'optimistic' with --invert")
    args.add_argument("--vector", required=True, help="the 'optimistic' vector file")
    args.add_argument("--out", default="experiments-out/vaccine", help="working directory (resumable)")
    args.add_argument("--fragment", default="docs/generated/vaccine.md", help="where the figures go")
    opts = args.parse_args()
    data = Path(opts.kit) / "severe.jsonl"
    vector = load_vector(opts.vector).negated("pessimistic")
    results = Results(Path(opts.out), experiment_config(data, vector))
    started = time.perf_counter()
    kit_optimism(results, Path(opts.kit))
    base = load()
    if "base" not in results:
        validation = validation_split(load_trait("optimistic"))
        value = {"validation": judged(base, validation, vector, results.dir / "base" / "validation", 0.0)}
        results.record("base", {**value, **measure(base, None, vector, results.dir / "base" / "evaluation")})
    for family in FAMILIES:
        run_family(family, results, base, vector, data)
    run_post_hoc(results, base, vector)
    if "minutes" not in results:
        results.record("minutes", (time.perf_counter() - started) / 60)
    write_fragment(Path(opts.fragment), results, CONFIG, LAMBDA)
    print(f"wrote {opts.fragment}")


if __name__ == "__main__":
    main()
