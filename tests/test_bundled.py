"""The bundled SmolLM2-135M-Instruct: the real-model check (loaded once per session)."""

import html
import json

import pytest
import torch

from personavec import LoadedModel, capture, load_vector, pooled_activations, steer
from personavec.core.generate import generate
from personavec.core.sampling import Sampling
from personavec.demo import DemoResult
from personavec.runs.stats import auroc


def test_identity_and_chat(smollm2: LoadedModel) -> None:
    identity = smollm2.identity
    assert (identity.n_layers, identity.hidden_size, identity.architecture) == (30, 576, "llama")
    assert identity.sha256 is not None and len(identity.sha256) == 64
    prompt = smollm2.chat("How are you?", system="You are a gloomy assistant.")
    assert prompt.startswith("<|im_start|>system\nYou are a gloomy assistant.<|im_end|>")
    assert prompt.endswith("<|im_start|>assistant\n")


def test_the_gguf_is_converted_once_and_loads_as_itself(tmp_path, monkeypatch, smollm2: LoadedModel) -> None:
    """load_model reads the GGUF's de-quantised weights from the cache after the first load: the same
    weights, tokenizer, chat and identity as loading the GGUF itself."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from personavec.core import models

    monkeypatch.setenv("PERSONAVEC_CACHE", str(tmp_path))
    first = models.load_model("smollm2", dtype="float32", device="cpu")
    (cached,) = (tmp_path / "checkpoints").iterdir()
    assert cached.name == f"{smollm2.identity.sha256[:16]}-float32" and (cached / "config.json").exists()
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))  # written aside, then renamed
    stamp = (cached / "model.safetensors").stat().st_mtime_ns
    again = models.load_model("smollm2", dtype="float32", device="cpu")
    assert (cached / "model.safetensors").stat().st_mtime_ns == stamp  # read, not converted again
    source = models._resolve("smollm2")
    direct = AutoModelForCausalLM.from_pretrained(
        source.location, gguf_file=source.gguf_file, dtype=torch.float32
    )
    for name, tensor in direct.state_dict().items():
        assert torch.equal(again.model.state_dict()[name], tensor), name
    assert again.identity == first.identity == smollm2.identity  # the GGUF file's, not the cache's
    gguf_tokenizer = models.prepare_tokenizer(
        AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)
    )
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi, friend! ünï 12345"},
    ]
    prompt = again.chat("Hi, friend! ünï 12345", system="Be brief.")
    assert prompt == models.format_chat(gguf_tokenizer, messages)
    assert again.tokenizer(prompt)["input_ids"] == gguf_tokenizer(prompt)["input_ids"]
    assert (again.tokenizer.pad_token_id, again.tokenizer.padding_side) == (
        gguf_tokenizer.pad_token_id, gguf_tokenizer.padding_side,
    )  # fmt: skip
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("PERSONAVEC_CACHE", str(tmp_path / "a-file"))  # no cache can be written there
    assert models.load_model("smollm2", dtype="float32", device="cpu").identity == smollm2.identity
    monkeypatch.setattr(models, "CACHED_GGUF_BYTES", 0)  # a larger GGUF: loaded directly, nothing cached
    monkeypatch.setenv("PERSONAVEC_CACHE", str(tmp_path / "other"))
    assert models.load_model("smollm2", dtype="float32", device="cpu").identity == smollm2.identity
    assert not (tmp_path / "other").exists()


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


@pytest.fixture(scope="module")
def demo(smollm2: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    """The offline demo (lexicon judge), run once for this module's tests."""
    from personavec.demo import run_demo

    return run_demo(tmp_path_factory.mktemp("demo"), loaded=smollm2, progress=False)


