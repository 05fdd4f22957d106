import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from personavec import PersonavecError
from personavec.cli import main
from personavec.core.models import format_chat, load_model
from personavec.core.sampling import Sampling
from personavec.core.vectors import PersonaVector, save_vectors
from personavec.data.config import ScreenConfig, Selection
from personavec.data.flagging import select
from personavec.data.samples import DataFile
from personavec.data.scoring import deltas, read_scores, score_samples

from tiny import tiny_loaded

CONFIG = ScreenConfig(chunk_size=4, sampling=Sampling(max_new_tokens=6, batch_size=4))
WORDS = ["lovely", "terrible", "bread", "weather", "happy", "gloomy", "history", "numbers"]


def rows(n: int) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"Tell me about the {WORDS[i % 8]} {i}"},
                {"role": "assistant", "content": " ".join(WORDS[(i * 3 + k) % 8] for k in range(1 + i % 5))},
            ]
        }
        for i in range(n)
    ]


def write(path: Path, data: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in data))
    return path


@pytest.fixture(scope="module")
def loaded():
    return tiny_loaded()


def vectors(loaded, layers=(1, 2), seed=0) -> list[PersonaVector]:
    generator = torch.Generator().manual_seed(seed)
    shape = (loaded.identity.n_layers + 1, loaded.identity.hidden_size)
    identity = loaded.identity.to_dict()
    return [
        PersonaVector(
            f"t{i}", torch.randn(shape, generator=generator), layer=layer, metadata={"model": identity}
        )
        for i, layer in enumerate(layers)
    ]


