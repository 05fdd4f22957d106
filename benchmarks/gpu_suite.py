"""The GPU suite: personavec measured and checked on one GPU, on a Llama-7B-shaped model with random bfloat16
weights (speed does not depend on the weights' values), in one command of under 5 minutes.

    PYTHONPATH=src python3 benchmarks/gpu_suite.py [--out DIR]   # GPU; see benchmarks/GPU.md
    PYTHONPATH=src python3 benchmarks/gpu_suite.py --cpu-smoke   # a tiny shape on the CPU, < 1 min

Each figure is printed and written to ``benchmarks/results/gpu-suite.json`` (and to ``DIR`` or
``$OUT``) as soon as it is measured (suite_record.py has the format). Sections: load time; correctness
on the device (suite_checks.py); steered and monitored ÷ plain ``generate``; HF ``generate`` tokens/s
at batch 128 against the decode floor (weight bytes ÷ measured memory bandwidth); capture of every
layer ÷ a forward pass of the backbone; peak GPU memory of pooled activations at two sample counts;
``screen`` rows/s; LoRA training steps/s with and without the steer intervention. Exit status 1 when
a check fails or a section errs.
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import transformers
from transformers import TrainerCallback

from capture import samples
from personavec.core.activations import iter_pooled, pooled_activations
from personavec.core.hf import collate
from personavec.core.hooks import steer
from personavec.core.models import LoadedModel
from personavec.core.pooling import encode_samples, length_batches
from personavec.core.sampling import Sampling
from personavec.core.vectors import PersonaVector
from personavec.data.config import ScreenConfig
from personavec.data.samples import DataFile
from personavec.data.scoring import score_samples
from personavec.deploy.monitor import LiveMonitor
from personavec.training.train import TrainConfig, TrainIntervention, train_model
from screen import write_rows
from suite_checks import CHECKS, run_checks
from suite_model import CPU_SMOKE, GPU_7B, Shape, build, long_answers
from suite_record import Record

from _common import best_time, compare_generate

RESULTS = Path(__file__).resolve().parent / "results"
GIB = 2**30


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bandwidth(device: str, mib: int) -> float:
    """Memory bandwidth in bytes/s, from copying `mib` MiB on `device` (bytes read + written)."""
    a = torch.empty(mib * 2**20, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    seconds = best_time(lambda: [b.copy_(a) for _ in range(10)], 3)
    return 2 * 10 * a.numel() / seconds


def peak_bytes_during(run: Callable[[], object]) -> int | None:
    """Peak CUDA memory allocated while `run` runs, above what was allocated before; None on the CPU."""
    if not torch.cuda.is_available():
        run()
        return None
    gc.collect()  # what earlier work left unreachable goes first
    torch.cuda.empty_cache()
    sync()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    run()
    sync()
    return torch.cuda.max_memory_allocated() - before


def chats(loaded: LoadedModel, n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """`n` chat-formatted prompts and their short answers (30 to 160 words)."""
    questions, answers = samples(n, seed)
    return [loaded.chat(q) for q in questions], answers


def load(record: Record, shape: Shape) -> LoadedModel:
    sync()
    started = time.perf_counter()
    loaded = build(shape)
    sync()
    record.add("load_s", time.perf_counter() - started, "s")
    weights = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    record.add("weights_gib", weights / GIB, "GiB")
    return loaded


def random_vectors(loaded: LoadedModel, layers: Sequence[int]) -> list[PersonaVector]:
    """One random persona vector per layer in `layers`, each chosen at that layer."""
    rows = (loaded.identity.n_layers + 1, loaded.identity.hidden_size)
    identity = {"model": loaded.identity.to_dict()}
    return [
        PersonaVector(f"t{i}", torch.randn(rows), layer=x, metadata=identity) for i, x in enumerate(layers)
    ]


def steering_overhead(record: Record, loaded: LoadedModel, shape: Shape) -> None:
    """Steered ÷ plain greedy generate, interleaved, per batch size."""
    layer = loaded.identity.n_layers // 2
    vector = torch.randn(loaded.identity.hidden_size) * 4
    ratios = compare_generate(
        loaded, lambda: steer(loaded.model, {layer: vector}, coef=1.0), shape.generate_tokens,
        shape.repeats, shape.generate_batches,
    )  # fmt: skip
    for batch, ratio in zip(shape.generate_batches, ratios, strict=True):
        record.add(f"steer_over_plain_b{batch}", ratio, "x time", "<= 1.03")


def monitor_overhead(record: Record, loaded: LoadedModel, shape: Shape) -> None:
    """Generate watched by LiveMonitor (3 vectors at 3 layers) ÷ plain generate, per batch size."""
    n = loaded.identity.n_layers
    vectors = random_vectors(loaded, (n // 3, n // 2, 2 * n // 3))
    ratios = compare_generate(
        loaded, lambda: LiveMonitor(loaded.model, vectors), shape.generate_tokens, shape.repeats,
        shape.generate_batches,
    )  # fmt: skip
    for batch, ratio in zip(shape.generate_batches, ratios, strict=True):
        record.add(f"monitor_over_plain_b{batch}", ratio, "x time", "<= 1.05")


def decode(record: Record, loaded: LoadedModel, shape: Shape) -> None:
    """HF generate's new tokens/s at a large batch, and as a fraction of the decode floor."""
    per_s = bandwidth(shape.device, shape.copy_mib)
    record.add("memory_bandwidth_tb_s", per_s / 1e12, "TB/s")
    b, t = shape.decode_batch, shape.decode_tokens
    prompts = [loaded.chat(f"Tell me a story about the number {i}.") for i in range(b)]
    batch = loaded.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    batch = batch.to(loaded.device)

    def run() -> None:
        with torch.inference_mode():
            loaded.model.generate(**batch, max_new_tokens=t, min_new_tokens=t, do_sample=False)

    tokens_per_s = b * t / best_time(run, 1)
    weights = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    record.add(f"decode_tok_s_b{b}", tokens_per_s, "tok/s")
    record.add(f"decode_floor_fraction_b{b}", tokens_per_s / (b * per_s / weights), "of floor")


