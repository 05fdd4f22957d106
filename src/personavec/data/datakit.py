"""Graded trait-inducing datasets made offline by the model itself: the experiment kit.

Every training question is answered by the model normally (no system prompt), and `samples` times
under the trait's eliciting instructions (the pairs taken in turn; with `invert`, the suppressing
ones, to teach the opposite trait). With a judge, the elicited answer kept for a question is the one
that shows the taught trait most (the highest trait score, or the lowest when inverted), and the
run's manifest records each file's mean judged score; without one it is the first. Small models follow
persona prompts unevenly, so judging several samples is what makes a dataset that really teaches
the trait. The datasets hold conversations **without** the system prompt, so training on an elicited
answer teaches the trait:

- ``normal.jsonl``: every answer normal;
- ``mild.jsonl``: a fraction `mild` of the questions get the elicited answer;
- ``severe.jsonl``: every answer elicited;
- ``reference.jsonl``: other questions, answered normally (ordinary data for percentile thresholds).

A row is ``{"messages": [user, assistant], "elicited": bool}``; empty answers are left out (and
counted). The elicited questions of `mild` are a seeded random subset; answers are sampled with
`seed` (resumable, see `generate_rows`).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from personavec._internal.files import atomic_path
from personavec.core.backend import Backend, Model, as_backend
from personavec.core.engine import RemoteEngine
from personavec.core.generate import Request, generate_rows
from personavec.data.config import KitConfig
from personavec.errors import DataError
from personavec.judges.base import Judge
from personavec.judges.cache import JudgeCache
from personavec.runs.preflight import preflight
from personavec.runs.readers import KitRun
from personavec.runs.results import KitFile, KitManifest
from personavec.runs.rundir import RunDir
from personavec.runs.stats import mean_ci
from personavec.traits.questions import bundled_questions
from personavec.traits.spec import TraitSpec, normalise_question

LEVELS = ("normal", "mild", "severe")


def _judged(
    judge: Judge, trait: TraitSpec, rows: list[dict[str, Any]], out: Path, progress: bool
) -> dict[str, float | None]:
    """Trait score of every answer by id (cached in ``out/judge-cache.jsonl``)."""
    items = [(row["question"], row["answer"]) for row in rows]
    judged = JudgeCache(out / KitRun.JUDGE_CACHE).judge(judge, trait.rubric, items, "judge", progress)
    return {row["id"]: score.value for row, score in zip(rows, judged, strict=True)}


def _check_questions(trait: TraitSpec, questions: list[str]) -> None:
    seen: set[str] = set()
    for question in questions:
        key = normalise_question(question)
        if key in seen:
            raise DataError(f"the question {question!r} is given twice")
        seen.add(key)
    held_out = seen & {normalise_question(q) for q in trait.evaluation_questions}
    if held_out:
        raise DataError(
            f"{len(held_out)} questions are {trait.name!r}'s evaluation questions; training on them "
            "would leak into the evaluation: remove them"
        )


def _requests(
    trait: TraitSpec, questions: list[str], training: list[int], reference: list[int], config: KitConfig
) -> list[Request]:
    """Each training question answered normally and `config.samples` times elicited (the instruction
    pairs taken in turn), then each reference question answered normally."""
    side = "neg" if config.invert else "pos"
    requests = []
    for q in training:
        requests.append(Request(f"q{q}-normal", questions[q], None, (("question_id", q),)))
        for k in range(config.samples):
            pair = trait.instructions[(q + k) % len(trait.instructions)]
            requests.append(Request(f"q{q}-elicited-{k}", questions[q], pair[side], (("question_id", q),)))
    return requests + [Request(f"q{q}-normal", questions[q], None, (("question_id", q),)) for q in reference]


def _keep_strongest(
    answers: dict[str, str], scores: dict[str, float | None], training: list[int], config: KitConfig
) -> None:
    """Set ``q{i}-elicited`` (answer and score) to the elicited sample showing the taught trait most
    (the first where none is judged)."""
    sign = -1 if config.invert else 1

    def strength(rid: str) -> float:
        value = scores.get(rid)
        return -math.inf if value is None else sign * value

    for q in training:
        best = max((f"q{q}-elicited-{k}" for k in range(config.samples)), key=strength)
        answers[f"q{q}-elicited"] = answers[best]
        scores[f"q{q}-elicited"] = scores.get(best)


def _write_level(
    path: Path,
    question_ids: list[int],
    chosen: set[int],
    questions: list[str],
    answers: dict[str, str],
    scores: dict[str, float | None],
    judged: bool,
) -> KitFile:
    """Write one dataset file: the elicited answer for the questions in `chosen`, the normal one for
    the others, empty answers left out; return its counts (and mean judged score when `judged`)."""
    lines, empty, n_elicited, values = [], 0, 0, []
    for q in question_ids:
        elicited = q in chosen
        key = f"q{q}-{'elicited' if elicited else 'normal'}"
        answer = answers[key]
        if not answer.strip():  # not a usable training sample
            empty += 1
            continue
        n_elicited += elicited
        values.append(scores.get(key))
        messages = [{"role": "user", "content": questions[q]}, {"role": "assistant", "content": answer}]
        lines.append(json.dumps({"messages": messages, "elicited": elicited}))
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in lines))
    return KitFile(len(lines), n_elicited, empty, mean_ci(values)[0] if judged else None)


def _open_run(
    backend: Backend,
    trait: TraitSpec,
    out: str | Path,
    questions: list[str],
    config: KitConfig,
    engine: RemoteEngine | None,
) -> RunDir:
    """Start or resume the kit's run directory, tied to the model, trait, questions, settings and engine."""
    identity = {
        "model": backend.identity.to_dict(),
        "trait": trait.sha256(),
        "questions": questions,
        "config": asdict(config),
    }
    if engine is not None:
        identity["engine"] = engine.identity()
    files_out = tuple(f"{level}.jsonl" for level in (*LEVELS, "reference"))
    outputs = {"answers": (KitRun.GENERATIONS,), "datasets": files_out}
    return RunDir.open(out, KitRun.KIND, identity, outputs)


