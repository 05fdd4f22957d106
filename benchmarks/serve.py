"""``personavec serve`` under load: throughput against the library, telemetry cost, a load test.

python benchmarks/serve.py              # bundled SmolLM2, CPU
python benchmarks/serve.py --gpu-7b     # 7B-shaped random model, GPU

In one run, like for like (greedy, the same 64 prompts and answer length):
- the library's batched ``generate`` (batch 16) vs 16 concurrent openai-SDK clients through the server
  (generated tokens/s, target ≥ 0.8), and p50/p95 latency, errors, audit lines = requests;
- the server measuring two vectors vs the same server measuring none (time, target ≤ 1.05);
- a load test: clients at twice what the limits admit, for `--load-seconds`: only 429/503 refusals,
  resident memory at the end within 10 % of its value after warm-up, a normal answer afterwards;
- with llama.cpp's server installed (`make engines`): tokens/s through personavec in upstream mode vs
  directly against the same llama.cpp server at the same concurrency, and the scorer's added latency
  per request (no target: on a small CPU the engine and the scorer compete for the same cores).
"""

from __future__ import annotations

import importlib.util
import re
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import torch
import uvicorn

from personavec.core.generate import generate
from personavec.core.models import LoadedModel
from personavec.core.sampling import Sampling
from personavec.core.vectors import PersonaVector
from personavec.serve.app import build_app
from personavec.serve.config import Limits, ServeConfig

from _common import Figure, free_port, llama_server, load, parser, report

PROMPTS = [f"Tell me a short story about the number {i}." for i in range(64)]


def _rss_mib() -> float:
    text = Path("/proc/self/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024  # type: ignore[union-attr]


@contextmanager
def serving(
    loaded: LoadedModel,
    vectors: dict[str, PersonaVector],
    limits: Limits,
    audit: Path | None = None,
    upstream: str | None = None,
) -> Iterator[openai.OpenAI]:
    """The server's app on a free port in this process (uvicorn in a thread), and an SDK client."""
    named = list(vectors) or ["none"]  # a config names one vector at least; the app may measure none
    thresholds = tuple((n, s, 1e5) for n in named for s in ("prompt_last", "response_avg"))
    names = tuple((n, "-") for n in named)
    config = ServeConfig(
        vectors=names,
        thresholds=thresholds,
        limits=limits,
        audit=str(audit) if audit else None,
        name="bench",
        upstream=upstream,
        upstream_model="bench" if upstream else None,
        on_flag="pass",
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(build_app(loaded, vectors, config), port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0, timeout=600)
    finally:
        server.should_exit = True
        thread.join()


def _ask(
    client: openai.OpenAI, prompt: str, tokens: int, extra: dict[str, Any] | None = None
) -> tuple[int, float]:
    start = time.perf_counter()
    reply = client.chat.completions.create(
        model="bench", messages=[{"role": "user", "content": prompt}], temperature=0,
        max_tokens=tokens, extra_body=extra,
    )  # fmt: skip
    assert reply.usage is not None
    return reply.usage.completion_tokens, time.perf_counter() - start


def through_server(
    client: openai.OpenAI, tokens: int, clients: int, extra: dict[str, Any] | None = None
) -> tuple[float, list[float], int]:
    """(generated tokens/s, latencies, errors) of `PROMPTS` sent by `clients` concurrent clients."""
    _ask(client, PROMPTS[0], 4, extra)  # warm-up
    errors = 0
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(_ask, client, p, tokens, extra) for p in PROMPTS]
        results = []
        for future in futures:
            try:
                results.append(future.result())
            except openai.APIError:
                errors += 1
    wall = time.perf_counter() - start
    return sum(n for n, _ in results) / wall, [t for _, t in results], errors


def load_test(loaded: LoadedModel, vectors: dict[str, PersonaVector], seconds: float) -> dict[str, float]:
    """Clients at twice the admitted concurrency for `seconds`: status counts and memory."""
    limits = Limits(max_batch=4, max_queue=4)
    clients = 2 * (limits.max_batch + limits.max_queue)
    statuses: Counter[str] = Counter()
    with serving(loaded, vectors, limits) as client:
        _ask(client, PROMPTS[0], 8)
        warm = _rss_mib()
        stop = time.monotonic() + seconds

        def hammer(i: int) -> None:
            while time.monotonic() < stop:
                try:
                    _ask(client, PROMPTS[i % len(PROMPTS)], 16)
                    statuses["200"] += 1
                except openai.APIStatusError as error:
                    statuses[str(error.status_code)] += 1
                    retry = float(error.response.headers.get("retry-after", "1"))
                    time.sleep(min(retry, 0.2))

        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(hammer, range(clients)))
        end = _rss_mib()
        after = _ask(client, "Hi!", 8)[0]
    return {
        "ok": statuses["200"],
        "refused": statuses["429"] + statuses["503"],
        "other": sum(v for k, v in statuses.items() if k not in ("200", "429", "503")),
        "memory": end / warm,
        "after": float(after > 0),
        "clients": clients,
    }


