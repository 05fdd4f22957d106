"""The vLLM backend against the transformers backend, and its hooks against plain vLLM, side by side.

python benchmarks/vllm_runtime.py   # bundled SmolLM2 (float32), CPU; needs `make vllm`
                                    # (not vllm.py: run from benchmarks/, that name would shadow vLLM)

- generation: 16 prompts × 64 new tokens, greedy, the same requests on both backends (vLLM eager,
  with personavec's hooks installed; transformers batched, every prompt at once);
- telemetry: the same requests read by probes on 2 vectors (2 layers), ÷ the same vLLM engine with
  no request asking for anything (its hooks pass through), ÷ plain vLLM compiled, as users run it;
- activations: pooled response-avg at every layer for 32 prompt + answer pairs, vLLM ÷ transformers;
- serving: `personavec serve` measuring 2 vectors, 16 concurrent clients, 64 greedy requests
  (benchmarks/serve.py's load), on vLLM ÷ on transformers, tokens/s;
- extraction end to end at the demo's settings (its trait, judge and ExtractConfig), each backend in a
  process of its own: wall time (the model's load included), and the peak resident memory of all its
  processes (vLLM's workers too).
The generation and activation figures are each the best of 3 runs after a warm-up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from personavec.core.backend import GenerationRequest, Probe, as_backend
from personavec.core.models import ModelRef, checkpoint_dir
from personavec.traits import load_trait
from serve import serving, through_server

from _common import Figure, best_time, parser, report

N, NEW = 16, 64


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--extract-only", choices=("vllm", "transformers"), help="one extraction (internal)")
    args = p.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    if args.extract_only:
        print(json.dumps(extract_once(args.extract_only)))
        return
    from personavec.core.vllm_backend import VllmBackend

    ref = ModelRef("smollm2", dtype="float32", device="cpu")
    hf = as_backend(ref)
    trait = load_trait("optimistic")
    questions = trait.extraction_questions + trait.evaluation_questions
    prompts = [hf.chat([{"role": "user", "content": questions[i % len(questions)]}]) for i in range(N)]
    ids = [tuple(hf.encode(p)) for p in prompts]
    plain = [GenerationRequest(i, NEW) for i in ids]
    units = [torch.randn(576, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    probed = [GenerationRequest(i, NEW, probes=(Probe(10, units[0]), Probe(20, units[1]))) for i in ids]

    def rate(backend: object, requests: list[GenerationRequest]) -> float:
        def run() -> None:
            run.tokens = sum(len(g.token_ids) for g in backend.generate(requests, batch_size=N))  # type: ignore[attr-defined]

        seconds = best_time(run, 3)
        return run.tokens / seconds  # type: ignore[attr-defined]

    vllm = VllmBackend(ref)
    figures = []
    hf_rate, vllm_rate = rate(hf, plain), rate(vllm, plain)
    telemetry = rate(vllm, probed)
    texts = [g.text for g in vllm.generate(plain)] * 2
    pooled = {
        name: best_time(lambda b=b: list(b.pooled(prompts * 2, texts, progress=False)), 3)
        for name, b in (("vllm", vllm), ("transformers", hf))
    }
    served = {name: serve_rate(b) for name, b in (("vllm", vllm), ("transformers", hf))}
    vllm.close()
    extraction = {name: _in_own_process(name) for name in ("vllm", "transformers")}
    compiled = _plain_compiled(ref, ids)
    figures += [
        Figure("transformers backend, generation", hf_rate, "new tok/s"),
        Figure("vLLM backend (eager, hooks idle), generation", vllm_rate, "new tok/s"),
        Figure("vLLM backend ÷ transformers backend, generation", vllm_rate / hf_rate, "×", "≥ 2"),
        Figure("vLLM with probes on 2 vectors", telemetry, "new tok/s"),
        Figure("probes on 2 vectors ÷ the same engine unprobed (eager)", telemetry / vllm_rate, "×"),
        Figure("plain vLLM compiled (no personavec)", compiled, "new tok/s"),
        Figure("probes on 2 vectors (eager) ÷ plain vLLM compiled", telemetry / compiled, "×", "≥ 0.85"),
        Figure(
            "pooled activations, vLLM ÷ transformers wall time", pooled["vllm"] / pooled["transformers"], "×"
        ),
        Figure("serve on vLLM, 16 clients", served["vllm"], "tok/s"),
        Figure("serve on transformers, 16 clients", served["transformers"], "tok/s"),
        Figure("serve on vLLM ÷ on transformers", served["vllm"] / served["transformers"], "×", "≥ 2"),
        Figure("extraction at the demo's settings, vLLM", extraction["vllm"]["seconds"], "s"),
        Figure("extraction at the demo's settings, transformers", extraction["transformers"]["seconds"], "s"),
        Figure(
            "extraction, vLLM ÷ transformers wall time",
            extraction["vllm"]["seconds"] / extraction["transformers"]["seconds"], "×", "≤ 0.6",
        ),
        Figure("extraction peak memory, vLLM (all its processes)", extraction["vllm"]["peak_mib"], "MiB"),
        Figure("extraction peak memory, transformers", extraction["transformers"]["peak_mib"], "MiB"),
    ]  # fmt: skip
    print(f"model: smollm2 float32 on {os.cpu_count()} CPU cores, {N} prompts × {NEW} new tokens, greedy")
    report("vllm", figures)


def serve_rate(backend: object) -> float:
    """Generated tokens/s of the server on `backend`, measuring 2 vectors, under 16 clients."""
    from personavec.core.vectors import PersonaVector
    from personavec.serve.config import Limits

    generator = torch.Generator().manual_seed(0)
    vectors = {f"t{i}": PersonaVector(f"t{i}", torch.randn(31, 576, generator=generator), layer=x)
               for i, x in enumerate((15, 20))}  # fmt: skip
    limits = Limits(max_batch=16, max_queue=64, max_tokens=32)
    with serving(backend, vectors, limits) as client:  # type: ignore[arg-type]
        return through_server(client, 32, 16)[0]


def extract_once(backend: str) -> dict[str, float]:
    """One extraction at the demo's settings: its wall time (the model's load included) and the peak
    resident memory of this process and every child it started."""
    from personavec.demo import DEMO_CONFIG, DEMO_TRAIT
    from personavec.judges.lexicon import LexiconJudge
    from personavec.pipeline.extract import extract

    start = time.perf_counter()
    ref = ModelRef("smollm2", dtype="float32", device="cpu")
    model: Any = ref
    if backend == "vllm":
        from personavec.core.vllm_backend import VllmBackend

        model = VllmBackend(ref)
    trait = load_trait(DEMO_TRAIT)
    judge = LexiconJudge(trait.name, trait.sentiment)
    with tempfile.TemporaryDirectory() as out:
        extract(model, trait, judge, Path(out), DEMO_CONFIG, progress=False)
        seconds = time.perf_counter() - start
        peak = _peak_mib(os.getpid())
    if backend == "vllm":
        model.close()
    return {"seconds": seconds, "peak_mib": peak}


def _peak_mib(pid: int) -> float:
    """Peak resident memory (VmHWM) of `pid` and its descendants, MiB."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")) / 1024
        todo += [int(c) for c in children]
    return total


def _in_own_process(backend: str) -> dict[str, float]:
    command = [sys.executable, __file__, "--extract-only", backend]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    line = next(line for line in out.stdout.splitlines() if line.startswith('{"seconds"'))  # vLLM logs too
    return dict(json.loads(line))


def _plain_compiled(ref: ModelRef, ids: list[tuple[int, ...]]) -> float:
    """New tokens/s of plain vLLM as users run it (torch.compile on, no worker extension)."""
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=str(checkpoint_dir(ref.name, ref.dtype)), dtype="float32", generation_config="vllm", seed=0
    )
    params = SamplingParams(temperature=0.0, max_tokens=NEW, top_k=0, min_p=0.0, detokenize=False)
    prompts = [{"prompt_token_ids": list(i)} for i in ids]

    def run() -> None:
        outputs = llm.generate(prompts, params, use_tqdm=False)
        run.tokens = sum(len(o.outputs[0].token_ids) for o in outputs)  # type: ignore[attr-defined]

    seconds = best_time(run, 3)
    llm.llm_engine.engine_core.shutdown()
    return run.tokens / seconds  # type: ignore[attr-defined]


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"wall: {time.perf_counter() - start:.0f} s")
