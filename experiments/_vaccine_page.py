"""The vaccine experiment's figures as a markdown fragment (``docs/generated/vaccine.md``) and its
scatter plot (``vaccine-shift.png`` beside it), written from its cached results: the set-up, the doses
chosen on the validation split, the judged trait and capability of each variant with paired intervals,
the seed-to-seed spread, and the finetuning shift against the judged trait shift."""

from __future__ import annotations

import statistics
from pathlib import Path
from statistics import fmean as mean
from typing import Any

from personavec._internal.files import atomic_path
from personavec.runs.stats import pearson_ci
from personavec.training.train import TrainConfig

from _cache import Results
from _doses import DOSE_RULE, INTERVALS, Difference, difference

FAMILIES = ("plain", "steer (one layer)", "steer (all layers)", "CAFT", "regularise")
POST_HOC = "plain + post-hoc steering"
TARGET = 5.0  # the widest 95 % half-width a paired difference in judged optimism may have


def label(family: str, dose: float | None, seed: int = 0) -> str:
    """The name of the model trained as `family` at `dose` with `seed`."""
    name = family if dose is None else f"{family}, α {dose:g}"
    return name if seed == 0 else f"{name}, seed {seed}"


def variants(results: Results) -> dict[str, dict[str, Any]]:
    """Variant → its record on the evaluation split: base, each family at its chosen dose (seed 0),
    post-hoc steering."""
    out = {"base": results["base"]}
    for family in FAMILIES:
        out[family] = results[f"model: {label(family, results[f'chosen: {family}'])}"]
        if family == "plain":
            out[POST_HOC] = results[POST_HOC]
    return out


def trained(results: Results) -> dict[str, dict[str, Any]]:
    """Every trained model (each level, variant, dose and seed), by name."""
    return {k.removeprefix("model: "): v for k, v in results.values.items() if k.startswith("model: ")}


def _dose(value: dict[str, Any], symbol: str = "α") -> str:
    return "" if value.get("dose") is None else f"{symbol} {value['dose']:g}"


def _setup(results: Results, config: TrainConfig, weight: float) -> list[str]:
    kit, spec = results["kit optimism"], results.config
    evaluation, validation = spec["evaluation"], spec["validation"]
    seconds = sum(v.get("seconds", 0.0) for v in results.values.values() if isinstance(v, dict))
    levels = ", ".join(f"{level} {kit[level]['mean']:.1f}" for level in ("normal", "mild", "severe"))
    return [
        f"<!-- written by experiments/vaccine.py from its results (configuration {results.key}); "
        "rerun the script instead of editing -->",
        "",
        f"Training data: the kit's severe set teaching pessimism ({kit['severe']['conversations']} "
        f"conversations); mean judged optimism of the kit's sets: {levels}. LoRA r {config.rank}, "
        f"α {config.alpha}{', rsLoRA' if config.rslora else ''}, every linear layer, lr "
        f"{config.learning_rate:g}, {config.epochs:g} epoch, batch {config.batch_size}; seeds "
        f"{', '.join(map(str, spec['seeds']))} for {' and '.join(spec['seeded'])}, seed 0 otherwise. "
        f"Vector: −optimistic at its chosen layer. Regularisation λ = {weight:g}.",
        "",
        f"Judged optimism (lexicon judge, 0–100): {evaluation['questions']} evaluation questions × "
        f"{evaluation['samples']} answers at temperature {evaluation['sampling']['temperature']:g} "
        f"({evaluation['sampling']['max_new_tokens']} tokens); {INTERVALS}. Doses: each candidate judged "
        f"on the {validation['questions']} validation questions (the trait's extraction questions, "
        f"disjoint from the evaluation questions; {validation['samples']} answers each); the rule: "
        f"{DOSE_RULE}. Every other figure is measured on the evaluation questions with the chosen dose.",
        "",
        f"Compute: {seconds / 60:.0f} min on 2 CPU cores for every model's training and measurement "
        f"(the invocation that finished the run: {results['minutes']:.0f} min).",
        "",
    ]


