"""The README's and the docs' Python snippets run, in order per page, on the bundled SmolLM2.

Each page's ```python blocks share one namespace. Hub ids (``"Qwen/Qwen2.5-7B-Instruct"``) become the
bundled model, which is loaded once: ``personavec.load_model`` returns it whatever it is asked for.
The blocks run in a temporary directory holding ``runs/evil/evil.safetensors`` (a random vector for
the bundled model), so relative run paths land there. A block preceded by
``<!-- no-run: reason -->`` is skipped; the reason is required, and the opt-outs are counted.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import torch

import personavec
from personavec.core.models import LoadedModel

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:<!--\s*no-run:(?P<reason>[^>]*)-->\s*\n)?^```python\n(?P<code>.*?)^```", re.S | re.M)
HUB_ID = re.compile(r"\"(?:Qwen|meta-llama|google|mistralai|microsoft|allenai)/[^\"]+\"")
NO_RUN = 6  # blocks opted out across README and docs: raise only with a reason in the page


@dataclass
class Snippet:
    page: Path
    line: int
    code: str
    no_run: str | None  # the reason, when opted out


def snippets(page: Path) -> list[Snippet]:
    text = page.read_text(encoding="utf-8")
    return [
        Snippet(page, text.count("\n", 0, m.start("code")) + 1, m["code"], m["reason"])
        for m in BLOCK.finditer(text)
    ]


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


RUNNABLE = [p for p in PAGES if any(s.no_run is None for s in snippets(p))]


def test_opt_outs_state_a_reason_and_are_counted() -> None:
    opted_out = [s for p in PAGES for s in snippets(p) if s.no_run is not None]
    assert all(s.no_run and s.no_run.strip() for s in opted_out), [
        f"{_name(s.page)}:{s.line}" for s in opted_out if not (s.no_run or "").strip()
    ]
    assert len(opted_out) == NO_RUN, [f"{_name(s.page)}:{s.line}: {s.no_run}" for s in opted_out]


def test_the_readme_has_runnable_python() -> None:
    assert ROOT / "README.md" in RUNNABLE


def test_a_no_run_comment_is_recognised(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- no-run: needs a GPU -->\n```python\nraise SystemExit\n```\n\n```python\nx = 1\n```\n"
    )
    found = snippets(page)
    assert [(s.no_run, s.code) for s in found] == [(" needs a GPU ", "raise SystemExit\n"), (None, "x = 1\n")]


@pytest.mark.bundled
@pytest.mark.parametrize("page", RUNNABLE, ids=_name)
def test_snippets_run(
    page: Path, smollm2: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(personavec, "load_model", lambda *args, **kwargs: smollm2)
    identity = smollm2.identity
    evil = personavec.PersonaVector(
        "evil",
        torch.randn(identity.n_layers + 1, identity.hidden_size, generator=torch.Generator().manual_seed(0)),
        layer=identity.n_layers // 2,
        metadata={"model": identity.to_dict()},
    )
    (tmp_path / "runs" / "evil").mkdir(parents=True)
    personavec.save_vectors(tmp_path / "runs" / "evil" / "evil.safetensors", [evil])
    namespace: dict[str, object] = {"__name__": "__snippets__"}
    for snippet in snippets(page):
        if snippet.no_run is None:
            code = HUB_ID.sub('"smollm2"', snippet.code)
            exec(compile(code, f"{_name(page)}:{snippet.line}", "exec"), namespace)


# --- the generated pages (docs/hooks/generated.py) and the benchmark results they read ----------


@pytest.fixture(scope="module")
def hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_hook", ROOT / "docs" / "hooks" / "generated.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cli_reference_lists_every_command(hook: ModuleType) -> None:
    from personavec.cli import build_parser

    text = hook.cli_reference(build_parser())
    for command in ("demo", "extract", "screen", "train", "traits generate", "vectors export-gguf"):
        assert f"`personavec {command}`" in text
    assert "`--max-new-tokens`" in text and "| `256` |" in text


def test_benchmark_tables_put_machines_side_by_side(hook: ModuleType) -> None:
    def record(machine: str, value: float, met: bool) -> dict[str, object]:
        figure = {"name": "capture / forward", "value": value, "unit": "×", "target": "≥ 0.95", "met": met}
        return {
            "benchmark": "capture",
            "machine": machine,
            "date": "2026-11-28",
            "command": "c",
            "file": "f",
            "figures": [figure],
        }

    text = hook.benchmark_tables([record("gpu-h200", 0.9, False), record("cpu-2core", 1.2, True)])
    assert "| figure | cpu-2core | gpu-h200 | target |" in text
    assert "| capture / forward | 1.2 × | 0.9 × ✗ | ≥ 0.95 |" in text


def test_the_package_map_covers_every_module(hook: ModuleType) -> None:
    text = hook.package_map(ROOT / "src" / "personavec")
    for module in (ROOT / "src" / "personavec").rglob("*.py"):
        if module.name != "__init__.py":
            assert module.relative_to(ROOT / "src").as_posix() in text


def test_benchmark_figures_judge_their_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import _common

    assert _common.Figure("ratio", 1.02, "×", "≤ 1.03").met is True
    assert _common.Figure("ratio", 0.90, "×", "≥ 0.95").met is False
    assert _common.Figure("speed", 10.0, "tok/s").met is None
    monkeypatch.setattr(_common, "RESULTS", tmp_path)
    path = _common.report("demo", [_common.Figure("ratio", 1.0, "×", "≤ 1.03")])
    record = json.loads(path.read_text())
    assert record["benchmark"] == "demo" and record["machine"] == _common.machine(on_gpu=False)
    assert set(record) == {"benchmark", "machine", "date", "command", "figures"}
    assert record["figures"] == [
        {"name": "ratio", "value": 1.0, "unit": "×", "target": "≤ 1.03", "met": True}
    ]


def test_every_public_module_has_an_api_page(hook: ModuleType) -> None:
    prefixes = [
        prefix
        for page in (ROOT / "docs" / "api").glob("*.md")
        for m in hook.MODULES_MARKER.finditer(page.read_text(encoding="utf-8"))
        for prefix in m[1].split()
    ]
    missing = [n for n in hook.public_modules(ROOT / "src" / "personavec") if not hook.covered(n, prefixes)]
    assert not missing, f"add these modules to a page under docs/api/: {missing}"


def test_the_readme_is_a_front_door_whose_links_resolve() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.encode()) <= 6 * 1024
    targets = re.findall(r"\]\((?!https?:)([^)#]+)", text)
    assert targets and all((ROOT / t).exists() for t in targets), [
        t for t in targets if not (ROOT / t).exists()
    ]