def capture_speed(record: Record, loaded: LoadedModel, shape: Shape) -> None:
    """Pooling every layer (iter_pooled, end to end) ÷ a forward pass of the backbone, same batches."""
    prompts, answers = chats(loaded, shape.capture_samples)
    budget = 65536 if shape.device == "cuda" else 4096
    encoded = encode_samples(loaded.tokenizer, prompts, answers, None)
    pad = int(loaded.tokenizer.pad_token_id)
    batches = [
        collate([encoded[i] for i in b], pad, True, loaded.device)
        for b in length_batches([len(s.ids) for s in encoded], budget, 64)
    ]
    keys = ("input_ids", "attention_mask", "position_ids")

    def backbone() -> None:
        with torch.inference_mode():
            for batch in batches:
                loaded.model.base_model(**{k: batch[k] for k in keys}, use_cache=False)

    def pooling() -> None:
        for _ in iter_pooled(loaded, prompts, answers, token_budget=budget, progress=False):
            pass

    bare, pooled = [], []
    for _ in range(shape.repeats):  # interleaved, so noise hits both alike
        bare.append(best_time(backbone, 1))
        pooled.append(best_time(pooling, 1))
    record.add("capture_tok_s", sum(len(s.ids) for s in encoded) / min(pooled), "tok/s")
    record.add("capture_over_backbone", min(bare) / min(pooled), "x speed", ">= 0.95")