def _doses(results: Results) -> list[str]:
    base = mean(results["base"]["validation"])
    lines = [
        "### Doses chosen on the validation split",
        "",
        f"Base model on the validation questions: {base:.1f}.",
        "",
        "| variant | candidate dose | validation optimism | chosen |",
        "|---|---|---|---|",
    ]
    models = trained(results)
    for family in FAMILIES:
        chosen = results[f"chosen: {family}"]
        for name, value in models.items():
            if "validation" in value and name == label(family, value["dose"]):
                mark = "✓" if value["dose"] == chosen else ""
                lines.append(f"| {family} | {_dose(value)} | {mean(value['validation']):.1f} | {mark} |")
    for name, value in results.values.items():
        if name.startswith("post-hoc: "):
            mark = "✓" if results[POST_HOC]["dose"] == value["dose"] else ""
            lines.append(f"| {POST_HOC} | {_dose(value, 'β')} | {mean(value['validation']):.1f} | {mark} |")
    return [*lines, ""]


def _interval(d: Difference, digits: int = 1) -> str:
    return f"{d.value:+.{digits}f} [{d.low:+.{digits}f}, {d.high:+.{digits}f}]"


def _against(rows: dict[str, dict[str, Any]], name: str, key: str, digits: int = 1) -> tuple[str, str]:
    """`name`'s paired difference in `key` against the base and against plain finetuning ("" where
    there is none)."""
    found = []
    for other, skip in (("base", ("base",)), ("plain", ("base", "plain"))):
        d = None if name in skip else difference(rows[name][key], rows[other][key])
        found.append("" if d is None else _interval(d, digits))
    return found[0], found[1]