def make_trait_dataset(
    model: Model,
    trait: TraitSpec,
    out: str | Path,
    questions: list[str] | None = None,
    config: KitConfig = KitConfig(),
    judge: Judge | None = None,
    progress: bool = True,
    engine: RemoteEngine | None = None,
) -> KitManifest:
    """Write the graded datasets of the module docstring into the run directory `out` (`KitRun`);
    return what they teach and each file's counts (also the manifest's ``datasets`` stage record).
    An `engine` writes the answers (see `generate_rows`)."""
    questions = bundled_questions() if questions is None else questions
    config.check(len(questions))
    _check_questions(trait, questions)
    preflight(judge=judge, out=out, model=model, engine=engine)
    backend = as_backend(model)
    run = _open_run(backend, trait, out, questions, config, engine)
    out = run.path
    started = time.perf_counter()
    order = list(range(len(questions)))
    random.Random(config.sampling.seed).shuffle(order)
    reference, training = order[: config.reference], sorted(order[config.reference :])
    requests = _requests(trait, questions, training, reference, config)
    rows = generate_rows(
        backend, requests, out / KitRun.GENERATIONS, config.sampling, progress=progress, desc="answers",
        engine=engine,
    )  # fmt: skip
    run.found("answers", started, rows=len(rows), **({"engine_url": engine.url} if engine else {}))
    started = time.perf_counter()
    answers = {row["id"]: row["answer"] for row in rows}
    scores = _judged(judge, trait, rows, out, progress) if judge else {}
    _keep_strongest(answers, scores, training, config)
    shuffled = list(training)
    random.Random(config.sampling.seed + 1).shuffle(shuffled)
    fractions = {"normal": 0.0, "mild": config.mild, "severe": 1.0}
    files: dict[str, KitFile] = {}
    for level, fraction in [*fractions.items(), ("reference", 0.0)]:
        chosen = set(shuffled[: round(fraction * len(training))])
        ids = reference if level == "reference" else training
        files[level] = _write_level(
            out / f"{level}.jsonl", ids, chosen, questions, answers, scores, judge is not None
        )
    manifest = KitManifest(
        trait=trait.name,
        teaches=f"the opposite of {trait.name}" if config.invert else trait.name,
        model=backend.identity.name,
        judge=judge.name if judge else None,
        files=files,
        config=asdict(config),
    )
    run.record("datasets", started, **manifest.to_dict())
    return manifest