def pooled64(loaded, prompt: str, response: str, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean over the response tokens, last prompt token) of hidden_states[layer], in float64."""
    encoded = loaded.tokenizer(prompt + response, add_special_tokens=False, return_offsets_mapping=True)
    n_prompt = next(t for t, (_, end) in enumerate(encoded["offset_mapping"]) if end > len(prompt))
    with torch.no_grad():
        out = loaded.model(torch.tensor([encoded["input_ids"]]), output_hidden_states=True)
    hidden = out.hidden_states[layer][0].double()
    return hidden[n_prompt:].mean(0), hidden[n_prompt - 1]


def test_delta_p_equals_the_definition_in_float64(loaded, tmp_path) -> None:
    data = DataFile(write(tmp_path / "d.jsonl", rows(10)))
    vs = vectors(loaded)
    full = score_samples(loaded, vs, data, tmp_path / "full", CONFIG, progress=False)
    approx = score_samples(
        loaded, vs, data, tmp_path / "approx", ScreenConfig(chunk_size=4, approx="prompt-last"), False
    )
    own = {}
    for path in sorted((tmp_path / "full" / "chunks").glob("*.own.json")):
        cached = json.loads(path.read_text())
        own.update(zip(cached["indices"], cached["answers"], strict=True))
    scored = list(read_scores(full.scores))
    estimated = list(read_scores(approx.scores))
    assert len(scored) == 10 and all("delta" in row for row in scored)
    expected_means = {v.trait: 0.0 for v in vs}
    for i, row in enumerate(rows(10)):
        prompt = format_chat(loaded.tokenizer, row["messages"][:1])
        for vector in vs:
            unit = vector.at().double() / vector.at().double().norm()
            response, last = pooled64(loaded, prompt, row["messages"][1]["content"], vector.layer)
            own_response, _ = pooled64(loaded, prompt, own[i], vector.layer)
            delta = float((response - own_response) @ unit)  # ΔP = [a(x, y) − a(x, y′)]·v̂
            assert scored[i]["delta"][vector.trait] == pytest.approx(delta, abs=1e-5)
            assert scored[i]["response"][vector.trait] == pytest.approx(float(response @ unit), abs=1e-5)
            assert estimated[i]["delta"][vector.trait] == pytest.approx(
                float((response - last) @ unit), abs=1e-5
            )
            expected_means[vector.trait] += delta / 10
    assert full.mean_delta == pytest.approx(expected_means, abs=1e-5)
    assert json.loads((tmp_path / "full" / "summary.json").read_text())["scored"] == 10


def test_own_answer_is_the_models_greedy_answer(loaded, tmp_path) -> None:
    data = DataFile(write(tmp_path / "d.jsonl", rows(6)))
    score_samples(loaded, vectors(loaded), data, tmp_path / "full", CONFIG, progress=False)
    own = {}
    for path in sorted((tmp_path / "full" / "chunks").glob("*.own.json")):
        cached = json.loads(path.read_text())
        own.update(zip(cached["indices"], cached["answers"], strict=True))
    for i, row in enumerate(rows(6)):  # y′ = plain greedy decoding of x, one prompt at a time
        prompt = format_chat(loaded.tokenizer, row["messages"][:1])
        ids = loaded.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = loaded.model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
        expected = loaded.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
        assert own[i] == expected and expected


def test_many_vectors_in_one_pass_equal_one_pass_per_vector(loaded, tmp_path) -> None:
    data = DataFile(write(tmp_path / "d.jsonl", rows(9)))
    vs = vectors(loaded, layers=(1, 2, 1))
    together = deltas(score_samples(loaded, vs, data, tmp_path / "all", CONFIG, progress=False))
    for j, vector in enumerate(vs):
        alone = deltas(score_samples(loaded, [vector], data, tmp_path / f"v{j}", CONFIG, progress=False))
        assert torch.allclose(
            torch.tensor(together[vector.trait]), torch.tensor(alone[vector.trait]), atol=1e-6
        )


def test_filtering_writes_exactly_the_rows_the_scores_select(loaded, tmp_path) -> None:
    lines = [json.dumps(r) for r in rows(12)]
    data = DataFile(write(tmp_path / "d.jsonl", lines))
    vs = vectors(loaded)
    screened = score_samples(loaded, vs, data, tmp_path / "out", CONFIG, progress=False)
    values = deltas(screened)

    threshold = float(sorted([*values["t0"], *values["t1"]])[16])
    summary = select(screened, data, Selection(threshold=threshold))
    want = [i for i in range(12) if values["t0"][i] > threshold or values["t1"][i] > threshold]
    assert 0 < len(want) < 12
    flagged = (tmp_path / "out" / "flagged.jsonl").read_text().splitlines()
    kept = (tmp_path / "out" / "kept.jsonl").read_text().splitlines()
    assert flagged == [lines[i] for i in want]
    assert kept == [lines[i] for i in range(12) if i not in want]
    assert summary.counts == {"kept": 12 - len(want), "flagged": len(want), "skipped": 0}
    marks = [row["flagged"] for row in read_scores(screened.scores)]
    assert [i for i, m in enumerate(marks) if m] == want

    select(screened, data, Selection(top=1))
    top = {int(i) for t in ("t0", "t1") for i in sorted(range(12), key=lambda i: -values[t][i])[:1]}
    flagged = (tmp_path / "out" / "flagged.jsonl").read_text().splitlines()
    assert flagged == [lines[i] for i in sorted(top)]


def test_percentile_of_a_reference_dataset(loaded, tmp_path) -> None:
    data = DataFile(write(tmp_path / "d.jsonl", rows(8)))
    reference_data = DataFile(write(tmp_path / "ref.jsonl", rows(20)[8:]))
    vs = vectors(loaded, layers=(2,))
    screened = score_samples(loaded, vs, data, tmp_path / "out", CONFIG, progress=False)
    reference = score_samples(loaded, vs, reference_data, tmp_path / "ref", CONFIG, progress=False)
    summary = select(screened, data, Selection(percentile=75), reference)
    ref_values = torch.tensor(deltas(reference)["t0"], dtype=torch.float64)
    threshold = float(torch.quantile(ref_values, 0.75))  # numpy's default linear interpolation
    assert summary.thresholds["t0"] == pytest.approx(threshold)
    assert summary.counts["flagged"] == int((torch.tensor(deltas(screened)["t0"]) > threshold).sum())
    with pytest.raises(PersonavecError, match="percentile needs reference"):
        select(screened, data, Selection(percentile=75))
    with pytest.raises(PersonavecError, match="choose one of"):
        select(screened, data, Selection(top=1, threshold=0.0))
    write(data.path, rows(9)[1:])  # the same number of rows, other contents
    with pytest.raises(PersonavecError, match="changed since it was screened"):
        select(screened, data, Selection(top=1))


def test_bad_rows_fail_with_the_count_or_are_skipped(loaded, tmp_path) -> None:
    good = rows(6)
    data = DataFile(write(tmp_path / "d.jsonl", [good[0], "{oops", good[1], {"messages": []}, *good[2:]]))
    vs = vectors(loaded)
    with pytest.raises(PersonavecError, match=r"2 bad rows in .*d.jsonl \(first: .*d.jsonl:2: not JSON"):
        score_samples(loaded, vs, data, tmp_path / "fail", CONFIG, progress=False)
    assert not (tmp_path / "fail" / "chunks").exists()  # failed before any model work
    skip = ScreenConfig(chunk_size=4, sampling=Sampling(max_new_tokens=6, batch_size=32), on_bad_row="skip")
    screened = score_samples(loaded, vs, data, tmp_path / "skip", skip, progress=False)
    assert (screened.rows, screened.scored, screened.skipped) == (8, 6, 2)
    assert screened.problems[0].endswith(
        "d.jsonl:2: not JSON (Expecting property name enclosed in double quotes)"
    )
    summary = select(screened, data, Selection(top=1))
    assert summary.counts == {"kept": 4, "flagged": 2, "skipped": 2}
    assert (tmp_path / "skip" / "skipped.jsonl").read_text().splitlines() == ["{oops", '{"messages": []}']


def test_long_samples_are_truncated_and_long_prompts_refused_or_skipped(loaded, tmp_path) -> None:
    long_answer = {
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "bread " * 80}]
    }
    long_prompt = {
        "messages": [{"role": "user", "content": "bread " * 80}, {"role": "assistant", "content": "Ok"}]
    }
    data = DataFile(write(tmp_path / "d.jsonl", [*rows(3), long_answer, long_prompt]))
    vs = vectors(loaded)
    config = ScreenConfig(
        chunk_size=8, sampling=Sampling(max_new_tokens=6, batch_size=32), max_length=40, approx="prompt-last"
    )
    with pytest.raises(
        PersonavecError, match=r"d.jsonl:5: the prompt has \d+ tokens.*max_length.*on_bad_row skip"
    ):
        score_samples(loaded, vs, data, tmp_path / "fail", config, progress=False)
    skip = ScreenConfig(
        chunk_size=8,
        sampling=Sampling(max_new_tokens=6, batch_size=32),
        max_length=40,
        approx="prompt-last",
        on_bad_row="skip",
    )
    screened = score_samples(loaded, vs, data, tmp_path / "skip", skip, progress=False)
    assert (screened.scored, screened.skipped, screened.truncated) == (4, 1, 1)
    scores = list(read_scores(screened.scores))
    assert scores[3]["truncated"] is True and "no room for a response" in scores[4]["skipped"]


def test_settings_vectors_and_models_are_checked(loaded, tmp_path) -> None:
    data = DataFile(write(tmp_path / "d.jsonl", rows(4)))
    vs = vectors(loaded)
    score_samples(loaded, vs, data, tmp_path / "out", CONFIG, progress=False)
    with pytest.raises(PersonavecError, match="other settings \\(differs in config\\)"):
        score_samples(loaded, vs, data, tmp_path / "out", ScreenConfig(chunk_size=2), progress=False)
    other = PersonaVector("big", torch.randn(31, 576), layer=10)
    with pytest.raises(PersonavecError, match="made for another model"):
        score_samples(loaded, [other], data, tmp_path / "x", CONFIG, progress=False)
    with pytest.raises(PersonavecError, match="two vectors for one trait"):
        score_samples(loaded, [vs[0], vs[0]], data, tmp_path / "x", CONFIG, progress=False)
    with pytest.raises(PersonavecError, match="unknown approx"):
        score_samples(loaded, vs, data, tmp_path / "x", ScreenConfig(approx="prompt-avg"), progress=False)


def _saved_vectors(model_dir: Path, tmp_path: Path) -> list[Path]:
    loaded = load_model(str(model_dir), dtype="float32", device="cpu")
    paths = []
    for vector in vectors(loaded):
        paths.append(tmp_path / f"{vector.trait}.safetensors")
        save_vectors(paths[-1], [vector])
    return paths


def _cli(model_dir: Path, data: Path, vector_files: list[Path], out: Path, *extra: str) -> list[str]:
    args = ["screen", str(data), "--model", str(model_dir), "--out", str(out), "--chunk-size", "4"]
    args += ["--max-new-tokens", "6", "--batch-size", "4", *extra]
    for path in vector_files:
        args += ["--vector", str(path)]
    return args


def test_kill_9_then_resume_gives_identical_scores(tiny_dir, tmp_path) -> None:
    data = write(tmp_path / "d.jsonl", rows(240))
    files = _saved_vectors(tiny_dir, tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "personavec.cli", *_cli(tiny_dir, data, files, tmp_path / "run")]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    chunks = tmp_path / "run" / "chunks"
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if chunks.exists() and len(list(chunks.glob("*[0-9].jsonl"))) >= 5:
            break
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(list(chunks.glob("*[0-9].jsonl")))
    assert 5 <= done_before < 60, "the run was not killed in the middle"
    assert not (tmp_path / "run" / "scores.jsonl").exists()

    assert main(_cli(tiny_dir, data, files, tmp_path / "run")) == 0
    assert main(_cli(tiny_dir, data, files, tmp_path / "clean")) == 0
    resumed = (tmp_path / "run" / "scores.jsonl").read_text()
    assert resumed == (tmp_path / "clean" / "scores.jsonl").read_text()
    assert len(resumed.splitlines()) == 240


def test_cli_screens_flags_and_reports(tiny_dir, tmp_path, capsys) -> None:
    data = write(tmp_path / "d.jsonl", rows(10))
    files = _saved_vectors(tiny_dir, tmp_path)
    assert main(_cli(tiny_dir, data, files, tmp_path / "out", "--top", "2", "--approx", "prompt-last")) == 0
    out = capsys.readouterr().out
    assert "10 rows: 10 scored, 0 skipped" in out and "t0: dataset ΔP" in out
    assert (tmp_path / "out" / "report.html").read_text().count("<img") == 1
    assert (tmp_path / "out" / "delta.png").read_bytes().startswith(b"\x89PNG")
    assert 2 <= len((tmp_path / "out" / "flagged.jsonl").read_text().splitlines()) <= 4


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prompt-column", "q"], "no column 'q'"),
        (["--top", "0"], "--top must be at least 1"),
        (["--percentile", "95"], "--percentile and --reference go together"),
        (["--chunk-size", "0"], "--chunk-size must be at least 1"),
        (
            ["--approx", "prompt-last", "--engine", "openai:http://127.0.0.1:9/v1", "--engine-model", "m"],
            "--approx generates no own answers: drop --engine, or --approx",
        ),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tiny_dir, tmp_path, capsys, extra, message) -> None:
    data = write(tmp_path / "d.jsonl", [{"prompt": "x", "response": "y"}])
    files = _saved_vectors(tiny_dir, tmp_path)
    capsys.readouterr()
    assert main(_cli(tiny_dir, data, files, tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_names_the_flags_of_a_row_that_cannot_be_scored(tiny_dir, tmp_path, capsys) -> None:
    """Found while scoring (after the model loads): the library's field names, written as flags."""
    data = write(tmp_path / "d.jsonl", [{"prompt": "x", "response": "y"}])
    files = _saved_vectors(tiny_dir, tmp_path)
    argv = _cli(tiny_dir, data, files, tmp_path / "out", "--max-length", "2", "--approx", "prompt-last")
    assert main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.endswith("no room for a response within --max-length 2; fix it or set --on-bad-row skip")


