"""The half of the vLLM backend that runs inside vLLM's worker processes (its worker extension).

vLLM mixes `PersonavecWorker` into each worker (``worker_extension_cls``); the backend calls its
methods on every worker through ``collective_rpc``, for set-up only: `personavec_install` puts hooks
on the decoder layers and connects to the backend's results channel, `personavec_vectors` loads
directions. Each request then says what it wants in ``SamplingParams.extra_args["personavec"]`` (a
`wire` plan: edits, probes, guards, poolings, by vector id), and every forward step goes through
`personavec.core.ledger`, as in the other backends:

- the pre-hook on the rank's first decoder layer lays out the step: the scheduled requests in
  ``input_batch.req_ids`` order, their token counts from ``query_start_loc``, their absolute positions
  from the ``positions`` argument (checked against ``num_computed_tokens``, so a dummy or profiling
  step, which matches nothing, passes through untouched);
- the residual after block ℓ is ``hidden + residual`` of that layer's output (Llama-style layers);
  an edited stream goes back as ``(stream, 0)``, which the next layer's fused add reads exactly;
- after the rank's last layer, the step's new probe readings, guard firings and finished poolings go
  to the backend over a ZeroMQ PUSH socket, keyed by the request's own key and position (tensor-parallel
  ranks other than 0 compute the same and send nothing);
- a request gone from the runner's ``requests`` (finished or aborted) is closed at the next step;
  a preempted one stays open, so its guard stays fired and its edits land at the same positions.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from personavec.core.backend import Edit, GuardRule, Probe
from personavec.core.ledger import Ledger, Plan, Segment

KEY = "personavec"  # the extra_args entry a request's plan travels in


class _Account:
    """The hooks' state on one worker: the ledger, the requests it knows, what was already sent."""

    def __init__(self, runner: Any, vectors: dict[str, Tensor], sender: Any, reporting: bool) -> None:
        self.runner, self.vectors, self.sender, self.reporting = runner, vectors, sender, reporting
        self.ledger = Ledger()
        self.keys: dict[str, Hashable] = {}  # vLLM's request id -> the backend's key
        self.sent: dict[str, tuple[int, list[int | None], bool]] = {}  # readings sent, firings, pooled
        self.layers: set[int] = set()
        self.active = False
        self.counts = {"chunked": 0, "cached": 0, "recomputed": 0}  # segments seen of each kind

    def _count(self, rid: str, start: int, length: int) -> None:
        seen, prompt_len = self.ledger.seen(rid), self.ledger.plan(rid).prompt_len
        if start < seen:
            self.counts["recomputed"] += 1  # after a preemption
        elif start > seen:
            self.counts["cached"] += 1  # its first positions came from the prefix cache
        if length > 1 and start + length < prompt_len:
            self.counts["chunked"] += 1  # a prompt prefilled over several steps

    # -- a step -------------------------------------------------------------------------------------

    def begin(self, positions: Tensor) -> None:
        runner = self.runner
        for rid in [r for r in self.keys if r not in runner.requests]:  # finished or aborted
            self.ledger.close(rid)
            del self.keys[rid], self.sent[rid]
        batch = runner.input_batch
        n = batch.num_reqs
        ids = list(batch.req_ids[:n])
        for rid in ids:
            if rid not in self.keys:
                self._open(rid)
        self.active = bool(self.keys) and self._lay_out(ids, positions)
        self.layers = self.ledger.layers if self.active else set()

    def _open(self, rid: str) -> None:
        state = self.runner.requests.get(rid)
        params = getattr(state, "sampling_params", None)
        plan = ((params.extra_args or {}) if params is not None else {}).get(KEY)
        if plan is None:
            return
        self.ledger.open(rid, unwire(plan, self.vectors))
        self.keys[rid] = plan["key"]
        self.sent[rid] = (0, [None] * len(plan.get("guards", ())), False)

    def _lay_out(self, ids: Sequence[str], positions: Tensor) -> bool:
        """Hand the ledger this step's segments; False (nothing done) for a step that is not the
        scheduled batch (a dummy or profiling run)."""
        runner, n = self.runner, len(ids)
        starts_at = runner.query_start_loc.np[: n + 1].tolist()
        if not n or starts_at[-1] > positions.numel():
            return False
        first = positions[torch.tensor(starts_at[:-1])].tolist()
        computed = runner.input_batch.num_computed_tokens_cpu[:n].tolist()
        if first != computed:
            return False
        for rid, start, begin, end in zip(ids, first, starts_at[:-1], starts_at[1:], strict=True):
            if rid in self.keys:
                self._count(rid, start, end - begin)
        self.ledger.begin(
            [Segment(rid, start, end - begin) for rid, start, begin, end in
             zip(ids, first, starts_at[:-1], starts_at[1:], strict=True)]
        )  # fmt: skip
        return True

    def at_layer(self, layer: int, stream: Tensor) -> Tensor | None:
        return self.ledger.at_layer(layer, stream) if layer in self.layers else None

    def end(self) -> None:
        if not self.active:
            return
        self.ledger.end()
        self.active = False
        if self.reporting:
            self._report()

    def _report(self) -> None:
        """Send what is new since the last step: readings, firings, finished poolings."""
        records: list[tuple[Any, ...]] = []
        for rid, key in self.keys.items():
            n_sent, fired_sent, pooled_sent = self.sent[rid]
            readings = self.ledger.readings(rid)
            if len(readings) > n_sent:
                records.append(("readings", key, n_sent, readings[n_sent:]))
            fired = list(self.ledger.fired(rid))
            if fired != fired_sent:
                records.append(("fired", key, fired))
            plan = self.ledger.plan(rid)
            if plan.pool_layers and not pooled_sent and self.ledger.seen(rid) >= plan.pool_length:
                records.append(("pooled", key, _pooled_record(self.ledger, rid)))
                pooled_sent = True
            self.sent[rid] = (len(readings), fired, pooled_sent)
        if records:
            self.sender.send_pyobj(records)


