"""Multiple-choice accuracy by the next-token log-likelihood of the answer letter.

Questions come in MMLU's CSV layout: no header row, six columns (question, options A–D, answer letter),
one file per subject named ``<subject>.csv`` or ``<subject>_{test,dev,val}.csv``. ``load_questions``
reads a directory of such files (not its subdirectories) or one file; the name ``"smoke"`` (SMOKE)
means the small smoke set shipped with personavec in ``capability_data/smoke/`` (general.csv,
arithmetic.csv, reading.csv; easy questions written for personavec's tests and demo, not MMLU).

Each question is one user turn (see ``prompt_text``) and the prediction is the letter among A–D whose
token is most likely as the first token of the assistant's answer. Beside the accuracy, the mean
log-probability of the correct letter (over the whole vocabulary) moves before the accuracy does: a small
model at chance on the questions still shows a loss of capability there.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from personavec.core.backend import Backend, Edit, LogprobRequest, as_backend
from personavec.core.models import LoadedModel, format_chat
from personavec.core.units import CoefUnits
from personavec.core.vectors import PersonaVector
from personavec.errors import ConfigError, DataError, ModelError

SMOKE = "smoke"
SMOKE_DIR = Path(__file__).parent / "capability_data" / "smoke"
LETTERS = ("A", "B", "C", "D")
INSTRUCTION = "Answer with the letter only."
_SPLIT_SUFFIXES = ("_test", "_dev", "_val")


@dataclass(frozen=True)
class Question:
    subject: str
    question: str
    choices: tuple[str, str, str, str]
    answer: str  # "A".."D"


def _subject(path: Path) -> str:
    """The subject named by a file: its stem without MMLU's split suffix."""
    stem = path.stem
    for suffix in _SPLIT_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def _read_csv(path: Path) -> list[Question]:
    subject, questions = _subject(path), []
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            line = 1  # the line where the next row starts (a quoted field may span lines)
            try:
                for row in reader:
                    questions += _parse_row(row, f"{path}:{line}", subject)
                    line = reader.line_num + 1
            except csv.Error as exc:
                raise DataError(f"{path}:{line}: malformed CSV: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return questions


def _parse_row(row: list[str], where: str, subject: str) -> list[Question]:
    """The row as a question (an empty list for a blank line); `where` is "file:line" for errors."""
    if not row:
        return []
    if len(row) != 6:
        raise DataError(f"{where}: expected 6 columns (question, A, B, C, D, answer), found {len(row)}")
    question, a, b, c, d, answer = row
    answer = answer.strip().upper()
    if answer not in LETTERS:
        raise DataError(f"{where}: the answer must be one of A, B, C, D, found {row[5]!r}")
    if not question.strip():
        raise DataError(f"{where}: the question is empty")
    return [Question(subject, question, (a, b, c, d), answer)]


def load_questions(path: str | os.PathLike[str]) -> list[Question]:
    """Questions from an MMLU-layout directory of CSV files (sorted by name), one CSV file, or SMOKE."""
    if isinstance(path, str) and path == SMOKE:
        path = SMOKE_DIR
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.glob("*.csv") if p.is_file())
        if not files:
            raise DataError(f"no .csv files in {path} (expected MMLU's layout: one CSV per subject)")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"multiple-choice questions not found: {path} is neither a directory nor a file")
    questions = [q for file in files for q in _read_csv(file)]
    if not questions:
        raise DataError(f"no questions in {path}")
    return questions


def prompt_text(model: Backend | LoadedModel, q: Question) -> str:
    """The chat prompt for `q`: one user turn, after which the next token is the answer letter.

    The user text is the question, a blank line, one ``"<letter>. <option>"`` line per option, a
    blank line and ``"Answer with the letter only."``; the chat template's generation prompt follows.
    """
    options = "\n".join(
        f"{letter}. {choice.strip()}" for letter, choice in zip(LETTERS, q.choices, strict=True)
    )
    return as_backend(model).chat(
        [{"role": "user", "content": f"{q.question.strip()}\n\n{options}\n\n{INSTRUCTION}"}]
    )


