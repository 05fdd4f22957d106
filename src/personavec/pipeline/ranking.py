"""Where to look first: layers ranked without a judge, by how well half a run's answers predict the rest.

The extraction questions are split in two folds (even and odd question ids). For each fold and every
layer, the vector is rebuilt from that fold's kept answers as extraction builds it (mean eliciting
minus mean suppressing response-avg activation, each answer after its system prompt and question).
The other fold's kept answers are pooled with **only their question in context** (no system prompt,
as `personavec.pipeline.separation` does, so only the answers' own content can separate) and projected
on it; a layer's score is the AUROC of the eliciting answers over the suppressing ones, averaged over
the two folds. It costs two forward passes over the kept answers: no generation, no judge. The judged
layer sweep can then spend its answers on the K best layers (``--layers top:K``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from personavec.core.activations import iter_pooled
from personavec.core.backend import Backend, user_turn
from personavec.errors import PersonavecError
from personavec.runs.results import FOLDS, LayerRanking
from personavec.runs.stats import auroc


def rank_layers(
    backend: Backend,
    rows: Sequence[dict[str, Any]],
    kept: Sequence[int],
    token_budget: int = 16384,
    progress: bool = True,
) -> LayerRanking:
    """Rank layers 1..L by the two-fold held-out AUROC of the extraction run's kept answers (`rows`
    are its generation rows, `kept` the indices the filter kept; see the module docstring)."""
    gap = fold_gap(rows, kept)
    if gap is not None:
        raise PersonavecError(gap, ("samples", "questions"))
    answers = [rows[i] for i in kept]
    fold = [int(r["question_id"]) % FOLDS for r in answers]
    positive = torch.tensor([r["polarity"] == "pos" for r in answers])
    layers = tuple(range(1, backend.identity.n_layers + 1))
    texts = [r["answer"] for r in answers]
    full = [user_turn(backend, r["question"], r["system"]) for r in answers]
    shape = (FOLDS, 2, len(layers), backend.identity.hidden_size)
    sums, counts = torch.zeros(shape, dtype=torch.float64), torch.zeros(FOLDS, 2)
    for indices, pooled in iter_pooled(backend, full, texts, token_budget, progress=progress, layers=layers):
        acts = pooled.tensor("response-avg").double()
        for j, act in zip(indices, acts, strict=True):
            side = 0 if positive[j] else 1
            sums[fold[j], side] += act
            counts[fold[j], side] += 1
    means = sums / counts[..., None, None].double()
    vectors = means[:, 0] - means[:, 1]  # [folds, layers, hidden]: each fold's vector
    alone = [user_turn(backend, r["question"]) for r in answers]
    projections = torch.empty(len(answers), len(layers), dtype=torch.float64)
    for indices, pooled in iter_pooled(backend, alone, texts, token_budget, progress=progress, layers=layers):
        acts = pooled.tensor("response-avg").double()
        for j, act in zip(indices, acts, strict=True):
            other = vectors[(fold[j] + 1) % FOLDS]  # the vector of the fold this answer is not in
            projections[j] = (act * other).sum(-1)
    per_fold = []
    for f in range(FOLDS):
        test = torch.tensor(fold) == f
        pos, neg = projections[test & positive].T.tolist(), projections[test & ~positive].T.tolist()
        per_fold.append(tuple(_auroc(p, n) for p, n in zip(pos, neg, strict=True)))
    mean = tuple(sum(f[col] for f in per_fold) / FOLDS for col in range(len(layers)))
    return LayerRanking(layers, mean, tuple(per_fold), len(answers))


def fold_gap(rows: Sequence[dict[str, Any]], kept: Sequence[int]) -> str | None:
    """Why the kept answers cannot be ranked (a fold without eliciting or suppressing ones), else None."""
    for f in range(FOLDS):
        sides = [rows[i]["polarity"] == "pos" for i in kept if int(rows[i]["question_id"]) % FOLDS == f]
        if sum(sides) == 0 or sum(sides) == len(sides):
            return (
                f"ranking layers needs kept answers of both sides in each fold of the extraction questions; "
                f"fold {f} (question ids ≡ {f} mod {FOLDS}) has {sum(sides)} eliciting and "
                f"{len(sides) - sum(sides)} suppressing: raise samples or questions"
            )
    return None


def _auroc(positives: list[float], negatives: list[float]) -> float:
    """`personavec.runs.stats.auroc` of one layer's scores; `fold_gap` ensures both sides are there."""
    value = auroc(positives, negatives)
    assert value is not None
    return value