@pytest.mark.timeout(1500)  # the demo runs in the first one's set-up: minutes on 2 cores
def test_demo_end_to_end(demo: DemoResult) -> None:
    """The demo's run directory, report, sweep, calibration, capability and targets."""
    from personavec.demo import DEMO_CONFIG, SWEEP_COEFS, summary

    result, out = demo, demo.run.dir
    vector = load_vector(out / "optimistic.safetensors")
    sweep = json.loads((out / "sweep.json").read_text())
    assert vector.layer == sweep["chosen"] == max(sweep["layers"], key=lambda r: r["trait"])["layer"]
    report = (out / "report.html").read_text()
    assert (
        report.count("data:image/png;base64,") == 6 and "offline proxy" in report and "Capability" in report
    )
    assert {e.coef for e in result.examples} == {-DEMO_CONFIG.coef, 0.0, DEMO_CONFIG.coef}
    assert {"generations", "judgements", "vectors", "sweep", "calibration", "total"} <= set(result.seconds)
    assert "held-out separation" in result.seconds

    # the steering sweep at the chosen layer: judged trait monotone in the coefficient
    assert sorted(c.coef for c in result.sweep) == list(SWEEP_COEFS)
    assert (rho := result.targets["spearman_trait_vs_coef"].value) is not None and rho >= 0.9
    assert result.targets["spearman_trait_vs_coef"].met
    assert (
        len(result.calibration.points) == 8 * 10 and result.targets["calibration_r_graded"].value is not None
    )
    assert "unsteered" in result.capability and result.capability["unsteered"]["n"] == 40

    # the report states each target met or missed, with the reason when missed; no coherence column
    # or panel (the lexicon judge measures none)
    for target in result.targets.values():
        assert html.escape(target.name) in report
        assert target.met or (target.reason and f"missed: {html.escape(target.reason)}" in report)
    settings = report.split("<h2>Settings</h2>")[1].split("<h2>")[0]
    assert "&quot;" not in settings and "{" not in settings
    assert "<td>sampling temperature</td><td>0.7</td>" in settings
    assert "<th>coherence</th>" not in report
    assert "Held-out separation" in report and "no system prompt" in report
    assert "<h2>Layer ranking</h2>" in report and (out / "ranking.json").exists()
    assert f"held-out separation: AUROC {result.separation.auroc:.2f}" in summary(result)


@pytest.mark.timeout(1500)  # the demo runs in the first one's set-up: minutes on 2 cores
def test_demo_separates_held_out_answers_by_the_answers_alone(demo: DemoResult, smollm2: LoadedModel) -> None:
    """Held-out separation: questions no earlier stage asked, answers pooled with only the question in
    context, projected on the chosen layer; recomputed here plainly."""
    from personavec.judges.lexicon import LexiconJudge

    held_out, out = demo.separation, demo.run.dir
    asked = {e.question for e in demo.examples}
    for path in out.rglob("*.jsonl"):  # every answer the run generated: extraction, sweeps, calibration
        asked |= {json.loads(line).get("question") for line in path.read_text().splitlines() if line}
    questions = {a.question for a in held_out.answers}
    assert len(questions) >= 10 and not questions & asked
    # the scan above did find the earlier stages' questions: extraction's and the layer sweep's
    from personavec.demo import DEMO_CONFIG, SWEEP_QUESTIONS
    from personavec.traits import load_trait

    trait = load_trait("optimistic")
    assert set(trait.extraction_questions[: DEMO_CONFIG.questions]) <= asked
    assert set(trait.evaluation_questions[:SWEEP_QUESTIONS]) <= asked

    # labels by the filter's rule: eliciting side judged ≥ 50, suppressing side judged < 50
    judge = LexiconJudge("optimistic", "positive")
    scores = dict(judge.score("", [("", a.text) for a in held_out.answers]))
    assert all(a.positive == (scores[i].value >= 50) for i, a in enumerate(held_out.answers))

    # plain recomputation: only the question in context, response-avg at the chosen layer, unit vector
    vector = load_vector(out / "optimistic.safetensors")
    assert held_out.layer == vector.layer
    prompts = [smollm2.chat(a.question) for a in held_out.answers]
    pooled = pooled_activations(smollm2, prompts, [a.text for a in held_out.answers], progress=False)
    v = vector.tensor[vector.layer]
    projection = (pooled.response_avg[:, vector.layer] @ (v / v.norm())).tolist()
    assert projection == pytest.approx(held_out.projections, abs=1e-3)
    pos = [p for p, a in zip(projection, held_out.answers, strict=True) if a.positive]
    neg = [p for p, a in zip(projection, held_out.answers, strict=True) if not a.positive]
    assert len(pos) >= 10 and len(neg) >= 10
    auroc = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
    assert auroc == pytest.approx(held_out.auroc, abs=0.01)
    assert demo.targets["held_out_auroc"].value == held_out.auroc
    print(f"held-out AUROC {auroc:.3f} ({len(pos)} vs {len(neg)})")
    assert auroc >= 0.9, auroc  # 0.92 at layer 20 (43 vs 23 answers); 0.81 at layer 8, 0.92–0.96 at 10–22
    assert demo.targets["held_out_auroc"].met


