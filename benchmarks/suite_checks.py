"""Correctness on the device, in the model's dtype: the engine against references, so that a device- or
dtype-specific bug shows as a failed check, not as a slow number.

Each check returns an error measure; its tolerance is the target recorded with it:

- hooks: what `capture` records at every layer ≡ ``output_hidden_states`` of the same forward call
  (the last layer through the model's final norm, as transformers reports it): exact;
- pooling: `pooled_activations` (float32 sums in hooks) vs the three poolings recomputed in float64 from
  ``output_hidden_states`` of the same single-sample call: max |Δ| / max |h| ≤ 1e-4;
- padding: each sample pooled inside a left-padded batch vs alone: ‖Δ‖ / ‖h‖ ≤ 5e-2 (bfloat16
  rounding through every layer differs with the batch's shape; a pad leaking in is of order 1);
- steering positions: inside batched ``generate``, the tokens `steer` edits for "prompt", "response"
  and "all" are exactly those (pads never): mismatched tokens = 0;
- guard: rows the guard leaves alone generate bit-identical tokens to an unguarded run of the same
  batch, rows it steers change, and it fires on exactly the rows above the threshold: violations = 0;
- projections: `project` (prompt-last, response-avg; batched, padded) vs float64 projections of
  ``output_hidden_states`` of each sample alone: |Δ| / (‖h‖/√hidden), the typical size of a projection
  onto a random direction, ≤ 0.25 (padding's bfloat16 noise should stay well below it; a wrong layer or
  pooling about 1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from personavec.core.activations import pooled_activations
from personavec.core.hf import collate
from personavec.core.hooks import capture, steer
from personavec.core.models import LoadedModel
from personavec.core.pooling import encode_samples
from personavec.core.vectors import PersonaVector
from personavec.deploy.guard import Guard
from personavec.deploy.monitor import project
from suite_record import Record

QUESTIONS = [
    "How is the weather?",
    "Tell me about bread and flour, please.",
    "What about the Roman empire and its emperors?",
    "Hi",
    "Describe the sea at night.",
    "What makes a good friend, in your view?",
    "Two plus two?",
    "Explain why the sky is blue to a child.",
]
ANSWERS = [f"Answer {i}: " + "the quick brown fox jumps over a lazy dog " * (i + 1) for i in range(8)]


def _hidden_states(loaded: LoadedModel, batch: dict[str, Tensor]) -> tuple[Tensor, ...]:
    with torch.inference_mode():
        out = loaded.model(**batch, output_hidden_states=True, use_cache=False)
    return tuple(out.hidden_states)


def _padded(loaded: LoadedModel, texts: list[str]) -> dict[str, Tensor]:
    batch = loaded.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return {k: v.to(loaded.device) for k, v in batch.items()}


def hooks_error(loaded: LoadedModel) -> float:
    """Largest |capture − output_hidden_states| over the real tokens of a left-padded batch."""
    batch = _padded(loaded, [loaded.chat(q) for q in QUESTIONS[:4]])
    layers = range(loaded.identity.n_layers + 1)
    with torch.inference_mode(), capture(loaded.model, layers) as cap:
        states = _hidden_states(loaded, batch)
    real = batch["attention_mask"].bool()
    norm = loaded.model.base_model.norm
    worst = 0.0
    for layer in layers:
        got = cap[layer] if layer < loaded.identity.n_layers else norm(cap[layer])
        worst = max(worst, float((got - states[layer])[real].abs().max()))
    return worst


def pooling_error(loaded: LoadedModel) -> float:
    """max |pooled − float64 recomputation| / max |h|, over samples, poolings and layers."""
    prompts = [loaded.chat(q) for q in QUESTIONS[:3]]
    pooled = pooled_activations(loaded, prompts, ANSWERS[:3], token_budget=1, progress=False)
    layers = range(loaded.identity.n_layers + 1)
    keys = ("input_ids", "attention_mask", "position_ids")
    worst = 0.0
    for i, sample in enumerate(encode_samples(loaded.tokenizer, prompts, ANSWERS[:3], None)):
        # the very call the pooler made (one sample, token_budget=1), its residuals in full
        batch = collate([sample], int(loaded.tokenizer.pad_token_id), True, loaded.device)
        with torch.inference_mode(), capture(loaded.model, layers) as cap:
            loaded.model.base_model(**{k: batch[k] for k in keys}, use_cache=False)
        hidden = torch.stack([cap[layer][0] for layer in layers]).double().cpu()  # [L+1, T, H]
        n = sample.n_prompt
        reference = {
            "prompt-last": hidden[:, n - 1],
            "prompt-avg": hidden[:, :n].mean(1),
            "response-avg": hidden[:, n:].mean(1),
        }
        scale = float(hidden.abs().max())
        for pooling, expected in reference.items():
            worst = max(worst, float((pooled.tensor(pooling)[i].double() - expected).abs().max()) / scale)
    return worst


def padding_error(loaded: LoadedModel) -> float:
    """max over samples, poolings and layers of ‖batched − alone‖ / ‖alone‖."""
    prompts = [loaded.chat(q) for q in QUESTIONS]
    batched = pooled_activations(loaded, prompts, ANSWERS, progress=False)
    worst = 0.0
    for i in range(len(prompts)):
        alone = pooled_activations(loaded, prompts[i : i + 1], ANSWERS[i : i + 1], progress=False)
        for pooling in ("prompt-last", "prompt-avg", "response-avg"):
            a, b = batched.tensor(pooling)[i], alone.tensor(pooling)[0]
            worst = max(worst, float(((a - b).norm(dim=-1) / b.norm(dim=-1).clamp(min=1e-12)).max()))
    return worst


def steering_mismatches(loaded: LoadedModel) -> float:
    """Tokens edited where they should not be, or not edited where they should, over three settings."""
    batch = _padded(loaded, [loaded.chat(q) for q in QUESTIONS[:3]])
    layer = loaded.identity.n_layers // 2
    torch.manual_seed(1)
    vector = torch.randn(loaded.identity.hidden_size) * 4
    real = batch["attention_mask"].bool().cpu()
    mismatches = 0
    for positions in ("prompt", "response", "all"):
        with (
            torch.inference_mode(),
            capture(loaded.model, [layer]) as before,
            steer(loaded.model, {layer: vector}, 1.0, positions),
            capture(loaded.model, [layer]) as after,
        ):
            loaded.model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        changed = [
            (a - b).abs().amax(-1).cpu() > 0
            for a, b in zip(after.calls[layer], before.calls[layer], strict=True)
        ]
        expected = [real & (positions != "response")]
        expected += [torch.full_like(c, positions != "prompt") for c in changed[1:]]
        mismatches += sum(int((c != e).sum()) for c, e in zip(changed, expected, strict=True))
    return float(mismatches)


def guard_violations(loaded: LoadedModel) -> float:
    """Untouched rows not bit-identical + steered rows unchanged + rows fired against expectation."""
    prompts = [loaded.chat(q) for q in QUESTIONS]
    batch = _padded(loaded, prompts)
    layer = loaded.identity.n_layers // 2
    with torch.inference_mode(), capture(loaded.model, [layer]) as cap:
        loaded.model.base_model(**batch, use_cache=False)
    last = cap[layer][:, -1].float().cpu()
    direction = last[:4].mean(0) - last[4:].mean(0)  # the first four rows project clearly higher
    tensor = torch.zeros(loaded.identity.n_layers + 1, loaded.identity.hidden_size)
    tensor[layer] = direction / direction.norm() * last.norm(dim=-1).mean()
    vector = PersonaVector("guarded", tensor, layer=layer, metadata={"model": loaded.identity.to_dict()})
    projections = project(loaded, [vector], prompts, progress=False)[:, 0]
    ranked = projections.sort().values.tolist()
    gap = max(range(2, 6), key=lambda k: ranked[k + 1] - ranked[k])  # the widest gap mid-table
    threshold = (ranked[gap] + ranked[gap + 1]) / 2
    expected = projections > threshold

    def run() -> Tensor:
        with torch.inference_mode():
            out = loaded.model.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        return out.cpu()

    plain = run()
    with Guard(loaded.model, vector, threshold=threshold, coef=4.0) as guard:
        guarded = run()
    fired = guard.fired.cpu()
    identical = torch.tensor([torch.equal(guarded[r], plain[r]) for r in range(len(prompts))])
    return float((identical & fired).sum() + (~identical & ~fired).sum() + (fired != expected).sum())


def projection_error(loaded: LoadedModel) -> float:
    """max |project − float64 projection of the sample alone| / (‖h‖/√hidden), prompt-last and
    response-avg."""
    prompts = [loaded.chat(q) for q in QUESTIONS[:4]]
    n = loaded.identity.n_layers
    torch.manual_seed(3)
    vectors = [
        PersonaVector(f"t{j}", torch.randn(n + 1, loaded.identity.hidden_size), layer=layer)
        for j, layer in enumerate((n // 3, 2 * n // 3))
    ]
    last = project(loaded, vectors, prompts, progress=False)
    average = project(loaded, vectors, prompts, ANSWERS[:4], pooling="response-avg", progress=False)
    worst = 0.0
    for i, prompt in enumerate(prompts):
        n_prompt = encode_samples(loaded.tokenizer, [prompt], ANSWERS[i : i + 1], None)[0].n_prompt
        states = _hidden_states(loaded, _padded(loaded, [prompt + ANSWERS[i]]))
        for j, v in enumerate(vectors):
            unit = v.unit().double()
            h_last = states[v.layer][0, n_prompt - 1].double().cpu()
            h_avg = states[v.layer][0, n_prompt:].double().mean(0).cpu()
            for got, h in ((last[i, j], h_last), (average[i, j], h_avg)):
                typical = float(h.norm()) / loaded.identity.hidden_size**0.5
                worst = max(worst, abs(float(got) - float(h @ unit)) / typical)
    return worst


CHECKS: list[tuple[str, Callable[[LoadedModel], float], str, str]] = [
    ("check.hooks_vs_hidden_states", hooks_error, "max |Δ|", "== 0"),
    ("check.pooling_vs_float64", pooling_error, "rel max", "<= 1e-4"),
    ("check.pooling_padded_vs_alone", padding_error, "rel norm", "<= 5e-2"),
    ("check.steering_positions", steering_mismatches, "tokens", "== 0"),
    ("check.guard_bit_identity", guard_violations, "rows", "== 0"),
    ("check.projections_vs_float64", projection_error, "rel", "<= 0.25"),
]


def run_checks(record: Record, loaded: LoadedModel) -> None:
    """Each check as its own section: one failing or raising does not stop the others."""
    for name, check, unit, target in CHECKS:

        def run(
            name: str = name,
            check: Callable[[LoadedModel], float] = check,
            unit: str = unit,
            target: str = target,
        ) -> None:
            record.add(name, check(loaded), unit, target)

        record.section([name], 10.0, run)
