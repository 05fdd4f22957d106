"""Finetuning shift: how far finetuning moved a model's persona along persona vectors (the Method page of
the docs, step 10).

    shift = mean over prompts of a_ft(x) − mean over prompts of a_base(x), projected onto v̂

with a the prompt-last activation at the vector's layer, over a trait's evaluation questions (or any
prompts). The finetuned model is a LoRA adapter directory (applied to the base model through PEFT)
or a full model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from personavec.core.models import LoadedModel, is_adapter, load_finetuned, load_model
from personavec.core.sampling import Sampling
from personavec.core.vectors import PersonaVector
from personavec.deploy.monitor import project
from personavec.errors import ConfigError
from personavec.judges.base import Judge
from personavec.pipeline.config import Sizes
from personavec.runs.preflight import preflight
from personavec.traits.spec import TraitSpec


def finetuning_shift(
    base: LoadedModel,
    tuned: LoadedModel,
    vectors: Sequence[PersonaVector],
    prompts: Sequence[str],
    layer: int | None = None,
) -> dict[str, float]:
    """Per trait, the projection of (mean prompt-last activation of `tuned` − that of `base`) onto v̂.

    `prompts` are chat-formatted. A projection is linear, so this is the difference of the mean
    projections, which is how it is computed.
    """
    before = mean_projections(base, vectors, prompts, layer)
    after = mean_projections(tuned, vectors, prompts, layer)
    return {v.trait: float(d) for v, d in zip(vectors, after - before, strict=True)}


def mean_projections(
    loaded: LoadedModel, vectors: Sequence[PersonaVector], prompts: Sequence[str], layer: int | None = None
) -> Tensor:
    """Mean prompt-last projection of `prompts` onto each vector ([vectors], float64)."""
    return (
        project(loaded, vectors, prompts, pooling="prompt-last", layer=layer, progress=False).double().mean(0)
    )


@dataclass(frozen=True)
class ShiftResult:
    """The finetuning shift per trait over `questions` evaluation questions of `trait`, and with a judge
    the finetuned model's judged trait score (± 95 % interval) and coherence."""

    trait: str
    questions: int
    shift: dict[str, float]
    judged: dict[str, float | None] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_shift(
    base_ref: str,
    finetuned: str | Path,
    vectors: Sequence[PersonaVector],
    trait: TraitSpec,
    layer: int | None = None,
    dtype: str = "auto",
    device: str = "auto",
    judge: Judge | None = None,
    out: str | Path | None = None,
    sampling: Sampling = Sizes().sampling,
) -> ShiftResult:
    """What ``personavec shift`` does: load the base model `base_ref`, read its mean prompt-last
    projections on `trait`'s evaluation questions, then the finetuned model's (an adapter goes onto the
    loaded base: no second copy), and return the difference; with a `judge`, also judge the finetuned
    model's answers, generated as `sampling` says (answers and judgements go to `out`, resumable)."""
    if judge is not None and out is None:
        raise ConfigError("judge needs out (where the answers and judgements go)", ("judge", "out"))
    preflight(judge=judge, out=out, vectors=vectors, model=base_ref)
    base = load_model(base_ref, dtype=dtype, device=device)
    prompts = [base.chat(q) for q in trait.evaluation_questions]
    before = mean_projections(base, vectors, prompts, layer)
    onto = base if is_adapter(finetuned) else None  # a full model replaces the base
    del base
    tuned = load_finetuned(base_ref, finetuned, dtype, device, base=onto)
    after = mean_projections(tuned, vectors, prompts, layer)
    shift = {v.trait: float(d) for v, d in zip(vectors, after - before, strict=True)}
    judged = None
    if judge is not None and out is not None:
        from personavec.pipeline.evaluate import evaluate_run

        cell = evaluate_run(tuned, trait, judge, out, Sizes(sampling=sampling))
        judged = {"trait": cell.trait, "trait_ci95": cell.trait_ci95, "coherence": cell.coherence}
    return ShiftResult(trait.name, len(prompts), shift, judged)
