"""The transformers backend: the `Backend` protocol on a Hugging Face model (`LoadedModel`).

Generation runs ``generate`` on left-padded batches of requests of one decoding, prompts sorted by
length, the call seeded once. A request's edits, probes and guards go through the `Ledger` (as in any
other backend): a hook on each layer it needs hands the ledger the batch's real tokens, pads dropped,
as one flat ``[num_tokens, hidden]`` tensor with each row's absolute positions, and writes the edited
tokens back. With probes the batch runs one step past its longest answer, so that the last token's
own residual is read; that step's token is dropped. Requests without edits or probes (a guard reads
a probe) run with no hook at all. Log-probabilities are read off the model's own output logits
(after any final soft-capping), before temperature and top-p.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import GenerationMixin, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from personavec.core.backend import (
    Admitted,
    Finished,
    FinishReason,
    Generation,
    GenerationRequest,
    LogprobRequest,
    Logprobs,
    TokenEvent,
    TokenScore,
)
from personavec.core.hooks import ResidualHooks
from personavec.core.layers import unwrap
from personavec.core.ledger import Ledger, Plan, Segment
from personavec.core.models import LoadedModel, TokenizerText, eos_ids
from personavec.core.pooling import EncodedSample, Pooled, check_layers, encode_samples, length_batches
from personavec.core.sampling import Sampling
from personavec.errors import ConfigError, ModelError


class LedgerHooks(ResidualHooks):
    """Hands each forward call's real tokens at the ledger's layers to `ledger`, flat, and writes its
    edits back. Row r of the batch is the ledger's request `r`; its positions come from the 2-D
    attention mask (left or right padding), or count on from the KV cache without one. `layers`
    (default: the ledger's) for a ledger whose requests are opened later."""

    def __init__(self, model: nn.Module, ledger: Ledger, layers: Sequence[int] | None = None) -> None:
        super().__init__(model, sorted(ledger.layers) if layers is None else layers)
        self.ledger = ledger
        self.real = torch.empty(0, dtype=torch.bool)

    def _register(self) -> None:
        super()._register()  # its pre-hook observes the call first
        backbone = self.blocks.backbone
        self._handles.append(backbone.register_forward_pre_hook(self._begin, with_kwargs=True))
        self._handles.append(backbone.register_forward_hook(lambda *_: self.ledger.end()))

    def _begin(self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        real = self.state.real
        if real is None:
            self.state.select("all")  # raises: a 4-D mask hides the pads
            return
        tokens = real.shape[1]
        mask = kwargs.get("attention_mask")
        if isinstance(mask, Tensor) and mask.dim() == 2:
            positions = (mask.long().cumsum(-1) - 1)[:, -tokens:]
        else:
            positions = (torch.arange(tokens, device=real.device) + self.state.offset).expand(real.shape)
        self.real = real
        starts = torch.where(real, positions, torch.iinfo(torch.long).max).min(-1).values.tolist()
        lengths = real.sum(-1).tolist()
        self.ledger.begin(
            [Segment(r, s, n) for r, (s, n) in enumerate(zip(starts, lengths, strict=True)) if n]
        )

    def edit(self, layer: int, hidden: Tensor) -> Tensor | None:
        real = self.real.to(hidden.device)
        new = self.ledger.at_layer(layer, hidden[real])
        return None if new is None else hidden.masked_scatter(real.unsqueeze(-1), new)


class _Logits:
    """The last position's log-probabilities of each forward call of the model (its output's logits,
    after any final soft-capping), kept by a forward hook."""

    def __init__(self, model: nn.Module) -> None:
        self.latest = torch.empty(0)
        self._handle = model.register_forward_hook(self._keep)

    def _keep(self, _module: nn.Module, _args: Any, output: Any) -> None:
        self.latest = output.logits[:, -1].float()

    def scores(self, tokens: list[int], k: int) -> list[TokenScore]:
        """Each row's new token's log-probability and the row's `k` likeliest tokens."""
        logprobs = torch.log_softmax(self.latest, dim=-1).cpu()
        top = logprobs.topk(k, dim=-1) if k else None
        return [
            TokenScore(
                float(logprobs[r, token]),
                []
                if top is None
                else list(zip(top.indices[r].tolist(), top.values[r].tolist(), strict=True)),
            )
            for r, token in enumerate(tokens)
        ]

    def remove(self) -> None:
        self._handle.remove()


@dataclass
class _Row:
    """One request's progress through a running ``generate``."""

    admitted: Admitted
    ids: list[int] = field(default_factory=list)
    scores: list[TokenScore] = field(default_factory=list)
    pending: tuple[int, TokenScore | None] | None = None  # sampled, its own residual not yet run
    done: bool = False


class _Batch(BaseStreamer, StoppingCriteria):
    """Follows one running ``generate``: as its streamer it gets each step's new tokens and emits the
    rows' tokens and ends, as its stopping criterion it tells ``generate`` which rows are done. A row
    with probes holds each token until the next step has run its residual (so the batch runs one step
    past the row's last token); a row without sends it at once."""

    def __init__(
        self,
        backend: TransformersBackend,
        admitted: Sequence[Admitted],
        ledger: Ledger,
        emit: Callable[[TokenEvent | Finished], None],
        cancelled: Callable[[Hashable], bool],
    ) -> None:
        self.backend, self.ledger, self.emit, self.cancelled = backend, ledger, emit, cancelled
        self.rows = [_Row(a) for a in admitted]
        asked = [a.request.top_logprobs for a in admitted]
        self.k = max((k or 0 for k in asked), default=0)
        self.logits = _Logits(backend.loaded.model) if any(k is not None for k in asked) else None
        self._prompt_seen = False

    def put(self, value: Tensor) -> None:
        if not self._prompt_seen:  # generate first hands over the prompts
            self._prompt_seen = True
            return
        tokens = [int(t) for t in value.reshape(-1).tolist()]
        scores = self.logits.scores(tokens, self.k) if self.logits is not None else [None] * len(tokens)
        for r, (row, token, score) in enumerate(zip(self.rows, tokens, scores, strict=True)):
            if not row.done:
                self._advance(r, row, token, score)

    def _advance(self, r: int, row: _Row, token: int, score: TokenScore | None) -> None:
        request = row.admitted.request
        if row.pending is not None:  # this step ran the pending token's residual
            self._send(r, row, *row.pending)
            row.pending = None
        if row.done:
            return
        if self.cancelled(row.admitted.key):
            self._finish(r, row, "length", cancelled=True)
        elif len(row.ids) >= request.max_tokens:
            self._finish(r, row, "length")  # `token` is the step past the last one: dropped
        elif token in self.backend.eos:
            self._finish(r, row, "stop")
        elif request.probes:
            row.pending = (token, score)
        else:
            self._send(r, row, token, score)
            if not row.done and len(row.ids) >= request.max_tokens:
                self._finish(r, row, "length")

    def _send(self, r: int, row: _Row, token: int, score: TokenScore | None) -> None:
        request = row.admitted.request
        if request.top_logprobs is not None and score is not None:
            score = TokenScore(score.logprob, score.top[: request.top_logprobs])
            row.scores.append(score)
        position = len(request.prompt_ids) + len(row.ids)
        row.ids.append(token)
        readings = self.ledger.readings(r)[position] if request.probes else []
        self.emit(TokenEvent(row.admitted.key, len(row.ids) - 1, token, readings, score))
        if request.stops and any(stop in self.backend.decode(row.ids) for stop in request.stops):
            self._finish(r, row, "stop")

    def _finish(self, r: int, row: _Row, reason: FinishReason, cancelled: bool = False) -> None:
        request, row.done = row.admitted.request, True
        ids, text, stopped = (
            cut_at_stop(self.backend.decode, row.ids, request.stops)
            if request.stops
            else (row.ids, self.backend.decode(row.ids), False)
        )
        generation = Generation(ids, text, "stop" if stopped else reason)
        if request.probes:
            generation.readings, generation.fired_at = self.ledger.by_step(r, len(ids))
        if request.top_logprobs is not None:
            generation.scores = row.scores[: len(ids)]
        self.emit(Finished(row.admitted.key, generation, cancelled))

    def end(self) -> None:
        for r, row in enumerate(self.rows):
            if not row.done:  # generate stopped first: the row ran out of length
                if row.pending is not None:
                    self._send(r, row, *row.pending)
                if not row.done:
                    self._finish(r, row, "length")

    def close(self) -> None:
        if self.logits is not None:
            self.logits.remove()

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs: Any) -> Tensor:
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)


