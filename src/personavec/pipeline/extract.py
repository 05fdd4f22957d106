"""The extraction pipeline: trait → contrastive answers → judgements → filter → vectors → layer choice.

`extract` runs the stages in that order over a run directory (`rundir.RunDir`, files named by
`runs.ExtractionRun`, which reads them back). Each stage writes its output atomically (the long ones
chunk by chunk) and is skipped when a rerun finds it done; the manifest records what the run was made
with and what each stage kept and dropped:

- ``trait.json``: the trait's artifacts, as used;
- ``generations.jsonl``: one row per answer (positive and negative system prompts × questions × samples);
- ``judge-cache.jsonl``: every judgement received, so none is ever paid for twice;
- ``judgements.json``, ``filter.json``: scores per answer; the answers kept and the counts per reason;
- ``{trait}.safetensors``: the vectors (response-avg, prompt-avg, prompt-last), chosen layer in metadata,
  with the kept answers' mean residual norm per layer (``residual_norm``, for coefficients in norm units);
- ``ranking.json``: every layer's judge-free held-out AUROC (`personavec.pipeline.ranking`), made when a
  layer sweep follows; ``layers top:K`` sweeps its K best;
- ``sweep/*``, ``sweep.json``: the evaluation sweep's cells per candidate layer (`evaluate.run_cells`),
  their judged trait, the choice.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from personavec._internal.deprecation import renamed
from personavec._internal.files import write_json
from personavec.core.activations import iter_pooled
from personavec.core.backend import Backend, Model, as_backend, identity_of, user_turn
from personavec.core.engine import RemoteEngine
from personavec.core.generate import Request, generate_rows
from personavec.core.pooling import POOLINGS
from personavec.core.sampling import Sampling
from personavec.core.vectors import RESIDUAL_NORM, PersonaVector, load_vectors, save_vectors
from personavec.errors import JudgeError, PersonavecError
from personavec.judges import COHERENCE_RUBRIC, Judge, JudgeCache
from personavec.pipeline.config import GENERATION_FIELDS, ExtractConfig, Sizes, top_k
from personavec.pipeline.evaluate import run_cells
from personavec.pipeline.ranking import fold_gap, rank_layers
from personavec.report.pages import write_report
from personavec.runs.preflight import preflight
from personavec.runs.readers import ExtractionRun
from personavec.runs.results import ExtractionSummary, LayerChoice, LayerRanking, Setting, judged_order
from personavec.runs.rundir import RunDir
from personavec.traits.spec import TraitSpec

Scores = dict[str, list[dict[str, Any]]]  # metric ("trait", "coherence") → one score record per answer


def default_layers(n_layers: int, count: int = 8) -> tuple[int, ...]:
    """Up to `count` layers spread evenly over the middle half of the model (L/4 .. 3L/4)."""
    low, high = max(1, round(n_layers / 4)), max(1, round(3 * n_layers / 4))
    if high - low + 1 <= count:
        return tuple(range(low, high + 1))
    return tuple(sorted({round(low + i * (high - low) / (count - 1)) for i in range(count)}))


@dataclass
class ExtractResult:
    """The run directory, the vectors by pooling, what the run did and its report page."""

    dir: Path
    vectors: dict[str, PersonaVector]  # by pooling
    summary: ExtractionSummary
    report: Path


def extract(
    model: Model,
    trait: TraitSpec,
    judge: Judge | None,
    out: str | Path,
    config: ExtractConfig | None = None,
    force: bool = False,
    progress: bool = True,
    token_budget: int = 16384,
    engine: RemoteEngine | None = None,
) -> ExtractResult:
    """Run (or resume) the pipeline into the run directory `out` and write its report; return the
    vectors and a summary. Every input is checked before `model` (a `ModelRef`) loads.

    `judge` None keeps every answer (no filter) and skips the layer sweep: the vectors then carry no
    chosen layer. A directory made for another model, trait or generation setting is refused unless
    `force` (which starts it over, keeping the judge cache); another judge or filter/sweep setting
    redoes only the stages after generation. An `engine` writes the contrastive answers (the layer
    sweep's steered ones stay local); it is part of the run's identity.
    """
    config = config or ExtractConfig()
    config.check(trait)
    preflight(judge=judge, out=out, model=model, engine=engine)
    config.check(trait, identity_of(model).n_layers)  # the layers, against the model's config
    backend = as_backend(model)
    run = open_run(backend, trait, judge, out, config, force, engine)
    cache = JudgeCache(run.path / ExtractionRun.JUDGE_CACHE)
    rows = contrastive_answers(run, backend, trait, config, progress, engine)
    scores = judgements(run, rows, trait, judge, cache, progress)
    kept = filter_answers(run, rows, scores, config)
    vectors = compute_vectors(run, backend, rows, kept, token_budget, progress)
    ranking = layer_ranking(run, backend, rows, kept, judge, config, token_budget, progress)
    vectors = choose_layer(run, backend, trait, judge, cache, vectors, config, progress, ranking)
    summary = ExtractionSummary.from_manifest(run.manifest)
    return ExtractResult(dir=run.path, vectors=vectors, summary=summary, report=write_report(run.path))


def open_run(
    backend: Backend,
    trait: TraitSpec,
    judge: Judge | None,
    out: str | Path,
    config: ExtractConfig,
    force: bool,
    engine: RemoteEngine | None = None,
) -> RunDir:
    """Start or resume the run directory: tied to the model, trait, generation settings and engine;
    another judge redoes the judgements on, other filter or sweep settings the filter on."""
    settings = asdict(config)
    generation = {**{k: settings.pop(k) for k in GENERATION_FIELDS}, **settings.pop("sampling")}
    identity = {
        "model": backend.identity.to_dict(),
        "trait": trait.name,
        "trait_sha256": trait.sha256(),
        "generation": generation,
    }
    if engine is not None:
        identity["engine"] = engine.identity()
    later = {
        "judge": ("judgements", judge.describe() if judge else {"name": "none"}),
        "selection": ("filter", settings),
    }
    outputs, report = ExtractionRun.OUTPUTS, (ExtractionRun.REPORT,)
    run = RunDir.open(out, ExtractionRun.KIND, identity, outputs, later, derived=report, force=force)
    write_json(run.path / ExtractionRun.TRAIT, trait.to_dict())
    return run


def contrastive_requests(trait: TraitSpec, config: ExtractConfig) -> list[Request]:
    """Positive and negative requests, interleaved so a pair's two sides land in the same chunk."""
    requests = []
    for q, question in enumerate(trait.extraction_questions[: config.questions]):
        for i, pair in enumerate(trait.instructions[: config.instructions]):
            for s in range(config.samples):
                for polarity in ("pos", "neg"):
                    fields = (
                        ("trait", trait.name),
                        ("question_id", q),
                        ("polarity", polarity),
                        ("instruction", i),
                        ("sample", s),
                    )
                    rid = f"{polarity}-q{q}-i{i}-s{s}"
                    requests.append(Request(rid, question, pair[polarity], fields))
    return requests


def contrastive_answers(
    run: RunDir,
    backend: Backend,
    trait: TraitSpec,
    config: ExtractConfig,
    progress: bool,
    engine: RemoteEngine | None = None,
) -> list[dict[str, Any]]:
    """Stage 1: the contrastive answers (sampled, chunk by chunk, resumable; by the `engine` if any)."""
    started = time.perf_counter()
    rows = generate_rows(
        backend,
        contrastive_requests(trait, config),
        run.path / ExtractionRun.GENERATIONS,
        config.sampling,
        chunk_size=4 * config.sampling.batch_size,
        progress=progress,
        desc="answers",
        engine=engine,
    )
    run.found("generations", started, rows=len(rows), **({"engine_url": engine.url} if engine else {}))
    return rows


def judgements(
    run: RunDir,
    rows: Sequence[dict[str, Any]],
    trait: TraitSpec,
    judge: Judge | None,
    cache: JudgeCache,
    progress: bool,
) -> Scores | None:
    """Stage 2: trait (and coherence) scores of every answer, through the run's judge cache."""
    if judge is None:
        return None
    path = run.path / ExtractionRun.JUDGEMENTS
    if path.exists():
        scores = {k: v for k, v in json.loads(path.read_text()).items() if k != "ids"}
        run.found("judgements", methods=_methods(scores))
        return scores
    started = time.perf_counter()
    items = [(r["question"], r["answer"]) for r in rows]
    rubrics = {"trait": trait.rubric}
    if judge.measures_coherence:
        rubrics["coherence"] = COHERENCE_RUBRIC
    scores = {
        metric: [
            {"value": s.value, "method": s.method, "error": s.error}
            for s in cache.judge(judge, rubric, items, f"judge {metric}", progress)
        ]
        for metric, rubric in rubrics.items()
    }
    write_json(path, {"ids": [r["id"] for r in rows], **scores})
    run.record("judgements", started, methods=_methods(scores))
    return scores


def _methods(scores: Scores) -> dict[str, int]:
    """How many scores each judging method gave (a judge's "failed" among them)."""
    return dict(Counter(s["method"] for metric in scores.values() for s in metric))


def _verdict(
    row: dict[str, Any], trait_score: dict[str, Any], coherence: dict[str, Any] | None, config: ExtractConfig
) -> str | None:
    """Why this answer is dropped, or None when it is kept."""
    if not row["answer"].strip():
        return "empty answer"
    if trait_score["method"] == "failed":
        return "judge failed"
    if trait_score["value"] is None:
        return "trait score missing (refusal or no number)"
    if row["polarity"] == "pos" and trait_score["value"] < config.trait_threshold:
        return f"positive answer with trait < {config.trait_threshold:g}"
    if row["polarity"] == "neg" and trait_score["value"] >= config.trait_threshold:
        return f"negative answer with trait ≥ {config.trait_threshold:g}"
    if coherence is not None:
        if coherence["method"] == "failed":
            return "judge failed"
        if coherence["value"] is None:
            return "coherence missing"
        if coherence["value"] < config.coherence_threshold:
            return f"coherence < {config.coherence_threshold:g}"
    return None


def _verdicts(rows: list[dict[str, Any]], scores: Scores | None, config: ExtractConfig) -> list[str | None]:
    """Each answer's reason to be dropped (None: kept); paired, a pair goes when either side does."""
    verdicts: list[str | None] = []
    for i, row in enumerate(rows):
        if scores is None:
            verdicts.append("empty answer" if not row["answer"].strip() else None)
            continue
        coherence = scores["coherence"][i] if "coherence" in scores else None
        verdicts.append(_verdict(row, scores["trait"][i], coherence, config))
    if config.pairing == "paired":
        index = {row["id"]: i for i, row in enumerate(rows)}
        for i, row in enumerate(rows):
            partner = index[("neg" if row["polarity"] == "pos" else "pos") + row["id"][3:]]
            if verdicts[i] is None and verdicts[partner] is not None:
                verdicts[i] = "partner dropped (paired filter)"
    return verdicts


def filter_answers(
    run: RunDir, rows: list[dict[str, Any]], scores: Scores | None, config: ExtractConfig
) -> list[int]:
    """Stage 3: indices of the kept answers; raise when too few survive on either side."""
    path = run.path / ExtractionRun.FILTER
    if path.exists():
        found = json.loads(path.read_text())
        run.found("filter", **{k: v for k, v in found.items() if k != "kept"})
        return list(found["kept"])
    started = time.perf_counter()
    verdicts = _verdicts(rows, scores, config)
    kept = [i for i, v in enumerate(verdicts) if v is None]
    kept_pos = sum(rows[i]["polarity"] == "pos" for i in kept)
    kept_neg = len(kept) - kept_pos
    reasons = dict(Counter(f"{rows[i]['polarity']}: {v}" for i, v in enumerate(verdicts) if v))
    info = {"kept_positive": kept_pos, "kept_negative": kept_neg, "dropped": reasons}
    if min(kept_pos, kept_neg) < config.min_pairs:
        why = "; ".join(f"{k}: {n}" for k, n in sorted(reasons.items())) or "no answers"
        raise PersonavecError(
            f"only {kept_pos} positive and {kept_neg} negative answers survived the filter (need "
            f"{config.min_pairs} each). Dropped: {why}. Raise samples, lower min_pairs or check the judge",
            ("samples", "min_pairs"),
        )
    write_json(path, {"kept": kept, **info})
    run.record("filter", started, **info)
    return kept


def _norms(vectors: dict[str, PersonaVector]) -> list[float]:
    return [round(float(x), 4) for x in vectors["response-avg"].tensor.norm(dim=1)]


@dataclass
class _Means:
    """The kept answers' sums per (pooling, side), counts per side, summed mean norms, truncations."""

    sums: dict[tuple[str, str], torch.Tensor]
    counts: Counter[str]
    norm: torch.Tensor
    truncated: int

    def residual_norm(self) -> list[float]:
        """The mean over kept answers of each one's mean residual norm after its first token, per layer."""
        return [float(x) for x in self.norm / sum(self.counts.values())]


def _means(
    backend: Backend, rows: list[dict[str, Any]], kept: list[int], token_budget: int, progress: bool
) -> _Means:
    """One pass over the kept answers, each after its own system prompt and question."""
    shape = (backend.identity.n_layers + 1, backend.identity.hidden_size)
    means = _Means(
        sums={(k, p): torch.zeros(shape, dtype=torch.float64) for k in POOLINGS for p in ("pos", "neg")},
        counts=Counter(),
        norm=torch.zeros(shape[0], dtype=torch.float64),
        truncated=0,
    )
    prompts = [user_turn(backend, rows[i]["question"], rows[i]["system"]) for i in kept]
    answers = [rows[i]["answer"] for i in kept]
    for indices, pooled in iter_pooled(
        backend, prompts, answers, token_budget=token_budget, progress=progress
    ):
        means.truncated += pooled.n_truncated
        polarity = torch.tensor([rows[kept[j]]["polarity"] == "pos" for j in indices])
        means.counts.update(rows[kept[j]]["polarity"] for j in indices)
        means.norm += pooled.norm.double().sum(0)
        for pooling in POOLINGS:
            acts = pooled.tensor(pooling).double()
            means.sums[pooling, "pos"] += acts[polarity].sum(0)
            means.sums[pooling, "neg"] += acts[~polarity].sum(0)
    return means


def compute_vectors(
    run: RunDir,
    backend: Backend,
    rows: list[dict[str, Any]],
    kept: list[int],
    token_budget: int,
    progress: bool,
) -> dict[str, PersonaVector]:
    """Stage 4: mean kept-positive minus mean kept-negative activations, per pooling and layer, with
    the residual norm they were taken over. Vectors found without that norm (made before personavec
    recorded it) get it measured and added, everything else as it was."""
    path = run.path / ExtractionRun.VECTORS.format_map(run.manifest)
    if path.exists():
        vectors = load_vectors(path, backend.identity)
        if any(RESIDUAL_NORM not in v.metadata for v in vectors.values()):
            norm = _means(backend, rows, kept, token_budget, progress).residual_norm()
            for v in vectors.values():
                v.metadata[RESIDUAL_NORM] = norm
            save_vectors(path, list(vectors.values()))
        run.found("vectors", norms=_norms(vectors))
        return vectors
    started = time.perf_counter()
    means = _means(backend, rows, kept, token_budget, progress)
    sums, counts = means.sums, means.counts
    m = run.manifest
    metadata = {"model": m["model"], "n_positive": counts["pos"], "n_negative": counts["neg"]}
    metadata[RESIDUAL_NORM] = means.residual_norm()
    metadata |= {k: m[k] for k in ("judge", "generation", "selection", "trait_sha256")}
    vectors = {
        pooling: PersonaVector(
            trait=m["trait"],
            tensor=sums[pooling, "pos"] / counts["pos"] - sums[pooling, "neg"] / counts["neg"],
            pooling=pooling,
            metadata=metadata,
        )
        for pooling in POOLINGS
    }
    save_vectors(path, list(vectors.values()))
    run.record("vectors", started, truncated=means.truncated, norms=_norms(vectors))
    return vectors


def layer_ranking(
    run: RunDir,
    backend: Backend,
    rows: list[dict[str, Any]],
    kept: list[int],
    judge: Judge | None,
    config: ExtractConfig,
    token_budget: int,
    progress: bool,
) -> LayerRanking | None:
    """Stage 5: the judge-free layer ranking (`personavec.pipeline.ranking`), whenever a layer sweep
    follows: it picks the sweep's candidates under ``layers top:K`` and stands beside its result. Too
    few kept answers to rank skip it (recorded with the reason), unless ``top:K`` needs it."""
    if judge is None or config.layers == ():
        return None
    gap = fold_gap(rows, kept)
    if gap is not None and top_k(config.layers) is None:
        run.record("ranking", None, skipped=gap)
        return None
    path = run.path / ExtractionRun.RANKING
    if path.exists():
        ranking = LayerRanking.from_dict(json.loads(path.read_text()))
        run.found("ranking", best=ranking.order()[:3])
        return ranking
    started = time.perf_counter()
    ranking = rank_layers(backend, rows, kept, token_budget, progress)
    write_json(path, ranking.to_dict())
    run.record("ranking", started, best=ranking.order()[:3])
    return ranking


def choose_layer(
    run: RunDir,
    backend: Backend,
    trait: TraitSpec,
    judge: Judge | None,
    cache: JudgeCache,
    vectors: dict[str, PersonaVector],
    config: ExtractConfig,
    progress: bool,
    ranking: LayerRanking | None = None,
) -> dict[str, PersonaVector]:
    """Stage 6: the evaluation sweep's cells, unsteered and steered by `coef` at each candidate layer
    (under ``layers top:K``, the `ranking`'s K best); the chosen layer moves the judged trait furthest in
    the coefficient's direction."""
    path = run.path / ExtractionRun.SWEEP
    if path.exists():
        run.found("sweep", chosen=json.loads(path.read_text())["chosen"])
    if judge is None or path.exists() or config.layers == ():
        return vectors
    started = time.perf_counter()
    c = config
    vector = vectors["response-avg"]
    top = top_k(c.layers)
    if top is not None:
        assert ranking is not None  # ranked whenever a sweep follows
        layers: tuple[int, ...] = ranking.top(top)
    else:
        layers = tuple(int(layer) for layer in c.layers or ()) or default_layers(vector.n_layers)
    greedy = Sampling(max_new_tokens=c.sampling.max_new_tokens, batch_size=c.sampling.batch_size)
    sizes = Sizes(questions=c.sweep_questions, sampling=greedy)
    steered = (Setting(layer, vector.raw_coef(c.coef, layer, c.coef_units)) for layer in layers)
    settings = [Setting(None, 0.0), *steered]
    cells = run.path / ExtractionRun.SWEEP_CELLS
    baseline, *results = run_cells(backend, trait, judge, cache, cells, vector, settings, sizes, progress)
    if all(r.trait is None for r in results):
        raise JudgeError("the judge scored no steered answer in the layer sweep; check the judge")
    chosen = judged_order(c.coef, results)[0]
    for v in vectors.values():
        v.layer = chosen
        v.metadata["layer_choice"] = {
            "method": "sweep", "coef": c.coef, "coef_units": c.coef_units, "layers": list(layers),
            **({"ranked": f"top:{top}"} if top else {}),
        }  # fmt: skip
    save_vectors(run.path / ExtractionRun.VECTORS.format_map(run.manifest), list(vectors.values()))
    write_json(path, LayerChoice(c.coef, vector.pooling, baseline, results, chosen).to_dict())
    run.record("sweep", started, chosen=chosen)
    return vectors


__getattr__ = renamed(__name__, {"generations": "contrastive_answers"})
