"""The vaccine experiment on the bundled model: does preventative steering keep data that teaches
pessimism from making the model pessimistic?

    python experiments/vaccine.py --kit KIT_DIR --vector RUN/optimistic.safetensors   # ~25 min, 2 cores

Training data: the kit's ``severe.jsonl`` for 'optimistic' inverted (every answer given under one of the
trait's pessimistic system prompts, stored without it; `experiments/screening.py` makes the kit). The
vector: 'pessimistic' = −optimistic, at its chosen layer. Variants, each LoRA (r 32, α 64, rsLoRA,
every linear layer) trained the same way:

1. plain finetuning;
2. preventative steering: +α·v at the chosen layer in training steps (α 4 and 2);
3. multi-layer preventative steering: α·(v_ℓ − v_{ℓ−1}) at every layer (α 2 and 1);
4. CAFT: the direction projected out at the chosen layer in training steps;
5. regularisation: λ·(shift of the assistant tokens' mean projection from the base model)²;
6. plain, then steered with −β·v at inference (post-hoc).

Measured for the base model and each variant: the judged trait (lexicon judge, optimism 0–100, on the
20 evaluation questions, greedy; the trait shift is finetuned − base, negative = more pessimistic), the
finetuning shift along v (prompt-last, evaluation questions), capability (smoke set, 40 questions),
mean training loss and training time. Rerunning resumes; the table goes to docs/vaccine.md.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

from personavec.core.models import LoadedModel, load_model
from personavec.core.sampling import Sampling
from personavec.core.vectors import PersonaVector, load_vector
from personavec.deploy.capability import load_questions, score
from personavec.judges.cache import JudgeCache
from personavec.judges.lexicon import LexiconJudge
from personavec.pipeline.config import Setting, Sizes
from personavec.pipeline.evaluate import evaluate
from personavec.training.shift import finetuning_shift, load_finetuned
from personavec.training.train import TrainConfig, TrainIntervention, train
from personavec.traits import load_trait

BETA, LAMBDA = 2.0, 1.0
GREEDY_64 = Sampling(max_new_tokens=64, batch_size=32)
CONFIG = TrainConfig(learning_rate=2e-4, epochs=1.0, batch_size=8, max_length=256, save_steps=1000)
VARIANTS = {
    "plain": TrainIntervention(),
    "steer (one layer, α 4)": TrainIntervention("steer", coef=4.0),
    "steer (one layer, α 2)": TrainIntervention("steer", coef=2.0),
    "steer (all layers, α 2)": TrainIntervention("steer", coef=2.0, all_layers=True),
    "steer (all layers, α 1)": TrainIntervention("steer", coef=1.0, all_layers=True),
    "CAFT": TrainIntervention("ablate"),
    "regularise": TrainIntervention("regularize", weight=LAMBDA),
}


def measure(
    loaded: LoadedModel, base: LoadedModel | None, vector: PersonaVector, out: Path, coef: float = 0.0
) -> dict[str, Any]:
    """Judged trait, finetuning shift (against `base`) and capability of `loaded`, steered by coef·v."""
    trait = load_trait("optimistic")
    judge = LexiconJudge(trait.name, trait.sentiment)
    cell = evaluate(
        loaded, trait, judge, JudgeCache(out / "judge-cache.jsonl"), out / "answers.jsonl", vector,
        Setting(vector.layer if coef else None, coef), Sizes(sampling=GREEDY_64), progress=False,
    )  # fmt: skip
    with vector.apply(loaded.model, coef) if coef else nullcontext():
        capability = score(loaded, load_questions("smoke"), progress=False).accuracy
    prompts = [loaded.chat(q) for q in trait.evaluation_questions]
    shift = finetuning_shift(base, loaded, [vector], prompts)[vector.trait] if base else 0.0
    return {
        "optimism": cell.trait,
        "optimism_ci95": cell.trait_ci95,
        "shift": shift,
        "capability": capability,
    }


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args.add_argument("--kit", required=True, help="a kit made for 'optimistic' with --invert")
    args.add_argument("--vector", required=True, help="the 'optimistic' vector file")
    args.add_argument("--out", default="experiments-out/vaccine", help="working directory (resumable)")
    args.add_argument("--table", default="docs/vaccine.md", help="where the result table goes")
    opts = args.parse_args()
    out, data = Path(opts.out), Path(opts.kit) / "severe.jsonl"
    vector = load_vector(opts.vector).negated("pessimistic")
    results_path = out / "results.json"
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.exists() else {}

    def record(name: str, value: dict[str, Any]) -> None:
        results[name] = value
        out.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=2) + "\n")
        print(name, json.dumps(value), flush=True)

    base = load_model("smollm2", dtype="float32", device="cpu")
    if "base" not in results:
        record("base", measure(base, None, vector, out / "base"))
    for name, spec in VARIANTS.items():
        if name in results:
            continue
        folder = out / "".join(c for c in name.replace(" ", "-") if c.isalnum() or c in "-.")
        started = time.perf_counter()
        trained = train(
            load_model("smollm2", dtype="float32", device="cpu"),
            data,
            folder,
            replace(CONFIG, intervention=spec),
            vector,
        )
        seconds = time.perf_counter() - started
        tuned = load_finetuned("smollm2", trained.out, dtype="float32", device="cpu")
        value = measure(tuned, base, vector, folder)
        record(
            name,
            {**value, "train_loss": trained.train_loss, "train_seconds": seconds, "steps": trained.steps},
        )
        if name == "plain":
            post = measure(tuned, base, vector, folder / "post-hoc", coef=-BETA)
            record(
                "plain + post-hoc steering",
                {**post, "train_loss": trained.train_loss, "train_seconds": seconds},
            )
    results["conversations"] = len(data.read_text().splitlines())
    write_table(Path(opts.table), results)


def write_table(path: Path, results: dict[str, Any]) -> None:
    base = results["base"]
    plain_drop = results["plain"]["optimism"] - base["optimism"]
    lines = [
        "# Vaccine experiment (bundled SmolLM2-135M-Instruct, CPU)",
        "",
        "Made by `python experiments/vaccine.py`; see its docstring for the set-up. Training data: the",
        f"kit's severe set teaching pessimism ({results.pop('conversations')} conversations). LoRA r 32, "
        f"α 64, rsLoRA, all linear layers, lr {CONFIG.learning_rate:g},",
        f"{CONFIG.epochs:g} epoch, batch {CONFIG.batch_size}. Vector: −optimistic at its chosen layer. "
        f"λ = {LAMBDA:g}, post-hoc β = {BETA:g}.",
        "Optimism: lexicon judge (VADER, an offline proxy), 0–100, 20 evaluation questions, greedy;",
        "coherence is not measured by this judge. Capability: the 40-question smoke set (chance 25 %; one",
        "question is 2.5 points). Post-hoc steering does not change the weights: its finetuning shift is",
        "the plain model's. The regularised run's training loss includes its penalty.",
        "",
        "| variant | optimism | trait shift vs base | shift kept vs plain | finetuning shift along v "
        "| capability | mean training loss | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = ["base", "plain", "plain + post-hoc steering", *list(VARIANTS)[1:]]
    for name in sorted(results, key=lambda n: order.index(n) if n in order else len(order)):
        r = results[name]
        drop = r["optimism"] - base["optimism"]
        kept = f"{100 * drop / plain_drop:.0f} %" if name not in ("base", "plain") and plain_drop else ""
        loss = f"{r['train_loss']:.3f}" if r.get("train_loss") is not None else ""
        seconds = f"{r['train_seconds']:.0f}" if r.get("train_seconds") is not None else ""
        lines.append(
            f"| {name} | {r['optimism']:.1f} ± {r['optimism_ci95']:.1f} | {drop:+.1f} | {kept} | "
            f"{r['shift']:+.3f} | {100 * r['capability']:.1f} % | {loss} | {seconds} |"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