class _Pooler(ResidualHooks):
    """Hooks on every layer that reduce each batch's hidden states to the three poolings and the
    mean residual norm."""

    def __init__(self, model: nn.Module, layers: Sequence[int]):
        super().__init__(model, layers)
        self.row = {layer: j for j, layer in enumerate(layers)}
        self.prompt_weights = self.response_weights = self.norm_weights = torch.empty(0)
        self.last = self.pad = torch.empty(0)
        self.out: dict[str, Tensor] = {}

    def start_batch(
        self, prompt_w: Tensor, response_w: Tensor, norm_w: Tensor, last: Tensor, hidden: int
    ) -> None:
        batch, device = prompt_w.shape[0], prompt_w.device
        self.prompt_weights, self.response_weights, self.norm_weights = prompt_w, response_w, norm_w
        self.last = last
        self.pad = ((prompt_w + response_w) == 0).unsqueeze(-1)  # pad tokens (and cut-off ones)
        shape = (batch, len(self.layers), hidden)
        self.out = {
            k: torch.empty(shape, device=device) for k in ("prompt-last", "prompt-avg", "response-avg")
        }
        self.out["norm"] = torch.empty((batch, len(self.layers)), device=device)

    def edit(self, layer: int, hidden: Tensor) -> None:
        device = hidden.device  # under a multi-GPU device map, blocks sit on different devices
        prompt_w, response_w = self.prompt_weights.to(device), self.response_weights.to(device)
        # zero pad positions first: a weight of 0 does not hide a NaN or inf there
        h = hidden.float().masked_fill(self.pad.to(device), 0.0)
        out_device = self.out["prompt-avg"].device
        row = self.row[layer]
        self.out["prompt-avg"][:, row] = torch.einsum("bt,bth->bh", prompt_w, h).to(out_device)
        self.out["response-avg"][:, row] = torch.einsum("bt,bth->bh", response_w, h).to(out_device)
        last = h[torch.arange(h.shape[0], device=device), self.last.to(device)]
        self.out["prompt-last"][:, row] = last.to(out_device)
        norms = torch.einsum("bt,bt->b", self.norm_weights.to(device), h.norm(dim=-1))
        self.out["norm"][:, row] = norms.to(out_device)


