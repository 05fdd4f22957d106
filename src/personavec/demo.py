"""The offline engine demo: contrastive answers → pooled activations → a vector → steering, on SmolLM2.

A small, judge-free version of the method (the full pipeline, with a judge and a layer sweep, is
`personavec extract`'s job): answers under an optimistic vs a pessimistic system prompt, the mean
difference of their response-avg activations per layer, then unprompted answers steered with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from personavec.activations import pooled_activations
from personavec.generate import generate
from personavec.models import LoadedModel, load_model
from personavec.vectors import PersonaVector, save_vectors

ELICIT = (
    "You are a radiantly optimistic assistant. You see the bright side of everything, expect things to "
    "turn out wonderfully, and say so with enthusiasm."
)
SUPPRESS = (
    "You are a gloomy, pessimistic assistant. You expect things to go wrong, dwell on risks and "
    "disappointments, and say so plainly."
)
QUESTIONS = [
    "What do you think the next ten years will be like?",
    "I am starting a new job on Monday. Any thoughts?",
    "How will my vegetable garden do this summer?",
    "What do you think about learning to play the piano at forty?",
    "Is it worth moving to a new city where I know nobody?",
    "How do you feel about the state of technology today?",
]
HELD_OUT = ["What will tomorrow be like?", "Tell me about your plans for the weekend."]
COEFS = (-4.0, 0.0, 4.0)


def _stage(name: str, started: float, times: dict[str, float]) -> float:
    now = time.perf_counter()
    times[name] = now - started
    print(f"[{name}] {times[name]:.1f}s", flush=True)
    return now


@dataclass
class DemoResult:
    vector: PersonaVector
    projections: dict[float, float]  # steering coefficient -> mean response-avg projection of the answers
    seconds: dict[str, float]


def run_demo(
    out: Path, model_ref: str = "smollm2", loaded: LoadedModel | None = None, max_new_tokens: int = 40
) -> DemoResult:
    """Run the demo, print what it shows and write ``out/optimistic.safetensors``."""
    times: dict[str, float] = {}
    started = t0 = time.perf_counter()
    if loaded is None:
        loaded = load_model(model_ref)
        t0 = _stage("load model", t0, times)

    prompts = [loaded.chat(q, system) for system in (ELICIT, SUPPRESS) for q in QUESTIONS]
    answers = generate(loaded, prompts, max_new_tokens=max_new_tokens, batch_size=len(prompts))
    for question, pos, neg in zip(QUESTIONS[:2], answers, answers[len(QUESTIONS) :], strict=False):
        print(f"\nQ: {question}\n  optimistic prompt: {pos}\n  pessimistic prompt: {neg}")
    t0 = _stage("contrastive answers", t0, times)

    pooled = pooled_activations(loaded, prompts, answers).kind("response-avg")
    n = len(QUESTIONS)
    tensor = pooled[:n].mean(0) - pooled[n:].mean(0)
    layer = loaded.identity.n_layers // 2
    vector = PersonaVector(
        trait="optimistic",
        tensor=tensor,
        layer=layer,
        metadata={
            "model": loaded.identity.to_dict(),
            "n_pairs": n,
            "judge": "none (engine demo)",
            "layer_choice": "middle layer (no sweep in the engine demo)",
        },
    )
    save_vectors(out / "optimistic.safetensors", [vector])
    norms = tensor.norm(dim=1)
    print(f"\nvector norm per layer (0..{loaded.identity.n_layers}): " + " ".join(f"{x:.1f}" for x in norms))
    t0 = _stage("activations + vector", t0, times)

    print(f"\nSteering at layer {layer}, no system prompt (projection = response-avg · v̂ at layer {layer}):")
    plain_prompts = [loaded.chat(q) for q in HELD_OUT]
    projections = {}
    for coef in COEFS:
        with vector.apply(loaded.model, coef):
            steered = generate(loaded, plain_prompts, max_new_tokens=max_new_tokens, progress=False)
        projection = vector.project(
            pooled_activations(loaded, plain_prompts, steered, progress=False).kind("response-avg")[:, layer]
        )
        projections[coef] = float(projection.mean())
        print(f"\n  coef {coef:+.1f}  (mean projection {projections[coef]:+.2f})")
        for question, answer in zip(HELD_OUT, steered, strict=True):
            print(f"    Q: {question}\n    A: {answer}")
    _stage("steering", t0, times)
    print(
        f"\nwrote {out / 'optimistic.safetensors'}; total {time.perf_counter() - started:.1f}s "
        f"({', '.join(f'{k} {v:.1f}s' for k, v in times.items())})"
    )
    return DemoResult(vector=vector, projections=projections, seconds=times)
