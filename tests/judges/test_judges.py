from __future__ import annotations

import math
import re
import time

import pytest
import torch
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from openai_server import FakeOpenAI
from personavec.errors import PersonavecError
from personavec.judges import COHERENCE_RUBRIC, JudgeCache, logprob_score, make_judge
from personavec.judges.cache import FAIL_FAST
from personavec.judges.lexicon import LexiconJudge
from personavec.judges.local import LocalJudge
from personavec.judges.openai_compat import OpenAIJudge
from personavec.traits import load_trait

from tiny import tiny_loaded

RUBRIC = "Rate how cheerful this is.\nQ: {question}\nA: {answer}\nReply 0-100 or REFUSAL."


def distribution(answer: str) -> list[tuple[str, float]]:
    """The test server's top logprobs for an answer "answer-k": depends on k, some tokens not integers."""
    k = int(answer.rsplit("-", 1)[1])
    probs = [(str(10 * (k % 10)), 0.5), (str(5 + k), 0.2), ("REF", 0.15), (" 100", 0.1), ("101", 0.05)]
    return [(t, math.log(p)) for t, p in probs]


def expected(answer: str) -> float:
    """The paper's weighted mean written out by hand for `distribution`."""
    k = int(answer.rsplit("-", 1)[1])
    return (10 * (k % 10) * 0.5 + (5 + k) * 0.2 + 100 * 0.1) / (0.5 + 0.2 + 0.1)


def reply(body: dict) -> tuple[str, list[tuple[str, float]] | None]:
    answer = re.search(r"(answer-\d+)", body["messages"][0]["content"]).group(1)
    top = distribution(answer)
    return top[0][0], top


ITEMS = [(f"question {k}", f"answer-{k}") for k in range(12)]


