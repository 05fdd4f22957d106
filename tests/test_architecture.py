"""The layering the docs' Architecture page draws: each room imports only the rooms below it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import personavec

# bottom to top; `_internal`, `errors` and `version` sit under everything
ROOMS = [
    "core", "traits", "judges", "deploy", "runs", "report", "pipeline", "analysis", "data", "training",
    "serve", "demo", "cli",
]  # fmt: skip
BASE = {"_internal", "errors", "version"}
PACKAGE = Path(personavec.__file__).parent


def _imports() -> list[tuple[str, str, str]]:
    """(room, imported room, file) for every `from personavec.X… import` inside the package."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        room = parts[0] if len(parts) > 1 else path.stem
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("personavec."):
                found.append((room, node.module.split(".")[1], str(path.relative_to(PACKAGE))))
    return found


def test_rooms_import_only_rooms_below_them() -> None:
    imports = _imports()
    assert len(imports) > 100  # the walk saw the package
    upward = [
        (file, target)
        for room, target, file in imports
        if room in ROOMS and target in ROOMS and ROOMS.index(target) > ROOMS.index(room)
    ]
    assert upward == []


def test_every_room_is_placed() -> None:
    rooms = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    rooms |= {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert rooms == set(ROOMS) | BASE


def test_no_function_is_longer_than_60_lines() -> None:
    """Readable units: a longer function is split where its steps are (the style rule of the codebase)."""
    long = [
        f"{path.relative_to(PACKAGE)}::{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > 60
    ]
    assert long == []


def _module_imports() -> dict[str, set[str]]:
    """Each module → the package's modules it imports when it is imported (its top level, including
    ``if TYPE_CHECKING:`` blocks; not the lazy imports inside functions)."""

    def name(path: Path) -> str:
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        found: set[str] = set()
        statements = list(ast.parse(path.read_text()).body)
        while statements:
            node = statements.pop()
            if isinstance(node, (ast.If, ast.Try)):
                statements += [*node.body, *node.orelse]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("personavec"):
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    found.add(target if target in modules else str(node.module))
        graph[module] = {target for target in found if target in modules and target != module}
    return graph


def test_no_module_imports_itself_through_others() -> None:
    """No import cycle, at import time or for type checkers: a depth-first walk finds no way back."""
    graph = _module_imports()
    assert len(graph) > 90 and sum(map(len, graph.values())) > 200  # the walk saw the imports
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_no_two_public_names_share_a_name() -> None:
    """Each public name the package defines (classes, functions, constants of every module the API
    reference covers) means one thing: none is defined in two modules."""
    where: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        if parts[0] == "cli" or any(p.startswith("_") and p != "__init__.py" for p in parts):
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names = [node.target.id]
            else:
                names = []
            for name in names:
                if not name.startswith("_"):
                    where.setdefault(name, []).append("/".join(parts))
    assert len(where) > 300  # the walk saw the package
    assert {name: files for name, files in where.items() if len(files) > 1} == {}


def test_the_shared_cli_options_are_defined_once() -> None:
    """--trait, --out, --judge, --base-url, --json and --force come from `cli._options` (a help text may
    differ per command); no command module writes its own."""
    shared = ("--trait", "--out", "--judge", "--base-url", "--json", "--force")
    written = [
        (path.name, flag)
        for path in (PACKAGE / "cli").glob("*.py")
        for flag in shared
        if re.search(rf'add_argument\(\s*"{flag}"', path.read_text())
    ]
    assert sorted(written) == sorted(("_options.py", flag) for flag in shared)


def test_no_cli_handler_is_longer_than_25_lines() -> None:
    """A handler parses, makes one library call and prints (the verbs check, load and report)."""
    handlers = [
        (path.name, node)
        for path in (PACKAGE / "cli").glob("*.py")
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.FunctionDef)
        and [a.annotation.attr for a in node.args.args if isinstance(a.annotation, ast.Attribute)]
        == ["Namespace"]
    ]
    assert len(handlers) > 15  # the walk found the handlers
    long = [f"{file}::{node.name}" for file, node in handlers if node.end_lineno - node.lineno + 1 > 25]
    assert long == []


