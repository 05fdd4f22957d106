from personavec._internal.dist import process_device


def test_one_process_keeps_the_device_it_was_given() -> None:
    assert [process_device(d) for d in ("auto", "cpu", "cuda:1")] == ["auto", "cpu", "cuda:1"]
