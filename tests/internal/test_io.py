import json
import threading
import time

import pytest

from personavec._internal.files import open_append
from personavec._internal.openai_client import Garbage, with_retries
from personavec.core.generate import read_rows


def test_append_after_a_torn_line_loses_nothing_new(tmp_path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"id": "a"}) + "\n" + '{"id": "b", "ans')  # a crash mid-line
    assert list(read_rows(path)) == ["a"]
    with open_append(path) as out:
        out.write(json.dumps({"id": "c"}) + "\n")
    assert list(read_rows(path)) == ["a", "c"]
    assert path.read_text().count("\n") == 2


def test_retries_stop_at_once_when_told(monkeypatch) -> None:
    calls = []

    def failing() -> None:
        calls.append(1)
        raise Garbage("nothing usable")

    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.perf_counter()
    with pytest.raises(Garbage):
        with_retries(failing, retries=5, backoff=10.0, stop=stop)  # would sleep minutes otherwise
    assert time.perf_counter() - started < 5 and len(calls) == 1
    with pytest.raises(Garbage):
        with_retries(failing, retries=2, backoff=0.001)
    assert len(calls) == 1 + 3
    with pytest.raises(ValueError):  # not transient: no retry
        with_retries(lambda: int("x"), retries=3, backoff=0.001)