# Where a transformers model may be reached directly: the transformers backend, its hooks, training (it
# needs gradients), and the hook tools for a user's own ``model.generate`` (`Guard`, `LiveMonitor`,
# `steering`). Every verb reaches the model through a `Backend`.
TRANSFORMERS_SIDE = {
    "core/hf.py", "core/hooks.py", "core/models.py", "core/vectors.py",
    "deploy/guard.py", "deploy/monitor.py", "deploy/steering.py",
}  # fmt: skip
RECEIVERS = {"backend", "self.backend", "gen", "super()"}  # `.generate` on a backend (or the module)


def _model_reaches() -> list[str]:
    found = []
    for path in PACKAGE.rglob("*.py"):
        name = str(path.relative_to(PACKAGE))
        if name in TRANSFORMERS_SIDE or name.startswith("training/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                receiver = ast.unparse(node.func.value)
                if node.func.attr == "generate" and receiver not in RECEIVERS:
                    found.append(f"{name}:{node.lineno} {receiver}.generate(")
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "model"
                and ast.unparse(node.value).endswith("loaded")
            ):
                found.append(f"{name}:{node.lineno} {ast.unparse(node)}")
            if isinstance(node, ast.Name) and node.id == "ResidualHooks":
                found.append(f"{name}:{node.lineno} ResidualHooks")
    return found


def test_verbs_reach_the_model_only_through_a_backend() -> None:
    assert _model_reaches() == []


def test_the_rule_sees_a_direct_reach(tmp_path: Path, monkeypatch) -> None:
    """The walk above finds each kind of reach (so an empty list means something)."""
    room = tmp_path / "personavec" / "data"
    room.mkdir(parents=True)
    (room / "x.py").write_text("def f(loaded, hooks: ResidualHooks):\n    return loaded.model.generate()\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", tmp_path / "personavec")
    want = ["data/x.py:1 ResidualHooks", "data/x.py:2 loaded.model", "data/x.py:2 loaded.model.generate("]
    assert sorted(_model_reaches()) == want


def test_the_server_takes_nothing_from_training_or_data() -> None:
    """Serving needs no trainer and no dataset code: adapters load in `core.models`, thresholds and
    their reference questions live in `deploy` and `traits`."""
    reaches = [
        (file, target)
        for room, target, file in _imports()
        if room == "serve" and target in ("training", "data")
    ]
    assert reaches == []


def test_data_takes_nothing_from_the_method() -> None:
    """Screening and the data kit share only the run plumbing (`runs`) with the pipeline."""
    assert [file for room, target, file in _imports() if room == "data" and target == "pipeline"] == []


def _table_modules() -> set[str]:
    """The modules the docs' "Where each stage lives" table names (``.x`` after ``personavec.a.b``:
    ``personavec.a.x``)."""
    import re

    text = (Path(__file__).parents[1] / "docs" / "architecture.md").read_text()
    table = text.split("## Where each stage lives")[1].split("\n## ")[0]
    named = set()
    for row in table.splitlines()[3:]:
        cell = row.rsplit("|", 2)[-2]
        package = ""
        for name in re.findall(r"`(personavec(?:\.\w+)+|\.\w+)", cell):
            if name.startswith("."):
                named.add(package + name)
            else:
                named.add(name)
                package = name.rsplit(".", 1)[0]
    return named


def test_the_stage_table_names_every_module() -> None:
    modules = {
        "personavec." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts)
        for p in PACKAGE.rglob("*.py")
        if p.stem not in ("__init__", "__main__")
    }
    packages = {m for m in _table_modules() if (PACKAGE.parent / m.replace(".", "/")).is_dir()}
    named = _table_modules()
    missing = sorted(
        m for m in modules if m not in named and not any(m.startswith(p + ".") for p in packages)
    )
    assert missing == []
    assert not sorted(m for m in named - modules - packages)  # and nothing it names is gone


def test_the_docs_draw_the_rooms_in_this_order() -> None:
    text = (Path(__file__).parents[1] / "docs" / "architecture.md").read_text()
    drawing = text.split("```text")[1].split("```")[0]
    drawn = [
        line.split()[0].rstrip("/,") for line in drawing.strip().splitlines() if not line.startswith(" ")
    ]
    assert drawn[::-1][1:] == ROOMS and drawn[-1] == "_internal"
