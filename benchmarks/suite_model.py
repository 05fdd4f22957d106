"""The GPU suite's model and data: a Llama of a given shape with random weights built from its config (no
download), a synthetic tokenizer of the model's full vocabulary, and synthetic chat text.

The tokenizer is byte-level BPE whose merges are all pairs of byte symbols, so it has exactly the
model's vocabulary (every id the random model generates decodes to text) and about two characters a
token; it needs nothing but `tokenizers`, which the GPU machine has.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

from capture import WORDS
from personavec.core.models import LoadedModel, ModelIdentity, prepare_tokenizer

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TESTS = Path(__file__).resolve().parent.parent / "tests"


@dataclass(frozen=True)
class Shape:
    """A model shape and the sizes each section of the suite runs at."""

    name: str
    device: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    vocab: int
    repeats: int  # timed repetitions (the best counts)
    copy_mib: int  # bytes copied to measure memory bandwidth
    capture_samples: int
    generate_tokens: int  # new tokens in the steered / monitored comparisons
    generate_batches: tuple[int, ...]
    decode_batch: int
    decode_tokens: int
    pooled_samples: tuple[int, int]  # two sample counts: peak memory must not grow from one to the other
    pooled_tokens: int
    train_rows: int
    train_batch: int
    train_length: int
    screen_rows: int
    delta_rows: int
    delta_tokens: int  # length of the model's own answers in full ΔP screening


GPU_7B = Shape(
    name="random-llama-7b-shape", device="cuda", hidden=4096, intermediate=11008, layers=32, heads=32,
    vocab=32000, repeats=3, copy_mib=2048, capture_samples=256, generate_tokens=48,
    generate_batches=(1, 64), decode_batch=128, decode_tokens=128, pooled_samples=(64, 256),
    pooled_tokens=1024, train_rows=128, train_batch=8, train_length=512, screen_rows=1024,
    delta_rows=128, delta_tokens=64,
)  # fmt: skip
CPU_SMOKE = Shape(
    name="random-llama-tiny", device="cpu", hidden=64, intermediate=128, layers=4, heads=4, vocab=600,
    repeats=1, copy_mib=16, capture_samples=12, generate_tokens=4, generate_batches=(1, 4),
    decode_batch=4, decode_tokens=4, pooled_samples=(4, 16), pooled_tokens=160, train_rows=8,
    train_batch=2, train_length=160, screen_rows=16, delta_rows=4, delta_tokens=4,
)  # fmt: skip


def synthetic_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with exactly `vocab_size` ids: 3 specials, 256 byte symbols, then symbol pairs."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate([*SPECIALS, *alphabet])}
    merges = []
    pairs = ((a, b) for a in alphabet for b in alphabet)
    while len(vocab) < vocab_size:
        a, b = next(pairs)
        vocab[a + b] = len(vocab)
        merges.append((a, b))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIALS[0],
        eos_token=SPECIALS[2],
        additional_special_tokens=[SPECIALS[1]],
    )
    sys.path.insert(0, str(TESTS))
    from tiny import CHATML  # the tests' tiny models' template (tests/ is not a package)

    fast.chat_template = CHATML
    return prepare_tokenizer(fast)


def build(shape: Shape) -> LoadedModel:
    """The model in bfloat16 on the shape's device, random weights initialised there."""
    config = LlamaConfig(
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        vocab_size=shape.vocab,
        max_position_embeddings=4096,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(0)
    with torch.device(shape.device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    identity = ModelIdentity(shape.name, "llama", shape.layers, shape.hidden)
    return LoadedModel(model=model, tokenizer=synthetic_tokenizer(shape.vocab), identity=identity)


def long_answers(n: int, chars: int, seed: int = 0) -> list[str]:
    """`n` answers of at least `chars` characters of random words."""
    rng = random.Random(seed)
    answers = []
    for _ in range(n):
        words: list[str] = []
        while sum(len(w) + 1 for w in words) < chars:
            words.append(rng.choice(WORDS))
        answers.append(" ".join(words))
    return answers
