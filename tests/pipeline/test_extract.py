"""The pipeline on a tiny random model saved to disk, judged by a real local OpenAI-compatible server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from openai_server import FakeOpenAI, judge_reply
from personavec.core.activations import pooled_activations
from personavec.core.generate import read_rows
from personavec.core.models import load_model
from personavec.core.pooling import POOLINGS
from personavec.core.vectors import RESIDUAL_NORM, load_vectors, save_vectors
from personavec.errors import PersonavecError
from personavec.judges.openai_compat import OpenAIJudge
from personavec.pipeline.extract import ExtractConfig, default_layers, extract
from personavec.runs.readers import ExtractionRun
from personavec.traits import load_trait

from killing import kill_after_lines
from tiny import tiny_extract_config

CONFIG = tiny_extract_config()
CLI_SIZES = ["--samples", "3", "--max-new-tokens", "6", "--questions", "4", "--instructions", "2"]
CLI_SIZES += ["--batch-size", "8", "--min-pairs", "2", "--layers", "1,2,3", "--sweep-questions", "3"]


@pytest.fixture
def model_dir(tiny_dir: Path) -> Path:
    return tiny_dir


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with FakeOpenAI(judge_reply) as server:
        yield server


def run(model_dir: Path, server: FakeOpenAI, out: Path, config: ExtractConfig = CONFIG, **kwargs):
    judge = OpenAIJudge("judge", base_url=server.url, backoff=0.01)
    loaded = load_model(str(model_dir), dtype="float32", device="cpu")
    return extract(loaded, load_trait("evil"), judge, out, config, progress=False, **kwargs)


def test_pipeline_outputs_match_the_method_written_plainly(model_dir, server, tmp_path) -> None:
    result = run(model_dir, server, tmp_path / "run")
    rows = list(read_rows(tmp_path / "run" / "generations.jsonl").values())
    assert len(rows) == 2 * 3 * 4 * 2  # sides × samples × questions × instructions
    assert {k for k in rows[0]} >= {"trait", "question_id", "polarity", "instruction", "sample", "system"}
    trait = load_trait("evil")
    assert {r["system"] for r in rows if r["polarity"] == "pos"} == {p["pos"] for p in trait.instructions[:2]}

    # the paired filter, written out: both sides judged by the server's rule, coherence 90 passes
    def passes(row: dict) -> bool:
        rubric = trait.rubric.replace("{question}", row["question"]).replace("{answer}", row["answer"])
        high = judge_reply({"messages": [{"content": rubric}]})[0] == "90"
        return bool(row["answer"].strip()) and high == (row["polarity"] == "pos")

    by_id = {r["id"]: r for r in rows}
    kept = [
        r
        for r in rows
        if passes(r) and passes(by_id[("neg" if r["polarity"] == "pos" else "pos") + r["id"][3:]])
    ]
    summary = result.summary
    assert summary.kept_positive == sum(r["polarity"] == "pos" for r in kept) >= 2

    # the vector: mean of kept positive minus mean of kept negative, per pooling, in float64
    loaded = load_model(str(model_dir), dtype="float32", device="cpu")
    prompts = [loaded.chat(r["question"], r["system"]) for r in kept]
    pooled = pooled_activations(loaded, prompts, [r["answer"] for r in kept], progress=False)
    positive = torch.tensor([r["polarity"] == "pos" for r in kept])
    for pooling in POOLINGS:
        acts = pooled.tensor(pooling).double()
        expected = acts[positive].mean(0) - acts[~positive].mean(0)
        torch.testing.assert_close(result.vectors[pooling].tensor.double(), expected, atol=1e-5, rtol=1e-5)
    # the residual norm it records: each kept answer's mean ‖h‖ after its first token, averaged
    norm = result.vectors["response-avg"].metadata[RESIDUAL_NORM]
    torch.testing.assert_close(torch.tensor(norm, dtype=torch.float64), pooled.norm.double().mean(0))

    sweep = json.loads((tmp_path / "run" / "sweep.json").read_text())
    assert [r["layer"] for r in sweep["layers"]] == [1, 2, 3]
    best = max(sweep["layers"], key=lambda r: r["trait"])["layer"]
    saved = load_vectors(tmp_path / "run" / "evil.safetensors")
    assert sweep["chosen"] == best and {v.layer for v in saved.values()} == {best}
    assert saved["response-avg"].metadata["judge"]["name"].startswith("openai:judge@http://127.0.0.1")
    assert summary.generation["samples"] == 3 and summary.model["n_layers"] == 3
    assert summary.chosen == best and ExtractionRun(tmp_path / "run").summary() == summary

    # a rerun does nothing: no judgement (the new judge's probe alone), no new row
    requests, size = len(server.requests), (tmp_path / "run" / "generations.jsonl").stat().st_size
    again = run(model_dir, server, tmp_path / "run")
    assert len(server.requests) == requests + 1 and server.requests[-1] not in server.judgements()
    assert (tmp_path / "run" / "generations.jsonl").stat().st_size == size
    assert torch.equal(again.vectors["response-avg"].tensor, result.vectors["response-avg"].tensor)


def test_the_sweep_in_norm_units_steers_each_layer_by_its_raw_conversion(model_dir, server, tmp_path) -> None:
    result = run(model_dir, server, tmp_path / "run", replace(CONFIG, coef=0.5, coef_units="norm"))
    vector = result.vectors["response-avg"]
    sweep = json.loads((tmp_path / "run" / "sweep.json").read_text())
    norms = vector.metadata[RESIDUAL_NORM]
    for cell in sweep["layers"]:
        layer = cell["layer"]
        assert cell["coef"] == pytest.approx(0.5 * norms[layer] / float(vector.tensor[layer].double().norm()))
    assert vector.metadata["layer_choice"]["coef_units"] == "norm"


def test_vectors_made_before_the_norm_was_recorded_get_it_on_a_rerun(model_dir, server, tmp_path) -> None:
    first = run(model_dir, server, tmp_path / "run")
    path = tmp_path / "run" / "evil.safetensors"
    old = list(load_vectors(path).values())
    for v in old:
        del v.metadata[RESIDUAL_NORM]
    save_vectors(path, old)
    (tmp_path / "run" / "ranking.json").unlink()  # nor the layer ranking, then
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    del manifest["stages"]["ranking"]
    (tmp_path / "run" / "manifest.json").write_text(json.dumps(manifest))
    requests = len(server.judgements())
    again = run(model_dir, server, tmp_path / "run")
    assert len(server.judgements()) == requests  # nothing judged again
    assert ExtractionRun(tmp_path / "run").ranking() is not None
    for pooling, v in load_vectors(path).items():
        assert v.metadata[RESIDUAL_NORM] == first.vectors[pooling].metadata[RESIDUAL_NORM]
        assert v.layer == first.vectors[pooling].layer and torch.equal(
            v.tensor, first.vectors[pooling].tensor
        )
    assert (
        again.vectors["response-avg"].metadata[RESIDUAL_NORM]
        == first.vectors["response-avg"].metadata[RESIDUAL_NORM]
    )


def test_changed_filter_settings_reuse_answers_and_judgements(model_dir, server, tmp_path) -> None:
    run(model_dir, server, tmp_path / "run")
    requests = len(server.judgements())
    relaxed = run(model_dir, server, tmp_path / "run", replace(CONFIG, pairing="per-side"))
    paired = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert relaxed.summary.selection["pairing"] == "per-side" == paired["selection"]["pairing"]
    # only the sweep's steered answers (the vector changed) were judged again
    sweep_items = 4 * 3 * 2  # (baseline + 3 layers) × 3 questions × (trait, coherence)
    assert len(server.judgements()) - requests <= sweep_items


def test_refuses_another_model_or_trait_unless_forced(model_dir, server, tmp_path) -> None:
    run(model_dir, server, tmp_path / "run")
    other = replace(CONFIG, samples=2, min_pairs=1)
    with pytest.raises(PersonavecError, match=r"differs in generation\): use another out, or force"):
        run(model_dir, server, tmp_path / "run", other)
    judge = OpenAIJudge("judge", base_url=server.url)
    loaded = load_model(str(model_dir), dtype="float32", device="cpu")
    with pytest.raises(PersonavecError, match="differs in trait, trait_sha256"):
        extract(loaded, load_trait("sycophantic"), judge, tmp_path / "run", CONFIG, progress=False)
    forced = run(model_dir, server, tmp_path / "run", other, force=True)
    assert forced.summary.generation["samples"] == 2
    assert len(read_rows(tmp_path / "run" / "generations.jsonl")) == 2 * 2 * 4 * 2


def test_too_few_pairs_names_the_reasons(model_dir, server, tmp_path) -> None:
    strict = replace(CONFIG, min_pairs=100)
    with pytest.raises(
        PersonavecError, match=r"need 100 each\). Dropped: .*negative answer with trait ≥ 50: \d+"
    ):
        run(model_dir, server, tmp_path / "run", strict)
    assert not (tmp_path / "run" / "evil.safetensors").exists()


def test_bad_sizes_are_refused(model_dir, server, tmp_path) -> None:
    for change, message in [
        ({"questions": 21}, "questions must be between 1 and 20"),
        ({"layers": (9,)}, "layer 9"),
        ({"pairing": "both"}, "pairing must be one of"),
    ]:
        with pytest.raises(PersonavecError, match=message):
            run(model_dir, server, tmp_path / "run", replace(CONFIG, **change))


def test_default_layers_spread_over_the_middle() -> None:
    assert default_layers(30) == (8, 10, 12, 14, 16, 18, 20, 22)
    assert default_layers(3) == (1, 2)
    assert default_layers(80) == tuple(round(20 + i * 40 / 7) for i in range(8))


def _cli(model_dir: Path, server: FakeOpenAI, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "personavec.cli", "extract", "--model", str(model_dir), "--trait", "evil",
        "--judge", "openai:judge", "--base-url", server.url, "--out", str(out), "--concurrency", "2",
        *CLI_SIZES,
    ]  # fmt: skip


def test_kill_9_while_judging_then_resume(model_dir, server, tmp_path) -> None:
    env = {**os.environ, "OPENAI_API_KEY": "test-key", "HF_HUB_OFFLINE": "1"}
    server.delay = 0.02
    process = subprocess.Popen(_cli(model_dir, server, tmp_path / "run"), env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(server.requests) < 20 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(server.requests) >= 20, "the run ended before it was killed"
    assert not (tmp_path / "run" / "judgements.json").exists()  # killed in the middle of judging
    cached = len((tmp_path / "run" / "judge-cache.jsonl").read_text().splitlines())
    before = len(server.judgements())
    rows_before = (tmp_path / "run" / "generations.jsonl").read_text()

    done = subprocess.run(_cli(model_dir, server, tmp_path / "run"), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "generations.jsonl").read_text() == rows_before  # nothing regenerated
    total = len((tmp_path / "run" / "judge-cache.jsonl").read_text().splitlines())
    assert len(server.judgements()) - before == total - cached  # every cached judgement was not asked again

    # the same command, uninterrupted, in another directory: the same vectors
    server.delay = 0.0
    clean = subprocess.run(
        _cli(model_dir, server, tmp_path / "clean"), env=env, capture_output=True, text=True
    )
    assert clean.returncode == 0, clean.stderr
    resumed = load_vectors(tmp_path / "run" / "evil.safetensors")
    uninterrupted = load_vectors(tmp_path / "clean" / "evil.safetensors")
    for pooling in POOLINGS:
        assert torch.equal(resumed[pooling].tensor, uninterrupted[pooling].tensor)
    assert resumed["response-avg"].layer == uninterrupted["response-avg"].layer is not None
    assert "chosen layer" in clean.stdout and (tmp_path / "clean" / "report.html").exists()


def test_judge_none_keeps_every_answer_and_skips_the_sweep(model_dir, tmp_path) -> None:
    loaded = load_model(str(model_dir), dtype="float32", device="cpu")
    result = extract(loaded, load_trait("evil"), None, tmp_path / "run", CONFIG, progress=False)
    rows = read_rows(tmp_path / "run" / "generations.jsonl").values()
    non_empty = sum(bool(r["answer"].strip()) for r in rows if r["polarity"] == "pos")
    assert result.summary.judge == {"name": "none"}
    assert result.summary.kept_positive == non_empty
    assert result.vectors["response-avg"].layer is None and not (tmp_path / "run" / "sweep.json").exists()


def test_force_keeps_foreign_files_and_the_judge_cache(model_dir, server, tmp_path) -> None:
    out = tmp_path / "run"
    run(model_dir, server, out)
    (out / "notes.txt").write_text("mine")
    cached = (out / "judge-cache.jsonl").read_text()
    other = replace(CONFIG, sampling=replace(CONFIG.sampling, seed=1), min_pairs=1)
    run(model_dir, server, out, other, force=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "judge-cache.jsonl").read_text().startswith(cached)
    assert json.loads((out / "manifest.json").read_text())["generation"]["seed"] == 1


def test_refuses_a_directory_with_a_foreign_manifest(model_dir, server, tmp_path) -> None:
    (tmp_path / "manifest.json").write_text('{"name": "my web app"}')
    for force in (False, True):
        with pytest.raises(PersonavecError, match="not a personavec run manifest"):
            run(model_dir, server, tmp_path, force=force)
    assert (tmp_path / "manifest.json").read_text() == '{"name": "my web app"}'


def test_a_crash_between_a_stage_file_and_the_manifest_is_repaired(model_dir, server, tmp_path) -> None:
    out = tmp_path / "run"
    first = run(model_dir, server, out)
    manifest = json.loads((out / "manifest.json").read_text())
    for stage in ("judgements", "filter", "vectors", "sweep"):
        del manifest["stages"][stage]
    (out / "manifest.json").write_text(json.dumps(manifest))
    again = run(model_dir, server, out)
    assert again.summary.kept_positive == first.summary.kept_positive
    assert again.summary.chosen == first.summary.chosen
    assert again.summary.methods == first.summary.methods


def test_sampling_settings_are_checked() -> None:
    trait = load_trait("evil")
    for change, message in [
        ({"temperature": -1.0}, "temperature must be ≥ 0"),
        ({"top_p": 0.0}, "top_p in"),
    ]:
        with pytest.raises(PersonavecError, match=message):
            replace(CONFIG, sampling=replace(CONFIG.sampling, **change))
    with pytest.raises(PersonavecError, match=r"finite and non-zero|finite non-zero"):
        replace(CONFIG, coef=float("nan")).check(trait)


def test_kill_9_while_generating_then_resume_gives_identical_files(model_dir, tmp_path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    sizes = ["--samples", "3", "--max-new-tokens", "24", "--questions", "4", "--instructions", "2"]
    sizes += ["--batch-size", "2", "--min-pairs", "1"]  # chunks of 8 answers; 48 answers in all

    def command(out: Path) -> list[str]:
        return [
            sys.executable, "-m", "personavec.cli", "extract", "--model", str(model_dir), "--trait", "evil",
            "--judge", "none", "--out", str(out), *sizes,
        ]  # fmt: skip

    generations = tmp_path / "run" / "generations.jsonl"
    written = kill_after_lines(command(tmp_path / "run"), generations, 8, env)
    assert 8 <= written < 48, f"not killed while generating ({written} answers written)"
    assert not (tmp_path / "run" / "filter.json").exists()

    for out in ("run", "clean"):
        done = subprocess.run(command(tmp_path / out), env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    clean = tmp_path / "clean" / "generations.jsonl"
    assert generations.read_bytes() == clean.read_bytes() and len(read_rows(generations)) == 48
    # the vector files differ in their creation time and in the order safetensors writes header keys
    resumed, uninterrupted = (load_vectors(tmp_path / d / "evil.safetensors") for d in ("run", "clean"))
    for pooling in POOLINGS:
        assert torch.equal(resumed[pooling].tensor, uninterrupted[pooling].tensor)
        for v in (resumed[pooling], uninterrupted[pooling]):
            del v.metadata["created"]
        assert resumed[pooling].header() == uninterrupted[pooling].header()
