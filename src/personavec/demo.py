"""The offline demo: the whole pipeline for `optimistic` on the bundled SmolLM2, judged by a lexicon.

Contrastive answers → lexicon judge → filter → vectors → layer sweep, then a few evaluation questions
answered at −coef, 0 and +coef at the chosen layer, and ``report.html``. Sized to finish in a few
minutes on 2 CPU cores; the lexicon judge is an offline proxy for an LLM judge, and says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from personavec.extract import ExtractConfig, ExtractResult, extract
from personavec.generate import generate
from personavec.judges.lexicon import LexiconJudge
from personavec.models import LoadedModel, load_model
from personavec.report import Example, write_report
from personavec.traits.spec import load_trait

DEMO_CONFIG = ExtractConfig(
    samples=2,
    max_new_tokens=48,
    temperature=0.7,
    questions=10,
    instructions=5,
    batch_size=32,
    min_pairs=5,
    sweep_questions=8,
    coef=2.0,
)
N_EXAMPLES = 3  # evaluation questions after the sweep's, answered at −coef, 0, +coef


@dataclass
class DemoResult:
    run: ExtractResult
    examples: list[Example]
    seconds: dict[str, float]  # per stage, this invocation (stages done by an earlier one are absent)


def run_demo(
    out: Path,
    model_ref: str = "smollm2",
    loaded: LoadedModel | None = None,
    progress: bool = True,
    force: bool = False,
) -> DemoResult:
    """Run the demo into the run directory `out` (resumable), print what it shows, write the report.

    `force` starts over a directory left by a run with other settings (an older version's demo).
    """
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    if loaded is None:
        loaded = load_model(model_ref)
        seconds["load model"] = time.perf_counter() - started
    trait = load_trait("optimistic")
    judge = LexiconJudge(trait.name, trait.sentiment)
    print(f"judge: {judge.proxy}", flush=True)
    result = extract(loaded, trait, judge, out, DEMO_CONFIG, force=force, progress=progress)
    for stage, info in result.manifest["stages"].items():
        seconds[stage] = info["seconds"]

    t0 = time.perf_counter()
    vector = result.vectors["response-avg"]
    coef = DEMO_CONFIG.coef
    first = DEMO_CONFIG.sweep_questions
    questions = trait.evaluation_questions[first : first + N_EXAMPLES]
    prompts = [loaded.chat(q) for q in questions]
    examples = []
    for c in (-coef, 0.0, coef):
        with vector.apply(loaded.model, c):
            answers = generate(loaded, prompts, DEMO_CONFIG.max_new_tokens, progress=False)
        examples += [Example(q, c, a) for q, a in zip(questions, answers, strict=True)]
    seconds["steered examples"] = time.perf_counter() - t0
    report = write_report(out, examples)
    seconds["total"] = time.perf_counter() - started

    print(f"\nchosen layer {vector.layer}; steering there with coef −{coef:g} / 0 / +{coef:g}:")
    for question in questions:
        print(f"\nQ: {question}")
        for e in examples:
            if e.question == question:
                print(f"  {e.coef:+4.1f}: {e.answer}")
    print(f"\nwrote {result.dir / (trait.name + '.safetensors')} and {report}")
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    return DemoResult(run=result, examples=examples, seconds=seconds)
