// personavec's live persona dashboard. Every prompt, answer and id is written with textContent (never
// as HTML); the server's Content-Security-Policy allows only this script and uPlot's.
"use strict";
(() => {
  const MAX_POINTS = 2000; // entries the page keeps (and charts) per trait
  const RATE_SECONDS = 300; // flagged / predicted / steered rates over the last five minutes
  const THROUGHPUT_SECONDS = 60;
  const COLORS = { prompt: "#3559e0", response: "#d92d20" };

  const state = {
    boot: null, traits: [], thresholds: {}, keep: 0, text: false,
    entries: new Map(), // seq → entry, oldest first
    stats: [], charts: {}, rates: {}, selected: null, pending: false, dirty: false, detail: null,
  };

  const BASE = document.querySelector("meta[name=personavec-base]").content; // …/dashboard, where mounted
  const $ = (id) => document.getElementById(id);
  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }
  const fmt = (v, digits = 2) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
  const seconds = (s) => (s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(2)} s`);
  const flagged = (e) => state.traits.filter((t) => e.traits[t] && e.traits[t].flagged);
  const steered = (e) => state.traits.filter((t) => e.traits[t] && e.traits[t].steered);

  // ---- data -------------------------------------------------------------------------------------
  function keep(entry) {
    state.entries.set(entry.seq, entry);
    while (state.entries.size > MAX_POINTS) state.entries.delete(state.entries.keys().next().value);
  }

  async function fetchRecent() {
    const response = await fetch(`${BASE}/api/recent`, { credentials: "same-origin" });
    if (response.status === 401) { window.location.assign(BASE); return; }
    const snapshot = await response.json();
    if (snapshot.boot !== state.boot) state.entries.clear();
    state.boot = snapshot.boot;
    Object.assign(state, { traits: snapshot.traits, thresholds: snapshot.thresholds, keep: snapshot.keep, text: snapshot.text });
    const live = [...state.entries.values()];
    state.entries.clear();
    for (const e of [...snapshot.entries, ...live].sort((a, b) => a.seq - b.seq)) keep(e);
    state.stats.push(snapshot.stats);
    setup();
    schedule();
  }

  function connect() {
    const source = new EventSource(`${BASE}/api/events`);
    source.addEventListener("open", () => setConnection("live"));
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) { // refused (e.g. a new key): check, then retry
        setConnection("offline");
        setTimeout(() => fetchRecent().then(connect, () => setTimeout(connect, 3000)), 2000);
      } else setConnection("reconnecting");
    });
    source.addEventListener("reset", (event) => {
      const { boot } = JSON.parse(event.data);
      if (boot !== state.boot) { state.boot = boot; state.entries.clear(); }
      fetchRecent().catch(() => setConnection("reconnecting"));
    });
    source.addEventListener("entry", (event) => { keep(JSON.parse(event.data)); schedule(); });
    source.addEventListener("stats", (event) => {
      state.stats.push(JSON.parse(event.data));
      const cutoff = Date.now() / 1000 - 2 * THROUGHPUT_SECONDS;
      while (state.stats.length > 2 && state.stats[0].time < cutoff) state.stats.shift();
      schedule(false);
    });
  }

  function setConnection(value) {
    const node = $("connection");
    node.dataset.state = value;
    node.textContent = value;
  }

  // ---- charts -----------------------------------------------------------------------------------
  function setup() {
    const select = $("filter-trait");
    const shade = $("detail-trait");
    const added = [];
    for (const trait of state.traits) {
      if (state.charts[trait]) continue;
      select.append(new Option(trait, trait));
      shade.append(new Option(trait, trait));
      const card = el("div", null, "chart");
      const title = el("h2", trait);
      state.rates[trait] = el("span", "", "rates");
      title.append(state.rates[trait]);
      const plot = el("div");
      card.append(title, plot);
      $("charts").append(card);
      added.push([trait, card, plot]);
    }
    for (const [trait, card, plot] of added) { // once every card is laid out, each knows its width
      const chart = new uPlot(chartOptions(card), [[], [], [], [], []], plot);
      state.charts[trait] = chart;
      new ResizeObserver(() => chart.setSize({ width: chartWidth(card), height: 220 })).observe(card);
    }
    $("g-kept").textContent = `${state.keep}${state.text ? " with text" : ""}`;
  }

  const chartWidth = (card) => Math.max(320, card.clientWidth - 30);

  function chartOptions(card) {
    const line = (label, stroke, dash) => ({
      label, stroke, width: dash ? 1 : 1.5, dash, spanGaps: false,
      points: { show: !dash, size: 4, fill: stroke }, value: (u, v) => fmt(v),
    });
    return {
      width: chartWidth(card), height: 220,
      scales: { x: { time: true } }, legend: { live: true },
      series: [
        {},
        line("prompt-last", COLORS.prompt),
        line("response-avg", COLORS.response),
        line("threshold (prompt-last)", COLORS.prompt, [6, 4]),
        line("threshold (response-avg)", COLORS.response, [6, 4]),
      ],
      axes: [{}, { label: "projection", size: 50 }],
    };
  }

  function chartData(trait) {
    const x = [], last = [], avg = [], tLast = [], tAvg = [];
    for (const e of state.entries.values()) {
      const f = e.traits[trait];
      if (!f || e.status !== 200) continue;
      x.push(e.time); last.push(f.prompt_last); avg.push(f.response_avg);
      const t = f.thresholds || {};
      tLast.push(t.prompt_last ?? null); tAvg.push(t.response_avg ?? null);
    }
    return [x, last, avg, tLast, tAvg];
  }

  function rates(trait) {
    const cutoff = Date.now() / 1000 - RATE_SECONDS;
    let n = 0, flag = 0, predict = 0, steer = 0;
    for (const e of state.entries.values()) {
      const f = e.traits[trait];
      if (!f || e.time < cutoff || e.status !== 200) continue;
      n += 1; flag += f.flagged ? 1 : 0; predict += f.predicted ? 1 : 0; steer += f.steered ? 1 : 0;
    }
    const pct = (k) => (n ? `${Math.round((100 * k) / n)}%` : "–");
    return `last 5 min: ${n} answers · flagged ${pct(flag)} · predicted ${pct(predict)} · steered ${pct(steer)}`;
  }

  // ---- at a glance ------------------------------------------------------------------------------
  // Throughput from the server's running totals once the page has watched them for 10 s; before
  // that, from the kept requests of the last minute.
  function glance() {
    const stats = state.stats;
    const nowS = Date.now() / 1000;
    if (stats.length) {
      const now = stats[stats.length - 1];
      const then = stats.find((s) => s.time >= now.time - THROUGHPUT_SECONDS) || now;
      const dt = now.time - then.time;
      let rps = (now.requests - then.requests) / dt, tps = (now.tokens - then.tokens) / dt;
      if (!(dt >= 10)) {
        const recent = [...state.entries.values()].filter((e) => e.time >= nowS - THROUGHPUT_SECONDS);
        rps = recent.length / THROUGHPUT_SECONDS;
        tps = recent.reduce((sum, e) => sum + e.tokens, 0) / THROUGHPUT_SECONDS;
      }
      $("g-rps").textContent = fmt(rps, 2);
      $("g-tps").textContent = fmt(tps, 1);
      $("g-queue").textContent = `${now.queue} / ${now.running}`;
    }
    const cutoff = Date.now() / 1000 - RATE_SECONDS;
    const latencies = [...state.entries.values()].filter((e) => e.status === 200 && e.time >= cutoff)
      .map((e) => e.latency).sort((a, b) => a - b);
    const at = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))];
    $("g-latency").textContent = latencies.length ? `${seconds(at(0.5))} / ${seconds(at(0.95))}` : "–";
  }

  // ---- table ------------------------------------------------------------------------------------
  // The trait filter keeps requests flagged, predicted or steered along that trait; "flagged only"
  // keeps those flagged (along the chosen trait, or any).
  function shown(e) {
    const trait = $("filter-trait").value;
    const onlyFlagged = $("filter-flagged").checked;
    if (!trait) return !onlyFlagged || flagged(e).length > 0;
    const f = e.traits[trait];
    if (!f) return false;
    return onlyFlagged ? Boolean(f.flagged) : Boolean(f.flagged || f.predicted || f.steered);
  }

  function row(e) {
    const tr = el("tr");
    tr.dataset.seq = e.seq;
    tr.dataset.id = e.id || "";
    if (e.seq === state.selected) tr.className = "selected";
    const id = el("td", e.id ? e.id.slice(-10) : "—");
    id.title = e.id || "refused before an id";
    const steer = steered(e).map((t) => `${t} (${e.traits[t].steered.by})`).join(", ");
    tr.append(
      el("td", new Date(e.time * 1000).toLocaleTimeString()), id, el("td", e.status),
      el("td", flagged(e).join(", "), "flag"), el("td", steer, "steer"), el("td", e.tokens),
      el("td", seconds(e.latency)),
    );
    tr.addEventListener("click", () => select(e.seq));
    return tr;
  }

  function table() {
    const body = $("requests").tBodies[0];
    const rows = [];
    const newest = [...state.entries.values()].reverse();
    for (const e of newest) {
      if (rows.length >= Math.max(state.keep, 1)) break;
      if (shown(e)) rows.push(row(e));
    }
    body.replaceChildren(...rows);
    const now = Date.now();
    for (const e of newest) if (e.shown === undefined) e.shown = now;
  }

  // ---- one request ------------------------------------------------------------------------------
  async function select(seq) {
    state.selected = seq;
    for (const tr of $("requests").tBodies[0].rows) tr.classList.toggle("selected", Number(tr.dataset.seq) === seq);
    const e = state.entries.get(seq);
    if (!e) return;
    $("detail").hidden = false;
    $("detail-id").textContent = e.id || `#${seq}`;
    const figures = state.traits.filter((t) => e.traits[t]).map((t) => {
      const f = e.traits[t];
      const th = f.thresholds || {};
      const s = f.steered ? `${f.steered.by} ${fmt(f.steered.coef, 1)} from token ${f.steered.from_token}` : "";
      return [t, fmt(f.prompt_last), fmt(f.response_avg), `${fmt(th.prompt_last)} / ${fmt(th.response_avg)}`,
        f.predicted ? "yes" : "", f.flagged ? "yes" : "", s];
    });
    $("detail-figures").tBodies[0].replaceChildren(...figures.map((cells) => {
      const tr = el("tr");
      tr.append(...cells.map((c) => el("td", c)));
      return tr;
    }));
    $("detail-prompt").replaceChildren();
    $("detail-tokens").replaceChildren();
    $("detail-scale").textContent = "";
    state.detail = null;
    if (!e.text) {
      $("detail-note").textContent = e.status === 200
        ? "The server keeps no text: start it with --keep-text (or --audit-text) to see prompts and answers here; the figures are above."
        : `Not answered (status ${e.status})${e.error ? ": " + e.error : ""}.`;
      return;
    }
    const response = await fetch(`${BASE}/api/requests/${seq}`, { credentials: "same-origin" });
    if (state.selected !== seq) return;
    if (!response.ok) {
      $("detail-note").textContent = "This request's text is no longer kept (it left the server's ring).";
      return;
    }
    $("detail-note").textContent = e.error ? `error: ${e.error}` : "";
    state.detail = { seq, ...(await response.json()) };
    for (const m of state.detail.messages) {
      $("detail-prompt").append(el("span", `${m.role}: `, "role"), document.createTextNode(m.content), el("br"));
    }
    shade();
  }

  function shade() {
    const d = state.detail;
    if (!d) return;
    const e = state.entries.get(d.seq);
    const trait = $("detail-trait").value || state.traits[0];
    const values = d.values[trait] || [];
    const f = (e && e.traits[trait]) || {};
    const fired = f.steered ? f.steered.from_token : -1;
    const scale = Math.max(1e-9, ...values.map(Math.abs));
    const spans = d.tokens.map((text, i) => {
      const v = values[i];
      const span = el("span", text);
      const alpha = Math.min(1, Math.abs(v) / scale) * 0.75;
      span.style.background = v >= 0 ? `rgba(217, 45, 32, ${alpha})` : `rgba(53, 89, 224, ${alpha})`;
      span.title = `${trait}: ${fmt(v, 3)}`;
      span.dataset.value = v;
      if (i === fired) span.style.boxShadow = "inset 2px 0 0 #101828";
      return span;
    });
    if (!spans.length && d.answer) spans.push(el("span", d.answer));
    $("detail-tokens").replaceChildren(...spans);
    const th = f.thresholds || {};
    $("detail-scale").textContent = `shaded by ${trait} (red above 0, blue below; full colour at ±${fmt(scale)}) · ` +
      `prompt-last ${fmt(f.prompt_last)} (threshold ${fmt(th.prompt_last)}) predicted ${f.predicted ? "the trait" : "no trait"}` +
      (fired >= 0 ? ` · steered from token ${fired}` : "");
  }

  // ---- drawing ----------------------------------------------------------------------------------
  // Redraw on the next frame: the charts, rates and table when entries (or filters) changed, the
  // figures at a glance always. Rows are rebuilt only then, so a row stays put between updates.
  function schedule(entries = true) {
    state.dirty = state.dirty || entries;
    if (state.pending) return;
    state.pending = true;
    requestAnimationFrame(() => {
      state.pending = false;
      if (state.dirty) {
        state.dirty = false;
        for (const trait of state.traits) {
          if (!state.charts[trait]) continue;
          state.charts[trait].setData(chartData(trait));
          state.rates[trait].textContent = rates(trait);
        }
        table();
      }
      glance();
    });
  }

  $("filter-trait").addEventListener("change", schedule);
  $("filter-flagged").addEventListener("change", schedule);
  $("detail-trait").addEventListener("change", shade);

  // For tests and the curious: the charts and what the page holds.
  window.personavecDashboard = { state, charts: state.charts };
  connect();
})();