@pytest.fixture
def key(monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")


def judge_for(server: FakeOpenAI, **kwargs) -> OpenAIJudge:
    return OpenAIJudge("judge-model", base_url=server.url, backoff=0.01, timeout=2.0, **kwargs)


def test_logprob_score_rule() -> None:
    top = [("85", math.log(0.5)), ("90", math.log(0.2)), ("REF", math.log(0.2)), (" 7", math.log(0.05))]
    assert logprob_score(top) == pytest.approx((85 * 0.5 + 90 * 0.2 + 7 * 0.05) / 0.75)
    assert logprob_score([("50", math.log(0.24)), ("REF", math.log(0.76))]) is None  # mass < 0.25
    assert logprob_score([("50", math.log(0.25)), ("REF", math.log(0.75))]) == pytest.approx(50)
    assert logprob_score([("-5", 0.0), ("1e3", 0.0), ("101", 0.0)]) is None  # none are integers 0-100
    assert logprob_score([("0", math.log(0.3)), ("100", math.log(0.1))]) == pytest.approx(25)  # both ends


def test_openai_judge_weighted_mean_against_a_real_server(key) -> None:
    with FakeOpenAI(reply) as server:
        scores = dict(judge_for(server, concurrency=4).score(RUBRIC, ITEMS))
    assert sorted(scores) == list(range(len(ITEMS)))
    for i, (_, answer) in enumerate(ITEMS):
        assert scores[i].method == "logprobs"
        assert scores[i].value == pytest.approx(expected(answer))
    request = server.requests[0]
    assert (request["max_tokens"], request["logprobs"], request["top_logprobs"]) == (1, True, 20)
    assert (
        "question 0"
        in next(r for r in server.requests if "answer-0" in r["messages"][0]["content"])["messages"][0][
            "content"
        ]
    )


def test_retries_on_429_500_timeouts_and_garbage(key) -> None:
    with FakeOpenAI(reply, hang=1.0) as server:
        server.faults = ["429", "500", "timeout", "garbage", "empty"]
        judge = judge_for(server, concurrency=1, retries=5)
        judge.client = judge.client.with_options(timeout=0.3)
        scores = dict(judge.score(RUBRIC, ITEMS[:3]))
    assert [scores[i].value for i in range(3)] == pytest.approx([expected(a) for _, a in ITEMS[:3]])
    assert len(server.requests) == 5 + 3  # five faults retried, then one answer per item


def test_an_item_that_keeps_failing_is_recorded_missing_and_the_run_goes_on(key) -> None:
    with FakeOpenAI(reply) as server:
        server.faults = ["500"] * 3
        scores = dict(judge_for(server, concurrency=1, retries=2).score(RUBRIC, ITEMS[:4]))
    assert scores[0].value is None and scores[0].method == "failed"
    assert "HTTP 500 after 2 retries" in scores[0].error and server.url in scores[0].error
    assert [scores[i].value for i in (1, 2, 3)] == pytest.approx([expected(a) for _, a in ITEMS[1:4]])
    assert len(server.requests) == 3 + 3


def test_server_without_logprobs_falls_back_to_a_sampled_integer(key) -> None:
    answers = {"answer-0": " 42", "answer-1": "REFUSAL", "answer-2": "Score: 77."}

    def no_logprobs(body: dict) -> tuple[str, None]:
        answer = re.search(r"(answer-\d+)", body["messages"][0]["content"]).group(1)
        return answers[answer], None

    with FakeOpenAI(no_logprobs) as server:
        scores = dict(judge_for(server, concurrency=1).score(RUBRIC, ITEMS[:3]))
    assert [scores[i].value for i in range(3)] == [42.0, None, 77.0]
    assert {s.method for s in scores.values()} == {"sampled"}
    assert server.requests[-1]["max_tokens"] > 1 and "logprobs" not in server.requests[-1]


def test_unparseable_sampled_replies_end_as_failed(key) -> None:
    with FakeOpenAI(lambda body: ("I cannot say", None)) as server:
        (_, score), *_ = judge_for(server, concurrency=1, retries=1).score(RUBRIC, ITEMS[:1])
    assert score.method == "failed" and "no score in the reply" in score.error


def test_cache_never_pays_twice_and_retries_failures(key, tmp_path) -> None:
    cache_path = tmp_path / "cache.jsonl"
    with FakeOpenAI(reply) as server:
        server.faults = ["500"]
        judge = judge_for(server, concurrency=1, retries=0)
        first = JudgeCache(cache_path).judge(judge, RUBRIC, ITEMS, progress=False)
        assert first[0].method == "failed" and len(server.requests) == len(ITEMS)
        with open(cache_path, "a") as torn:
            torn.write('{"key": "abc", "val')  # a crash in the middle of a line
        cache = JudgeCache(cache_path)
        assert len(cache) == len(ITEMS) - 1
        second = cache.judge(judge, RUBRIC, ITEMS, progress=False)  # only the failed one is asked again
        assert len(server.requests) == len(ITEMS) + 1
        assert [s.value for s in second] == pytest.approx([expected(a) for _, a in ITEMS])
        JudgeCache(cache_path).judge(judge, COHERENCE_RUBRIC, ITEMS[:2], progress=False)  # another rubric
        assert len(server.requests) == len(ITEMS) + 3


def test_unreachable_endpoint_is_one_clear_error(key, tmp_path) -> None:
    judge = OpenAIJudge("m", base_url="http://127.0.0.1:9/v1", retries=2, backoff=0.01, concurrency=4)
    started = time.perf_counter()
    with pytest.raises(PersonavecError, match=r"127\.0\.0\.1:9.*connection refused \(") as raised:
        JudgeCache(tmp_path / "c.jsonl").judge(judge, RUBRIC, ITEMS * 10, progress=False)
    assert "retries" not in str(raised.value)  # a refused connection is not retried
    assert time.perf_counter() - started < 30  # gave up after the first FAIL_FAST items, not all 120
    assert len(ITEMS) * 10 > FAIL_FAST


def test_openai_judge_needs_a_key(monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(PersonavecError, match="OPENAI_API_KEY"):
        make_judge("openai:gpt-4.1-mini", load_trait("evil"))


def test_lexicon_judge_maps_vader_compound() -> None:
    judge = make_judge("lexicon", load_trait("optimistic"))
    assert isinstance(judge, LexiconJudge) and not judge.measures_coherence and "proxy" in judge.proxy
    texts = ["What a wonderful, hopeful day!", "This is awful and will surely fail.", "It is a table."]
    scores = dict(judge.score(RUBRIC, [("q", t) for t in texts]))
    vader = SentimentIntensityAnalyzer()
    for i, text in enumerate(texts):
        assert scores[i].value == pytest.approx(50 * (1 + vader.polarity_scores(text)["compound"]))
    assert scores[0].value > 75 and scores[1].value < 25 and scores[2].value == 50
    gloomy = dict(LexiconJudge("gloomy", "negative").score(RUBRIC, [("q", texts[1])]))
    assert gloomy[0].value == pytest.approx(100 - scores[1].value)


def test_lexicon_judge_refuses_non_sentiment_traits() -> None:
    with pytest.raises(PersonavecError, match=r"only scores sentiment-like traits.*'evil'"):
        make_judge("lexicon", load_trait("evil"))


def test_make_judge_names() -> None:
    assert make_judge("none", load_trait("evil")) is None
    for bad in ("gpt4", "openai:", "hf", "lexicon:x"):
        with pytest.raises(PersonavecError, match="unknown judge"):
            make_judge(bad, load_trait("evil"))


def test_local_judge_matches_a_float64_recomputation() -> None:
    loaded = tiny_loaded("llama")
    tokenizer = loaded.tokenizer
    digits = [i for i in range(len(tokenizer)) if tokenizer.decode([i]).strip().isdigit()]
    assert len(digits) >= 10
    # make numbers likely, so that the scores are real numbers and not all missing
    head = torch.nn.Linear(loaded.identity.hidden_size, len(tokenizer), bias=False)
    with torch.no_grad():
        head.weight.copy_(loaded.model.get_output_embeddings().weight)
        head.weight[digits] *= 40
    loaded.model.lm_head = head
    items = [
        ("How are you?", "Fine."),
        ("Will it rain tomorrow, do you think?", "Maybe, maybe not."),
        ("Hi", "Yo"),
    ]
    scores = dict(LocalJudge(loaded, batch_size=3).score(RUBRIC, items))  # one padded batch
    for i, (q, a) in enumerate(items):
        ids = tokenizer(
            loaded.chat(RUBRIC.replace("{question}", q).replace("{answer}", a)),
            return_tensors="pt",
            add_special_tokens=False,
        )["input_ids"]
        with torch.no_grad():
            logits = loaded.model(ids).logits[0, -1].double()
        probs = torch.softmax(logits, -1)
        top = probs.topk(20)
        mass = total = 0.0
        for p, t in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            text = tokenizer.decode([t]).strip()
            if text.isdigit() and int(text) <= 100:
                mass, total = mass + p, total + p * int(text)
        assert mass >= 0.25
        assert scores[i].value == pytest.approx(total / mass, abs=1e-3)


def test_switching_to_sampled_mode_under_concurrency_keeps_scores_right(key) -> None:
    """Requests sent for logprobs but answered after the switch must not be read as sampled text."""

    def no_logprobs(body: dict) -> tuple[str, None]:
        return ("75" if body.get("max_tokens", 1) > 1 else "7"), None  # a 1-token reply cuts "75"

    with FakeOpenAI(no_logprobs, delay=0.05) as server:
        scores = dict(judge_for(server, concurrency=8).score(RUBRIC, ITEMS))
    assert {s.value for s in scores.values()} == {75.0}


def test_fail_fast_spares_a_judge_that_succeeded_before(key, tmp_path) -> None:
    cache = JudgeCache(tmp_path / "c.jsonl")
    with FakeOpenAI(reply) as server:
        judge = judge_for(server, concurrency=1, retries=0)
        cache.judge(judge, RUBRIC, ITEMS[:1], progress=False)
        server.faults = ["500"] * 3
        scores = JudgeCache(tmp_path / "c.jsonl").judge(judge, RUBRIC, ITEMS[1:4], progress=False)
    assert [s.method for s in scores] == ["failed"] * 3  # recorded missing, no abort: it worked before


def test_bad_concurrency_and_unicode_digits(key) -> None:
    with pytest.raises(PersonavecError, match="concurrency must be at least 1"):
        OpenAIJudge("m", base_url="http://127.0.0.1:9/v1", concurrency=0)
    assert logprob_score([("²", 0.0), ("٣", 0.0)]) is None
