"""The bundled SmolLM2-135M-Instruct: the real-model check (loaded once per session)."""

import json

import torch

from personavec import LoadedModel, capture, load_vector, pooled_activations, steer
from personavec.core.generate import generate
from personavec.core.sampling import Sampling


def test_identity_and_chat(smollm2: LoadedModel) -> None:
    identity = smollm2.identity
    assert (identity.n_layers, identity.hidden_size, identity.architecture) == (30, 576, "llama")
    assert identity.sha256 is not None and len(identity.sha256) == 64
    prompt = smollm2.chat("How are you?", system="You are a gloomy assistant.")
    assert prompt.startswith("<|im_start|>system\nYou are a gloomy assistant.<|im_end|>")
    assert prompt.endswith("<|im_start|>assistant\n")


def test_generates_and_steering_changes_the_answer(smollm2: LoadedModel) -> None:
    prompts = [smollm2.chat("Name a colour."), smollm2.chat("What is the capital of France?")]
    plain = generate(smollm2, prompts, Sampling(max_new_tokens=12), progress=False)
    assert all(len(answer) > 0 for answer in plain)
    assert "Paris" in plain[1]
    again = generate(smollm2, prompts, Sampling(max_new_tokens=12), progress=False)
    assert again == plain  # greedy decoding is deterministic
    with steer(smollm2.model, {15: torch.randn(576) * 40}, coef=1.0):
        steered = generate(smollm2, prompts, Sampling(max_new_tokens=12), progress=False)
    assert steered != plain


def test_pooled_activations_match_capture(smollm2: LoadedModel) -> None:
    prompt = smollm2.chat("Say hi.")
    response = "Hello there!"
    pooled = pooled_activations(smollm2, [prompt], [response], progress=False)
    ids = smollm2.tokenizer(prompt + response, add_special_tokens=False, return_tensors="pt")["input_ids"]
    n_prompt = len(smollm2.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    with torch.no_grad(), capture(smollm2.model, [0, 15, 30]) as cap:
        smollm2.model(input_ids=ids)
    for layer in (0, 15, 30):
        torch.testing.assert_close(
            pooled.response_avg[0, layer], cap[layer][0, n_prompt:].mean(0), atol=1e-4, rtol=1e-4
        )
        torch.testing.assert_close(
            pooled.prompt_last[0, layer], cap[layer][0, n_prompt - 1], atol=1e-4, rtol=1e-4
        )


def test_demo_end_to_end_separates_held_out_answers(smollm2: LoadedModel, tmp_path) -> None:
    """The offline demo (lexicon judge): its vector at the chosen layer ranks held-out answers right."""
    from personavec.demo import DEMO_CONFIG, SWEEP_COEFS, run_demo
    from personavec.judges.lexicon import LexiconJudge
    from personavec.traits import load_trait

    result = run_demo(tmp_path, loaded=smollm2, progress=False)
    vector = load_vector(tmp_path / "optimistic.safetensors")
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    assert vector.layer == sweep["chosen"] == max(sweep["layers"], key=lambda r: r["trait"])["layer"]
    report = (tmp_path / "report.html").read_text()
    assert (
        report.count("data:image/png;base64,") == 5 and "offline proxy" in report and "Capability" in report
    )
    assert {e.coef for e in result.examples} == {-DEMO_CONFIG.coef, 0.0, DEMO_CONFIG.coef}
    assert {"generations", "judgements", "vectors", "sweep", "calibration", "total"} <= set(result.seconds)

    # the steering sweep at the chosen layer: judged trait monotone in the coefficient
    assert sorted(c.coef for c in result.sweep) == list(SWEEP_COEFS)
    assert result.targets["spearman_trait_vs_coef"] >= 0.9
    assert len(result.calibration.points) == 8 * 10 and result.targets["calibration_r_graded"] is not None
    assert "unsteered" in result.capability and result.capability["unsteered"]["n"] == 40

    # held out: evaluation questions under the trait's system prompts (greedy), kept by the same rule as
    # the pipeline's filter (eliciting prompt and judged ≥ 50 vs suppressing prompt and judged < 50)
    trait = load_trait("optimistic")
    prompts, positive = [], []
    for pair in trait.instructions[:3]:
        for question in trait.evaluation_questions[:10]:
            for side in ("pos", "neg"):
                prompts.append(smollm2.chat(question, pair[side]))
                positive.append(side == "pos")
    greedy = Sampling(max_new_tokens=DEMO_CONFIG.sampling.max_new_tokens, batch_size=60)
    answers = generate(smollm2, prompts, greedy, progress=False)
    scores = dict(LexiconJudge("optimistic", "positive").score("", [("", a) for a in answers]))
    keep = [i for i in range(len(answers)) if positive[i] == (scores[i].value >= 50)]
    pooled = pooled_activations(
        smollm2, [prompts[i] for i in keep], [answers[i] for i in keep], progress=False
    )
    projection = vector.project(pooled.tensor("response-avg")[:, vector.layer]).tolist()
    pos = [p for p, i in zip(projection, keep, strict=True) if positive[i]]
    neg = [p for p, i in zip(projection, keep, strict=True) if not positive[i]]
    assert len(pos) >= 10 and len(neg) >= 10
    auroc = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
    assert auroc >= 0.9, auroc
