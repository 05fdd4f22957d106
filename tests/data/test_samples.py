import codecs
import csv
import json
from pathlib import Path

import pytest

from personavec import PersonavecError
from personavec.data.samples import BadRow, Columns, DataFile, Sample


def chat(user: str, answer: str, system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    return {
        "messages": [*messages, {"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    }


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_a_conversation_ends_at_its_last_assistant_turn(tmp_path) -> None:
    multi = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "How are you?"},
            {"role": "assistant", "content": "Fine."},
            {"role": "user", "content": "ignored trailing turn"},
        ]
    }
    path = write_jsonl(tmp_path / "d.jsonl", [chat("Q", "A"), "", multi])
    samples = list(DataFile(path).samples())
    assert [s.index for s in samples] == [0, 1]  # the blank line is not a row
    assert samples[0] == Sample(0, f"{path}:1", ({"role": "user", "content": "Q"},), "A")
    second = samples[1]
    assert isinstance(second, Sample) and second.where == f"{path}:3"
    assert [m["content"] for m in second.prompt] == ["Be brief.", "Hi", "Hello.", "How are you?"]
    assert second.response == "Fine."


def test_tool_calls_and_content_parts_are_text(tmp_path) -> None:
    tools = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Weather "}, {"type": "text", "text": "today?"}],
            },
            {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "weather"}}]},
            {"role": "tool", "content": "18C"},
            {"role": "assistant", "content": [{"type": "text", "text": "It is 18C."}]},
        ]
    }
    (sample,) = DataFile(write_jsonl(tmp_path / "d.jsonl", [tools])).samples()
    assert isinstance(sample, Sample)
    assert [(m["role"], m["content"]) for m in sample.prompt] == [
        ("user", "Weather today?"),
        ("assistant", ""),
        ("tool", "18C"),
    ]
    assert sample.response == "It is 18C."


def test_prompt_response_rows_with_a_system_column(tmp_path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"q": "Why?", "a": "Because.", "sys": "Be kind."}])
    (sample,) = DataFile(path, Columns(prompt="q", response="a", system="sys")).samples()
    assert isinstance(sample, Sample)
    assert sample.prompt == ({"role": "system", "content": "Be kind."}, {"role": "user", "content": "Why?"})
    assert sample.response == "Because."


def test_bad_rows_name_file_line_and_problem(tmp_path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            chat("Q", "A"),
            "{not json",
            "[1, 2]",
            {"messages": [{"role": "user", "content": "Q"}]},
            chat("Q", "   "),
            {"messages": "hello"},
            {"other": 1},
        ],
    )
    with open(path, "ab") as f:
        f.write(b'{"prompt": "caf\xe9", "response": "x"}\n')  # Latin-1, not UTF-8
    items = list(DataFile(path).samples())
    bad = [item for item in items if isinstance(item, BadRow)]
    assert [b.where for b in bad] == [f"{path}:{n}" for n in range(2, 9)]
    assert bad[-1].problem == "not UTF-8 (byte 15 of the line)"
    problems = [b.problem for b in bad]
    assert problems[0].startswith("not JSON")
    assert problems[1] == "not a JSON object"
    assert problems[2] == "the conversation has no assistant turn"
    assert problems[3] == "the response is empty"
    assert "not a list" in problems[4] and "no 'messages' field" in problems[5]


