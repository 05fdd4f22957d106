"""The package's front: every public name resolves, and importing it stays cheap."""

from __future__ import annotations

import subprocess
import sys

import pytest

import personavec


def test_every_public_name_resolves_to_its_module() -> None:
    for name, module in personavec._EXPORTS.items():
        value = getattr(personavec, name)
        assert getattr(sys.modules[module], name) is value, name
    assert set(personavec.__all__) == {"PersonavecError", "__version__", *personavec._EXPORTS}


def test_unknown_names_are_attribute_errors() -> None:
    try:
        personavec.no_such_name  # noqa: B018
    except AttributeError as error:
        assert "no_such_name" in str(error)
    else:
        raise AssertionError("an unknown name resolved")


def test_import_does_not_load_torch_or_transformers() -> None:
    code = "import sys, personavec; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_what_type_checkers_see_is_what_the_package_exports() -> None:
    """The `TYPE_CHECKING` block of `__init__` names exactly `_EXPORTS`, each from its module."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(personavec.__file__).read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    seen = {
        alias.asname or alias.name: node.module
        for node in ast.walk(block)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert seen == personavec._EXPORTS


@pytest.mark.parametrize(
    ("module", "old", "new"),
    [
        ("personavec.core.engine", "Engine", "RemoteEngine"),
        ("personavec.data.screen", "screen_dataset", "screen"),
        ("personavec.data.scoring", "screen", "score_samples"),
        ("personavec.training.finetune", "finetune", "train"),
        ("personavec.training.train", "train", "train_model"),
        ("personavec.core.hooks", "Edit", "EditOp"),
        ("personavec.core.pooling", "Sample", "EncodedSample"),
        ("personavec.core.vectors", "FORMAT", "VECTOR_FORMAT"),
        ("personavec.core.engine", "PROBE", "PROBE_CHAT"),
        ("personavec.serve.protocol", "Message", "ChatMessage"),
        ("personavec.serve.protocol", "Logprobs", "ChoiceLogprobs"),
        ("personavec.pipeline.extract", "generations", "contrastive_answers"),
    ],
)
def test_renamed_names_are_deprecated_aliases_for_one_release(module: str, old: str, new: str) -> None:
    import importlib
    import warnings

    found = importlib.import_module(module)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert getattr(found, old) is getattr(found, new)
    assert [w.category for w in seen] == [DeprecationWarning] and new in str(seen[0].message)
    with pytest.raises(AttributeError):
        found.no_such_name  # noqa: B018


def test_the_package_names_are_the_commands() -> None:
    """`personavec.screen` and `personavec.train` are what the commands run; the old names warn."""
    import warnings

    import personavec
    from personavec.data.screen import screen
    from personavec.training.finetune import train

    assert personavec.screen is screen and personavec.train is train
    for old in ("screen_dataset", "finetune", "Engine"):  # names resolved once are kept in the package
        vars(personavec).pop(old, None)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert personavec.screen_dataset is screen and personavec.finetune is train
        assert personavec.Engine is personavec.RemoteEngine
    assert [w.category for w in seen] == [DeprecationWarning] * 3