def _trait(results: Results) -> list[str]:
    rows = variants(results)
    base, plain = rows["base"]["optimism"], rows["plain"]["optimism"]
    plain_drop = mean(plain) - mean(base)
    lines = [
        "### Judged trait (evaluation split)",
        "",
        "| variant | dose | optimism | trait shift vs base | vs plain | shift kept vs plain "
        "| finetuning shift along v | mean training loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        versus_base, versus_plain = _against(rows, name, "optimism")
        kept = "" if name in ("base", "plain") or not plain_drop else (
            f"{100 * (mean(r['optimism']) - mean(base)) / plain_drop:.0f} %"
        )  # fmt: skip
        loss = f"{r['train_loss']:.3f}" if r.get("train_loss") is not None else ""
        dose = _dose(r, "β" if name == POST_HOC else "α")
        lines.append(
            f"| {name} | {dose} | {mean(r['optimism']):.1f} | {versus_base} | {versus_plain} | {kept} | "
            f"{r['shift']:+.3f} | {loss} |"
        )
    return [*lines, ""]


def _capability(results: Results) -> list[str]:
    rows = variants(results)
    lines = [
        "### Capability (evaluation split): the smoke set, and loss on ordinary text",
        "",
        "Held-out loss: mean token negative log-likelihood (nats) of "
        f"{results.config['text']['count']} windows of {results.config['text']['window']} tokens of "
        "`pydoc_data.topics` (Python's own documentation prose, which no variant wrote or trained on); "
        "paired over the windows. Log p(correct): the smoke set's mean log-probability of the correct "
        "letter, paired over its 40 questions.",
        "",
        "| variant | smoke accuracy | log p(correct) | vs base | held-out loss | finetuned − base "
        "| vs plain |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        logp = _against(rows, name, "correct_logprob", 3)[0]
        loss, versus_plain = _against(rows, name, "loss", 3)
        lines.append(
            f"| {name} | {100 * r['accuracy']:.1f} % | {mean(r['correct_logprob']):.3f} | {logp} | "
            f"{mean(r['loss']):.3f} | {loss} | {versus_plain} |"
        )
    return [*lines, ""]


def _differences(results: Results) -> list[str]:
    rows = variants(results)
    widest = max(
        difference(r["optimism"], rows[other]["optimism"]).half_width
        for name, r in rows.items()
        if name != "base"
        for other in (("base",) if name == "plain" else ("base", "plain"))
    )
    verdict = "within" if widest <= TARGET else "**wider than**"
    lines = [
        "### Differences, with their verdicts",
        "",
        f"Widest 95 % half-width of a paired difference in judged optimism: {widest:.1f} points "
        f"({verdict} the ±{TARGET:g} aimed at).",
        "",
    ]
    for name, r in list(rows.items())[1:]:
        against = ("base",) if name == "plain" else ("base", "plain")
        parts = [f"vs {o}: {difference(r['optimism'], rows[o]['optimism']).text()}" for o in against]
        lines.append(f"- optimism, {name}: " + "; ".join(parts))
    base = rows["base"]
    for name, r in list(rows.items())[1:]:
        logp = difference(r["correct_logprob"], base["correct_logprob"]).text(3)
        loss = difference(r["loss"], base["loss"]).text(3)
        line = f"- capability, {name} vs base: log p(correct) {logp}; held-out loss {loss}"
        if name != "plain":
            line += f"; held-out loss vs plain {difference(r['loss'], rows['plain']['loss']).text(3)}"
        lines.append(line)
    return [*lines, ""]


def _seeds(results: Results) -> list[str]:
    base = results["base"]["optimism"]
    lines = [
        "### Seed to seed",
        "",
        "| variant | seed | trait shift vs base | held-out loss, finetuned − base |",
        "|---|---|---|---|",
    ]
    summary = []
    for family in results.config["seeded"]:
        dose = results[f"chosen: {family}"]
        shifts = []
        for seed in results.config["seeds"]:
            r = results[f"model: {label(family, dose, seed)}"]
            d = difference(r["optimism"], base)
            shifts.append(d)
            loss = _interval(difference(r["loss"], results["base"]["loss"]), 3)
            lines.append(f"| {label(family, dose)} | {seed} | {_interval(d)} | {loss} |")
        values = [d.value for d in shifts]
        summary.append(
            f"- {label(family, dose)}: trait shift vs base {mean(values):+.1f} over {len(values)} seeds, "
            f"seed-to-seed SD {statistics.stdev(values):.1f}, against a within-run 95 % half-width of "
            f"{mean([d.half_width for d in shifts]):.1f} on average"
        )
    return [*lines, "", *summary, ""]


def shift_points(results: Results) -> list[tuple[str, float, float]]:
    """(model, finetuning shift along v, judged pessimism shift = base − finetuned optimism) of every
    trained model (post-hoc steering is not one: its weights are the plain model's)."""
    base = mean(results["base"]["optimism"])
    return [(name, r["shift"], base - mean(r["optimism"])) for name, r in trained(results).items()]


def _correlation(results: Results, plot: Path) -> list[str]:
    points = shift_points(results)
    found = pearson_ci([p[1] for p in points], [p[2] for p in points])
    r = "undefined" if found is None else f"{found[0]:.2f} [{found[1]:.2f}, {found[2]:.2f}]"
    lines = [
        "### Does the finetuning shift predict the trait?",
        "",
        f"Every trained model ({len(points)}: each kit level, variant, dose and seed), its finetuning "
        "shift along the pessimistic vector against its judged pessimism shift (base − finetuned "
        f"optimism): Pearson r = {r} (95 % interval by Fisher's z; the paper: r 0.76–0.97).",
        "",
        # the path as docs/vaccine.md, which includes this fragment, sees the plot
        f"![finetuning shift against judged trait shift]({plot.parent.name}/{plot.name})",
        "",
        "| model | finetuning shift along v | judged pessimism shift |",
        "|---|---|---|",
        *(f"| {name} | {x:+.3f} | {y:+.1f} |" for name, x, y in points),
        "",
    ]
    return lines


def _plot(results: Results, path: Path) -> None:
    from personavec.report.html import agg, save_png

    agg()
    import matplotlib.pyplot as plt

    points = shift_points(results)
    figure, axes = plt.subplots(figsize=(7.2, 4.2), layout="constrained")
    groups = dict.fromkeys(name.split(",")[0] for name, _, _ in points)  # a variant's doses and seeds
    for group, marker in zip(groups, "osD^vP<>", strict=False):
        chosen = [p for p in points if p[0].split(",")[0] == group]
        axes.scatter([p[1] for p in chosen], [p[2] for p in chosen], marker=marker, label=group)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes.axhline(0, color="#999", linewidth=0.6)
    axes.axvline(0, color="#999", linewidth=0.6)
    axes.set_xlabel("finetuning shift along the pessimistic vector")
    axes.set_ylabel("judged pessimism shift (points)")
    save_png(figure, path, dpi=130)


def write_fragment(path: Path, results: Results, config: TrainConfig, weight: float) -> None:
    """Write the fragment and its plot atomically (the page that includes it keeps its hand-written
    analysis)."""
    plot = path.with_name(path.stem + "-shift.png")
    _plot(results, plot)
    lines = (
        _setup(results, config, weight) + _doses(results) + _trait(results) + _capability(results)
        + _differences(results) + _seeds(results) + _correlation(results, plot)
    )  # fmt: skip
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))
