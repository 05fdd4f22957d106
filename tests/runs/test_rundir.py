"""The run-directory mechanism: identity, later settings, stages, reset, and what it refuses."""

import json

import pytest

from personavec.errors import PersonavecError
from personavec.runs.readers import ExtractionRun, SweepRun
from personavec.runs.rundir import MANIFEST, RUN_FORMAT, RunDir, read_manifest

OUTPUTS = {"answers": ("answers.jsonl",), "scores": ("scores.json", "cells"), "table": ("{name}.csv",)}


def open_run(path, force=None, judge="a", threshold=50, size=3):
    later = {"judge": ("scores", judge), "threshold": ("table", threshold)}
    identity = {"name": "t", "size": size}
    return RunDir.open(path, "toy run", identity, OUTPUTS, later, derived=("report.html",), force=force)


def fill(path):
    for name in ("answers.jsonl", "scores.json", "t.csv", "report.html"):
        (path / name).write_text("x")
    (path / "cells").mkdir()
    (path / "cells" / "a.json").write_text("x")


def test_a_new_run_writes_its_manifest_and_records_stages(tmp_path) -> None:
    run = open_run(tmp_path / "r")
    run.record("answers", 0.0, rows=4)
    run.found("answers", rows=99)  # recorded already: kept
    run.found("scores", cells=(1, 2))  # found done without a record (a crash): recorded, time unknown
    manifest = json.loads((tmp_path / "r" / MANIFEST).read_text())
    assert manifest["format"] == RUN_FORMAT and manifest["kind"] == "toy run"
    assert (manifest["name"], manifest["size"], manifest["judge"], manifest["threshold"]) == ("t", 3, "a", 50)
    assert manifest["stages"]["answers"]["rows"] == 4 and manifest["stages"]["answers"]["seconds"] > 0
    assert manifest["stages"]["scores"] == {"seconds": None, "cells": [1, 2]}
    assert open_run(tmp_path / "r").stages == manifest["stages"]  # the same identity resumes


def test_another_identity_is_refused_naming_what_differs_or_started_over(tmp_path) -> None:
    out = tmp_path / "r"
    open_run(out).record("answers", None)
    fill(out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(PersonavecError, match=r"other settings \(differs in size\): use another out$"):
        open_run(out, size=4)
    with pytest.raises(PersonavecError, match=r"differs in size\): use another out, or force to start"):
        open_run(out, force=False, size=4)
    assert (out / "answers.jsonl").exists()
    run = open_run(out, force=True, size=4)
    assert run.manifest["size"] == 4 and run.stages == {}
    assert not any(
        (out / n).exists() for n in ("answers.jsonl", "scores.json", "cells", "t.csv", "report.html")
    )
    assert (out / "notes.txt").read_text() == "mine"


def test_a_later_setting_resets_from_its_stage_only(tmp_path) -> None:
    out = tmp_path / "r"
    run = open_run(out)
    fill(out)
    for stage in OUTPUTS:
        run.record(stage, None)
    run = open_run(out, threshold=60)  # redoes the table only (and the derived report)
    assert (out / "scores.json").exists() and (out / "cells").exists() and not (out / "t.csv").exists()
    assert not (out / "report.html").exists() and set(run.stages) == {"answers", "scores"}
    assert run.manifest["threshold"] == 60
    run = open_run(out, judge="b", threshold=60)
    assert (out / "answers.jsonl").exists() and not (out / "scores.json").exists()
    assert not (out / "cells").exists() and set(run.stages) == {"answers"}
    assert json.loads((out / MANIFEST).read_text())["judge"] == "b"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({MANIFEST: '{"name": "my web app"}'}, "not a personavec run manifest"),
        ({MANIFEST: "{not json"}, "not a personavec run manifest"),
        ({MANIFEST: b"\xff\xfe"}, "not a personavec run manifest"),
        ({MANIFEST: "[1, 2]"}, "not a personavec run manifest"),
        ({MANIFEST: '{"format": "personavec-run/1", "stages": {}}'}, "earlier personavec release"),
        ({"settings.json": '{"model": {}}'}, "earlier personavec release.*fresh --out"),
        ({MANIFEST: '{"format": "personavec-run/9"}'}, "has format personavec-run/9"),
        (
            {MANIFEST: json.dumps({"format": RUN_FORMAT, "kind": "sweep", "stages": {}})},
            "run of kind 'sweep', not 'toy run'",
        ),
        ({"answers.jsonl": "{}"}, "holds answers.jsonl but no manifest.json"),
        ({"t.csv": ""}, "holds t.csv but no manifest.json"),
    ],
)
def test_foreign_old_or_other_directories_are_refused_untouched(tmp_path, files, message) -> None:
    for name, content in files.items():
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    for force in (None, False, True):
        with pytest.raises(PersonavecError, match=message):
            open_run(tmp_path, force=force)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)
    if MANIFEST in files:
        with pytest.raises(PersonavecError, match=message):
            read_manifest(tmp_path, "toy run")


def test_readers_check_the_kind_and_find_only_runs(tmp_path) -> None:
    assert SweepRun.find(tmp_path) is None
    with pytest.raises(PersonavecError, match="holds no personavec extraction run"):
        ExtractionRun(tmp_path)
    RunDir.open(tmp_path, SweepRun.KIND, {"vector": "abc"})
    found = SweepRun.find(tmp_path)
    assert found is not None and found.manifest["vector"] == "abc" and found.cells() == []
    with pytest.raises(PersonavecError, match="holds a personavec run of kind 'sweep', not 'extraction run'"):
        ExtractionRun(tmp_path)


def test_an_unfinished_extraction_run_has_no_kept_examples(tmp_path) -> None:
    RunDir.open(tmp_path, ExtractionRun.KIND, {"trait": "evil"}, ExtractionRun.OUTPUTS)
    run = ExtractionRun(tmp_path)
    assert run.rows() == [] and run.sweep() is None and run.vectors() is None and run.sweep_answers() == {}
    assert run.vector_path == tmp_path / "evil.safetensors"
    with pytest.raises(PersonavecError, match="not a filtered extraction run"):
        run.kept_examples()
