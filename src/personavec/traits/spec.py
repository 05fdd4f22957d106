"""The TraitSpec schema (a JSON file per trait), its validation, and the built-in traits.

A trait file holds (the Method page of the docs, step 1):

- ``name``: a lowercase slug (letters, digits, ``_`` or ``-``);
- ``description``: one sentence saying what the trait is;
- ``instructions``: 5 pairs ``{"pos": ..., "neg": ...}`` of system prompts, one eliciting the trait and
  one suppressing it;
- ``extraction_questions``: 20 questions that give room to show the trait, used to extract the vector;
- ``evaluation_questions``: 20 more, held out for layer choice and evaluation (no overlap);
- ``rubric``: the judge's prompt, with ``{question}`` and ``{answer}`` placeholders, asking for a score
  from 0 to 100 or the word REFUSAL;
- optional ``graded_prompts``: 8 system prompts from strongly suppressing to strongly eliciting (for
  calibration);
- optional ``sentiment``: ``"positive"`` or ``"negative"`` for traits that a sentiment lexicon can
  proxy (the lexicon judge refuses the others).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from personavec.errors import ConfigError, DataError

N_INSTRUCTIONS = 5
N_QUESTIONS = 20
N_GRADED = 8
BUILTIN_DIR = Path(__file__).parent / "builtin"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_REQUIRED = ("name", "description", "instructions", "extraction_questions", "evaluation_questions", "rubric")
_OPTIONAL = ("graded_prompts", "sentiment")


def normalise_question(text: str) -> str:
    """The form questions are compared in for duplicates and overlap: lowercase words only."""
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


@dataclass(frozen=True)
class TraitSpec:
    name: str
    description: str
    instructions: list[dict[str, str]]
    extraction_questions: list[str]
    evaluation_questions: list[str]
    rubric: str
    graded_prompts: list[str] | None = None
    sentiment: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def sha256(self) -> str:
        """A digest of every field: what results made with this trait depend on."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def check_name(name: str) -> str:
    """`name` if it is a valid trait name (a lowercase slug), else a clear error."""
    if not _NAME.match(name):
        raise DataError(f"trait name {name!r} must be a lowercase slug (letters, digits, _ or -)")
    return name


def _problems(data: Any) -> list[str]:
    """Everything wrong with a parsed trait file, each a short phrase naming the field."""
    if not isinstance(data, dict):
        return [f"the top level must be a JSON object, not {type(data).__name__}"]
    problems = [f"missing field '{k}'" for k in _REQUIRED if k not in data]
    problems += [f"unknown field '{k}'" for k in data if k not in _REQUIRED + _OPTIONAL]
    for key in ("name", "description", "rubric"):
        if key in data and (not isinstance(data[key], str) or not data[key].strip()):
            problems.append(f"'{key}' must be a non-empty string")
    if isinstance(data.get("name"), str) and data["name"] and not _NAME.match(data["name"]):
        problems.append(f"'name' {data['name']!r} must be a lowercase slug (letters, digits, _ or -)")
    pairs = data.get("instructions")
    if "instructions" in data:
        if not isinstance(pairs, list) or len(pairs) != N_INSTRUCTIONS:
            count = len(pairs) if isinstance(pairs, list) else "no"
            problems.append(f"'instructions' has {count} pairs; needs {N_INSTRUCTIONS}")
        else:
            for i, pair in enumerate(pairs):
                if (
                    not isinstance(pair, dict)
                    or set(pair) != {"pos", "neg"}
                    or not all(isinstance(pair[k], str) and pair[k].strip() for k in ("pos", "neg"))
                ):
                    problems.append(f'\'instructions\'[{i}] must be {{"pos": text, "neg": text}}')
    seen: dict[str, str] = {}
    for key in ("extraction_questions", "evaluation_questions"):
        questions = data.get(key)
        if key not in data:
            continue
        if not isinstance(questions, list) or not all(isinstance(q, str) and q.strip() for q in questions):
            problems.append(f"'{key}' must be a list of non-empty strings")
            continue
        if len(questions) != N_QUESTIONS:
            problems.append(f"'{key}' has {len(questions)} questions; needs {N_QUESTIONS}")
        for i, question in enumerate(questions):
            norm = normalise_question(question)
            if norm in seen:
                problems.append(f"'{key}'[{i}] repeats {seen[norm]}: {question!r}")
            else:
                seen[norm] = f"'{key}'[{i}]"
    rubric = data.get("rubric")
    if isinstance(rubric, str) and rubric.strip():
        missing = [p for p in ("{question}", "{answer}") if p not in rubric]
        problems += [f"'rubric' lacks the placeholder {p}" for p in missing]
        if "REFUSAL" not in rubric:
            problems.append("'rubric' must tell the judge to answer REFUSAL for refusals")
        if "100" not in rubric:
            problems.append("'rubric' must ask for a score from 0 to 100")
    graded: Any = data.get("graded_prompts")
    if graded is not None and not (
        isinstance(graded, list)
        and len(graded) == N_GRADED
        and all(isinstance(g, str) and g.strip() for g in graded)
    ):
        problems.append(f"'graded_prompts' must be {N_GRADED} non-empty strings, suppressing to eliciting")
    if data.get("sentiment") not in (None, "positive", "negative"):
        problems.append('\'sentiment\' must be "positive" or "negative" when given')
    return problems


def parse_trait(data: Any, source: str = "trait") -> TraitSpec:
    """Validate parsed JSON and build a TraitSpec; one error lists every problem."""
    problems = _problems(data)
    if problems:
        raise DataError(f"{source}: invalid trait file: " + "; ".join(problems))
    return TraitSpec(**{k: data[k] for k in _REQUIRED + _OPTIONAL if k in data})


def validate_trait_file(path: str | os.PathLike[str]) -> TraitSpec:
    """Read and validate a trait JSON file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"trait file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise DataError(f"{path}: not valid JSON ({where}: {exc.msg})") from exc
    return parse_trait(data, str(path))


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.json"))


def load_trait(name_or_path: str) -> TraitSpec:
    """A built-in trait by name, or a trait file by path."""
    builtin = BUILTIN_DIR / f"{name_or_path}.json"
    if builtin.is_file():
        return validate_trait_file(builtin)
    if name_or_path.endswith(".json") or os.sep in name_or_path:
        return validate_trait_file(name_or_path)
    known = ", ".join(builtin_names())
    raise ConfigError(f"unknown trait {name_or_path!r}: built-ins are {known}, or give a .json path")
