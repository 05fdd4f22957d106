"""Held-out separation: does a vector tell the trait's answers from the opposite ones by the answers alone?

Answers are generated under each instruction pair's eliciting and suppressing system prompt and kept
by the extraction filter's trait rule (eliciting and judged ≥ threshold, or suppressing and judged
below it). Each kept answer is then pooled with **only its question in context** (no system prompt),
projected on the vector at its layer, and the AUROC of positives over negatives is the figure. With the
system prompt out of context a fixed answer projects the same under either side, so only the answers'
own content can separate; the questions should be ones the extraction and the layer sweep never used.
"""

from __future__ import annotations

from collections.abc import Sequence

from personavec.core.backend import Backend, as_backend, user_turn
from personavec.core.generate import generate
from personavec.core.models import LoadedModel
from personavec.core.sampling import Sampling
from personavec.core.vectors import PersonaVector
from personavec.judges import Judge
from personavec.runs.results import Answer, Separation
from personavec.traits.spec import TraitSpec


def held_out_answers(
    model: Backend | LoadedModel,
    trait: TraitSpec,
    judge: Judge,
    questions: Sequence[str],
    pairs: Sequence[dict[str, str]],
    sampling: Sampling,
    threshold: float = 50.0,
) -> list[Answer]:
    """Answers to `questions` under each of `pairs`' system prompts, kept by the filter's trait rule."""
    asked = [(q, pair[side], side == "pos") for pair in pairs for q in questions for side in ("pos", "neg")]
    backend = as_backend(model)
    texts = generate(backend, [user_turn(backend, q, s) for q, s, _ in asked], sampling, progress=False)
    scores = dict(judge.score(trait.rubric, [(q, t) for (q, _, _), t in zip(asked, texts, strict=True)]))
    return [
        Answer(q, text, positive)
        for i, ((q, _, positive), text) in enumerate(zip(asked, texts, strict=True))
        if (value := scores[i].value) is not None and positive == (value >= threshold)
    ]


def separation(model: Backend | LoadedModel, vector: PersonaVector, answers: Sequence[Answer]) -> Separation:
    """Project `answers`, each pooled after a prompt holding only its question, on `vector` at its layer."""
    from personavec.core.activations import pooled_activations  # torch

    layer, backend = vector.resolve_layer(None), as_backend(model)
    pooled = pooled_activations(
        backend, [user_turn(backend, a.question) for a in answers], [a.text for a in answers], progress=False
    )
    projections = vector.project(pooled.tensor(vector.pooling)[:, layer]).tolist()
    return Separation(list(answers), projections, layer)
