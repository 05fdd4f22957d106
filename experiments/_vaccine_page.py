"""The vaccine experiment's figures as a markdown fragment (``docs/generated/vaccine.md``), written
from its cached results: the set-up, the doses chosen on the validation split, the evaluation table,
and every difference against the base and the plain model with its 95 % interval."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from personavec._internal.files import atomic_path
from personavec.training.train import TrainConfig

from _cache import Results
from _doses import DOSE_RULE, difference

ORDER = ("base", "plain", "plain + post-hoc steering", "steer (one layer)", "steer (all layers)", "CAFT",
         "regularise")  # fmt: skip


def _dose(value: dict[str, Any], symbol: str = "α") -> str:
    return "" if value.get("dose") is None else f"{symbol} {value['dose']:g}"


def _setup(results: Results, config: TrainConfig, weight: float) -> list[str]:
    kit = results["kit optimism"]
    return [
        f"<!-- written by experiments/vaccine.py from its results (configuration {results.key}); "
        "rerun the script instead of editing -->",
        "",
        f"Training data: the kit's severe set teaching pessimism ({kit['severe']['conversations']} "
        f"conversations; mean judged optimism {kit['severe']['mean']:.1f}, against "
        f"{kit['normal']['mean']:.1f} for the kit's normal set). LoRA r {config.rank}, α {config.alpha}"
        f"{', rsLoRA' if config.rslora else ''}, every linear layer, lr {config.learning_rate:g}, "
        f"{config.epochs:g} epoch, batch "
        f"{config.batch_size}. Vector: −optimistic at its chosen layer. Regularisation λ = {weight:g}.",
        "",
        "Doses: each candidate judged on the validation questions (the trait's "
        f"extraction questions, disjoint from its evaluation questions); the rule: {DOSE_RULE}. "
        "Every other figure is measured on the evaluation questions only, with the chosen dose.",
        "",
        f"Wall time of the invocation that finished the run: {results['minutes']:.0f} min on 2 CPU cores.",
        "",
    ]


def _doses(results: Results) -> list[str]:
    base = results["base"]["validation"]
    lines = [
        "### Doses chosen on the validation split",
        "",
        f"Base model on the validation questions: {base[0]:.1f} ± {base[1]:.1f}.",
        "",
        "| variant | candidate dose | validation optimism | chosen |",
        "|---|---|---|---|",
    ]
    for name, value in results.values.items():
        if name.startswith("candidate: ") and "validation" in value:
            family = name.removeprefix("candidate: ").rsplit(",", 1)[0]
            symbol = "β" if "post-hoc" in family else "α"
            chosen = "✓" if results[family]["dose"] == value["dose"] else ""
            optimism = value["validation"]
            lines.append(
                f"| {family} | {_dose(value, symbol)} | {optimism[0]:.1f} ± {optimism[1]:.1f} | {chosen} |"
            )
    return [*lines, ""]


def _evaluation(results: Results) -> list[str]:
    base, plain = results["base"], results["plain"]
    plain_drop = plain["optimism"][0] - base["optimism"][0]
    lines = [
        "### Evaluation split",
        "",
        "| variant | dose | optimism | trait shift vs base | shift kept vs plain | finetuning shift along v "
        "| capability | mean training loss | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ORDER:
        r = results[name]
        drop = r["optimism"][0] - base["optimism"][0]
        kept = f"{100 * drop / plain_drop:.0f} %" if name not in ("base", "plain") and plain_drop else ""
        loss = f"{r['train_loss']:.3f}" if r.get("train_loss") is not None else ""
        seconds = f"{r['train_seconds']:.0f}" if r.get("train_seconds") is not None else ""
        dose = _dose(r, "β" if "post-hoc" in name else "α")
        lines.append(
            f"| {name} | {dose} | {r['optimism'][0]:.1f} ± {r['optimism'][1]:.1f} | {drop:+.1f} | {kept} | "
            f"{r['shift']:+.3f} | {100 * r['capability']:.1f} % | {loss} | {seconds} |"
        )
    return [*lines, ""]


def _differences(results: Results) -> list[str]:
    lines = ["### Differences in judged optimism (evaluation split, 95 % intervals)", ""]
    for name in ORDER[1:]:
        against = ("base",) if name == "plain" else ("base", "plain")
        parts = [
            f"vs {other}: {difference(results[name]['optimism'], results[other]['optimism']).text()}"
            for other in against
        ]
        lines.append(f"- {name}: " + "; ".join(parts))
    return [*lines, ""]


def write_fragment(path: Path, results: Results, config: TrainConfig, weight: float) -> None:
    """Write the fragment atomically (the page that includes it keeps its hand-written analysis)."""
    lines = _setup(results, config, weight) + _doses(results) + _evaluation(results) + _differences(results)
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))
