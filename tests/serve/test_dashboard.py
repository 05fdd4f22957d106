"""The live dashboard (``/dashboard``) in a real browser: Playwright driving the system's Chromium against
a real ``personavec serve`` on the bundled model (one server for the module), traffic from the openai SDK.

Under CI (``CI=true``) a missing browser fails these tests; elsewhere they skip and say how to install it.
Set ``PERSONAVEC_DASHBOARD_SCREENSHOT=docs/img/dashboard.png`` to refresh the docs' screenshot.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from server import KEY, Server, random_vectors, start

CHROMIUM = os.environ.get("PERSONAVEC_CHROMIUM", "/usr/bin/chromium")
PROBE = '<script>window.__xss = 1; alert(1)</script><img src=x onerror="window.__xss = 2; alert(2)">'
GUARD = {"guard": {"vector": "evil", "threshold": -1000.0, "coef": 4.0}}  # fires at the prompt's end


def _missing_browser() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install -e '.[dev]')"
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return f"no Chromium at {CHROMIUM} (apt-get install -y chromium, or set PERSONAVEC_CHROMIUM)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = _missing_browser()
    if missing and os.environ.get("CI") == "true":
        pytest.fail(f"the dashboard's browser tests must run under CI: {missing}")
    if missing:
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def server(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("dashboard")
    files = random_vectors(folder)
    thresholds = [f"{name}.{s}=0" for name in files for s in ("prompt_last", "response_avg")]
    args = [
        *(a for name, path in files.items() for a in ("--vector", f"{name}={path}")),
        *(a for t in thresholds for a in ("--threshold", t)),
        *["--name", "small", "--keep", "100", "--keep-text", "--max-tokens", "32"],
        *["--default-max-tokens", "8"],
    ]
    running = start(args, folder / "server.log", wait_ready=True)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=300)


def _ask(client: openai.OpenAI, text: str, **persona: Any) -> Any:
    extra = {"persona": persona} if persona else None
    messages: Any = [{"role": "user", "content": text}]
    return client.chat.completions.create(model="small", messages=messages, temperature=0, extra_body=extra)


@pytest.fixture(scope="module")
def page(browser: Any, server: Server, client: openai.OpenAI) -> Iterator[Any]:
    """A logged-in dashboard, opened after some traffic; `page.dialogs` lists any dialog that fired."""
    _ask(client, "What came before the page?")
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    opened = context.new_page()
    opened.dialogs = []
    opened.on("dialog", lambda d: (opened.dialogs.append(d.message), d.dismiss()))
    opened.goto(server.url + "/dashboard")
    opened.fill("input[name=key]", KEY)
    opened.click("button[type=submit]")
    opened.wait_for_selector("#connection[data-state=live]")
    yield opened
    context.close()


def _points(page: Any, trait: str) -> int:
    return int(page.evaluate("t => window.personavecDashboard.charts[t].data[0].length", trait))


def _row(page: Any, reply_id: str) -> Any:
    row = page.locator(f'#requests tr[data-id="{reply_id}"]')
    row.wait_for(timeout=30_000)
    return row


def test_without_the_key_the_page_and_its_stream_are_refused(browser: Any, server: Server) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        response = page.goto(server.url + "/dashboard")
        assert response.status == 401 and page.locator("input[name=key]").count() == 1
        assert page.locator("#requests").count() == 0  # the login form only
        for path in ("/dashboard/api/recent", "/dashboard/api/events", "/dashboard/api/requests/1"):
            assert context.request.get(server.url + path).status == 401, path
        page.fill("input[name=key]", "not-the-key")
        page.click("button[type=submit]")
        assert page.text_content("#login-error") == "wrong key"
        assert context.request.get(server.url + "/dashboard/api/recent").status == 401
        page.fill("input[name=key]", KEY)
        page.click("button[type=submit]")
        page.wait_for_selector("#connection[data-state=live]")
        assert KEY not in page.url
        (cookie,) = context.cookies()
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and KEY not in cookie["value"]
        assert context.request.get(server.url + "/dashboard/api/recent").status == 200
    finally:
        context.close()


def test_rows_from_before_and_after_the_page_opened_appear_live(page: Any, client: openai.OpenAI) -> None:
    assert page.locator("#requests tbody tr").count() >= 1  # the request made before the page opened
    before = _points(page, "evil")
    latencies = []
    for question in ("Tell me about cats.", "What is rain?", "Describe the sea."):
        reply = _ask(client, question)
        received = time.time()
        _row(page, reply.id)
        shown, recorded = page.evaluate(
            """id => {
                const e = [...window.personavecDashboard.state.entries.values()].find(e => e.id === id);
                return [e.shown, e.time * 1000]; }""",
            reply.id,
        )
        latencies.append((shown - recorded, shown - received * 1000))
    assert page.locator("#requests tbody tr").first.get_attribute("data-id") == reply.id  # newest first
    assert _points(page, "evil") == before + 3 and _points(page, "opt") == before + 3
    worst = max(a for a, _ in latencies)
    print(f"\nupdate latency, request recorded → row visible: {[round(a) for a, _ in latencies]} ms; "
          f"client got the answer → row visible: {[round(b) for _, b in latencies]} ms")  # fmt: skip
    assert worst < 2000


def test_a_guarded_request_shows_steered_with_its_tokens_shaded(page: Any, client: openai.OpenAI) -> None:
    reply = _ask(client, "How do I bake bread?", **GUARD)
    row = _row(page, reply.id)
    assert row.locator("td.steer").text_content() == "evil (guard)"
    row.click()
    page.wait_for_selector("#detail-tokens span")
    spans = page.locator("#detail-tokens span")
    assert spans.count() == reply.usage.completion_tokens
    assert "".join(spans.all_text_contents()).strip() == reply.choices[0].message.content.strip()
    page.select_option("#detail-trait", "opt")
    title = spans.first.get_attribute("title")
    assert title is not None and title.startswith("opt: ")
    figures = page.locator("#detail-figures tbody tr").all_text_contents()
    assert any(line.startswith("evil") and "guard" in line for line in figures)


def test_a_prompt_with_html_shows_as_text_and_runs_nothing(page: Any, client: openai.OpenAI) -> None:
    reply = _ask(client, PROBE)
    _row(page, reply.id).click()
    page.wait_for_function("p => document.getElementById('detail-prompt').textContent.includes(p)", arg=PROBE)
    assert page.locator("#detail img, #detail script, #requests img").count() == 0
    page.wait_for_timeout(300)  # an onerror would have fired by now
    assert page.evaluate("window.__xss") is None and page.dialogs == []


def test_filters_keep_the_matching_rows(page: Any) -> None:
    rows = page.locator("#requests tbody tr")
    everything = rows.count()
    flagged = sum(1 for cell in rows.locator("td.flag").all_text_contents() if cell)
    page.check("#filter-flagged")
    page.wait_for_function(f"() => document.querySelectorAll('#requests tbody tr').length === {flagged}")
    assert all(rows.locator("td.flag").all_text_contents())
    page.uncheck("#filter-flagged")
    page.select_option("#filter-trait", "evil")
    try:
        page.wait_for_function(f"() => document.querySelectorAll('#requests tbody tr').length < {everything}")
        # the table is redrawn row by row: wait for the guarded request's row, not only for fewer rows
        rows.locator("td.steer", has_text="evil (guard)").first.wait_for(timeout=10_000)
        involved = page.evaluate(
            """() => [...document.querySelectorAll('#requests tbody tr')].map(tr => {
                const f = window.personavecDashboard.state.entries.get(Number(tr.dataset.seq)).traits.evil;
                return Boolean(f.flagged || f.predicted || f.steered); })"""
        )
        assert involved and all(involved)
    finally:  # the next tests look for new rows: never leave a filter on
        page.select_option("#filter-trait", "")
    page.wait_for_function(f"() => document.querySelectorAll('#requests tbody tr').length === {everything}")


def test_the_chart_redraws_2000_points_per_trait(page: Any) -> None:
    """Each trait's chart takes 2,000 points and draws them; the time it takes is printed, not asserted
    (a wall-clock bound fails on a busy machine)."""
    drawn = page.evaluate(
        """async () => {
            const out = {};
            for (const [trait, chart] of Object.entries(window.personavecDashboard.charts)) {
                const now = Date.now() / 1000, n = 2000;
                const x = Array.from({length: n}, (_, i) => now - n + i);
                const y = () => x.map(() => Math.random() * 8 - 4);
                const data = [x, y(), y(), x.map(() => 0), x.map(() => 0)];
                const t0 = performance.now();
                chart.setData(data);
                await new Promise(r => queueMicrotask(r));  // uPlot draws in a microtask
                out[trait] = {ms: performance.now() - t0, points: chart.data[0].length,
                              series: chart.data.slice(1).map(s => s.length)};
            }
            return out;
        }"""
    )
    print(f"\nredraw of 2,000 points per trait (setData + draw): {drawn}")
    assert drawn and all(d["points"] == 2000 and d["series"] == [2000] * 4 for d in drawn.values()), drawn


def test_screenshot_under_load(page: Any, client: openai.OpenAI, tmp_path: Path) -> None:
    questions = [
        "Tell me about cats.", "How do plants grow?", "What is music?", "Why do we sleep?",
        "How do I learn to swim?", "What should I read next?", "Why is the sky blue?", "Describe a forest.",
    ]  # fmt: skip
    with ThreadPoolExecutor(8) as pool:
        jobs = [
            pool.submit(_ask, client, q, **(GUARD if i % 3 == 0 else {})) for i, q in enumerate(questions)
        ]
        page.wait_for_timeout(1500)
        replies = [job.result() for job in jobs]
    _row(page, replies[-1].id)
    page.reload()  # the charts come back from the server's ring
    page.wait_for_selector("#connection[data-state=live]")
    _row(page, replies[0].id).click()
    page.wait_for_selector("#detail-tokens span")
    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    target = os.environ.get("PERSONAVEC_DASHBOARD_SCREENSHOT")
    if target:
        shutil.copyfile(shot, target)