def pooled_memory(record: Record, loaded: LoadedModel, shape: Shape) -> None:
    """Peak GPU memory of pooled_activations over samples of `pooled_tokens` tokens, at two counts."""
    peaks = {}
    for n in shape.pooled_samples:
        prompts, _ = chats(loaded, n)
        answers = long_answers(n, 3 * shape.pooled_tokens)

        def run(prompts: list[str] = prompts, answers: list[str] = answers) -> None:
            pooled_activations(loaded, prompts, answers, max_length=shape.pooled_tokens, progress=False)

        peaks[n] = peak_bytes_during(run)
    small, large = shape.pooled_samples
    cpu = "CUDA memory statistics only" if peaks[large] is None else None
    peak, base = peaks[large], peaks[small]
    record.add(f"pooled_peak_gib_{large}x{shape.pooled_tokens}", peak and peak / GIB, "GiB", note=cpu)
    ratio = peak / base if peak is not None and base else None
    record.add(f"pooled_peak_{large}_over_{small}", ratio, "x", "<= 1.05", note=cpu)


def screening(record: Record, loaded: LoadedModel, shape: Shape) -> None:
    """screen --approx prompt-last and full ΔP (the model's own answers generated), rows/s."""
    vectors = random_vectors(loaded, [2 * loaded.identity.n_layers // 3] * 3)
    budget = 65536 if shape.device == "cuda" else 4096
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("prompt-last", "prompt-last", shape.screen_rows), (None, "full_delta", shape.delta_rows)]
        for approx, name, rows in runs:
            data = Path(tmp) / f"{name}.jsonl"
            write_rows(data, *samples(rows, seed=3))
            config = ScreenConfig(
                approx=approx, sampling=Sampling(shape.delta_tokens, batch_size=min(rows, 128)),
                token_budget=budget, chunk_size=rows, on_bad_row="skip",
            )  # fmt: skip
            score_samples(loaded, vectors, DataFile(data), Path(tmp) / f"warm-{name}", config, progress=False)
            started = time.perf_counter()
            result = score_samples(loaded, vectors, DataFile(data), Path(tmp) / name, config, progress=False)
            sync()
            seconds = time.perf_counter() - started
            note = f"{result.skipped} of {rows} rows skipped" if result.skipped else None
            record.add(
                f"screen_{name.replace('-', '_')}_rows_s", result.scored / seconds, "rows/s", note=note
            )


class StepTimer(TrainerCallback):
    """Wall time at the end of each optimiser step (device synchronised)."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, args: object, state: object, control: object, **kw: object) -> None:
        sync()
        self.ends.append(time.perf_counter())

    def steps_per_s(self) -> float:
        ends = self.ends[min(2, len(self.ends) - 2) :]  # the first steps warm up
        return (len(ends) - 1) / (ends[-1] - ends[0])


def training(record: Record, loaded: LoadedModel, shape: Shape) -> None:
    """LoRA finetuning (personavec.train, the paper's settings) plain and under steer, on model copies."""
    (vector,) = random_vectors(loaded, [loaded.identity.n_layers // 2])
    speed = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.jsonl"
        questions, _ = samples(shape.train_rows, seed=4)
        write_rows(data, questions, long_answers(shape.train_rows, 3 * shape.train_length))
        for method in ("none", "steer"):
            timer = StepTimer()
            config = TrainConfig(
                batch_size=shape.train_batch, max_length=shape.train_length, save_steps=10**6,
                logging_steps=10**6, intervention=TrainIntervention(method, coef=4.0),
            )  # fmt: skip

            def run(method: str = method, config: TrainConfig = config, timer: StepTimer = timer) -> None:
                # LoRA goes into the model in place: train a copy, the suite's model stays clean
                trainee = LoadedModel(copy.deepcopy(loaded.model), loaded.tokenizer, loaded.identity)
                train_model(
                    trainee, data, Path(tmp) / method, config, vector if method == "steer" else None, [timer]
                )

            peak = peak_bytes_during(run)
            speed[method] = timer.steps_per_s()
            record.add(f"train_steps_s_{method}", speed[method], "steps/s")
            note = "CUDA memory statistics only" if peak is None else None
            record.add(f"train_peak_gib_{method}", peak and peak / GIB, "GiB", note=note)
    record.add("train_steer_over_plain", speed["steer"] / speed["none"], "x speed", ">= 0.95")


def figure_names(shape: Shape) -> list[str]:
    """Every figure the suite records for `shape`, section by section."""
    checks = [name for name, *_ in CHECKS]
    return ["load_s", "weights_gib", *checks, *(name for names, _, _ in sections(shape) for name in names)]


Section = Callable[[Record, LoadedModel, Shape], None]


def sections(shape: Shape) -> list[tuple[list[str], float, Section]]:
    """(figures, estimated GPU seconds, function) in the order they run."""
    b, large, small, t = shape.decode_batch, *shape.pooled_samples[::-1], shape.pooled_tokens
    gen = shape.generate_batches
    return [
        ([f"steer_over_plain_b{x}" for x in gen], 25, steering_overhead),
        ([f"monitor_over_plain_b{x}" for x in gen], 25, monitor_overhead),
        (["memory_bandwidth_tb_s", f"decode_tok_s_b{b}", f"decode_floor_fraction_b{b}"], 15, decode),
        (["capture_tok_s", "capture_over_backbone"], 25, capture_speed),
        ([f"pooled_peak_gib_{large}x{t}", f"pooled_peak_{large}_over_{small}"], 20, pooled_memory),
        (["screen_prompt_last_rows_s", "screen_full_delta_rows_s"], 25, screening),
        ([f"train_{k}_{w}" for w in ("none", "steer") for k in ("steps_s", "peak_gib")]
         + ["train_steer_over_plain"], 50, training),
    ]  # fmt: skip


def machine(shape: Shape) -> str:
    if shape.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        device = f"{props.name} ({props.total_memory / GIB:.0f} GiB)"
    else:
        device = f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    return (
        f"{device}; torch {torch.__version__}, transformers {transformers.__version__}, "
        f"python {platform.python_version()}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="a tiny shape on the CPU: checks the suite runs")
    p.add_argument(
        "--json",
        type=Path,
        help="results file (default benchmarks/results/gpu-suite.json; a dry run: $TMPDIR)",
    )
    p.add_argument(
        "--out", type=Path, default=os.environ.get("OUT"), help="also write the JSON here (default $OUT)"
    )
    p.add_argument("--budget-s", type=float, default=280, help="skip sections that would end past this")
    args = p.parse_args()
    shape = CPU_SMOKE if args.cpu_smoke else GPU_7B
    if shape.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here; use --cpu-smoke for the CPU dry run", file=sys.stderr)
        return 2
    # a dry run is no benchmark result: it stays out of benchmarks/results (and the docs' tables)
    default = (
        Path(tempfile.gettempdir()) / "gpu-suite-cpu-smoke.json"
        if args.cpu_smoke
        else RESULTS / "gpu-suite.json"
    )
    paths = [args.json or default] + ([Path(args.out) / "gpu-suite.json"] if args.out else [])
    header = {
        "benchmark": "gpu-suite", "machine": machine(shape), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["python3", *sys.argv]), "shape": shape.name, "budget_s": args.budget_s,
    }  # fmt: skip
    record = Record(paths, header, args.budget_s)
    loaded: LoadedModel | None = None
    try:
        loaded = load(record, shape)
    except Exception as error:
        record.add("load_s", None, "s", note=f"error: {type(error).__name__}: {error}")
    if loaded is None:
        for name in figure_names(shape):
            if name not in record.names():
                record.add(name, None, "", note="error: the model did not load")
    else:
        run_checks(record, loaded)
        for names, estimate, section in sections(shape):
            record.section(names, estimate, lambda s=section: s(record, loaded, shape))
    failures = record.failures()
    print(
        f"{len(record.figures)} figures in {record.elapsed():.0f} s; written to {', '.join(map(str, paths))}"
    )
    print(f"failures: {', '.join(f['name'] for f in failures) or 'none'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
