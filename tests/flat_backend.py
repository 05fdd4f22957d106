"""A test-only backend that runs a Llama-family model the way vLLM does, to hold the `Backend` protocol
to vLLM's shape.

Each forward step runs every scheduled request's tokens as one flat ``[num_tokens, hidden]`` tensor
(no batch axis, no padding, no attention mask): attention is computed per request against its own
key/value store, indexed by absolute position. The scheduler, within a token budget per step:

- decodes one token for every running request, then prefills waiting prompts in chunks (chunked
  prefill: a long prompt takes several steps);
- starts a prompt past position 0 when an earlier request with the same edits already computed that
  prefix (a prefix cache: those positions' keys and values are copied, their tokens never run), always
  computing at least the prompt's last token;
- preempts a request once, after its third answer token: its keys and values are dropped and it is
  recomputed from position 0 (prompt + answer so far, chunked) before it decodes on;
- runs one step past a finished request that has probes, so its last token's own residual is read.

Steering, probes, guards and pooling are all `personavec.core.ledger`'s, as in the real backends.
Chat formatting and tokenisation are the transformers backend's (it subclasses it for those).
"""

from __future__ import annotations

import hashlib
import itertools
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from personavec.core.backend import (
    Admitted,
    Finished,
    Generation,
    GenerationRequest,
    LogprobRequest,
    Logprobs,
    TokenEvent,
    TokenScore,
)
from personavec.core.engine import request_seed
from personavec.core.hf import TransformersBackend
from personavec.core.ledger import Ledger, Plan, Segment
from personavec.core.models import LoadedModel
from personavec.core.pooling import Pooled, check_layers, encode_samples, from_records

BLOCK = 4  # the prefix cache's block size, in tokens


@dataclass
class _Seq:
    """One request's sequence: its tokens (prompt, then answer), how many have keys and values, its
    key/value store per layer, and what is still to do."""

    key: int
    ids: list[int]
    prompt_len: int
    salt: str
    computed: int = 0
    kv: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    preempted: bool = False
    done: bool = False
    readout_step: bool = False  # the one step past the end, to read the last token


@dataclass
class _Live:
    """A request running in `FlatBackend.stream`: its sequence, sampler and tokens sent so far."""

    admitted: Admitted
    seq: _Seq
    generator: torch.Generator
    scores: list[TokenScore] = field(default_factory=list)
    sent: int = 0
    cancelled: bool = False


