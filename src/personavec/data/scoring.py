"""The scoring pass of a screening: the projection difference ΔP per sample and per dataset.

For a sample (x, y) and a persona vector v (the Method page of the docs, step 12)::

    ΔP = a(x, y)·v̂ − a(x, y′)·v̂

where a is the response-avg activation at the vector's layer, y the dataset's answer and y′ the
model's own greedy answer to x. A dataset's ΔP is the mean over its samples. A positive ΔP means
training on the sample would push the model towards the trait.

``approx="prompt-last"`` generates no y′: its projection is estimated by the prompt-last
projection of x, which predicts the trait of the answer the model is about to give (step 9). That
is one forward pass per sample; its values are on another scale than the full ΔP, so compare
rankings, and datasets screened the same way.

The work goes chunk by chunk (``chunk_size`` rows). Each chunk's own answers and scores are files
written atomically under ``out/chunks``, so a crash loses at most the chunk in progress and a rerun
resumes. Under ``accelerate launch``, process r takes chunks r, r + n, r + 2n, ...; the main
process then merges them into ``out/scores.jsonl``. One forward pass serves every vector.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jinja2 import TemplateError
from tqdm.auto import tqdm

from personavec._internal.deprecation import renamed
from personavec._internal.dist import process_state
from personavec._internal.files import atomic_path, write_json
from personavec.core.activations import iter_pooled
from personavec.core.backend import Backend, as_backend
from personavec.core.engine import RemoteEngine
from personavec.core.generate import generate
from personavec.core.hf import tokenizer_of
from personavec.core.models import LoadedModel
from personavec.core.vectors import PersonaVector
from personavec.data.config import ScreenConfig
from personavec.data.samples import BadRow, DataFile, Sample
from personavec.deploy.monitor import Readout
from personavec.errors import ConfigError, DataError, RunDirError
from personavec.runs.readers import ScreeningRun
from personavec.runs.rundir import RunDir


@dataclass
class Screened:
    """What a screening found: counts, ΔP per trait, and where the files are."""

    out: Path
    traits: list[str]
    rows: int = 0
    scored: int = 0
    skipped: int = 0  # bad rows, prompts over max_length and empty own answers (with --on-bad-row skip)
    truncated: int = 0  # samples (or own answers) that lost their tail to max_length
    mean_delta: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # the first skipped rows, with why

    @property
    def scores(self) -> Path:
        return self.out / ScreeningRun.SCORES


def _chunks(items: Iterator[Sample | BadRow], size: int) -> Iterator[list[Sample | BadRow]]:
    chunk: list[Sample | BadRow] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass
class _Chunk:
    """A chunk on its way: the rows skipped so far, the usable samples and their prompts, and how to
    get their own answers y′ (None under `approx`; with an engine, already being generated)."""

    k: int
    rows: dict[int, dict[str, Any]]
    samples: list[Sample]
    prompts: list[str]
    own: Callable[[], list[str]] | None


class _Screener:
    def __init__(
        self,
        backend: Backend,
        vectors: Sequence[PersonaVector],
        out: Path,
        config: ScreenConfig,
        engine: RemoteEngine | None = None,
    ):
        self.backend, self.vectors, self.out, self.config, self.engine = backend, vectors, out, config, engine
        self.readout = Readout.of(vectors, config.layer)
        self.traits = [v.trait for v in vectors]

    def own_answers(self, k: int, samples: list[Sample], prompts: list[str]) -> Callable[[], list[str]]:
        """The model's greedy answers y′: from the chunk's cache file, or generated (sent to the engine
        now, generated locally when asked) and cached."""
        path = self.out / ScreeningRun.CHUNKS / f"{k:06d}.own.json"
        indices = [s.index for s in samples]
        if path.exists():
            cached = json.loads(path.read_text())
            if cached["indices"] == indices:
                return lambda: list(cached["answers"])
        sampling = self.config.sampling
        if self.engine is not None:
            pending = self.engine.submit(prompts, sampling, [sampling.seed] * len(prompts))
            generated = pending.result
        else:
            generated = lambda: generate(self.backend, prompts, sampling, progress=False)  # noqa: E731

        def cached_answers() -> list[str]:
            answers = generated()
            write_json(path, {"indices": indices, "answers": answers})
            return answers

        return cached_answers

    def skip(self, rows: dict[int, dict[str, Any]], item: Sample | BadRow, problem: str) -> None:
        """Record `item` as skipped for `problem`, or raise under ``on_bad_row="fail"``."""
        if self.config.on_bad_row == "fail":
            fields = ("on_bad_row", "max_length")  # a problem may name max_length
            raise DataError(f"{item.where}: {problem}; fix it or set on_bad_row skip", fields)
        rows[item.index] = {"index": item.index, "where": item.where, "skipped": problem}

    def usable(
        self, items: list[Sample | BadRow], rows: dict[int, dict[str, Any]]
    ) -> tuple[list[Sample], list[str]]:
        """The samples of `items` that can be scored and their prompts; the others skipped in `rows`."""
        max_length = self.config.max_length
        candidates, texts = [], []
        for item in items:
            if isinstance(item, BadRow):
                self.skip(rows, item, item.problem)
                continue
            try:
                texts.append(self.backend.chat(list(item.prompt)))
                candidates.append(item)
            except TemplateError as error:
                self.skip(rows, item, f"the chat template refuses this conversation ({error})")
        samples: list[Sample] = []
        prompts: list[str] = []
        for sample, text, n in zip(
            candidates, texts, [len(self.backend.encode(t)) for t in texts], strict=True
        ):
            if n + 1 > max_length:
                problem = f"the prompt has {n} tokens, no room for a response within max_length {max_length}"
                self.skip(rows, sample, problem)
            else:
                samples.append(sample)
                prompts.append(text)
        return samples, prompts

    def pool(self, chunk: _Chunk) -> tuple[list[str], list[str], dict[int, int]]:
        """One pass's prompts and responses: (x, y) for every sample, then (x, y′) for those whose own
        answer is not empty (without `approx`), and the row of each sample's (x, y′)."""
        samples, prompts, rows = chunk.samples, chunk.prompts, chunk.rows
        pool_prompts, pool_responses = list(prompts), [s.response.strip() for s in samples]  # as y′ is
        own_row: dict[int, int] = {}
        if chunk.own is None:
            return pool_prompts, pool_responses, own_row
        own = chunk.own()
        for j, (sample, prompt, answer) in enumerate(zip(samples, prompts, own, strict=True)):
            if answer.strip():
                own_row[j] = len(pool_prompts)
                pool_prompts.append(prompt)
                pool_responses.append(answer)
            else:  # not the data's fault: counted and reported whatever the policy
                rows[sample.index] = {
                    "index": sample.index,
                    "where": sample.where,
                    "skipped": "the model's own answer is empty",
                }
        return pool_prompts, pool_responses, own_row

    def project(
        self, prompts: list[str], responses: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Response-avg and prompt-last projections onto every vector, and whether each was truncated."""
        c = self.config
        response = torch.empty(len(prompts), len(self.vectors))
        prompt_last = torch.empty(len(prompts), len(self.vectors))
        truncated = torch.zeros(len(prompts), dtype=torch.bool)
        for indices, pooled in iter_pooled(
            self.backend, prompts, responses, token_budget=c.token_budget,
            max_length=c.max_length, progress=False, layers=self.readout.layers,
        ):  # fmt: skip
            index = torch.tensor(indices)
            assert pooled.response_avg is not None
            response[index] = self.readout.project(pooled.response_avg)
            prompt_last[index] = self.readout.project(pooled.prompt_last)
            truncated[index] = pooled.truncated
        return response, prompt_last, truncated

    def start(self, k: int, items: list[Sample | BadRow]) -> _Chunk:
        """Chunk `k`'s usable samples, their own answers on their way (with an engine, being generated
        while the caller scores the chunk before)."""
        rows: dict[int, dict[str, Any]] = {}
        samples, prompts = self.usable(items, rows)
        wanted = samples and self.config.approx is None
        return _Chunk(k, rows, samples, prompts, self.own_answers(k, samples, prompts) if wanted else None)

    def score_chunk(self, chunk: _Chunk) -> list[dict[str, Any]]:
        """Score rows (each a dict for ``scores.jsonl``), in input order."""
        c = self.config
        rows, samples = chunk.rows, chunk.samples
        if not samples:
            return [rows[i] for i in sorted(rows)]
        pool_prompts, pool_responses, own_row = self.pool(chunk)
        response, prompt_last, truncated = self.project(pool_prompts, pool_responses)
        for j, sample in enumerate(samples):
            if sample.index in rows:  # skipped above (empty own answer)
                continue
            baseline = response[own_row[j]] if c.approx is None else prompt_last[j]
            row: dict[str, Any] = {"index": sample.index, "where": sample.where}
            row["delta"] = dict(zip(self.traits, (response[j] - baseline).tolist(), strict=True))
            row["response"] = dict(zip(self.traits, response[j].tolist(), strict=True))
            if c.approx is None:
                row["own"] = dict(zip(self.traits, baseline.tolist(), strict=True))
            row["prompt_last"] = dict(zip(self.traits, prompt_last[j].tolist(), strict=True))
            row["truncated"] = bool(truncated[j]) or (c.approx is None and bool(truncated[own_row[j]]))
            rows[sample.index] = row
        return [rows[i] for i in sorted(rows)]

    def score_all(self, data: DataFile, rank: int, processes: int, done: Callable[[], object]) -> None:
        """Score and write this process's chunks (k ≡ `rank` mod `processes`) not written yet, calling
        `done` after each. A chunk's own answers are started before the chunk before it is scored:
        with an engine, they are generated meanwhile."""
        waiting: _Chunk | None = None
        for k, items in enumerate(_chunks(data.samples(), self.config.chunk_size)):
            if k % processes != rank:
                continue
            if (self.out / ScreeningRun.CHUNKS / f"{k:06d}.jsonl").exists():
                done()
                continue
            chunk = self.start(k, items)
            if waiting is not None:
                self.write(waiting)
                done()
            waiting = chunk
        if waiting is not None:
            self.write(waiting)
            done()

    def write(self, chunk: _Chunk) -> None:
        """Score `chunk` into its file."""
        rows = self.score_chunk(chunk)
        with atomic_path(self.out / ScreeningRun.CHUNKS / f"{chunk.k:06d}.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _identity(
    backend: Backend,
    vectors: Sequence[PersonaVector],
    data: DataFile,
    config: ScreenConfig,
    engine: RemoteEngine | None,
) -> dict[str, Any]:
    # batching may change on a resume (say, after running out of memory): it moves the last bits only
    settings = {k: v for k, v in asdict(config).items() if k not in ("on_bad_row", "token_budget")}
    settings["sampling"] = {k: v for k, v in settings["sampling"].items() if k != "batch_size"}
    identity = {
        "model": {**backend.identity.to_dict(), "dtype": backend.dtype},
        "vectors": [{"trait": v.trait, "kind": v.pooling, "fingerprint": v.fingerprint()} for v in vectors],
        "data": {"path": str(data.path), "sha256": data.sha256(), "columns": asdict(data.columns)},
        "config": settings,
    }
    if engine is not None and config.approx is None:  # the engine writes the own answers y′
        identity["engine"] = engine.identity()
    return identity


def count_rows(data: DataFile, config: ScreenConfig) -> int:
    """The number of rows; under the fail policy, an error if any is bad (before any model work)."""
    census = data.census
    if census.first_bad and config.on_bad_row == "fail":
        raise DataError(
            f"{census.bad} bad row{'s' * (census.bad > 1)} in {data.path} (first: {census.first_bad}); "
            "fix them or pass --on-bad-row skip"
        )
    return census.rows


def check_engine(config: ScreenConfig, engine: RemoteEngine | None) -> None:
    """An engine writes the own answers y′, which an approximate pass does not make: refused together."""
    if engine is not None and config.approx is not None:
        raise ConfigError("approx generates no own answers: drop engine, or approx", ("approx", "engine"))


def score_samples(
    model: Backend | LoadedModel,
    vectors: Sequence[PersonaVector],
    data: DataFile,
    out: str | Path,
    config: ScreenConfig = ScreenConfig(),
    progress: bool = True,
    engine: RemoteEngine | None = None,
) -> Screened:
    """Score every sample of `data` against every vector into ``out/scores.jsonl``; resumable.

    Rows of ``scores.jsonl`` are in input order: ``index``, ``where``, and per trait ``delta`` (ΔP),
    ``response`` (a(x, y)·v̂), ``own`` (a(x, y′)·v̂; full mode only) and ``prompt_last``; or
    ``skipped`` with the reason. With an `engine`, it writes the own answers y′ (checked first;
    `RemoteEngine.check`), chunk k + 1's while chunk k is scored here.
    """
    if not vectors:
        raise ConfigError("no vectors given")
    traits = [v.trait for v in vectors]
    if len(set(traits)) != len(traits):
        raise ConfigError(f"two vectors for one trait ({', '.join(traits)}); give each trait once")
    check_engine(config, engine)
    backend = as_backend(model)
    for vector in vectors:
        vector.check_model(backend.identity)
    if engine is not None:
        engine.check(tokenizer_of(backend))
    out = Path(out)
    state = process_state()
    n_rows = count_rows(data, config)
    if n_rows == 0:
        raise DataError(f"{data.path} has no rows")
    run = None
    if state.is_main_process:
        outputs = {"scores": (ScreeningRun.CHUNKS, ScreeningRun.SCORES, ScreeningRun.SUMMARY)}
        identity = _identity(backend, vectors, data, config, engine)
        run = RunDir.open(out, ScreeningRun.KIND, identity, outputs)
    started = time.perf_counter()
    state.wait_for_everyone()
    screener = _Screener(backend, vectors, out, config, engine)
    n_chunks = math.ceil(n_rows / config.chunk_size)
    rank, processes = state.process_index, state.num_processes
    mine = len(range(rank, n_chunks, processes))
    with tqdm(total=mine, desc=f"screen {data.path.name}", unit="chunk", disable=not progress) as bar:
        screener.score_all(data, rank, processes, bar.update)
    state.wait_for_everyone()
    screened = _merge(out, traits, n_chunks, write=run is not None)
    if run is not None:
        run.record("scores", started, rows=screened.rows, scored=screened.scored, skipped=screened.skipped)
    return screened


def _chunk_lines(out: Path, n_chunks: int) -> Iterator[str]:
    for k in range(n_chunks):
        path = out / ScreeningRun.CHUNKS / f"{k:06d}.jsonl"
        if not path.exists():
            raise RunDirError(f"{path} is missing: a process stopped early; rerun to finish")
        yield from path.read_text().splitlines()


def _merge(out: Path, traits: list[str], n_chunks: int, write: bool) -> Screened:
    """Sum the chunk files up into a `Screened`; when `write`, also join them into ``scores.jsonl``."""
    result = Screened(out=out, traits=traits)
    sums = dict.fromkeys(traits, 0.0)

    def tally(lines: Iterator[str]) -> Iterator[str]:
        for line in lines:
            row = json.loads(line)
            result.rows += 1
            if "skipped" in row:
                result.skipped += 1
                if len(result.problems) < 20:
                    result.problems.append(f"{row['where']}: {row['skipped']}")
            else:
                result.scored += 1
                result.truncated += row["truncated"]
                for trait in traits:
                    sums[trait] += row["delta"][trait]
            yield line

    lines = tally(_chunk_lines(out, n_chunks))
    if write:
        with atomic_path(out / ScreeningRun.SCORES) as tmp, open(tmp, "w") as merged:
            merged.writelines(line + "\n" for line in lines)
    else:
        for _ in lines:
            pass
    result.mean_delta = {t: sums[t] / result.scored if result.scored else math.nan for t in traits}
    if write:
        write_json(out / ScreeningRun.SUMMARY, {**asdict(result), "out": str(out)})
    return result


def read_scores(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of a ``scores.jsonl``, in input order."""
    with open(path) as f:
        for line in f:
            yield json.loads(line)


def deltas(screened: Screened) -> dict[str, np.ndarray]:
    """ΔP of every scored sample, per trait (float64, input order)."""
    return {
        trait: np.fromiter(
            (row["delta"][trait] for row in read_scores(screened.scores) if "delta" in row), dtype=np.float64
        )
        for trait in screened.traits
    }


__getattr__ = renamed(__name__, {"screen": "score_samples"})
