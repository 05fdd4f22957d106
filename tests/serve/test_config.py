"""The server's configuration, audit log, metrics and alert rules, without a model."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from personavec.cli import main
from personavec.errors import ConfigError
from personavec.serve.config import Limits, ServeConfig
from personavec.serve.engine import _held_back
from personavec.serve.telemetry import AuditLog, Metrics
from personavec.serve.wire import Wire

ROOT = Path(__file__).resolve().parents[2]
ONE = (("evil", "evil.safetensors"),)


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"vectors": ()}, "at least one vector"),
        ({"vectors": (("a", "x"), ("a", "y"))}, "share a name"),
        ({"vectors": (("a b", "x"),)}, "vector name"),
        ({"thresholds": (("good", "prompt_last", 1.0),)}, "no --vector"),
        ({"thresholds": (("evil", "average", 1.0),)}, "statistic"),
        ({"host": "0.0.0.0"}, "api_key"),
        ({"host": "192.168.1.5"}, "api_key"),
        ({"audit_text": True}, "audit_text needs audit"),
        ({"steer": (("good", 1.0),)}, "--steer"),
        ({"guard": "good"}, "--guard"),
        ({"guard": "evil", "guard_coef": 0.0}, "guard_coef"),
        ({"guard": "evil", "guard_coef": 1000.5}, "COEF ≤ 1000"),
        ({"guard": "evil", "guard_threshold": 2e6}, "guard_threshold must be within"),
        ({"steer": (("evil", -1001.0),)}, "|COEF| ≤ 1000"),
        ({"steer": (("evil", float("nan")),)}, "|COEF| ≤ 1000"),
        ({"thresholds": (("evil", "prompt_last", float("inf")),)}, "within ±1e+06"),
        ({"port": 0}, "port must be in"),
        ({"keep": -1}, "keep must be in 0..100000"),
        ({"keep": 100_001}, "keep must be in 0..100000"),
        ({"keep": 0, "keep_text": True}, "keep_text needs the dashboard"),
    ],
)
def test_a_bad_configuration_names_the_problem(kwargs: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)):
        ServeConfig(**{"vectors": ONE, **kwargs})  # type: ignore[arg-type]


def test_a_key_or_loopback_makes_a_bind_acceptable() -> None:
    assert ServeConfig(vectors=ONE, host="0.0.0.0", api_key="k").host == "0.0.0.0"
    assert ServeConfig(vectors=ONE, host="::1").host == "::1"
    assert ServeConfig(vectors=ONE, host="localhost").host == "localhost"


def test_limits() -> None:
    assert Limits(max_tokens=64).answer_tokens == 64 and Limits().answer_tokens == 256
    assert Limits(default_max_tokens=10).answer_tokens == 10
    for bad in (
        {"max_batch": 0},
        {"max_queue": -1},
        {"request_timeout": 0},
        {"max_tokens": 8, "default_max_tokens": 9},
    ):
        with pytest.raises(ConfigError):
            Limits(**bad)  # type: ignore[arg-type]


def test_keys_not_given_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The library reads the key variables (the CLI passes only what its flags were given)."""
    monkeypatch.setenv("PERSONAVEC_API_KEY", "from-env")
    monkeypatch.setenv("PERSONAVEC_UPSTREAM_API_KEY", "upstream-env")
    config = ServeConfig(vectors=ONE, host="0.0.0.0")  # an open bind: the key from the environment
    assert (config.api_key, config.upstream_api_key) == ("from-env", "upstream-env")
    assert ServeConfig(vectors=ONE, api_key="given").api_key == "given"
    monkeypatch.setenv("PERSONAVEC_API_KEY", "")
    with pytest.raises(ConfigError, match="api_key"):
        ServeConfig(vectors=ONE, host="0.0.0.0")


def test_the_command_refuses_an_open_bind_without_a_key_before_loading(
    capsys: pytest.CaptureFixture[str],
) -> None:
    os.environ.pop("PERSONAVEC_API_KEY", None)
    start = time.monotonic()
    code = main(["serve", "--model", "smollm2", "--vector", "evil=missing.safetensors", "--host", "0.0.0.0"])
    assert code == 2 and time.monotonic() - start < 5
    assert "--api-key" in capsys.readouterr().err