def _pooled_record(ledger: Ledger, rid: str) -> dict[int, tuple[Any, ...]] | str:
    """The request's poolings as numpy arrays by layer, or why they cannot be given."""
    try:
        pooled = ledger.pooled(rid)
    except Exception as error:  # a skipped position: the backend raises it as its own error
        return str(error)
    return {
        layer: tuple(None if t is None else t.cpu().numpy() for t in triple)
        for layer, triple in pooled.items()
    }


def wire(key: str, plan: Plan, vector_id: Callable[[Tensor], str]) -> dict[str, Any]:
    """`plan` as a request's extra_args entry, its directions by the ids `vector_id` gives."""
    return {
        "key": key,
        "prompt_len": plan.prompt_len,
        "edits": [[e.layer, vector_id(e.vector), e.coef, e.op, e.positions] for e in plan.edits],
        "probes": [[p.layer, vector_id(p.unit)] for p in plan.probes],
        "guards": [[g.probe, g.threshold, g.coef, vector_id(g.direction), g.per_token] for g in plan.guards],
        "pool": list(plan.pool_layers),
        "pool_length": plan.pool_length,
    }


def unwire(data: Mapping[str, Any], vectors: Mapping[str, Tensor]) -> Plan:
    """The `Plan` a `wire` entry describes (one direction object per vector id, shared)."""
    return Plan(
        prompt_len=int(data["prompt_len"]),
        edits=tuple(
            Edit(layer, vectors[v], coef, op, positions) for layer, v, coef, op, positions in data["edits"]
        ),
        probes=tuple(Probe(layer, vectors[v]) for layer, v in data["probes"]),
        guards=tuple(
            GuardRule(probe, threshold, coef, vectors[v], per_token)
            for probe, threshold, coef, v, per_token in data["guards"]
        ),
        pool_layers=tuple(data["pool"]),
        pool_length=int(data["pool_length"]),
    )


