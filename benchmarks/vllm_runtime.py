"""The vLLM backend against the transformers backend, and its hooks against plain vLLM, side by side.

python benchmarks/vllm_runtime.py   # bundled SmolLM2 (float32), CPU; needs `make vllm`
                                    # (not vllm.py: run from benchmarks/, that name would shadow vLLM)

- generation: 16 prompts × 64 new tokens, greedy, the same requests on both backends (vLLM eager,
  with personavec's hooks installed; transformers batched, every prompt at once);
- telemetry: the same requests read by probes on 2 vectors (2 layers), ÷ the same vLLM engine with
  no request asking for anything (its hooks pass through), ÷ plain vLLM compiled, as users run it;
- activations: pooled response-avg at every layer for 32 prompt + answer pairs, vLLM ÷ transformers.
Each figure is the best of 3 runs after a warm-up.
"""

from __future__ import annotations

import os
import time

import torch

from personavec.core.backend import GenerationRequest, Probe, as_backend
from personavec.core.models import ModelRef, checkpoint_dir
from personavec.traits import load_trait

from _common import Figure, best_time, parser, report

N, NEW = 16, 64


def main() -> None:
    parser(__doc__ or "").parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
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
    vllm.close()
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
    ]
    print(f"model: smollm2 float32 on {os.cpu_count()} CPU cores, {N} prompts × {NEW} new tokens, greedy")
    report("vllm", figures)


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