def test_a_missing_column_fails_before_anything_else(tmp_path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Q", "answer": "A"}])
    with pytest.raises(PersonavecError, match=r"no column 'response'.*--response-column"):
        DataFile(path)
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("prompt,reply\nQ,A\n")
    with pytest.raises(PersonavecError, match="no column 'response' \\(columns: prompt, reply\\)"):
        DataFile(csv_path)
    assert DataFile(csv_path, Columns(response="reply"))
    with pytest.raises(PersonavecError, match="unknown format"):
        DataFile(write_jsonl(tmp_path / "d.txt", ["x"]))
    with pytest.raises(PersonavecError, match="does not exist"):
        DataFile(tmp_path / "none.jsonl")


def test_csv_quoting_line_numbers_and_field_counts(tmp_path) -> None:
    path = tmp_path / "d.csv"
    with open(path, "w", newline="", encoding="utf-8-sig") as f:  # with a BOM, as Excel writes it
        writer = csv.writer(f)
        writer.writerow(["prompt", "response", "source"])
        writer.writerow(["Two\nlines", 'A "quoted", answer', "x"])
        writer.writerow(["Q", "A"])  # a field short
        writer.writerow(["Q2", "A2", "y"])
    items = list(DataFile(path).samples())
    assert isinstance(items[0], Sample) and items[0].prompt[0]["content"] == "Two\nlines"
    assert items[0].where == f"{path}:2"  # where the record starts
    assert items[0].response == 'A "quoted", answer'
    assert isinstance(items[1], BadRow) and items[1].where == f"{path}:4"
    assert items[1].problem == "has 2 fields; the header has 3"
    assert isinstance(items[2], Sample) and items[2].where == f"{path}:5"


ROWS = [chat(f"question {i}", f"answer {i}") for i in range(7)]
FATES = ["kept", "flagged", "skipped", "kept", "flagged", "flagged", "kept"]


def _check_split(data: DataFile, read) -> None:
    outputs = {fate: data.path.parent / f"{fate}{data.suffix}" for fate in ("kept", "flagged", "skipped")}
    counts = data.split(outputs, iter(FATES))
    assert counts == {"kept": 3, "flagged": 3, "skipped": 1}
    for fate, path in outputs.items():
        want = [ROWS[i] for i, f in enumerate(FATES) if f == fate]
        assert read(path) == want


def test_split_writes_the_chosen_rows_in_jsonl_exactly_as_they_were(tmp_path) -> None:
    lines = [json.dumps(r, indent=None, separators=(",", ":")).encode() for r in ROWS]  # compact, kept
    lines[1] = json.dumps(chat("Grüße, 世界", "¡Olé!"), ensure_ascii=False).encode() + b"\r"  # CRLF, unicode
    path = tmp_path / "d.jsonl"
    path.write_bytes(codecs.BOM_UTF8 + b"\n".join(lines) + b"\n\n")  # a BOM and a trailing blank line
    data = DataFile(path)
    assert [s.response for s in data.samples()][:2] == ["answer 0", "¡Olé!"]
    outputs = {fate: tmp_path / f"{fate}.jsonl" for fate in ("kept", "flagged", "skipped")}
    data.split(outputs, iter(FATES))
    for fate, out in outputs.items():
        assert out.read_bytes() == b"".join(lines[i] + b"\n" for i in range(7) if FATES[i] == fate)


def test_split_csv(tmp_path) -> None:
    path = tmp_path / "d.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["prompt", "response"])
        for row in ROWS:
            writer.writerow([row["messages"][0]["content"], row["messages"][1]["content"]])

    def read(p: Path) -> list:
        with open(p, newline="") as f:
            return [chat(r["prompt"], r["response"]) for r in csv.DictReader(f)]

    _check_split(DataFile(path), read)


def test_parquet_and_saved_datasets_read_and_split_in_their_format(tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_list(ROWS)
    dataset.to_parquet(str(tmp_path / "d.parquet"))
    (tmp_path / "saved").mkdir()
    dataset.save_to_disk(str(tmp_path / "saved" / "d"))

    parquet = DataFile(tmp_path / "d.parquet")
    assert [s.response for s in parquet.samples()] == [f"answer {i}" for i in range(7)]
    _check_split(parquet, lambda p: datasets.Dataset.from_parquet(str(p)).to_list())

    saved = DataFile(tmp_path / "saved" / "d")
    assert saved.suffix == "" and [s.index for s in saved.samples()] == list(range(7))
    _check_split(saved, lambda p: datasets.load_from_disk(str(p)).to_list())

    datasets.DatasetDict({"train": dataset}).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(PersonavecError, match="several splits \\(train\\)"):
        list(DataFile(tmp_path / "dict").samples())