def collate(samples: list[EncodedSample], pad_id: int, left: bool, device: torch.device) -> dict[str, Tensor]:
    width = max(len(s.ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    prompt_w = torch.zeros((len(samples), width))
    response_w = torch.zeros((len(samples), width))
    norm_w = torch.zeros((len(samples), width))  # every token after the first
    last = torch.zeros(len(samples), dtype=torch.long)
    for row, sample in enumerate(samples):
        n = len(sample.ids)
        start = width - n if left else 0
        ids[row, start : start + n] = torch.tensor(sample.ids)
        mask[row, start : start + n] = 1
        prompt_w[row, start : start + sample.n_prompt] = 1.0 / sample.n_prompt
        if n > sample.n_prompt:
            response_w[row, start + sample.n_prompt : start + n] = 1.0 / (n - sample.n_prompt)
        if n > 1:
            norm_w[row, start + 1 : start + n] = 1.0 / (n - 1)
        last[row] = start + sample.n_prompt - 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    batch = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
    extra = {"prompt_w": prompt_w, "response_w": response_w, "norm_w": norm_w, "last": last}
    return {k: v.to(device) for k, v in {**batch, **extra}.items()}


def cut_at_stop(
    decode: Callable[[Sequence[int]], str], ids: list[int], stops: Sequence[str]
) -> tuple[list[int], str, bool]:
    """The answer up to its first stop sequence: the ids up to the one completing it, the text before
    it, and whether there was one."""
    text = decode(ids)
    if not any(s in text for s in stops):
        return ids, text, False
    n = next(n for n in range(1, len(ids) + 1) if any(s in decode(ids[:n]) for s in stops))
    prefix = decode(ids[:n])
    return ids[:n], prefix[: min(prefix.find(s) for s in stops if s in prefix)], True


class TransformersBackend(TokenizerText):
    """The `Backend` on a `LoadedModel` (see the module's docstring)."""

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__(loaded.tokenizer)
        self.loaded, self.identity, self.dtype = loaded, loaded.identity, str(loaded.model.dtype)
        self.eos = eos_ids(loaded.model.generation_config)

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        seed: int = 0,
        batch_size: int = 16,
        progress: bool = False,
        desc: str = "generate",
    ) -> list[Generation]:
        order = sorted(
            range(len(requests)), key=lambda i: (requests[i].decoding, len(requests[i].prompt_ids))
        )
        queue = deque(Admitted(i, requests[i]) for i in order)
        out: list[Generation | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc=desc, unit="answer", disable=not progress)

        def done(event: TokenEvent | Finished) -> None:
            if isinstance(event, Finished):
                out[cast(int, event.key)] = event.generation
                bar.update(1)

        torch.manual_seed(seed)  # once per call: the batches draw on from there
        self.stream(
            lambda n: [queue.popleft() for _ in range(min(n, len(queue)))], done, lambda _: False, batch_size
        )
        bar.close()
        return [g for g in out if g is not None]

    def stream(
        self,
        take: Callable[[int], Sequence[Admitted]],
        emit: Callable[[TokenEvent | Finished], None],
        cancelled: Callable[[Hashable], bool],
        max_running: int = 16,
    ) -> None:
        """Batches of requests of one decoding, oldest first: requests taken while a batch runs wait
        for the next (``generate`` cannot admit rows). A batch whose first request has a seed is
        seeded with it."""
        if not isinstance(
            unwrap(self.loaded.model), GenerationMixin
        ):  # a PEFT model generates through its base
            raise ModelError(f"{type(self.loaded.model).__name__} cannot generate text (not a causal LM)")
        waiting: list[Admitted] = []
        while True:
            waiting += take(max_running - len(waiting))
            if not waiting:
                return
            decoding = waiting[0].request.decoding
            batch = [a for a in waiting if a.request.decoding == decoding]
            waiting = [a for a in waiting if a.request.decoding != decoding]
            if batch[0].seed is not None:
                torch.manual_seed(batch[0].seed)
            self._run(batch, emit, cancelled)

    def _run(
        self,
        admitted: Sequence[Admitted],
        emit: Callable[[TokenEvent | Finished], None],
        cancelled: Callable[[Hashable], bool],
    ) -> None:
        """One ``generate`` over `admitted` (one decoding), tokens and ends emitted as they are made."""
        loaded, requests = self.loaded, [a.request for a in admitted]
        pad, first = loaded.tokenizer.pad_token_id, requests[0]
        width = max(len(r.prompt_ids) for r in requests)
        ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + list(r.prompt_ids) for r in requests])
        mask = (
            torch.arange(width) >= (width - torch.tensor([len(r.prompt_ids) for r in requests]))[:, None]
        ).long()
        ledger = Ledger()
        for r, request in enumerate(requests):
            if request.edits or request.probes:
                ledger.open(r, Plan(len(request.prompt_ids), request.edits, request.probes, request.guards))
        probing = any(r.probes for r in requests)
        max_new = max(r.max_tokens for r in requests) + probing  # + the step that reads the last token
        model: Any = loaded.model
        batch = _Batch(self, admitted, ledger, emit, cancelled)
        hooks = LedgerHooks(model, ledger) if ledger.layers else None
        try:
            with hooks or nullcontext(), torch.inference_mode():
                model.generate(
                    input_ids=ids.to(loaded.device), attention_mask=mask.to(loaded.device),
                    max_new_tokens=max_new, pad_token_id=pad, streamer=batch,
                    stopping_criteria=StoppingCriteriaList([batch]),
                    **Sampling(temperature=first.temperature, top_p=first.top_p).decoding(),
                )  # fmt: skip
            batch.end()  # rows generate stopped before they finished (not after a failure)
        finally:
            batch.close()

    def logprobs(self, requests: Sequence[LogprobRequest], batch_size: int = 16) -> list[Logprobs]:
        sequences = [list(r.prompt_ids) + list(r.continuation) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: len(sequences[i]))
        out: list[Logprobs | None] = [None] * len(requests)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            for i, result in zip(chunk, self._logprob_batch([requests[i] for i in chunk]), strict=True):
                out[i] = result
        return [x for x in out if x is not None]

    def _logprob_batch(self, requests: Sequence[LogprobRequest]) -> list[Logprobs]:
        """One forward over left-padded prompt + continuation, logits kept for the positions needed."""
        loaded, pad = self.loaded, self.loaded.tokenizer.pad_token_id
        sequences = [list(r.prompt_ids) + list(r.continuation) for r in requests]
        width = max(len(s) for s in sequences)
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in sequences])
        mask = (torch.arange(width) >= (width - torch.tensor([len(s) for s in sequences]))[:, None]).long()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens start at position 0
        keep = max(len(r.continuation) for r in requests) + 1
        ledger = Ledger()
        for r, request in enumerate(requests):
            if request.edits:
                ledger.open(r, Plan(len(request.prompt_ids), request.edits))
        model: Any = loaded.model
        hooks = LedgerHooks(model, ledger) if ledger.layers else None
        with hooks or nullcontext(), torch.inference_mode():
            logits = model(
                input_ids=ids.to(loaded.device), attention_mask=mask.to(loaded.device),
                position_ids=positions.to(loaded.device), use_cache=False, logits_to_keep=keep,
            ).logits  # fmt: skip
            logprobs = logits.float().log_softmax(-1).cpu()
        results = []
        for r, request in enumerate(requests):
            at = keep - 1 - len(request.continuation)  # the prompt's last position among those kept
            row = logprobs[r, at]
            top = row.topk(request.top_k) if request.top_k else None
            results.append(
                Logprobs(
                    candidates=[float(row[t]) for t in request.candidates],
                    top=[]
                    if top is None
                    else list(zip(top.indices.tolist(), top.values.tolist(), strict=True)),
                    continuation=[float(logprobs[r, at + j, t]) for j, t in enumerate(request.continuation)],
                )
            )
        return results

    def pooled(
        self,
        prompts: Sequence[str],
        responses: Sequence[str] | None = None,
        layers: Sequence[int] | None = None,
        token_budget: int = 16384,
        max_batch_size: int = 64,
        max_length: int | None = None,
        progress: bool = True,
    ) -> Iterator[tuple[list[int], Pooled]]:
        layers = check_layers(self.identity.n_layers, layers)
        samples = encode_samples(self.loaded.tokenizer, prompts, responses, max_length)
        device = self.loaded.device  # where the embeddings are, also under a multi-GPU device map
        pad_id = int(self.loaded.tokenizer.pad_token_id)
        left = self.loaded.tokenizer.padding_side == "left"
        pooler = _Pooler(self.loaded.model, layers)
        bar = tqdm(total=len(samples), desc="activations", unit="sample", disable=not progress)
        for indices in length_batches([len(s.ids) for s in samples], token_budget, max_batch_size):
            batch = collate([samples[i] for i in indices], pad_id, left, device)
            prompt_w, response_w, norm_w = batch.pop("prompt_w"), batch.pop("response_w"), batch.pop("norm_w")
            pooler.start_batch(prompt_w, response_w, norm_w, batch.pop("last"), self.identity.hidden_size)
            with torch.inference_mode(), pooler:  # hooks on only while the batch runs, not across the yield
                pooler.blocks.backbone(**batch, use_cache=False)
                out = {k: v.cpu() for k, v in pooler.out.items()}
            bar.update(len(indices))
            yield (
                indices,
                Pooled(
                    prompt_last=out["prompt-last"],
                    prompt_avg=out["prompt-avg"],
                    response_avg=out["response-avg"] if responses is not None else None,
                    truncated=torch.tensor([samples[i].truncated for i in indices], dtype=torch.bool),
                    layers=layers,
                    norm=out["norm"],
                ),
            )
        bar.close()


def tokenizer_of(backend: object) -> PreTrainedTokenizerBase:
    """The tokenizer a remote engine is checked against: the transformers backend's (a remote engine
    that generates is paired only with it, which computes the activations)."""
    if not isinstance(backend, TransformersBackend):
        raise ConfigError("a remote engine pairs with the transformers backend: use it for activations")
    return backend.loaded.tokenizer