def test_the_command_refuses_a_missing_vector_before_loading(capsys: pytest.CaptureFixture[str]) -> None:
    start = time.monotonic()
    assert main(["serve", "--model", "smollm2", "--vector", "evil=missing.safetensors"]) == 2
    assert time.monotonic() - start < 5 and "missing.safetensors" in capsys.readouterr().err


def test_the_audit_log_is_private_appends_and_cuts_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    wire = Wire(Metrics().nonfinite)
    log = AuditLog(path, text=False, wire=wire)
    log.write({"id": "a", "messages": ["secret"], "answer": "secret", "status": 200})
    log.close()
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert json.loads(path.read_text()) == {"id": "a", "status": 200}  # no text without audit_text
    with open(path, "ab") as f:
        f.write(b'{"id": "torn", "sta')  # a kill -9 mid-line
    again = AuditLog(path, text=True, wire=wire)
    again.write({"id": "b", "answer": "kept"})
    again.close()
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"id": "a", "status": 200},
        {"id": "b", "answer": "kept"},
    ]


def test_metrics_count_an_answers_figures() -> None:
    metrics = Metrics()
    figures = {
        "evil": {
            "prompt_last": 5.0,
            "response_avg": 1.0,
            "flagged": False,
            "predicted": True,
            "steered": None,
        },
        "good": {
            "prompt_last": 0.0,
            "response_avg": None,
            "flagged": None,
            "predicted": False,
            "steered": {},
        },
    }
    metrics.answer(figures)
    value = metrics.registry.get_sample_value
    assert value("personavec_predicted_total", {"trait": "evil"}) == 1
    assert value("personavec_predicted_total", {"trait": "good"}) is None
    assert value("personavec_flagged_total", {"trait": "evil"}) is None
    assert value("personavec_steered_total", {"trait": "good"}) == 1
    assert value("personavec_steered_total", {"trait": "evil"}) is None
    assert value("personavec_projection_count", {"trait": "evil", "statistic": "response_avg"}) == 1
    assert value("personavec_projection_count", {"trait": "good", "statistic": "response_avg"}) is None


def test_the_alert_rules_use_metrics_the_server_exports() -> None:
    rules = yaml.safe_load((ROOT / "docs" / "serving-alerts.yml").read_text())["groups"][0]["rules"]
    exported = {line.split()[2] for line in generate_latest(Metrics().registry).decode().splitlines()
                if line.startswith("# TYPE")}  # fmt: skip
    exported |= {f"{name}_total" for name in exported}
    used = {name for rule in rules for name in re.findall(r"personavec_\w+", rule["expr"])}
    assert used and used <= exported, used - exported


@pytest.mark.parametrize(
    ("text", "stops", "held"),
    [
        ("Hello wor", ["world!"], 3),
        ("Hello", ["world"], 0),
        ("ab\ufffd", [], 1),
        ("say STO", ["STOP", "O"], 3),
    ],
)
def test_text_that_may_start_a_stop_sequence_is_held_back(text: str, stops: list[str], held: int) -> None:
    assert _held_back(text, stops) == held


def test_default_steering_in_norm_units_is_converted_and_checked_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from personavec.serve.run import served_vectors

    from server import random_vectors

    files = random_vectors(tmp_path)
    vectors = [f"{name}={path}" for name, path in files.items()]
    base = [
        "serve",
        "--model",
        "smollm2",
        *(x for v in vectors for x in ("--vector", v)),
        "--coef-units",
        "norm",
    ]
    assert main([*base, "--steer", "evil=1"]) == 2  # evil records no residual norm
    assert "records no residual norm" in capsys.readouterr().err
    assert main([*base, "--steer", "opt=999"]) == 2  # 999 norm units = 2497.5 × the vector
    assert "exceeds 1000" in capsys.readouterr().err
    config = ServeConfig(vectors=tuple(files.items()), steer=(("opt", 1.0),), coef_units="norm")
    assert set(served_vectors(config)) == {"opt", "evil"}