@pytest.mark.timeout(1500)  # the demo runs in the first one's set-up: minutes on 2 cores
def test_a_fixed_answer_does_not_separate_without_the_system_prompt(
    demo: DemoResult, smollm2: LoadedModel
) -> None:
    """The old check's flaw: one neutral answer under the eliciting vs suppressing system prompt separates
    (the prompt does); with only the question in context it cannot."""
    from personavec.demo import HELD_OUT_PAIRS
    from personavec.pipeline.separation import separation
    from personavec.runs.results import Answer
    from personavec.traits import load_trait

    trait, vector = load_trait("optimistic"), demo.run.vectors["response-avg"]
    questions = sorted({a.question for a in demo.separation.answers})
    neutral = "Here is my answer to your question."
    answers = [Answer(q, neutral, positive) for q in questions for positive in (True, False)]
    assert separation(smollm2, vector, answers).auroc == pytest.approx(0.5, abs=0.05)

    pairs = trait.instructions[:HELD_OUT_PAIRS]
    prompts = [smollm2.chat(q, pair[side]) for pair in pairs for q in questions for side in ("pos", "neg")]
    pooled = pooled_activations(smollm2, prompts, [neutral] * len(prompts), progress=False)
    projection = vector.project(pooled.response_avg[:, vector.layer]).tolist()
    old = auroc(projection[0::2], projection[1::2])
    assert old is not None and old >= 0.9, old  # under the old protocol the prompt alone separates


PLANTED = 17  # the SAE feature planted along the vector


@pytest.mark.timeout(1500)  # the demo runs in the first one's set-up: minutes on 2 cores
def test_an_sae_trained_here_decomposes_the_vector_with_the_planted_feature_first(
    demo: DemoResult, smollm2: LoadedModel, tmp_path, capsys
) -> None:
    """On a small SAE trained by the tests on the bundled model and saved by SAELens: the planted
    feature first by decoder cosine and by encoding, and every figure as written plainly here."""
    from _sae import plant, save, token_activations, train_sae
    from personavec.analysis.sae import decompose, load_sae
    from personavec.cli import main
    from personavec.core.activations import pooled_activations
    from personavec.runs.readers import ExtractionRun

    run = ExtractionRun(demo.run.dir)
    vector, rows = demo.run.vectors["response-avg"], run.rows()
    layer = vector.resolve_layer(None)
    trained = train_sae(
        token_activations(smollm2, [r["question"] + " " + r["answer"] for r in rows[::3]], layer), layer
    )
    # h̄ by the definition: every answer's response-avg after its system prompt and question, averaged
    prompts = [smollm2.chat(r["question"], r["system"]) for r in rows]
    pooled = pooled_activations(smollm2, prompts, [r["answer"] for r in rows], layers=[layer], progress=False)
    per_answer = pooled.tensor("response-avg")[:, 0].double()
    mean, v = per_answer.mean(0), vector.at(layer).double()
    plant(trained, PLANTED, v, mean)
    sae = load_sae(save(trained, tmp_path / "sae"))  # through SAELens' own folder format
    found = decompose(smollm2, vector, sae, rows, top=5, answers=2, progress=False)
    assert found.layer == layer and found.hook_name == f"blocks.{layer - 1}.hook_resid_post"
    assert found.by_cosine[0].index == PLANTED == found.by_encoding[0].index

    w_dec, w_enc = sae.W_dec.detach().double(), sae.W_enc.detach().double()
    b_enc, b_dec = sae.b_enc.detach().double(), sae.b_dec.detach().double()

    def encode(x: torch.Tensor) -> torch.Tensor:  # a standard SAE: ReLU((x − b_dec) W_enc + b_enc)
        return torch.relu((x - b_dec) @ w_enc + b_enc)

    cosine = (w_dec @ v) / (w_dec.norm(dim=1) * v.norm())
    encoding = encode(mean + v) - encode(mean)
    assert [f.index for f in found.by_cosine] == cosine.topk(5).indices.tolist()
    assert [f.index for f in found.by_encoding] == encoding.topk(5).indices.tolist()
    for f in (*found.by_cosine, *found.by_encoding):
        assert f.cosine == pytest.approx(float(cosine[f.index]), abs=1e-5)
        assert f.encoding == pytest.approx(float(encoding[f.index]), rel=1e-4, abs=1e-4)
        best = encode(per_answer)[:, f.index].topk(2).indices.tolist()
        assert [a.answer for a in f.answers] == [rows[j]["answer"] for j in best]

    argv = [
        "vectors",
        "decompose",
        str(run.vector_path),
        "--sae",
        str(tmp_path / "sae"),
        "--model",
        "smollm2",
    ]
    assert main([*argv, "--top", "3", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["by_cosine"][0]["index"] == PLANTED and len(shown["by_encoding"]) == 3