def upstream_figures(loaded: LoadedModel, vectors: dict[str, PersonaVector], tokens: int) -> list[Figure]:
    """Through personavec (upstream mode) vs straight to llama.cpp's server, 4 clients each."""
    if importlib.util.find_spec("llama_cpp") is None:
        print("upstream: skipped (no llama.cpp server; `make engines` builds it)")
        return []
    port = free_port()
    engine = llama_server(port, "bench")
    sampler = {"top_k": 1, "min_p": 0.0, "repeat_penalty": 1.0}
    try:
        direct = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0, timeout=600
        )
        direct_rate, direct_lat, _ = through_server(direct, tokens, 4, sampler)
        upstream = f"http://127.0.0.1:{port}/v1"
        with serving(loaded, vectors, Limits(max_tokens=tokens), upstream=upstream) as client:
            via_rate, via_lat, errors = through_server(client, tokens, 4, sampler)
    finally:
        engine.kill()
    added = statistics.median(via_lat) - statistics.median(direct_lat)
    print(f"upstream: direct {direct_rate:.1f} tok/s, through personavec {via_rate:.1f} tok/s")
    ratio = via_rate / direct_rate
    return [
        Figure("upstream: through personavec / direct to llama.cpp, tokens/s (4 clients)", ratio, "×"),
        Figure("upstream: the scorer's added latency per request (median)", added, "s"),
        Figure("upstream: errors", errors, "", "≤ 0"),
    ]  # fmt: skip


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--load-seconds", type=float, default=60.0)
    args = p.parse_args()
    loaded = load(args.gpu_7b)
    tokens = 128 if args.gpu_7b else 32
    n, hidden = loaded.identity.n_layers, loaded.identity.hidden_size
    vectors = {f"t{i}": PersonaVector(f"t{i}", torch.randn(n + 1, hidden), layer=x)
               for i, x in enumerate((n // 2, 2 * n // 3))}  # fmt: skip
    limits = Limits(max_batch=16, max_queue=64, max_tokens=tokens)

    library_t = time.perf_counter()
    answers = generate(
        loaded, [loaded.chat(q) for q in PROMPTS], Sampling(max_new_tokens=tokens), progress=False
    )
    library_t = time.perf_counter() - library_t
    library_tokens = sum(len(loaded.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
    with tempfile.TemporaryDirectory() as tmp:
        audit = Path(tmp) / "audit.jsonl"
        with serving(loaded, vectors, limits, audit) as client:
            on_rate, latencies, errors = through_server(client, tokens, 16)
        audit_lines = len(audit.read_text().splitlines())
    with serving(loaded, {}, limits) as client:
        off_rate, _, _ = through_server(client, tokens, 16)
    library_rate = library_tokens / library_t
    quantiles = statistics.quantiles(latencies, n=20)
    print(f"library {library_rate:.1f} tok/s; server {on_rate:.1f} tok/s (telemetry off {off_rate:.1f})")
    lt = load_test(loaded, vectors, args.load_seconds)
    print(f"load test: {lt}")
    load_name = f"load test ({lt['clients']:.0f} clients, {args.load_seconds:.0f} s)"
    figures = [
        Figure(
            "server / library generated tokens/s (16 clients, 64 requests)",
            on_rate / library_rate,
            "×",
            "≥ 0.8",
        ),
        Figure("telemetry on (2 vectors) / off, time", off_rate / on_rate, "×", "≤ 1.05"),
        Figure("latency p50", statistics.median(latencies), "s"),
        Figure("latency p95", quantiles[18], "s"),
        Figure("errors", errors, "", "≤ 0"),
        Figure("audit lines / requests (incl. warm-up)", audit_lines / (len(PROMPTS) + 1), "×", "≥ 1"),
        Figure(f"{load_name}: answered", lt["ok"]),
        Figure(f"{load_name}: refused with 429/503", lt["refused"]),
        Figure(f"{load_name}: any other status", lt["other"], "", "≤ 0"),
        Figure(f"{load_name}: resident memory at the end / after warm-up", lt["memory"], "×", "≤ 1.1"),
        Figure(f"{load_name}: answers normally afterwards", lt["after"], "", "≥ 1"),
    ]
    figures += upstream_figures(loaded, vectors, tokens)
    report("serve", figures, args.gpu_7b)


if __name__ == "__main__":
    main()
