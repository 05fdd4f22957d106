"""Data screening: throughput against a plain forward pass, own-answer generation, memory at scale.

    python benchmarks/screen.py            # bundled SmolLM2 on the CPU
    python benchmarks/screen.py --gpu-7b   # 7B-shaped random model on the GPU

1. ``screen --approx prompt-last`` end to end (reading the file, chat formatting, tokenising, one
   forward per sample, projections onto 3 vectors, chunk files) vs a forward pass of the backbone alone
   over the same length-bucketed batches (like for like: screening runs no LM head). Target ≥ 0.9×. A
   forward with the LM head is a secondary, labelled row.
2. The model's own answers y′ (full ΔP): generated batched vs one at a time.
3. Peak RSS of a prompt-last screen (then flagging the top 100 and the report, as the CLI does) of
   10k and of 100k synthetic rows, each in a fresh process, on a tiny random model (the pipeline's
   memory, not the model's): flat means it streams.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from capture import samples
from personavec.core.generate import generate
from personavec.core.hf import collate
from personavec.core.models import format_chat
from personavec.core.pooling import encode_samples, length_batches
from personavec.core.sampling import Sampling
from personavec.core.vectors import PersonaVector
from personavec.data.config import ScreenConfig
from personavec.data.samples import DataFile
from personavec.data.scoring import score_samples

from _common import Figure, best_time, load, parser, report

TESTS = Path(__file__).resolve().parent.parent / "tests"
MEMORY_CHILD = """
import json, sys
sys.path.insert(0, {tests!r})
import torch
from tiny import tiny_loaded
from personavec.data.samples import DataFile
from personavec.data.config import ScreenConfig, Selection
from personavec.data.flagging import select
from personavec.data.scoring import score_samples
from personavec.data.screen import write_screen_report
from personavec.core.vectors import PersonaVector
loaded = tiny_loaded()
vectors = [PersonaVector(f"t{{i}}", torch.randn(4, 64), layer=2) for i in range(3)]
data, config = DataFile({data!r}), ScreenConfig(approx="prompt-last")
result = score_samples(loaded, vectors, data, {out!r}, config, progress=False)
write_screen_report(result, data, select(result, data, Selection(top=100)))  # what the CLI runs
# VmHWM, not ru_maxrss: the latter keeps the forking parent's peak across exec
status = open("/proc/self/status").read()
peak = int(status.split("VmHWM:")[1].split()[0]) / 1024
print(json.dumps({{"rows": result.scored, "peak_mib": peak}}))
"""


def write_rows(path: Path, questions: list[str], answers: list[str]) -> None:
    with open(path, "w") as f:
        for q, a in zip(questions, answers, strict=True):
            messages = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            f.write(json.dumps({"messages": messages}) + "\n")


def throughput(loaded, n: int, budget: int, repeats: int, tmp: Path) -> list[Figure]:
    questions, answers = samples(n)
    data_path = tmp / "rows.jsonl"
    write_rows(data_path, questions, answers)
    prompts = [format_chat(loaded.tokenizer, [{"role": "user", "content": q}]) for q in questions]
    encoded = encode_samples(loaded.tokenizer, prompts, answers, None)
    tokens = sum(len(s.ids) for s in encoded)
    pad = int(loaded.tokenizer.pad_token_id)
    batches = [
        collate([encoded[i] for i in b], pad, True, loaded.device)
        for b in length_batches([len(s.ids) for s in encoded], budget, 64)
    ]
    shape = (loaded.identity.n_layers + 1, loaded.identity.hidden_size)
    layer = loaded.identity.n_layers * 2 // 3
    vectors = [PersonaVector(f"t{i}", torch.randn(shape), layer=layer) for i in range(3)]
    config = ScreenConfig(approx="prompt-last", token_budget=budget, chunk_size=max(n, 1))
    runs = iter(range(1000))

    keys = ("input_ids", "attention_mask", "position_ids")

    def forward() -> None:
        with torch.inference_mode():
            for batch in batches:
                loaded.model(**{k: batch[k] for k in keys}, use_cache=False)

    def backbone() -> None:  # without the LM head, as screening runs it
        with torch.inference_mode():
            for batch in batches:
                loaded.model.base_model(**{k: batch[k] for k in keys}, use_cache=False)

    def screening() -> None:  # a fresh output directory each time: nothing to resume
        score_samples(loaded, vectors, DataFile(data_path), tmp / f"out{next(runs)}", config, progress=False)

    plain, bare, screened = [], [], []
    for _ in range(repeats):  # interleaved, so noise hits all alike
        plain.append(best_time(forward, 1))
        bare.append(best_time(backbone, 1))
        screened.append(best_time(screening, 1))
    print(f"model: {loaded.identity.name} on {loaded.device}, {n} rows, {tokens} tokens, budget {budget}")
    return [  # headline: against the work screening does (a backbone forward); the LM head row is secondary
        Figure("screening / backbone forward throughput (headline, like for like)", min(bare) / min(screened),
               "×", "≥ 0.9"),
        Figure("screen --approx prompt-last", tokens / min(screened), "tok/s"),
        Figure("forward of the backbone alone (what screening runs)", tokens / min(bare), "tok/s"),
        Figure("secondary: screening / forward with LM head (work it skips)", min(plain) / min(screened),
               "×"),
        Figure("forward with LM head", tokens / min(plain), "tok/s"),
    ]  # fmt: skip


def own_answers(loaded, n: int, new_tokens: int, repeats: int) -> list[Figure]:
    questions, _ = samples(n, seed=1)
    prompts = [format_chat(loaded.tokenizer, [{"role": "user", "content": q}]) for q in questions]

    def run(batch_size: int) -> float:
        return best_time(
            lambda: generate(loaded, prompts, Sampling(new_tokens, batch_size=batch_size), progress=False), 1
        )

    print(f"own answers y′: {n} prompts × {new_tokens} new tokens")
    batched = min(run(n) for _ in range(repeats))
    single = min(run(1) for _ in range(repeats))
    return [
        Figure("own answers y′, batched", batched, "s"),
        Figure("own answers y′, one at a time", single, "s"),
        Figure("own answers, batched / one at a time speed-up", single / batched, "×"),
    ]


def memory(tmp: Path) -> list[Figure]:
    peaks = {}
    for n in (10_000, 100_000):
        questions, answers = samples(n, seed=2)
        data = tmp / f"rows-{n}.jsonl"
        write_rows(data, questions, [a[:200] for a in answers])
        code = MEMORY_CHILD.format(tests=str(TESTS), data=str(data), out=str(tmp / f"mem-{n}"))
        child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        result = json.loads(child.stdout.strip().splitlines()[-1])
        peaks[n] = result["peak_mib"]
    return [
        *(Figure(f"peak RSS, {n} rows (tiny model, fresh process)", p, "MiB") for n, p in peaks.items()),
        Figure("peak RSS 100k / 10k rows", peaks[100_000] / peaks[10_000], "×", "≤ 1.05"),
    ]


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    loaded = load(args.gpu_7b)
    with tempfile.TemporaryDirectory() as tmp:
        figures = throughput(
            loaded, 512 if args.gpu_7b else 64, 65536 if args.gpu_7b else 4096, args.repeats, Path(tmp)
        )
        figures += own_answers(loaded, 64 if args.gpu_7b else 8, 64 if args.gpu_7b else 24, 1)
        if not args.gpu_7b:
            figures += memory(Path(tmp))
    report("screen", figures, args.gpu_7b)


if __name__ == "__main__":
    main()
