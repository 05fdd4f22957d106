"""Thresholds without hand-tuning: a percentile of a reference set's projections, cached on disk.

Prompt-last thresholds come from one batched prefill of the reference prompts; response-average
thresholds from the model's greedy answers to them. The answers are cached per model and reference
(a new vector does not regenerate them), the thresholds per model, vector and settings, so a restart
redoes nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from personavec._internal.files import write_json
from personavec.core.backend import Backend, user_turn
from personavec.core.generate import generate
from personavec.core.models import LoadedModel
from personavec.core.sampling import Sampling
from personavec.deploy.config import STATISTICS, ThresholdCalibration
from personavec.deploy.monitor import Watched, project
from personavec.traits.questions import bundled_questions, read_questions

Thresholds = dict[str, dict[str, float | None]]


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def cache_dir(calibration: ThresholdCalibration) -> Path:
    return Path(calibration.cache_dir or Path.home() / ".cache" / "personavec" / "serve")


def reference_questions(calibration: ThresholdCalibration) -> list[str]:
    """The reference set: `calibration.reference`, or the shipped everyday questions."""
    return read_questions(calibration.reference) if calibration.reference else bundled_questions()


def _answers(
    model: Backend | LoadedModel, prompts: list[str], calibration: ThresholdCalibration, model_key: str
) -> list[str]:
    path = cache_dir(calibration) / f"answers-{_key(model_key, prompts, calibration.max_new_tokens)}.json"
    if path.exists():
        return list(json.loads(path.read_text()))
    sampling = Sampling(max_new_tokens=calibration.max_new_tokens)  # greedy
    answers = generate(model, prompts, sampling, progress=False, desc="reference answers")
    write_json(path, answers)
    return answers


def calibrate_thresholds(
    model: Backend | LoadedModel,
    watched: Sequence[Watched],
    calibration: ThresholdCalibration,
    given: Thresholds,
    model_key: str,
) -> Thresholds:
    """Every threshold `given` lacks, as the `calibration.percentile` of the reference set's projections.

    `model_key` names the model as served (its identity and any adapter), for the caches.
    """
    prompts = [user_turn(model, q) for q in reference_questions(calibration)]
    out: Thresholds = {w.name: dict(given[w.name]) for w in watched}
    settings = (model_key, prompts, calibration.max_new_tokens, calibration.percentile)
    for w in watched:
        if all(out[w.name][s] is not None for s in STATISTICS):
            continue
        path = cache_dir(calibration) / f"thresholds-{_key(settings, w.vector.fingerprint(), w.layer)}.json"
        if path.exists():
            cached = json.loads(path.read_text())
        else:
            answers = _answers(model, prompts, calibration, model_key)
            vector, layer = [w.vector], w.layer
            last = project(model, vector, prompts, pooling="prompt-last", layer=layer, progress=False)[:, 0]
            avg = project(model, vector, prompts, answers, "response-avg", layer, progress=False)[:, 0]
            cached = {
                "prompt_last": float(np.percentile(last.double().numpy(), calibration.percentile)),
                "response_avg": float(np.percentile(avg.double().numpy(), calibration.percentile)),
            }
            write_json(path, cached)
        for statistic in STATISTICS:
            if out[w.name][statistic] is None:
                out[w.name][statistic] = cached[statistic]
    return out
