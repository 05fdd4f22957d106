"""An extraction run's settings, stages and checks, as a person reads them (from its manifest)."""

from __future__ import annotations

from typing import Any

from personavec.report.html import grid, readable
from personavec.runs.readers import ExtractionRun
from personavec.runs.results import Target

_LABELS = {  # manifest keys (generation and selection) → what they mean
    "samples": "answers per question, instruction pair and side",
    "questions": "extraction questions",
    "instructions": "instruction pairs",
    "max_new_tokens": "new tokens per answer, at most",
    "temperature": "sampling temperature",
    "top_p": "top-p",
    "seed": "seed",
    "batch_size": "generation batch size",
    "trait_threshold": "trait threshold (positive answers ≥, negative <)",
    "coherence_threshold": "coherence threshold (answers ≥)",
    "pairing": "pairing",
    "min_pairs": "fewest kept answers per side",
    "layers": "candidate layers of the layer sweep",
    "coef": "steering coefficient of the layer sweep",
    "sweep_questions": "evaluation questions per sweep layer",
}
_PAIRING = {"paired": "paired (a pair is kept only if both sides pass)", "per-side": "per side"}
_STAGE_FIELDS = {"rows": "answers", "methods": "judged by", "kept_positive": "kept positive"}
_STAGE_FIELDS |= {"kept_negative": "kept negative", "chosen": "chosen layer", "truncated": "truncated"}


def settings_table(manifest: dict[str, Any]) -> str:
    """Judge, generation and selection settings, one labelled row each."""
    judge = manifest["judge"]
    rows: list[tuple[str, Any]] = [
        ("model", manifest["model"]["name"]),
        ("trait", manifest["trait"]),
        ("judge", judge["name"]),
        ("judge measures coherence", readable(judge.get("measures_coherence", "no judge"))),
    ]
    for key, value in {**manifest["generation"], **manifest["selection"]}.items():
        shown = readable(value)
        if key == "layers" and value is None:
            shown = "default (8 over the middle half)"
        elif key == "pairing":
            shown = _PAIRING.get(value, shown)
        elif key == "coherence_threshold" and not judge.get("measures_coherence"):
            shown += " (not applied: the judge measures no coherence)"
        rows.append((_LABELS.get(key, key.replace("_", " ")), shown))
    return grid(["setting", "value"], rows)


def stages_table(manifest: dict[str, Any]) -> str:
    """Each stage done: its seconds and what it produced (the vector norms are plotted, not listed)."""
    rows = []
    for stage, info in manifest["stages"].items():
        found = [
            f"{_STAGE_FIELDS.get(k, k.replace('_', ' '))}: {_value(v)}"
            for k, v in info.items()
            if k not in ("seconds", "norms")
        ]
        seconds = info.get("seconds")  # None: a stage found done on disk, its time unknown
        rows.append((stage, "-" if seconds is None else f"{seconds:.1f}", "; ".join(found)))
    return grid(["stage", "seconds", "result"], rows)


def _value(value: Any) -> str:
    """A stage's figure; counts by reason (``{"reason": 14, ...}``) as ``reason (14), ...``."""
    if isinstance(value, dict):
        return ", ".join(f"{k} ({readable(v)})" for k, v in value.items()) or "none"
    return readable(value)


def extraction_targets(run: ExtractionRun) -> list[Target]:
    """Enough answers kept per side, and steering at the chosen layer moving the judged trait, met or not."""
    targets = []
    stages, selection = run.manifest["stages"], run.manifest["selection"]
    if "filter" in stages:
        kept = min(stages["filter"]["kept_positive"], stages["filter"]["kept_negative"])
        reason = f"the filter kept only {kept} answers on a side; see the dropped counts under Stages"
        met = kept >= selection["min_pairs"]
        goal = f"≥ {selection['min_pairs']}"
        targets.append(Target("answers kept on the scarcer side", kept, goal, met, "" if met else reason))
    sweep = run.sweep()
    if sweep is not None and sweep.baseline.trait is not None:
        chosen = next(c for c in sweep.layers if c.layer == sweep.chosen)
        sign = 1.0 if sweep.coef > 0 else -1.0
        moved = None if chosen.trait is None else sign * (chosen.trait - sweep.baseline.trait)
        reason = (
            f"no candidate layer moved the judged trait past the unsteered {sweep.baseline.trait:.1f} "
            f"(chosen layer {sweep.chosen}: {readable(chosen.trait)}); the vector may not steer this model"
        )
        met = moved is not None and moved > 0
        name = f"judged trait moved by steering at the chosen layer (coef {sweep.coef:+g}), points"
        targets.append(Target(name, moved, "> 0", met, "" if met else reason))
    return targets
