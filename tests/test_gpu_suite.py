"""The GPU suite's CPU dry run: every section runs on a tiny shape and records every figure, no check fails.

This keeps benchmarks/gpu_suite.py from rotting between the runs on a GPU.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"


def test_cpu_smoke_records_every_figure_and_no_failure(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(BENCHMARKS)])}
    env.pop("OUT", None)
    command = [sys.executable, str(BENCHMARKS / "gpu_suite.py"), "--cpu-smoke", "--json", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert out.exists(), run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert {"benchmark", "machine", "date", "command", "figures"} <= result.keys()
    assert result["benchmark"] == "gpu-suite"
    figures = {f["name"]: f for f in result["figures"]}
    sys.path.insert(0, str(BENCHMARKS))
    from gpu_suite import figure_names
    from suite_model import CPU_SMOKE

    assert sorted(figures) == sorted(figure_names(CPU_SMOKE)), run.stdout[-3000:]
    for figure in figures.values():
        assert {"name", "value", "unit", "target", "met"} <= figure.keys()
        assert figure.get("note") is None or not figure["note"].startswith(("error", "skipped")), figure
    failed = [f for f in figures.values() if f["name"].startswith("check.") and f["met"] is not True]
    assert not failed, failed
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def test_gpu_shape_names_the_issue_figures() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    from gpu_suite import figure_names
    from suite_model import GPU_7B

    names = set(figure_names(GPU_7B))
    wanted = {
        "load_s", "capture_over_backbone", "steer_over_plain_b1", "steer_over_plain_b64",
        "monitor_over_plain_b1", "monitor_over_plain_b64", "decode_floor_fraction_b128",
        "pooled_peak_gib_256x1024", "pooled_peak_256_over_64", "train_steps_s_none", "train_steps_s_steer",
        "train_steer_over_plain", "train_peak_gib_none", "screen_prompt_last_rows_s",
        "screen_full_delta_rows_s", "check.hooks_vs_hidden_states", "check.pooling_vs_float64",
        "check.steering_positions", "check.guard_bit_identity", "check.projections_vs_float64",
    }  # fmt: skip
    assert wanted <= names, wanted - names