class PersonavecWorker:
    """vLLM's worker extension (``worker_extension_cls="personavec.core.vllm_worker.PersonavecWorker"``)."""

    model_runner: Any  # the worker's, given by vLLM

    def personavec_install(self, address: str) -> dict[str, Any]:
        """Hook the decoder layers and connect to the backend at `address`; what this rank holds."""
        import zmq
        from vllm.distributed import parallel_state

        model = self.model_runner.get_model()
        backbone = getattr(model, "model", None)
        blocks = getattr(backbone, "layers", None)
        if not isinstance(blocks, nn.ModuleList):
            return {"error": f"{type(model).__name__} has no model.layers to hook"}
        start = int(getattr(backbone, "start_layer", 0))
        end = int(getattr(backbone, "end_layer", len(blocks)))
        tp_rank = parallel_state.get_tensor_model_parallel_rank()
        sender: Any = zmq.Context.instance().socket(zmq.PUSH)
        sender.setsockopt(zmq.SNDHWM, 0)
        sender.setsockopt(zmq.LINGER, 0)
        sender.connect(address)
        self.personavec_directions: dict[str, Tensor] = {}
        account = _Account(self.model_runner, self.personavec_directions, sender, reporting=tp_rank == 0)
        self.personavec_account = account
        _hook(blocks, start, end, account)
        return {"layers": [start, end], "n_blocks": len(blocks), "tp_rank": tp_rank}

    def personavec_vectors(self, vectors: Mapping[str, Sequence[float]]) -> int:
        """Load directions by id (each a list of floats); how many this worker holds."""
        for vid, values in vectors.items():
            self.personavec_directions[vid] = torch.tensor(values, dtype=torch.float32)
        return len(self.personavec_directions)

    def personavec_logprob(self, hidden: Sequence[float], token: int) -> float | None:
        """log p(`token`) from a last-layer residual, through the model's final norm and head (None on
        a rank the logits do not reach)."""
        model = self.model_runner.get_model()
        dtype = next(model.parameters()).dtype
        with torch.inference_mode():
            h = torch.tensor([list(hidden)], dtype=dtype, device=self.model_runner.device)
            logits = model.compute_logits(model.model.norm(h))
        return None if logits is None else float(torch.log_softmax(logits.float(), -1)[0, token])

    def personavec_stats(self) -> dict[str, int]:
        """The requests this worker holds state for (``open``: 0 once every request is over, from the
        step after), and how many segments came chunked, after a cached prefix, or recomputed."""
        account = self.personavec_account
        return {"open": len(account.keys), **account.counts}


def _hook(blocks: nn.ModuleList, start: int, end: int, account: _Account) -> None:
    """Pre-hook on block `start` (lays out the step; layer 0 is the first block's input), a forward
    hook on each block (layer ℓ + 1 is block ℓ's output), `end` after block ``end - 1``."""

    def first(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        positions, hidden, residual = _layer_args(args, kwargs)
        account.begin(positions)
        if start == 0 and residual is None:  # layer 0: the embeddings, about to enter block 0
            new = account.at_layer(0, hidden)
            if new is not None:
                return _with_hidden(args, kwargs, new)
        return None

    def after(index: int) -> Any:
        def hook(_module: nn.Module, _args: Any, output: tuple[Tensor, Tensor]) -> Any:
            result = None
            if index + 1 in account.layers:
                hidden, residual = output
                new = account.at_layer(index + 1, hidden + residual)
                result = None if new is None else (new, torch.zeros_like(residual))
            if index == end - 1:
                account.end()
            return result

        return hook

    blocks[start].register_forward_pre_hook(first, with_kwargs=True)
    for index in range(start, end):
        blocks[index].register_forward_hook(after(index))


def _layer_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor | None]:
    names = ("positions", "hidden_states", "residual")
    values = list(args) + [kwargs.get(name) for name in names[len(args) :]]
    return values[0], values[1], values[2]


def _with_hidden(args: tuple[Any, ...], kwargs: dict[str, Any], hidden: Tensor) -> tuple[Any, Any]:
    if len(args) >= 2:
        return (args[0], hidden, *args[2:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}