class FlatBackend(TransformersBackend):
    """The `Backend` on a Llama-family model, run flat (see the module docstring)."""

    def __init__(self, loaded: LoadedModel, token_budget: int = 24, preempt: bool = True) -> None:
        super().__init__(loaded)
        self.token_budget, self.preempt = token_budget, preempt
        model = loaded.model.model
        self.embed, self.layers, self.norm, self.rotary = (
            model.embed_tokens,
            model.layers,
            model.norm,
            model.rotary_emb,
        )
        self.lm_head = loaded.model.lm_head
        self.prefixes: dict[tuple[str, tuple[int, ...]], list[tuple[Tensor, Tensor]]] = {}
        self.steps: list[list[Segment]] = []  # every step's layout, for the tests to inspect
        self.preempted: list[int] = []  # the requests preempted, in order

    # -- the model, run flat ------------------------------------------------------------------------

    def _forward(self, seqs: Sequence[_Seq], segments: Sequence[Segment], ledger: Ledger) -> Tensor:
        """One step over `segments`; the final hidden state of each segment's tokens, flat."""
        by_key = {s.key: s for s in seqs}
        ids = torch.tensor([t for g in segments for t in by_key[g.key].ids[g.start : g.start + g.length]])
        positions = torch.tensor([p for g in segments for p in range(g.start, g.start + g.length)])
        ledger.begin(segments)
        h = self.embed(ids)
        cos, sin = self.rotary(h[None], positions[None])
        h = self._edit(ledger, 0, h)
        for index, layer in enumerate(self.layers):
            attention = layer.self_attn
            x = layer.input_layernorm(h)
            q = attention.q_proj(x).view(len(ids), -1, attention.head_dim).transpose(0, 1)[None]
            k = attention.k_proj(x).view(len(ids), -1, attention.head_dim).transpose(0, 1)[None]
            v = attention.v_proj(x).view(len(ids), -1, attention.head_dim).transpose(0, 1)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            out, offset = [], 0
            for g in segments:
                rows = slice(offset, offset + g.length)
                out.append(self._attend(by_key[g.key], index, g, q[0, :, rows], k[0, :, rows], v[:, rows]))
                offset += g.length
            h = h + attention.o_proj(torch.cat(out, dim=0))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
            h = self._edit(ledger, index + 1, h)
        ledger.end()
        for g in segments:
            by_key[g.key].computed = g.start + g.length
        return self.norm(h)

    def _edit(self, ledger: Ledger, layer: int, h: Tensor) -> Tensor:
        if layer not in ledger.layers:
            return h
        new = ledger.at_layer(layer, h)
        return h if new is None else new

    def _attend(self, seq: _Seq, index: int, g: Segment, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Request `seq`'s queries at positions [start, start + length) against its keys up to each."""
        if len(seq.kv) <= index:
            seq.kv.append((k[:, :0], v[:, :0]))
        old_k, old_v = seq.kv[index]
        keys = torch.cat([old_k[:, : g.start], k], dim=1)
        values = torch.cat([old_v[:, : g.start], v], dim=1)
        seq.kv[index] = (keys, values)
        groups = q.shape[0] // keys.shape[0]
        keys, values = keys.repeat_interleave(groups, 0), values.repeat_interleave(groups, 0)
        scores = (q @ keys.transpose(1, 2)) * q.shape[-1] ** -0.5
        query_pos = torch.arange(g.start, g.start + g.length)[:, None]
        scores = scores.masked_fill(torch.arange(keys.shape[1])[None, :] > query_pos, float("-inf"))
        weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        return (weights @ values).transpose(0, 1).reshape(g.length, -1)

    # -- scheduling ---------------------------------------------------------------------------------

    def _schedule(self, seqs: Sequence[_Seq]) -> list[Segment]:
        """This step's segments: a token for each running request, then prefill chunks."""
        budget, segments = self.token_budget, []
        running = [
            s for s in seqs if not s.done and s.computed == len(s.ids) - 1 and s.computed >= s.prompt_len
        ]
        running += [s for s in seqs if s.readout_step and s.computed == len(s.ids) - 1]
        for s in running:
            segments.append(Segment(s.key, s.computed, 1))
            budget -= 1
        for s in seqs:
            if budget <= 0 or s in running or (s.done and not s.readout_step) or s.computed >= len(s.ids):
                continue
            if s.computed == 0 and not s.kv:
                self._reuse_prefix(s)
            n = min(budget, len(s.ids) - s.computed)
            segments.append(Segment(s.key, s.computed, n))
            budget -= n
        return segments

    def _reuse_prefix(self, s: _Seq) -> None:
        """Start `s` past the longest cached block-aligned prefix of its prompt (never its last token)."""
        for n in range((s.prompt_len - 1) // BLOCK * BLOCK, 0, -BLOCK):
            cached = self.prefixes.get((s.salt, tuple(s.ids[:n])))
            if cached is not None:
                s.kv = [(k[:, :n], v[:, :n]) for k, v in cached]
                s.computed = n
                return

    def _remember_prefix(self, s: _Seq) -> None:
        """Keep the keys and values of every whole block of `s`'s prompt computed so far."""
        for n in range(BLOCK, min(s.computed, s.prompt_len) + 1, BLOCK):
            self.prefixes.setdefault((s.salt, tuple(s.ids[:n])), [(k[:, :n], v[:, :n]) for k, v in s.kv])

    # -- the protocol -------------------------------------------------------------------------------

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        seed: int = 0,
        batch_size: int = 16,
        progress: bool = False,
        desc: str = "generate",
    ) -> list[Generation]:
        queue = deque(Admitted(i, r, request_seed(seed, str(i))) for i, r in enumerate(requests))
        out: list[Generation | None] = [None] * len(requests)

        def done(event: TokenEvent | Finished) -> None:
            if isinstance(event, Finished):
                out[cast(int, event.key)] = event.generation

        self.stream(
            lambda n: [queue.popleft() for _ in range(min(n, len(queue)))], done, lambda _: False, batch_size
        )
        return [g for g in out if g is not None]

    def stream(
        self,
        take: Callable[[int], Sequence[Admitted]],
        emit: Callable[[TokenEvent | Finished], None],
        cancelled: Callable[[Hashable], bool],
        max_running: int = 16,
    ) -> None:
        """Every step admits new requests (up to `max_running` at once), as vLLM's scheduler does."""
        ledger, live, keys = Ledger(), [], itertools.count()  # a sequence's key: its admission's number
        with torch.inference_mode():
            while True:
                for admitted in take(max_running - len(live)):
                    live.append(self._admit(admitted, next(keys), ledger))
                if not live:
                    return
                for x in live:
                    if not x.seq.done and cancelled(x.admitted.key):  # it ends with the tokens sent
                        x.seq.done, x.seq.readout_step, x.cancelled = True, False, True
                        del x.seq.ids[x.seq.prompt_len + x.sent :], x.scores[x.sent :]
                segments = self._schedule([x.seq for x in live])
                self.steps.append(segments)
                final = self._forward([x.seq for x in live], segments, ledger) if segments else None
                offset = 0
                for g in segments:
                    x = next(x for x in live if x.seq.key == g.key)
                    last = cast(Tensor, final)[offset + g.length - 1]
                    offset += g.length
                    self._remember_prefix(x.seq)
                    if x.seq.readout_step:
                        x.seq.readout_step = False
                    elif x.seq.computed == len(x.seq.ids):  # the sequence's end: sample its next token
                        self._sample(
                            x.seq, x.admitted.request, self.lm_head(last).float(), x.generator, x.scores
                        )
                for x in live:
                    self._send(x, ledger, emit)
                self._maybe_preempt([x.seq for x in live])
                for x in [x for x in live if x.seq.done and not x.seq.readout_step]:
                    live.remove(x)
                    generation = self._result(x.seq, x.admitted.request, ledger, x.scores)
                    if x.cancelled:
                        generation.finish_reason = "length"
                    ledger.close(x.seq.key)
                    emit(Finished(x.admitted.key, generation, x.cancelled))

    def _admit(self, admitted: Admitted, key: int, ledger: Ledger) -> _Live:
        r = admitted.request
        seq = _Seq(key, list(r.prompt_ids), len(r.prompt_ids), _salt(r))
        ledger.open(key, Plan(seq.prompt_len, r.edits, r.probes, r.guards))
        seed = admitted.seed if admitted.seed is not None else int(torch.randint(2**62, ()))
        return _Live(admitted, seq, torch.Generator().manual_seed(seed))

    def _send(self, x: _Live, ledger: Ledger, emit: Callable[[TokenEvent | Finished], None]) -> None:
        """Emit the answer tokens not sent yet: those whose residual has run (with probes), or all."""
        s, r = x.seq, x.admitted.request
        ready = (s.computed if r.probes else len(s.ids)) - s.prompt_len
        while x.sent < min(ready, len(s.ids) - s.prompt_len):
            position = s.prompt_len + x.sent
            readings = ledger.readings(s.key)[position] if r.probes else []
            score = x.scores[x.sent] if r.top_logprobs is not None else None
            emit(TokenEvent(x.admitted.key, x.sent, s.ids[position], readings, score))
            x.sent += 1

    def _sample(
        self, s: _Seq, r: GenerationRequest, logits: Tensor, gen: torch.Generator, scores: list[TokenScore]
    ) -> None:
        logprobs = torch.log_softmax(logits, dim=-1)
        if r.temperature == 0:
            token = int(logprobs.argmax())
        else:
            probs = torch.softmax(logits / r.temperature, dim=-1)
            sorted_p, order = probs.sort(descending=True)
            keep = sorted_p.cumsum(0) - sorted_p < r.top_p
            token = int(order[torch.multinomial(sorted_p * keep, 1, generator=gen)])
        if token in self.eos:  # the last token's own residual was computed in this step
            s.done = True
            return
        s.ids.append(token)
        if r.top_logprobs is not None:
            top = logprobs.topk(r.top_logprobs) if r.top_logprobs else None
            best = [] if top is None else list(zip(top.indices.tolist(), top.values.tolist(), strict=True))
            scores.append(TokenScore(float(logprobs[token]), best))
        answer = s.ids[s.prompt_len :]
        if len(answer) >= r.max_tokens or any(stop in self.decode(answer) for stop in r.stops):
            s.done, s.readout_step = True, bool(r.probes)  # one step more, to read this token

    def _maybe_preempt(self, seqs: Sequence[_Seq]) -> None:
        for s in seqs:
            if self.preempt and not s.preempted and not s.done and len(s.ids) - s.prompt_len == 3:
                s.preempted, s.kv, s.computed = True, [], 0
                self.preempted.append(s.key)

    def _result(self, s: _Seq, r: GenerationRequest, ledger: Ledger, scores: list[TokenScore]) -> Generation:
        ids = s.ids[s.prompt_len :]
        text = self.decode(ids)
        stops = [text.find(stop) for stop in r.stops if stop in text]
        finish = "stop" if stops or len(ids) < r.max_tokens else "length"
        generation = Generation(ids, text[: min(stops)] if stops else text, finish)  # type: ignore[arg-type]
        if r.probes:
            generation.readings, generation.fired_at = ledger.by_step(s.key, len(ids))
        if r.top_logprobs is not None:
            generation.scores = scores
        return generation

    def logprobs(self, requests: Sequence[LogprobRequest], batch_size: int = 16) -> list[Logprobs]:
        ledger = Ledger()
        seqs = [
            _Seq(i, list(r.prompt_ids) + list(r.continuation), len(r.prompt_ids), "")
            for i, r in enumerate(requests)
        ]
        for s, r in zip(seqs, requests, strict=True):
            ledger.open(s.key, Plan(s.prompt_len, r.edits))
        rows: dict[int, dict[int, Tensor]] = {s.key: {} for s in seqs}  # position -> log-probabilities
        with torch.inference_mode():
            while any(s.computed < len(s.ids) for s in seqs):
                segments = self._schedule(seqs)
                final = self._forward(seqs, segments, ledger)
                offset = 0
                for g in segments:
                    key = cast(int, g.key)
                    for p in range(max(g.start, seqs[key].prompt_len - 1), g.start + g.length):
                        rows[key][p] = torch.log_softmax(
                            self.lm_head(final[offset + p - g.start]).float(), -1
                        )
                    offset += g.length
        out = []
        for s, r in zip(seqs, requests, strict=True):
            at = rows[s.key][s.prompt_len - 1]
            top = at.topk(r.top_k) if r.top_k else None
            out.append(
                Logprobs(
                    candidates=[float(at[t]) for t in r.candidates],
                    top=[]
                    if top is None
                    else list(zip(top.indices.tolist(), top.values.tolist(), strict=True)),
                    continuation=[
                        float(rows[s.key][s.prompt_len - 1 + j][t]) for j, t in enumerate(r.continuation)
                    ],
                )
            )
        return out

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
        for first in range(0, len(samples), max_batch_size):
            indices = list(range(first, min(first + max_batch_size, len(samples))))
            ledger = Ledger()
            seqs = [_Seq(i, samples[i].ids, samples[i].n_prompt, "") for i in indices]
            for s in seqs:
                ledger.open(s.key, Plan(s.prompt_len, pool_layers=layers, pool_length=len(s.ids)))
            with torch.inference_mode():
                while any(s.computed < len(s.ids) for s in seqs):
                    self._forward(seqs, self._schedule(seqs), ledger)
            records = [ledger.pooled(i) for i in indices]
            cut = [samples[i].truncated for i in indices]
            yield indices, from_records(records, layers, cut, responses is not None)


def _salt(request: GenerationRequest) -> str:
    """Requests share cached prefixes only under the same edits (vLLM's ``cache_salt``)."""
    parts = [
        f"{e.layer}:{e.op}:{e.coef}:{e.positions}:{e.vector.numpy().tobytes().hex()}" for e in request.edits
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()
