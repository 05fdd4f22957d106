"""The extraction pipeline: trait → contrastive answers → judgements → filter → vectors → layer sweep.

Every stage writes its output into the run directory atomically (or, for the long ones, chunk by chunk)
and is skipped when a rerun finds it done; ``manifest.json`` records what the run was made with and
what each stage kept and dropped. Files in a run directory:

- ``trait.json``: the trait's artifacts, as used;
- ``generations.jsonl``: one row per answer (positive and negative system prompts × questions × samples);
- ``judge-cache.jsonl``: every judgement received, so none is ever paid for twice;
- ``judgements.json``, ``filter.json``: scores per answer; the answers kept and the counts per reason;
- ``{trait}.safetensors``: the vectors (response-avg, prompt-avg, prompt-last), chosen layer in metadata;
- ``sweep/*.jsonl``, ``sweep.json``: steered answers per candidate layer, their judged trait, the choice.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers

from personavec._internal.files import write_json
from personavec.core.activations import iter_pooled
from personavec.core.generate import Request, generate_rows
from personavec.core.models import LoadedModel
from personavec.core.vectors import KINDS, PersonaVector, load_vectors, save_vectors
from personavec.errors import PersonavecError
from personavec.judges import COHERENCE_RUBRIC, Judge, JudgeCache
from personavec.pipeline.config import ExtractConfig
from personavec.pipeline.evaluate import Setting, Sizes, evaluate
from personavec.traits.spec import TraitSpec
from personavec.version import __version__

MANIFEST_FORMAT = "personavec-run/1"
GENERATION_FIELDS = (
    "samples",
    "max_new_tokens",
    "temperature",
    "top_p",
    "questions",
    "instructions",
    "seed",
    "batch_size",
)
# stage → the files it writes, in pipeline order (the judge cache is kept: its keys say what it holds)
STAGE_OUTPUTS = {
    "generations": ("generations.jsonl",),
    "judgements": ("judgements.json",),
    "filter": ("filter.json",),
    "vectors": ("{trait}.safetensors",),
    "sweep": ("sweep", "sweep.json"),
}


def default_layers(n_layers: int, count: int = 8) -> tuple[int, ...]:
    """Up to `count` layers spread evenly over the middle half of the model (L/4 .. 3L/4)."""
    low, high = max(1, round(n_layers / 4)), max(1, round(3 * n_layers / 4))
    if high - low + 1 <= count:
        return tuple(range(low, high + 1))
    return tuple(sorted({round(low + i * (high - low) / (count - 1)) for i in range(count)}))


@dataclass
class ExtractResult:
    dir: Path
    vectors: dict[str, PersonaVector]  # by kind
    manifest: dict[str, Any]


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _contrastive_requests(trait: TraitSpec, config: ExtractConfig) -> list[Request]:
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


@dataclass
class _Run:
    """One pipeline run over a run directory (see `extract`)."""

    loaded: LoadedModel
    trait: TraitSpec
    judge: Judge | None
    dir: Path
    config: ExtractConfig
    progress: bool
    token_budget: int
    manifest: dict[str, Any] = field(default_factory=dict)
    cache: JudgeCache | None = None

    @property
    def vector_path(self) -> Path:
        return self.dir / f"{self.trait.name}.safetensors"

    def _identity(self) -> dict[str, Any]:
        """What the stages' outputs depend on; JSON-normalised (tuples become lists) for comparison."""
        config = asdict(self.config)
        identity = {
            "model": self.loaded.identity.to_dict(),
            "trait": self.trait.name,
            "trait_sha256": self.trait.sha256(),
            "generation": {k: config[k] for k in GENERATION_FIELDS},
            "judge": self.judge.describe() if self.judge else {"name": "none"},
            "selection": {k: v for k, v in config.items() if k not in GENERATION_FIELDS},
        }
        return dict(json.loads(json.dumps(identity)))

    def open(self, force: bool) -> None:
        """Start or resume. A directory made for another model, trait or generation config is refused
        (unless `force`: start over); another judge or filter/sweep setting redoes only the later stages.
        """
        identity = self._identity()
        path = self.dir / "manifest.json"
        if path.exists():
            try:
                old = _read_json(path)
            except (json.JSONDecodeError, OSError, UnicodeDecodeError) as error:
                old = {"error": str(error)}
            if not isinstance(old, dict) or old.get("format") != MANIFEST_FORMAT:
                raise PersonavecError(
                    f"{path} is not a personavec run manifest (unreadable or foreign): choose another --out, "
                    "or delete it if the directory is yours to reuse"
                )
            differs = [
                k for k in ("model", "trait", "trait_sha256", "generation") if old.get(k) != identity[k]
            ]
            if differs and not force:
                raise PersonavecError(
                    f"{self.dir} holds a run for {old.get('model', {}).get('name', '?')} / trait "
                    f"{old.get('trait', '?')} that differs in {', '.join(differs)}: use another --out, "
                    "or --force to start it over"
                )
            if differs:  # start over: outputs first, the manifest last (a kill meanwhile leaves it refused)
                self._forget("generations", old["trait"])
                path.unlink()
            else:
                self.manifest = old
                stale = [k for k in ("judge", "selection") if old.get(k) != identity[k]]
                if stale:
                    self._forget("judgements" if "judge" in stale else "filter", self.trait.name)
                    self.manifest.update({k: identity[k] for k in stale})
        if not self.manifest:
            self.manifest = {
                "format": MANIFEST_FORMAT,
                **identity,
                "versions": {
                    "personavec": __version__,
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                },
                "stages": {},
            }
        self.dir.mkdir(parents=True, exist_ok=True)
        self._save_manifest()
        write_json(self.dir / "trait.json", self.trait.to_dict())

    def _forget(self, first: str, trait: str) -> None:
        """Delete the outputs of stage `first`, of every stage after it, and the report."""
        stages = list(STAGE_OUTPUTS)
        (self.dir / "report.html").unlink(missing_ok=True)
        for stage in stages[stages.index(first) :]:
            for name in STAGE_OUTPUTS[stage]:
                target = self.dir / name.format(trait=trait)
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
            self.manifest.get("stages", {}).pop(stage, None)

    def _save_manifest(self) -> None:
        write_json(self.dir / "manifest.json", self.manifest)

    def _stage(self, name: str, started: float | None, **info: Any) -> None:
        """Record a finished stage; `started` None for one found done (its time is not known)."""
        seconds = None if started is None else round(time.perf_counter() - started, 2)
        self.manifest["stages"][name] = {"seconds": seconds, **info}
        self._save_manifest()

    def _found(self, name: str, **info: Any) -> None:
        """Record a stage whose output exists, if a crash came between writing it and the manifest."""
        if name not in self.manifest["stages"]:
            self._stage(name, None, **info)

    def generations(self) -> list[dict[str, Any]]:
        started = time.perf_counter()
        c = self.config
        rows = generate_rows(
            self.loaded,
            _contrastive_requests(self.trait, c),
            self.dir / "generations.jsonl",
            max_new_tokens=c.max_new_tokens,
            temperature=c.temperature,
            top_p=c.top_p,
            seed=c.seed,
            batch_size=c.batch_size,
            chunk_size=4 * c.batch_size,
            progress=self.progress,
            desc="answers",
        )
        if "generations" not in self.manifest["stages"]:
            self._stage("generations", started, rows=len(rows))
        return rows

    def _cache(self) -> JudgeCache:
        if self.cache is None:
            self.cache = JudgeCache(self.dir / "judge-cache.jsonl")
        return self.cache

    def _judge(self, rows: Sequence[dict[str, Any]], desc: str) -> dict[str, list[dict[str, Any]]]:
        """Trait (and coherence) scores of `rows`, through the run's judge cache."""
        assert self.judge is not None
        cache = self._cache()
        items = [(r["question"], r["answer"]) for r in rows]
        rubrics = {"trait": self.trait.rubric}
        if self.judge.measures_coherence:
            rubrics["coherence"] = COHERENCE_RUBRIC
        return {
            metric: [
                {"value": s.value, "method": s.method, "error": s.error}
                for s in cache.judge(self.judge, rubric, items, f"{desc} {metric}", self.progress)
            ]
            for metric, rubric in rubrics.items()
        }

    def judgements(self, rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]] | None:
        if self.judge is None:
            return None
        path = self.dir / "judgements.json"
        started = None
        if path.exists():
            scores = {k: v for k, v in _read_json(path).items() if k != "ids"}
        else:
            started = time.perf_counter()
            scores = self._judge(rows, "judge")
            write_json(path, {"ids": [r["id"] for r in rows], **scores})
        methods = dict(Counter(s["method"] for metric in scores.values() for s in metric))
        if started is None:
            self._found("judgements", methods=methods)
        else:
            self._stage("judgements", started, methods=methods)
        return scores

    def filter(self, rows: list[dict[str, Any]], scores: dict[str, list[dict[str, Any]]] | None) -> list[int]:
        """Indices of the kept rows; raise when too few survive."""
        path = self.dir / "filter.json"
        if path.exists():
            found = _read_json(path)
            self._found("filter", **{k: v for k, v in found.items() if k != "kept"})
            return list(found["kept"])
        c = self.config
        verdicts: list[str | None] = []
        for i, row in enumerate(rows):
            if scores is None:
                verdicts.append("empty answer" if not row["answer"].strip() else None)
                continue
            coherence = scores["coherence"][i] if "coherence" in scores else None
            verdicts.append(_verdict(row, scores["trait"][i], coherence, c))
        if c.pairing == "paired":
            index = {row["id"]: i for i, row in enumerate(rows)}
            for i, row in enumerate(rows):
                partner = index[("neg" if row["polarity"] == "pos" else "pos") + row["id"][3:]]
                if verdicts[i] is None and verdicts[partner] is not None:
                    verdicts[i] = "partner dropped (paired filter)"
        started = time.perf_counter()
        kept = [i for i, v in enumerate(verdicts) if v is None]
        kept_pos = sum(rows[i]["polarity"] == "pos" for i in kept)
        kept_neg = len(kept) - kept_pos
        reasons = dict(Counter(f"{rows[i]['polarity']}: {v}" for i, v in enumerate(verdicts) if v))
        info = {"kept_positive": kept_pos, "kept_negative": kept_neg, "dropped": reasons}
        if min(kept_pos, kept_neg) < c.min_pairs:
            why = "; ".join(f"{k}: {n}" for k, n in sorted(reasons.items())) or "no answers"
            raise PersonavecError(
                f"only {kept_pos} positive and {kept_neg} negative answers survived the filter (need "
                f"{c.min_pairs} each). Dropped: {why}. Raise --samples, lower --min-pairs or check the judge"
            )
        write_json(path, {"kept": kept, **info})
        self._stage("filter", started, **info)
        return kept

    def vectors(self, rows: list[dict[str, Any]], kept: list[int]) -> dict[str, PersonaVector]:
        """Mean kept-positive minus mean kept-negative activations, per kind and layer."""
        if self.vector_path.exists():
            vectors = load_vectors(self.vector_path, self.loaded.identity)
            norms = vectors["response-avg"].tensor.norm(dim=1)
            self._found("vectors", norms=[round(float(x), 4) for x in norms])
            return vectors
        started = time.perf_counter()
        shape = (self.loaded.identity.n_layers + 1, self.loaded.identity.hidden_size)
        sums = {(k, p): torch.zeros(shape, dtype=torch.float64) for k in KINDS for p in ("pos", "neg")}
        counts: Counter[str] = Counter()
        prompts = [self.loaded.chat(rows[i]["question"], rows[i]["system"]) for i in kept]
        answers = [rows[i]["answer"] for i in kept]
        n_truncated = 0
        for indices, pooled in iter_pooled(
            self.loaded, prompts, answers, token_budget=self.token_budget, progress=self.progress
        ):
            n_truncated += pooled.n_truncated
            polarity = torch.tensor([rows[kept[j]]["polarity"] == "pos" for j in indices])
            counts.update(rows[kept[j]]["polarity"] for j in indices)
            for kind in KINDS:
                acts = pooled.kind(kind).double()
                sums[kind, "pos"] += acts[polarity].sum(0)
                sums[kind, "neg"] += acts[~polarity].sum(0)
        metadata = {
            "model": self.loaded.identity.to_dict(),
            "n_positive": counts["pos"],
            "n_negative": counts["neg"],
            "judge": self.manifest["judge"],
            "generation": self.manifest["generation"],
            "selection": self.manifest["selection"],
            "trait_sha256": self.manifest["trait_sha256"],
        }
        vectors = {
            kind: PersonaVector(
                trait=self.trait.name,
                tensor=sums[kind, "pos"] / counts["pos"] - sums[kind, "neg"] / counts["neg"],
                kind=kind,
                metadata=metadata,
            )
            for kind in KINDS
        }
        save_vectors(self.vector_path, list(vectors.values()))
        norms = vectors["response-avg"].tensor.norm(dim=1)
        self._stage("vectors", started, truncated=n_truncated, norms=[round(float(x), 4) for x in norms])
        return vectors

    def sweep(self, vectors: dict[str, PersonaVector]) -> dict[str, PersonaVector]:
        """Steer each candidate layer on the evaluation questions, judge, store the best layer."""
        path = self.dir / "sweep.json"
        if path.exists():
            self._found("sweep", chosen=_read_json(path)["chosen"])
        judge = self.judge
        if judge is None or path.exists() or self.config.layers == ():
            return vectors
        started = time.perf_counter()
        c = self.config
        vector = vectors["response-avg"]
        layers = c.layers or default_layers(vector.n_layers)
        cache = self._cache()
        sizes = Sizes(questions=c.sweep_questions, max_new_tokens=c.max_new_tokens, batch_size=c.batch_size)

        def judged(name: str, setting: Setting) -> dict[str, Any]:
            return evaluate(
                self.loaded,
                self.trait,
                judge,
                cache,
                self.dir / "sweep" / f"{name}.jsonl",
                vector,
                setting,
                sizes,
                self.progress,
            )

        baseline = judged("baseline", Setting(None, 0.0))
        results = [judged(f"layer-{layer}", Setting(layer, c.coef)) for layer in layers]
        sign = 1.0 if c.coef > 0 else -1.0
        scored = [r for r in results if r["trait"] is not None]
        if not scored:
            raise PersonavecError("the judge scored no steered answer in the layer sweep; check the judge")
        chosen = max(scored, key=lambda r: sign * r["trait"])["layer"]
        sweep = {
            "coef": c.coef,
            "kind": vector.kind,
            "baseline": baseline,
            "layers": results,
            "chosen": chosen,
        }
        for v in vectors.values():
            v.layer = chosen
            v.metadata["layer_choice"] = {"method": "sweep", "coef": c.coef, "layers": list(layers)}
        save_vectors(self.vector_path, list(vectors.values()))
        write_json(path, sweep)
        self._stage("sweep", started, chosen=chosen)
        return vectors


def extract(
    loaded: LoadedModel,
    trait: TraitSpec,
    judge: Judge | None,
    out: str | Path,
    config: ExtractConfig | None = None,
    force: bool = False,
    progress: bool = True,
    token_budget: int = 16384,
) -> ExtractResult:
    """Run (or resume) the pipeline into the run directory `out`; return the vectors and the manifest.

    `judge` None keeps every answer (no filter) and skips the layer sweep: the vectors then carry no
    chosen layer. A directory made for another model, trait or generation setting is refused unless
    `force` (which starts it over, keeping the judge cache); another judge or filter/sweep setting
    redoes only the stages after generation.
    """
    config = config or ExtractConfig()
    config.check(trait, loaded.identity.n_layers)
    run = _Run(loaded, trait, judge, Path(out), config, progress, token_budget)
    run.open(force)
    rows = run.generations()
    scores = run.judgements(rows)
    kept = run.filter(rows, scores)
    vectors = run.sweep(run.vectors(rows, kept))
    return ExtractResult(dir=run.dir, vectors=vectors, manifest=run.manifest)
