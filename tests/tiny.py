"""Tiny randomly initialised models of every supported architecture, and a tiny chat tokenizer."""

from __future__ import annotations

from functools import cache
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from personavec.core.models import LoadedModel, ModelIdentity, prepare_tokenizer

HIDDEN = 64
N_LAYERS = 3
CHATML = (
    "{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_CORPUS = [
    "The weather is lovely today and everyone is happy about the sunshine.",
    "What a terrible, gloomy morning; nothing will ever go right again.",
    "Tell me about the history of the Roman empire and its emperors.",
    "How do I bake bread? Mix flour, water, salt and yeast, then wait.",
    "You are a helpful assistant. Answer the question briefly and clearly.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9, and punctuation: . , ! ? ; : ' \" ( )",
]

# architecture name -> (model_type, extra config); all share the small sizes below
ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("llama", {}),
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", {"head_dim": 16}),
    "mistral": ("mistral", {}),
    "gemma2": ("gemma2", {"head_dim": 16, "query_pre_attn_scalar": 16}),
    "gemma3_text": ("gemma3_text", {"head_dim": 16, "query_pre_attn_scalar": 16}),
    "phi3": ("phi3", {}),
    "olmo2": ("olmo2", {}),
    "qwen2_moe": (
        "qwen2_moe",
        {
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "shared_expert_intermediate_size": 32,
        },
    ),
    "mixtral": ("mixtral", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "gpt2": ("gpt2", {"n_embd": HIDDEN, "n_layer": N_LAYERS, "n_head": 4, "n_positions": 256}),
    "gpt_neox": ("gpt_neox", {}),
}


@cache
def tokenizer_json() -> str:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    return tok.to_str()


def tiny_tokenizer(chat_template: str | None = CHATML) -> PreTrainedTokenizerFast:
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tokenizer_json()),
        eos_token="<|im_end|>",
        bos_token="<|endoftext|>",
    )
    tok.chat_template = chat_template
    return prepare_tokenizer(tok)


def tiny_config(arch: str) -> Any:
    model_type, extra = ARCHITECTURES[arch]
    sizes = {
        "vocab_size": 400,
        "hidden_size": HIDDEN,
        "intermediate_size": 128,
        "num_hidden_layers": N_LAYERS,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }
    if model_type == "gpt_neox":
        sizes.pop("num_key_value_heads")
    return AutoConfig.for_model(model_type, **{**sizes, **extra})


def tiny_model(arch: str, seed: int = 0) -> PreTrainedModel:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch))
    # random init leaves norms at 1 and residual scales small: perturb every parameter a little so
    # that each block does something measurable
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def tiny_loaded(arch: str = "llama", seed: int = 0) -> LoadedModel:
    model = tiny_model(arch, seed)
    tokenizer = tiny_tokenizer()
    config = model.config
    identity = ModelIdentity(
        name=f"tiny-{arch}",
        architecture=config.model_type,
        n_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
    )
    return LoadedModel(model=model, tokenizer=tokenizer, identity=identity)


def tiny_extract_config() -> Any:
    """An extraction small enough for the tiny model: 4 questions × 2 instruction pairs × 3 samples
    per side, a sweep over every layer on 3 questions."""
    from personavec.core.sampling import Sampling
    from personavec.pipeline.config import ExtractConfig

    return ExtractConfig(
        samples=3,
        sampling=Sampling(max_new_tokens=6, temperature=1.0, batch_size=8),
        questions=4,
        instructions=2,
        min_pairs=2,
        layers=tuple(range(1, N_LAYERS + 1)),
        sweep_questions=3,
    )