def letter_ids(text: Backend | LoadedModel | PreTrainedTokenizerBase) -> list[int]:
    """The token ids of A, B, C, D as the first token of the assistant's answer.

    The letter directly follows the generation prompt, after a space when that prompt does not end in
    whitespace (the plain template's ``"Assistant:"``).
    """
    if isinstance(text, PreTrainedTokenizerBase):
        tokenizer = text
        chat = lambda messages: format_chat(tokenizer, messages)  # noqa: E731
        encode = lambda t: list(tokenizer(t, add_special_tokens=False)["input_ids"])  # noqa: E731
    else:
        chat, encode = as_backend(text).chat, as_backend(text).encode
    prompt = chat([{"role": "user", "content": INSTRUCTION}])
    separator = "" if prompt[-1:].isspace() else " "
    base = encode(prompt)
    ids = []
    for letter in LETTERS:
        full = encode(prompt + separator + letter)
        added = full[len(base) :]
        if full[: len(base)] != base or len(added) != 1:
            raise ModelError(
                f"the answer letter {separator + letter!r} is not one token after the chat prompt "
                f"(it is {len(added)}); this tokenizer cannot be scored by letter log-likelihood"
            )
        ids.append(int(added[0]))
    return ids


@dataclass(frozen=True)
class Scored:
    """One scored question: the predicted letter and the log-likelihoods of A, B, C, D."""

    subject: str
    answer: str
    predicted: str
    logliks: tuple[float, float, float, float]

    @property
    def correct_logprob(self) -> float:
        """The log-probability of the correct letter as the answer's first token."""
        return self.logliks[LETTERS.index(self.answer)]


@dataclass
class CapabilityResult:
    """Accuracy (0–1) overall and by subject, the mean log-probability of the correct letter;
    `questions` in input order."""

    accuracy: float
    n: int
    per_subject: dict[str, float]
    questions: list[Scored]
    correct_logprob: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score(
    model: Backend | LoadedModel,
    questions: Sequence[Question],
    batch_size: int = 16,
    progress: bool = True,
    edits: Sequence[Edit] = (),
) -> CapabilityResult:
    """Score `questions`: the prediction is the letter with the highest next-token log-probability.

    Prompts are sorted by length and cut into batches of `batch_size`; each batch is one forward pass
    over the prompts (left-padded on the transformers backend), log-softmaxed over the whole vocabulary
    at the last position, under `edits`. On the transformers backend steering also applies when called
    inside an intervention (``with vector.apply(loaded.model, coef): ...``).
    """
    if not questions:
        raise DataError("no questions to score")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    backend = as_backend(model)
    letters = tuple(letter_ids(backend))
    prompts = [tuple(backend.encode(prompt_text(backend, q))) for q in questions]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    logliks: list[list[float]] = [[] for _ in questions]
    bar = tqdm(total=len(prompts), desc="capability", unit="question", disable=not progress)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        asked = [LogprobRequest(prompts[i], candidates=letters, edits=tuple(edits)) for i in chunk]
        for i, result in zip(chunk, backend.logprobs(asked, batch_size), strict=True):
            logliks[i] = result.candidates
        bar.update(len(chunk))
    bar.close()
    scored = [
        Scored(q.subject, q.answer, LETTERS[row.index(max(row))], (row[0], row[1], row[2], row[3]))
        for q, row in zip(questions, logliks, strict=True)
    ]
    subjects = sorted({q.subject for q in scored})
    per_subject = {s: _accuracy([q for q in scored if q.subject == s]) for s in subjects}
    mean_logprob = sum(q.correct_logprob for q in scored) / len(scored)
    return CapabilityResult(_accuracy(scored), len(scored), per_subject, scored, mean_logprob)


def _accuracy(scored: Sequence[Scored]) -> float:
    return sum(q.predicted == q.answer for q in scored) / len(scored)


def score_steered(
    model: Backend | LoadedModel,
    questions: Sequence[Question],
    vector: PersonaVector | None,
    coefs: Sequence[float],
    layer: int | None = None,
    batch_size: int = 16,
    units: CoefUnits = "raw",
) -> dict[str, CapabilityResult]:
    """`score` with coef·v added at `layer` (default: the vector's chosen layer), once per coefficient
    (in `units`); keyed ``unsteered`` (coefficient 0, or no vector) or ``steered +C``."""
    if vector is not None:
        vector.check_model(model.identity)
    results = {}
    for coef in coefs if vector is not None else [0.0]:
        name = "unsteered" if not coef else f"steered {coef:+g}"
        edits = [vector.edit(coef, layer, units=units)] if vector is not None and coef else []
        results[name] = score(model, questions, batch_size=batch_size, edits=edits)
    return results