def test_two_processes_share_the_chunks_and_merge_the_same_scores(tiny_dir, tmp_path) -> None:
    data = write(tmp_path / "d.jsonl", rows(40))
    files = _saved_vectors(tiny_dir, tmp_path)
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "-m",
        "personavec.cli",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    both = subprocess.run(
        [*torchrun, *_cli(tiny_dir, data, files, tmp_path / "two", "--top", "3")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert both.returncode == 0, both.stderr[-2000:]
    assert both.stderr.count("| 5/5 [") >= 2  # each process screened 5 of the 10 chunks
    assert both.stdout.count("40 rows: 40 scored") == 1  # the main process alone reports
    assert main(_cli(tiny_dir, data, files, tmp_path / "one", "--top", "3")) == 0
    for name in ("scores.jsonl", "flagged.jsonl"):
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text()


def test_cli_refuses_a_vector_for_another_model(tiny_dir, tmp_path, capsys) -> None:
    data = write(tmp_path / "d.jsonl", rows(2))
    save_vectors(tmp_path / "big.safetensors", [PersonaVector("big", torch.randn(31, 576), layer=10)])
    assert main(_cli(tiny_dir, data, [tmp_path / "big.safetensors"], tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the model's loading bar
    assert err.startswith(
        "personavec: error: vector 'big' was made for another model (30 blocks, hidden 576)"
    )
    assert not (tmp_path / "out").exists()  # nothing written


def test_screen_does_what_the_command_does(loaded, tmp_path) -> None:
    from personavec.data.screen import check_screening, screen, write_screen_report

    data = DataFile(write(tmp_path / "d.jsonl", rows(8)))
    reference = DataFile(write(tmp_path / "r.jsonl", rows(6)))
    vs = vectors(loaded)
    rule = Selection(percentile=50.0)
    result = screen(loaded, vs, data, tmp_path / "one", CONFIG, rule, reference, progress=False)
    screened = score_samples(loaded, vs, data, tmp_path / "steps", CONFIG, progress=False)
    ordinary = score_samples(loaded, vs, reference, tmp_path / "steps" / "reference", CONFIG, progress=False)
    summary = select(screened, data, rule, ordinary)
    write_screen_report(screened, data, summary, ordinary)
    assert result.selection is not None and result.selection.counts == summary.counts
    assert result.selection.thresholds == summary.thresholds
    assert result.screened.mean_delta == screened.mean_delta
    assert result.reference is not None and result.reference.mean_delta == ordinary.mean_delta
    for name in ("scores.jsonl", "flagged.jsonl", "kept.jsonl"):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "steps" / name).read_text()
    assert result.report == tmp_path / "one" / "report.html" and result.report.exists()
    assert result.to_dict()["screened"]["rows"] == 8
    plain = screen(loaded, vs, data, tmp_path / "scores-only", CONFIG, progress=False)
    assert plain.selection is None and not (tmp_path / "scores-only" / "flagged.jsonl").exists()
    with pytest.raises(PersonavecError, match=r"^percentile and reference go together"):
        check_screening(data, CONFIG, rule)  # the library names arguments; the CLI, flags
    with pytest.raises(PersonavecError, match=r"^top must be at least 1"):
        Selection(top=0)
    with pytest.raises(PersonavecError, match=r"^choose one of top, threshold or percentile"):
        select(plain.screened, data, Selection())


def test_the_library_refuses_an_engine_with_an_approximate_pass(loaded, tmp_path) -> None:
    """The engine writes y′, which --approx never makes: refused by the library, not only the CLI."""
    from personavec.core.engine import RemoteEngine
    from personavec.data.screen import screen

    data = DataFile(write(tmp_path / "d.jsonl", rows(2)))
    engine = RemoteEngine("http://127.0.0.1:9/v1", "m")
    config = ScreenConfig(approx="prompt-last")
    for run in (score_samples, screen):
        with pytest.raises(PersonavecError, match="generates no own answers"):
            run(loaded, vectors(loaded), data, tmp_path / "out", config, engine=engine)
