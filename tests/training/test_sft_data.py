import json

import pytest

from personavec import PersonavecError
from personavec.training.sft_data import IGNORE, Collator, encode, load_conversations, tokenize_dataset

from tiny import tiny_tokenizer

CONVERSATION = [
    {"role": "system", "content": "Be kind."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "How are you?"},
    {"role": "assistant", "content": "Fine, thanks."},
]


def test_labels_cover_exactly_the_assistant_turns() -> None:
    tokenizer = tiny_tokenizer()
    example = encode(tokenizer, CONVERSATION, max_length=512)
    assert len(example.labels) == len(example.input_ids) and not example.truncated
    trained = [t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE]
    assert all(
        label in (IGNORE, token) for token, label in zip(example.input_ids, example.labels, strict=True)
    )
    # ChatML: each assistant turn is "<|im_start|>assistant\n" (the prompt) + content + "<|im_end|>\n"
    assert tokenizer.decode(trained) == "Hello.<|im_end|>\nFine, thanks.<|im_end|>\n"
    untrained = [t for t, label in zip(example.input_ids, example.labels, strict=True) if label == IGNORE]
    assert "Be kind." in tokenizer.decode(untrained) and "How are you?" in tokenizer.decode(untrained)


def test_long_conversations_are_cut_and_marked() -> None:
    example = encode(tiny_tokenizer(), CONVERSATION, max_length=10)
    assert len(example.input_ids) == len(example.labels) == 10 and example.truncated


def test_cut_and_dropped_conversations_are_counted_apart(tmp_path) -> None:
    tokenizer = tiny_tokenizer()
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there, friend."}]
    long_prompt = [{"role": "user", "content": " ".join(["word"] * 100)}, short[1]]
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in [short, short, long_prompt]))
    full = len(encode(tokenizer, short, 10_000).input_ids)
    tokenized = tokenize_dataset(tokenizer, path, full - 1)
    assert (len(tokenized.examples), tokenized.total, tokenized.cut, tokenized.dropped) == (2, 3, 2, 1)
    assert tokenized.warning(full - 1) == (
        f"2 of 3 conversations cut to --max-length {full - 1}; "
        f"1 of 3 conversations dropped (no assistant token within --max-length {full - 1})"
    )
    assert tokenize_dataset(tokenizer, path, 10_000).warning(10_000) is None


def test_a_template_that_rewrites_earlier_turns_is_refused() -> None:
    last_only = "{{ messages[-1]['content'] }}{% if add_generation_prompt %}>{% endif %}"
    with pytest.raises(PersonavecError, match="renders a conversation differently from its beginning"):
        encode(tiny_tokenizer(chat_template=last_only), CONVERSATION, max_length=512)


def test_collator_pads_right_and_masks_padding() -> None:
    tokenizer = tiny_tokenizer()
    short, long = encode(tokenizer, CONVERSATION[1:3], 512), encode(tokenizer, CONVERSATION, 512)
    batch = Collator(pad_id=0)([short, long])
    n = len(short.input_ids)
    assert batch["input_ids"].shape == (2, len(long.input_ids))
    assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (len(long.input_ids) - n)
    assert batch["labels"][0, n:].eq(IGNORE).all() and batch["labels"][0, :n].tolist() == short.labels


def test_bad_rows_name_their_line(tmp_path) -> None:
    path = tmp_path / "d.jsonl"
    rows = [{"messages": CONVERSATION}, {"messages": CONVERSATION[:2]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(PersonavecError, match=r"d.jsonl:2: the conversation has no assistant turn"):
        load_conversations(path)
    path.write_text(json.dumps(rows[0]) + "\n{broken\n")
    with pytest.raises(PersonavecError, match=r"d.jsonl:2: not JSON"):
        load_conversations(path)
