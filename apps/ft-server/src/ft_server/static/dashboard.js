/* ft's dashboard: every page fetches its data from the server's public API (/api, /v1) with
   the user's API key, as any client does. No build step; uPlot draws the charts and htmx sends
   the job actions' requests. */
"use strict";

const FT = (() => {
  const base = document.body.dataset.base || "";
  const KEY = "ft_api_key";
  const key = () => localStorage.getItem(KEY) || "";
  const authHeaders = () => (key() ? { Authorization: "Bearer " + key() } : {});

  function notice(text) {
    document.getElementById("notice").textContent = text || "";
  }

  async function api(path, { method = "GET", json, body, headers = {}, raw = false } = {}) {
    const init = { method, headers: { ...authHeaders(), ...headers } };
    if (json !== undefined) {
      init.body = JSON.stringify(json);
      init.headers["Content-Type"] = "application/json";
    } else if (body !== undefined) {
      init.body = body;
    }
    const r = await fetch(base + path, init);
    if (r.status === 401) notice("The server needs an API key: enter it at the top of the page.");
    if (!r.ok) {
      let message = r.status + " " + r.statusText;
      try { message = (await r.json()).error.message; } catch (e) { /* not JSON */ }
      const err = new Error(message);
      err.status = r.status;
      throw err;
    }
    return raw ? r : r.json();
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  const fmtBytes = (n) => {
    if (n === null || n === undefined) return "?";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return (i ? n.toFixed(n < 10 ? 2 : 1) : n) + " " + units[i];
  };
  const fmtNum = (v, digits = 4) =>
    v === null || v === undefined || Number.isNaN(v) ? "–" : typeof v === "number" ? (Math.abs(v) >= 1000 ? Math.round(v).toLocaleString() : +v.toPrecision(digits)) : String(v);
  const fmtCount = (n) => (n === null || n === undefined ? "?" : n >= 1e9 ? (n / 1e9).toFixed(1) + "B" : n >= 1e6 ? Math.round(n / 1e6) + "M" : n >= 1e3 ? Math.round(n / 1e3) + "K" : String(n));
  const fmtTime = (t) => (t ? new Date(t * 1000).toLocaleString() : "–");
  const fmtDuration = (s) => {
    if (s === null || s === undefined) return "–";
    s = Math.round(s);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    return (h ? h + " h " : "") + (h || m ? m + " min " : "") + sec + " s";
  };

  function setRows(tbody, rows, empty = "Nothing here yet.") {
    if (!rows.length) {
      const cols = tbody.closest("table").querySelectorAll("thead th").length || 1;
      rows = [el("tr", { class: "empty" }, el("td", { colspan: cols, text: empty }))];
    }
    tbody.replaceChildren(...rows);
  }

  function poll(fn, ms) {
    let stopped = false;
    const tick = async () => {
      if (stopped) return;
      try { await fn(); } catch (e) { notice(e.message); }
      if (!stopped) setTimeout(tick, ms);
    };
    tick();
    return () => { stopped = true; };
  }

  /* Server-Sent Events over fetch (so the key travels in a header), resuming with
     Last-Event-ID after a dropped connection: no step is lost or repeated. */
  function stream(path, { onEvent, onEnd, lastId = null }) {
    let closed = false;
    let last = lastId;
    async function connect() {
      while (!closed) {
        try {
          const headers = { ...authHeaders(), Accept: "text/event-stream" };
          if (last !== null) headers["Last-Event-ID"] = String(last);
          const r = await fetch(base + path, { headers });
          if (!r.ok) throw new Error((await r.json()).error.message);
          const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
          let buffer = "";
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            if (closed) { reader.cancel(); return; }
            buffer += value;
            let cut;
            while ((cut = buffer.indexOf("\n\n")) >= 0) {
              const block = buffer.slice(0, cut);
              buffer = buffer.slice(cut + 2);
              const ev = { event: "message", data: "", id: null };
              for (const line of block.split("\n")) {
                if (line.startsWith("id: ")) ev.id = line.slice(4);
                else if (line.startsWith("event: ")) ev.event = line.slice(7);
                else if (line.startsWith("data: ")) ev.data += line.slice(6);
              }
              if (!ev.data) continue;
              if (ev.id !== null) last = ev.id;
              const data = JSON.parse(ev.data);
              if (ev.event === "end") { closed = true; onEnd && onEnd(data); return; }
              onEvent(ev.event, data);
            }
          }
        } catch (e) {
          if (!closed) notice("Metrics stream: " + e.message + " (reconnecting)");
        }
        if (!closed) await new Promise((res) => setTimeout(res, 1000));
      }
    }
    connect();
    return { close: () => { closed = true; }, get lastId() { return last; } };
  }

  /* A uPlot line chart; `series` names the lines. Data arrive with push(); the chart is
     redrawn at most once per animation frame however many points came. */
  function lineChart(target, series, { yLog = false } = {}) {
    const colors = ["#0550ae", "#cf222e", "#1a7f37", "#8250df", "#bc4c00", "#0a7ea4"];
    const data = [[], ...series.map(() => [])];
    const width = () => Math.max(300, target.clientWidth || 440);
    const ticks = (u, splits) => splits.map((v) => v === 0 ? "0" : Math.abs(v) < 0.01 || Math.abs(v) >= 1e6 ? v.toExponential(1) : String(+v.toPrecision(4)));
    const opts = {
      width: width(),
      height: 220,
      scales: { x: { time: false }, y: yLog ? { distr: 3 } : {} },
      axes: [{ label: "step", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6] }, { values: ticks, size: 60 }],
      series: [{ label: "step" }, ...series.map((s, i) => ({ label: s, stroke: colors[i % colors.length], width: 1.5, spanGaps: true, points: { show: false } }))],
      legend: { live: true },
    };
    const plot = new uPlot(opts, data, target);
    let pending = false;
    const redraw = () => {
      pending = false;
      plot.setData(data);
      target.dataset.points = String(data[0].length);
    };
    new ResizeObserver(() => plot.setSize({ width: width(), height: 220 })).observe(target);
    return {
      plot, data,
      push(x, ys) {
        data[0].push(x);
        ys.forEach((y, i) => data[i + 1].push(y === undefined ? null : y));
        if (!pending) { pending = true; requestAnimationFrame(redraw); }
      },
      set(columns) { columns.forEach((c, i) => (data[i] = c)); redraw(); },
    };
  }

  async function download(path, filename) {
    const r = await api(path, { raw: true });
    const url = URL.createObjectURL(await r.blob());
    const a = el("a", { href: url, download: filename });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 5000);
  }

  return { base, key, KEY, authHeaders, api, el, notice, fmtBytes, fmtNum, fmtCount, fmtTime, fmtDuration, setRows, poll, stream, lineChart, download };
})();

/* ---- every page: the key form, htmx's requests carry the key ----------------------------- */

(() => {
  const form = document.getElementById("key-form");
  const input = document.getElementById("api-key");
  input.value = FT.key();
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    localStorage.setItem(FT.KEY, input.value.trim());
    FT.notice("");
    location.reload();
  });
  document.body.addEventListener("htmx:configRequest", (e) => Object.assign(e.detail.headers, FT.authHeaders()));
  document.body.addEventListener("htmx:responseError", (e) => {
    let message = e.detail.xhr.status + "";
    try { message = JSON.parse(e.detail.xhr.responseText).error.message; } catch (err) { /* keep */ }
    FT.notice(message);
  });
})();

const { el, api } = FT;

function statusCell(status) {
  return el("td", { class: "status-" + status, text: status });
}

function progressText(job) {
  const run = job.run;
  if (job.kind === "pull" && job.result && job.result.bytes !== undefined) return FT.fmtBytes(job.result.bytes) + " downloaded";
  if (!run) return "–";
  return run.total_steps ? `step ${run.step} / ${run.total_steps}` : `step ${run.step}`;
}

/* Where a job shows: a study's trials for a tune job, the training monitor for the others. */
const jobHref = (j) => FT.base + (j.kind === "tune" ? "/tune/" : "/monitor/") + j.id;

/* An htmx button that posts to an API route and refreshes the page's table afterwards. */
function actionButton(label, path, refresh) {
  const b = el("button", { type: "button", "hx-post": FT.base + path, "hx-swap": "none", text: label });
  b.addEventListener("htmx:afterRequest", () => refresh());
  if (window.htmx) htmx.process(b);
  return b;
}

/* ---- Dashboard ------------------------------------------------------------------------------ */

function pageHome() {
  const counts = document.getElementById("status-counts");
  const tbody = document.querySelector("#queue-table tbody");
  const system = document.getElementById("system");
  FT.poll(async () => {
    const { jobs } = await api("/api/jobs");
    const by = {};
    for (const s of ["running", "queued", "completed", "failed", "cancelled", "interrupted"]) by[s] = 0;
    jobs.forEach((j) => (by[j.status] = (by[j.status] || 0) + 1));
    counts.replaceChildren(...Object.entries(by).map(([s, n]) => el("li", { class: "status-" + s }, el("b", { text: n }), s)));
    const active = jobs.filter((j) => j.status === "running" || j.status === "queued")
      .sort((a, b) => (a.queue_position ?? -1) - (b.queue_position ?? -1));
    FT.setRows(tbody, active.map((j) => el("tr", {},
      el("td", {}, el("a", { href: jobHref(j), text: j.id })),
      el("td", { text: j.kind }), statusCell(j.status),
      el("td", { text: j.queue_position ?? "–" }), el("td", { text: progressText(j) }))), "Nothing is running or waiting.");
  }, 2000);
  FT.poll(async () => {
    const s = await api("/api/system");
    const used = s.ram_total_bytes - s.ram_available_bytes;
    const facts = [
      ["CPU", `${s.cpu_percent ?? "?"} % of ${s.cpu_count} cores` + (s.load_average ? ` (load ${s.load_average.map((x) => x.toFixed(2)).join(" ")})` : "")],
      ["RAM", `${FT.fmtBytes(used)} used of ${FT.fmtBytes(s.ram_total_bytes)}`],
      ["Training memory", `${s.memory_kind}: ${FT.fmtBytes(s.memory_budget_bytes)}`],
    ];
    for (const g of s.gpus) facts.push([g.name, `${FT.fmtBytes(g.memory_used_bytes)} of ${FT.fmtBytes(g.memory_total_bytes)}, ${g.utilization_percent ?? "?"} % busy`]);
    if (!s.gpus.length) facts.push(["GPU", "none found"]);
    system.replaceChildren(...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
  }, 3000);
}

/* ---- Job queue ------------------------------------------------------------------------------ */

function pageJobs() {
  const tbody = document.querySelector("#jobs-table tbody");
  const filter = document.getElementById("jobs-status");
  async function showLog(job) {
    const { lines } = await api(`/api/jobs/${job.id}/log?tail=40`);
    document.getElementById("job-log").hidden = false;
    document.getElementById("log-job").textContent = job.id;
    const pre = document.getElementById("log-text");
    pre.textContent = lines.join("\n") + (job.error ? "\n\n" + job.error : "");
    pre.scrollTop = pre.scrollHeight; // the end, where a failure says why
    document.getElementById("log-error").textContent = job.error ? "Error: " + job.error : "";
  }
  async function refresh() {
    const q = filter.value ? "?status=" + filter.value : "";
    const { jobs } = await api("/api/jobs" + q);
    jobs.reverse();
    FT.setRows(tbody, jobs.map((j) => {
      const actions = el("td", {});
      if (j.status === "queued" || j.status === "running") actions.append(actionButton(j.cancel_requested ? "Cancelling…" : "Cancel", `/api/jobs/${j.id}/cancel`, refresh));
      if (j.status === "interrupted" || j.status === "cancelled") actions.append(actionButton("Resume", `/api/jobs/${j.id}/resume`, refresh));
      if (j.status === "failed") actions.append(actionButton("Retry", `/api/jobs/${j.id}/resume`, refresh));
      actions.append(el("button", { type: "button", text: j.status === "failed" ? "Error log" : "Log", onclick: () => showLog(j) }));
      return el("tr", { "data-job": j.id },
        el("td", {}, el("a", { href: jobHref(j), text: j.id })),
        el("td", { text: j.kind }), statusCell(j.status),
        el("td", { text: j.run_id || "–" }), el("td", { text: progressText(j) }),
        el("td", { text: FT.fmtTime(j.created_at) }), actions);
    }));
    const failed = jobs.find((j) => j.status === "failed");
    if (failed && document.getElementById("job-log").hidden) await showLog(failed);
  }
  filter.addEventListener("change", refresh);
  FT.poll(refresh, 3000);
}

/* ---- Training monitor ----------------------------------------------------------------------- */

function pageMonitor() {
  const jobId = document.body.dataset.job;
  const state = document.getElementById("job-state");
  const bar = document.getElementById("step-progress");
  const latest = document.getElementById("latest");
  const charts = {
    loss: FT.lineChart(document.getElementById("chart-loss"), ["train loss", "eval loss"]),
    lr: FT.lineChart(document.getElementById("chart-lr"), ["learning rate"]),
    grad: FT.lineChart(document.getElementById("chart-grad"), ["grad norm"]),
    tps: FT.lineChart(document.getElementById("chart-tps"), ["tokens/s"]),
    mem: FT.lineChart(document.getElementById("chart-mem"), ["memory GB"]),
  };
  const steps = [];
  window.ftMonitor = { steps, charts };
  let job = null;
  let last = {};

  function showLatest() {
    const t = last.train || {};
    const facts = [
      ["Step", last.step ?? "–"], ["Loss", FT.fmtNum(t.loss)], ["Eval loss", FT.fmtNum(last.evalLoss)],
      ["Learning rate", FT.fmtNum(t.learning_rate, 3)], ["Grad norm", FT.fmtNum(t.grad_norm)],
      ["Tokens/s", FT.fmtNum(t.tokens_per_s, 3)], ["ETA", job && !["running", "queued"].includes(job.status) ? "–" : FT.fmtDuration(t.eta_s)],
      ["Memory", t.memory_bytes ? FT.fmtBytes(t.memory_bytes) : "–"],
    ];
    latest.replaceChildren(...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
  }

  function onPoint(p) {
    if (steps.length && p.step <= steps[steps.length - 1]) return; // never twice
    steps.push(p.step);
    const t = p.train || {}, e = p.eval || {};
    charts.loss.push(p.step, [t.loss, e.eval_loss]);
    charts.lr.push(p.step, [t.learning_rate]);
    charts.grad.push(p.step, [t.grad_norm]);
    charts.tps.push(p.step, [t.tokens_per_s]);
    charts.mem.push(p.step, [t.memory_bytes ? t.memory_bytes / 1e9 : null]);
    last = { step: p.step, train: p.train || last.train, evalLoss: e.eval_loss ?? last.evalLoss };
    if (job && job.run && job.run.total_steps) { bar.max = job.run.total_steps; bar.value = p.step; }
    showLatest();
    if (p.samples && p.samples.length) showTrainingSamples(p.step, p.samples, e.eval_loss);
  }

  // The answers to validation prompts at each evaluation (training.eval_samples), the latest
  // evaluation first. Model output is shown as text (el's `text`), never parsed as HTML.
  const trainingSamples = document.getElementById("training-samples");
  function showTrainingSamples(step, samples, evalLoss) {
    if (!trainingSamples.querySelector(".eval-samples")) trainingSamples.replaceChildren();
    const field = (label, text) => [el("b", { text: label + ": " }), el("span", { class: "sample-" + label.toLowerCase(), text: text ?? "" })];
    const block = el("div", { class: "eval-samples", "data-step": String(step) },
      el("h3", { text: `Step ${step}` + (evalLoss !== undefined ? ` · eval loss ${FT.fmtNum(evalLoss)}` : "") }),
      ...samples.map((s) => el("div", { class: "sample" },
        field("Prompt", s.prompt), "\n", field("Output", s.output), "\n", field("Reference", s.reference))));
    trainingSamples.prepend(block);
  }

  async function refreshJob() {
    job = await api(`/api/jobs/${jobId}`);
    const run = job.run;
    state.textContent = `${job.kind} job ${job.id}: ${job.status}` + (job.cancel_requested && job.status === "running" ? " (cancelling: saving a checkpoint)" : "") + (run ? ` · run ${run.id}, step ${run.step}` + (run.total_steps ? ` of ${run.total_steps}` : "") : "") + (job.error ? ` · ${job.error}` : "");
    state.className = "status-" + job.status;
    document.getElementById("cancel-job").disabled = !(job.status === "running" || job.status === "queued");
    document.getElementById("resume-job").disabled = !["interrupted", "cancelled", "failed"].includes(job.status);
    document.getElementById("evaluate-run").disabled = !(run && job.kind === "train" && !["running", "queued"].includes(job.status) && (run.status === "completed" || run.checkpoints.length));
    showLatest();
    const link = document.getElementById("run-link");
    if (run) { link.hidden = false; link.textContent = "Run " + run.id; link.href = FT.base + "/runs#" + run.id; }
    if (run && run.total_steps) { bar.max = run.total_steps; bar.value = run.step; }
    const { lines } = await api(`/api/jobs/${jobId}/log?tail=30`);
    document.getElementById("monitor-log").textContent = lines.join("\n");
    if (run && !["running", "queued"].includes(job.status)) await showSamples(run.id);
    return job;
  }

  // The answers of the run's latest evaluation (ft evaluate, or the Evaluate button): read once
  // the job has stopped, since a run's trainer records no samples while it trains.
  let samplesShown = null;
  async function showSamples(runId) {
    const r = await api(`/api/runs/${runId}/summary`);
    const ev = r.evaluation;
    if (!ev || !ev.samples || !ev.samples.length || samplesShown === ev.created) return;
    samplesShown = ev.created;
    document.getElementById("samples").replaceChildren(
      el("p", { text: `Evaluation of checkpoint ${ev.checkpoint}: ` + Object.entries(ev.metrics || {}).map(([k, v]) => `${k} ${FT.fmtNum(v)}`).join(", ") }),
      ...ev.samples.map((s) => el("div", { class: "sample" },
        el("b", { text: "Prompt: " }), s.prompt ?? "", "\n",
        el("b", { text: "Tuned: " }), s.tuned ?? "",
        s.base !== null && s.base !== undefined ? ["\n", el("b", { text: "Base: " }), s.base] : null,
        s.reference ? ["\n", el("b", { text: "Reference: " }), s.reference] : null)));
  }

  // One stream at a time. It ends with the job; when the job runs again (resume), a new one
  // picks up after the last step shown (Last-Event-ID).
  let sse = null, ended = false;
  function connect() {
    if (sse) sse.close();
    ended = false;
    sse = FT.stream(`/api/metrics/${jobId}/stream`, {
      lastId: steps.length ? steps[steps.length - 1] : null,
      onEvent: (type, data) => { if (type === "metrics") onPoint(data); },
      onEnd: () => { ended = true; refreshJob(); },
    });
  }
  FT.poll(async () => {
    const j = await refreshJob();
    if (ended && (j.status === "running" || j.status === "queued")) connect();
  }, 2000);
  connect();
  document.getElementById("cancel-job").addEventListener("click", async () => { await api(`/api/jobs/${jobId}/cancel`, { method: "POST" }); refreshJob(); });
  document.getElementById("resume-job").addEventListener("click", async () => { await api(`/api/jobs/${jobId}/resume`, { method: "POST" }); refreshJob(); });
  document.getElementById("evaluate-run").addEventListener("click", async () => {
    const ev = await api(`/api/runs/${job.run.id}/evaluate`, { method: "POST", json: { max_examples: 5, samples: 3, max_tokens: 48, compare_base: false } });
    location.href = FT.base + "/monitor/" + ev.id;
  });
}

/* ---- A study (ft tune) ---------------------------------------------------------------------- */

function pageStudy() {
  const jobId = document.body.dataset.job;
  const state = document.getElementById("study-state");
  const bar = document.getElementById("study-progress");
  const tbody = document.querySelector("#trials-table tbody");
  const value = (v) => (Array.isArray(v) ? "[" + v.join(", ") + "]" : typeof v === "number" ? FT.fmtNum(v) : String(v));
  let stop = null;
  async function refresh() {
    const job = await api(`/api/tune/${jobId}/status`);
    const study = job.study;
    const active = job.status === "running" || job.status === "queued";
    state.textContent = `Study ${study.name} (job ${job.id}): ${job.status}` + (job.cancel_requested && active ? " (cancelling: the trial saves a checkpoint)" : "") + ` · ${study.finished} of ${study.trials} trials finished` + (job.error ? ` · ${job.error}` : "");
    state.className = "status-" + job.status;
    bar.max = study.trials;
    bar.value = Math.min(study.finished, study.trials);
    document.getElementById("trials-metric").textContent = `${study.metric} (${study.direction === "minimize" ? "lower" : "higher"} is better)`;
    document.getElementById("study-cancel").disabled = !active;
    document.getElementById("study-resume").disabled = !["interrupted", "cancelled", "failed"].includes(job.status);
    const best = study.best;
    document.getElementById("study-best").textContent = best ? `Best so far: trial ${best.number}, ${study.metric} ${FT.fmtNum(best.value)} (${Object.entries(best.settings).map(([k, v]) => `${k} = ${value(v)}`).join(", ")})` : "No trial has completed yet.";
    const { trials } = await api(`/api/tune/${jobId}/trials`);
    // A running trial's progress: its run's step, as the job store has it.
    const steps = {};
    await Promise.all(trials.filter((t) => t.state === "RUNNING" && t.run_id).map(async (t) => {
      const run = await api("/api/runs/" + t.run_id);
      steps[t.number] = ` (step ${run.step}` + (run.total_steps ? ` of ${run.total_steps})` : ")");
    }));
    FT.setRows(tbody, trials.map((t) => {
      const isBest = best && t.number === best.number;
      return el("tr", { "data-trial": t.number, "data-state": t.state, class: isBest ? "best" : null },
        el("td", {}, String(t.number), isBest ? el("strong", { class: "best-mark", text: " best" }) : null),
        el("td", { class: "status-" + t.state.toLowerCase(), text: t.state.toLowerCase() + (t.pruned_at ? ` at step ${t.pruned_at}` : "") + (steps[t.number] || "") }),
        el("td", { text: FT.fmtNum(t.value) }),
        el("td", { text: Object.entries(t.settings).map(([k, v]) => `${k} = ${value(v)}`).join(", ") || "–" }),
        el("td", {}, t.run_id ? el("a", { href: FT.base + "/runs#" + t.run_id, text: t.run_id }) : "–"),
        el("td", { text: [t.note, t.retry_of !== null && t.retry_of !== undefined ? `retry of trial ${t.retry_of}` : null].filter(Boolean).join("; ") }));
    }), "No trial has started yet.");
    const { lines } = await api(`/api/jobs/${jobId}/log?tail=30`);
    document.getElementById("study-log").textContent = lines.join("\n");
    document.body.dataset.studyStatus = job.status;
    if (!active && stop) { stop(); stop = null; }
  }
  const watch = () => { if (!stop) stop = FT.poll(refresh, 2000); };
  watch();
  document.getElementById("study-cancel").addEventListener("click", async () => { await api(`/api/jobs/${jobId}/cancel`, { method: "POST" }); await refresh(); });
  document.getElementById("study-resume").addEventListener("click", async () => { await api(`/api/jobs/${jobId}/resume`, { method: "POST" }); watch(); });
}

/* ---- Models --------------------------------------------------------------------------------- */

function pageModels() {
  const form = document.getElementById("model-search");
  const pulls = document.getElementById("m-pulls");
  async function search(e) {
    if (e) e.preventDefault();
    const p = new URLSearchParams({ q: document.getElementById("m-q").value.trim(), hub: document.getElementById("m-hub").checked, fits_memory: document.getElementById("m-fits").checked });
    const max = document.getElementById("m-max").value.trim();
    if (max) p.set("max_params", max);
    const r = await api("/api/models/search?" + p);
    document.getElementById("m-budget").textContent = `This machine: ${r.memory.source ?? ""} ${FT.fmtBytes(r.memory.usable_bytes ?? r.memory.total_bytes)} usable for training.`;
    FT.setRows(document.querySelector("#m-catalog tbody"), r.catalog.map((m) => el("tr", {},
      el("td", { text: m.alias }), el("td", { text: m.repo_id }), el("td", { text: FT.fmtCount(m.parameters) }),
      el("td", { text: FT.fmtBytes(m.memory.lora) }), el("td", { text: FT.fmtBytes(m.memory.qlora) }), el("td", { text: FT.fmtBytes(m.memory.full) }),
      el("td", { class: m.fits ? "status-completed" : "bad", text: m.fits ? "yes" : "no" }))));
    FT.setRows(document.querySelector("#m-local tbody"), r.local.map((m) => el("tr", {},
      el("td", { text: m.repo_id }), el("td", { text: m.alias || "–" }), el("td", { text: FT.fmtBytes(m.size) }), el("td", { text: m.kind }))));
    const err = document.getElementById("m-hub-error");
    err.hidden = !r.hub_error;
    err.textContent = r.hub_error || "";
    FT.setRows(document.querySelector("#m-hubt tbody"), r.hub.map((m) => el("tr", {},
      el("td", { text: m.repo_id + (m.alias ? ` (${m.alias})` : "") }), el("td", { text: FT.fmtCount(m.parameters) }),
      el("td", { text: m.downloads ?? "–" }),
      el("td", {}, el("button", { type: "button", text: "Pull " + m.repo_id, onclick: () => pull(m.repo_id) })))));
  }
  async function pull(name) {
    const job = await api("/api/models/pull", { method: "POST", json: { model: name } });
    const prog = el("progress", { "aria-label": "Download of " + name });
    const text = el("span", { text: " queued" });
    const item = el("li", { "data-pull": name }, name + " ", prog, text);
    pulls.prepend(item);
    const stop = FT.poll(async () => {
      const j = await api("/api/jobs/" + job.id);
      const res = j.result || {};
      if (res.bytes !== undefined) text.textContent = " " + FT.fmtBytes(res.bytes) + " downloaded";
      if (j.status === "completed") {
        stop();
        prog.max = 1; prog.value = 1;
        text.textContent = ` done: ${res.repo_id || name}` + (res.revision ? ` @ ${res.revision.slice(0, 8)}` : "") + (res.bytes ? `, ${FT.fmtBytes(res.bytes)}` : "");
        item.dataset.done = "1";
        search();
      } else if (["failed", "cancelled", "interrupted"].includes(j.status)) {
        stop();
        text.textContent = " " + j.status + (j.error ? ": " + j.error : "");
        text.className = "bad";
      }
    }, 500);
  }
  form.addEventListener("submit", (e) => search(e).catch((err) => FT.notice(err.message)));
  search().catch((err) => FT.notice(err.message));
}

/* ---- Datasets ------------------------------------------------------------------------------- */

function pageDatasets() {
  const select = document.getElementById("ds-name");
  const evalSelect = document.getElementById("ds-eval");
  const modelInput = document.getElementById("ds-model");
  const model = () => modelInput.value.trim();
  // The model whose tokenizer and template the previews use, remembered in this browser.
  modelInput.value = localStorage.getItem("ft_dataset_model") || "";
  modelInput.addEventListener("change", () => { localStorage.setItem("ft_dataset_model", model()); if (select.value) show().catch((e) => FT.notice(e.message)); });
  const edits = new Map();
  async function list(chosen) {
    const { datasets } = await api("/api/datasets");
    select.replaceChildren(...datasets.map((d) => el("option", { value: d.name, text: `${d.name} (${FT.fmtBytes(d.size)})` })));
    evalSelect.replaceChildren(el("option", { value: "", text: "(no evaluation set)" }), ...datasets.map((d) => el("option", { value: d.name, text: d.name })));
    if (chosen) select.value = chosen;
    if (select.value) await show();
  }
  async function show() {
    const name = select.value;
    edits.clear();
    const q = model() ? "&model=" + encodeURIComponent(model()) : "";
    const preview = document.getElementById("ds-preview");
    preview.textContent = "Rendering…";
    const r = await api(`/api/datasets/${name}/rendered?rows=3${q}`);
    preview.replaceChildren(el("p", { text: `${r.detected} Template of ${r.model}.` }), ...r.rows.map((row) => {
      if (row.status === "invalid") return el("div", { class: "sample bad", text: `row ${row.row}: ${row.problem}` });
      const spans = row.pieces.map((p) => p.trained ? el("mark", { class: "trained", text: p.text }) : p.kept ? document.createTextNode(p.text) : el("span", { class: "cut", text: p.text }));
      return el("div", { class: "sample", "data-row": row.row }, el("small", { text: `row ${row.row}: ${row.tokens} tokens, ${row.trained_tokens} trained (${row.status})` }), el("br"), ...spans);
    }));
    const rows = await api(`/api/datasets/${name}/rows?limit=20`);
    document.getElementById("ds-rows").replaceChildren(el("p", { text: `${rows.total} rows; the first ${rows.rows.length} shown.` }), ...rows.rows.map(({ index, row }) => {
      const id = "ds-row-" + index;
      const area = el("textarea", { id, rows: 2, spellcheck: "false" });
      area.value = JSON.stringify(row);
      area.addEventListener("input", () => edits.set(index, area));
      const del = el("input", { type: "checkbox", id: id + "-del" });
      return el("div", { class: "row-edit" }, el("label", { for: id, text: "Row " + (index + 1) }), area, el("label", { for: id + "-del" }, del, " Delete"));
    }));
  }
  document.getElementById("ds-upload").addEventListener("submit", async (e) => {
    e.preventDefault();
    const file = document.getElementById("ds-file").files[0];
    const out = document.getElementById("ds-upload-result");
    out.textContent = "Uploading and checking " + file.name + "…";
    try {
      const p = new URLSearchParams({ filename: file.name });
      if (model()) p.set("model", model());
      const r = await api("/api/datasets/upload?" + p, { method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" } });
      const rep = r.report;
      out.textContent = `Saved as ${r.name}: ${rep.examples} examples, ${FT.fmtNum(rep.tokens)} tokens (${FT.fmtNum(rep.trained_tokens)} trained), format ${rep.format}.`;
      await list(r.name);
    } catch (err) { out.textContent = "Refused: " + err.message; out.className = "bad"; }
  });
  select.addEventListener("change", () => show().catch((err) => FT.notice(err.message)));
  document.getElementById("ds-delete").addEventListener("click", async () => {
    if (!select.value || !confirm("Delete " + select.value + "?")) return;
    await api("/api/datasets/" + select.value, { method: "DELETE" });
    await list();
  });
  document.getElementById("ds-quality-run").addEventListener("click", async () => {
    const box = document.getElementById("ds-quality");
    box.textContent = "Checking…";
    const p = new URLSearchParams();
    if (model()) p.set("model", model());
    if (evalSelect.value) p.set("eval", evalSelect.value);
    const { quality: q } = await api(`/api/datasets/${select.value}/quality?` + p);
    const facts = (obj, prefix = "") => {
      const out = [];
      const walk = (o, pre) => {
        for (const [k, v] of Object.entries(o || {})) {
          if (v && typeof v === "object" && !Array.isArray(v)) { if (k !== "histogram") walk(v, pre + k + " "); }
          else if (!Array.isArray(v)) out.push([pre + k, FT.fmtNum(v)]);
        }
      };
      walk(obj, prefix);
      return el("dl", { class: "facts" }, ...out.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
    };
    const histogram = (h, what) => {
      if (!h || !h.counts || !h.counts.length) return null;
      const top = Math.max(...h.counts, 1);
      return el("figure", {}, el("figcaption", { text: `${what}: ${h.edges[0]} to ${h.edges[h.edges.length - 1]}` }),
        el("div", { class: "hist", role: "img", "aria-label": `${what} histogram: ` + h.counts.map((c, i) => `${h.edges[i]}-${h.edges[i + 1]}: ${c}`).join(", ") },
          ...h.counts.map((c, i) => el("span", { style: `height:${(100 * c) / top}%`, title: `${h.edges[i]} to ${h.edges[i + 1]}: ${c} rows` }))));
    };
    const pairs = (list, label) => (list && list.length ? el("ul", {}, ...list.map((p) => el("li", { text: `row ${p.row} ${label} row ${p.duplicate_of ?? p.eval_row}` + (p.similarity !== undefined ? ` (similarity ${p.similarity})` : "") }))) : null);
    const d = q.duplicates || {}, lengths = q.lengths || {};
    box.replaceChildren(...[
      el("h3", { text: "Duplicates" }), facts({ rows: q.rows, exact: d.exact, near: d.near, "near threshold": d.near_threshold }),
      pairs(d.exact_rows, "repeats"), pairs(d.near_rows, "is nearly"),
      el("h3", { text: "Lengths" }), histogram(lengths.tokens && lengths.tokens.histogram, "tokens per row"), facts(lengths),
      el("h3", { text: "Class balance" }), q.labels ? facts(q.labels) : el("p", { text: "No label column." }),
      el("h3", { text: "Contamination" }), q.contamination ? [facts(q.contamination), pairs(q.contamination.overlaps, "overlaps evaluation")] : el("p", { text: "Choose an evaluation set above to check overlap." }),
      el("h3", { text: "Token complexity" }), facts(q.complexity)].flat().filter(Boolean));
  });
  document.getElementById("ds-save").addEventListener("click", async () => {
    const out = document.getElementById("ds-save-result");
    const replace = {};
    try {
      for (const [index, area] of edits) replace[index] = JSON.parse(area.value);
    } catch (err) { out.textContent = "A row is not valid JSON: " + err.message; out.className = "bad"; return; }
    const del = [...document.querySelectorAll("#ds-rows input[type=checkbox]:checked")].map((c) => +c.id.split("-")[2]);
    try {
      const r = await api(`/api/datasets/${select.value}/versions`, { method: "POST", json: { replace, delete: del } });
      out.className = "";
      out.textContent = `Saved ${r.name}: ${r.rows} rows (${r.replaced} edited, ${r.deleted} deleted); ${r.previous} is kept.`;
      await list(r.name);
    } catch (err) { out.textContent = err.message; out.className = "bad"; }
  });
  list().catch((err) => FT.notice(err.message));
}

/* ---- Configuration builder ------------------------------------------------------------------ */

function pageConfig() {
  const form = document.getElementById("config-form");
  const fields = [...form.querySelectorAll("[data-kind]")];
  const yaml = document.getElementById("config-yaml");
  const status = document.getElementById("config-status");
  const problems = document.getElementById("config-problems");
  const space = searchSpaceEditor(document.getElementById("cfg-tune-search-space"), () => later());

  function valueOf(f) {
    const kind = f.dataset.kind;
    if (kind === "boolean") return f.checked === (f.dataset.default === "true") ? undefined : f.checked;
    const text = f.value.trim();
    if (kind === "enum") return text === f.dataset.default ? undefined : text === "" ? null : text;
    if (text === "") return undefined;
    // A setting whose default is a value may be set to none: typed as null.
    if (text === "null" && f.dataset.nullable === "true") return null;
    if (kind === "number") return /^-?(\d+\.?\d*|\.\d+)(e-?\d+)?$/i.test(text) ? Number(text) : text;
    if (kind === "json") { try { return JSON.parse(text); } catch (e) { return text; } }
    return text;
  }
  function collect() {
    space.sync();
    const config = {};
    for (const f of fields) {
      const v = valueOf(f);
      if (v === undefined) continue;
      const path = f.name.split(".");
      let node = config;
      for (const part of path.slice(0, -1)) node = node[part] = node[part] || {};
      node[path[path.length - 1]] = v;
    }
    return config;
  }
  function fill(values) {
    for (const f of fields) {
      let v = values;
      for (const part of f.name.split(".")) v = v && typeof v === "object" ? v[part] : undefined;
      if (f.dataset.kind === "boolean") f.checked = v === undefined ? f.dataset.default === "true" : !!v;
      else if (f.dataset.kind === "enum") f.value = v === undefined ? f.dataset.default : v === null ? "" : String(v);
      else if (v === null && f.dataset.nullable === "true") f.value = "null";
      else if (v === undefined || v === null) f.value = "";
      else f.value = typeof v === "object" ? JSON.stringify(v) : String(v);
    }
    space.load(values && values.tune ? values.tune.search_space : undefined);
  }
  function showProblems(r) {
    status.textContent = r.valid ? r.message : `${r.problems.length} problem(s):`;
    status.className = r.valid ? "status-completed" : "bad";
    problems.replaceChildren(...r.problems.map((p) => el("li", { text: p.text })));
    space.showProblems(r.problems);
    for (const f of fields) {
      if (f.type === "hidden") continue; // the search space editor shows its own
      const mine = r.problems.filter((p) => p.key === f.name || p.key.startsWith(f.name + "."));
      const out = document.getElementById(f.id + "-problem");
      out.hidden = !mine.length;
      out.textContent = mine.map((p) => p.message).join("; ");
      if (mine.length) { f.setAttribute("aria-invalid", "true"); f.setAttribute("aria-errormessage", f.id + "-problem"); }
      else { f.removeAttribute("aria-invalid"); f.removeAttribute("aria-errormessage"); }
    }
  }
  let timer = null, seq = 0, typed = 0;
  // YAML the person is typing or pasting is theirs until they import it: a check that was
  // already under way when they typed must not write the form's YAML over it.
  yaml.addEventListener("input", () => { typed += 1; });
  async function check() {
    const mine = ++seq, typedBefore = typed;
    const config = collect();
    const r = await api("/api/config/validate", { method: "POST", json: { config } });
    if (mine !== seq) return r;
    showProblems(r);
    if (typed === typedBefore) yaml.value = r.yaml.trim() === "{}" ? "" : r.yaml;
    await checkSearch(config, r, mine);
    const mem = document.getElementById("config-memory");
    if (r.valid) {
      try {
        const e = await api("/api/config/estimate", { method: "POST", json: { config } });
        mem.textContent = `About ${FT.fmtBytes(e.total_bytes)} at the peak (${e.method}, batch ${e.batch_size} × ${e.seq_len} tokens, ${e.dtype}); ${e.fits ? "fits" : "does NOT fit"} this machine's ${FT.fmtBytes(e.budget.usable_bytes)}.`;
        mem.className = e.fits ? "" : "bad";
      } catch (err) { mem.textContent = err.message; mem.className = ""; }
    }
    form.dataset.checked = String(mine);
    return r;
  }
  // The study's own checks (POST /api/tune/validate: what ft tune and /api/tune/start check
  // before a study starts), once the config itself is valid.
  const searchStatus = document.getElementById("tune-status");
  let searchCheck = null;
  async function checkSearch(config, r, mine) {
    let t = { valid: false, problems: [], message: "Fix the configuration's problems first." };
    if (r.valid) t = await api("/api/tune/validate", { method: "POST", json: { config } });
    if (mine !== seq) return;
    searchCheck = t;
    searchStatus.textContent = t.valid || !t.problems.length ? t.message : `${t.problems.length} problem(s) in the search:`;
    searchStatus.className = t.valid ? "status-completed" : "bad";
    document.getElementById("tune-problems").replaceChildren(...t.problems.map((p) => el("li", { text: p.text })));
    if (r.valid) space.showProblems(t.problems);
  }
  const later = () => { clearTimeout(timer); timer = setTimeout(() => check().catch((e) => FT.notice(e.message)), 250); };
  form.addEventListener("input", later);
  form.addEventListener("change", later);
  async function importYaml(text) {
    const r = await api("/api/config/validate", { method: "POST", json: { config_yaml: text } });
    if (r.values) fill(r.values);
    showProblems(r);
    if (r.values) await check();
  }
  document.getElementById("config-import").addEventListener("click", () => importYaml(yaml.value).catch((e) => FT.notice(e.message)));
  document.getElementById("config-file").addEventListener("change", async (e) => {
    const file = e.target.files[0];
    if (file) { yaml.value = await file.text(); await importYaml(yaml.value); }
  });
  document.getElementById("config-export").addEventListener("click", () => {
    const url = URL.createObjectURL(new Blob([yaml.value], { type: "application/yaml" }));
    const a = el("a", { href: url, download: "train.yml" });
    document.body.append(a); a.click(); a.remove();
  });
  document.getElementById("config-start").addEventListener("click", async () => {
    const out = document.getElementById("config-start-result");
    const r = await check();
    if (!r.valid) { out.textContent = "Fix the problems first."; return; }
    const body = { config: collect() };
    const ds = document.getElementById("config-dataset").value;
    if (ds) body.dataset = ds;
    try {
      const job = await api("/api/training/start", { method: "POST", json: body });
      out.textContent = "Started job " + job.id;
      location.href = FT.base + "/monitor/" + job.id;
    } catch (err) { out.textContent = err.message; out.className = "bad"; }
  });
  document.getElementById("tune-start").addEventListener("click", async () => {
    const out = document.getElementById("tune-start-result");
    out.className = "";
    const r = await check();
    if (!r.valid || !searchCheck || !searchCheck.valid) { out.textContent = "Fix the problems first."; out.className = "bad"; return; }
    const body = { config: collect() };
    const ds = document.getElementById("config-dataset").value;
    if (ds) body.dataset = ds;
    try {
      const job = await api("/api/tune/start", { method: "POST", json: body });
      out.textContent = `Started study ${job.study.name} (job ${job.id})`;
      location.href = FT.base + "/tune/" + job.id;
    } catch (err) { out.textContent = err.message; out.className = "bad"; }
  });
  api("/api/datasets").then(({ datasets }) => {
    document.getElementById("config-dataset").append(...datasets.map((d) => el("option", { value: d.name, text: d.name })));
  }).catch((e) => FT.notice(e.message));
  space.start().then(() => check()).catch((e) => FT.notice(e.message));
}

/* The search space editor of the configuration builder: one row per setting a study varies
   (setting, kind, range or choices, same-as, condition), written into `tune.search_space` as
   the hidden field `input` holds it. ft's default space (GET /api/tune/space: what an empty
   search_space searches) shows as its rows; while they are unchanged the config leaves
   search_space empty, which means the same. Problems come from the server's checks. */
function searchSpaceEditor(input, changed) {
  const box = document.getElementById("tune-rows");
  const note = document.getElementById("tune-space-note");
  const general = document.getElementById("tune-space-problem");
  const KINDS = [["float", "float"], ["log-float", "log-float"], ["int", "int"], ["categorical", "categorical"], ["derived", "same as another"]];
  const BASE = "tune.search_space.";
  let info = { default: {}, settings: [] };
  let rows = [], other = undefined, problems = [];

  const isNumber = (t) => /^-?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/i.test(t);
  const scalar = (t) => (t === "true" ? true : t === "false" ? false : t === "null" || t === "~" ? null : isNumber(t) ? Number(t) : t);
  function show(v) {
    if (Array.isArray(v)) return "[" + v.map(show).join(", ") + "]";
    if (typeof v === "number") return v !== 0 && Math.abs(v) < 1e-3 ? v.toExponential() : String(v);
    if (typeof v === "string") return v === "" || v.trim() !== v || /[,[\]"=:]/.test(v) || scalar(v) !== v ? JSON.stringify(v) : v;
    return JSON.stringify(v);
  }
  // YAML's flow style, as choices are written: `8, 16`, `[q_proj, v_proj], all-linear`, `"8"`.
  function parseFlow(text) {
    let i = 0;
    const blank = () => { while (text[i] === " ") i++; };
    function item() {
      blank();
      if (text[i] === "[") {
        i++; blank();
        const list = [];
        if (text[i] === "]") { i++; return list; }
        for (;;) {
          list.push(item()); blank();
          if (text[i] === ",") { i++; continue; }
          if (text[i] === "]") { i++; return list; }
          throw new Error("unclosed [");
        }
      }
      if (text[i] === '"') {
        let j = i + 1;
        while (j < text.length && text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
        const v = JSON.parse(text.slice(i, j + 1));
        i = j + 1;
        return v;
      }
      const start = i;
      while (i < text.length && text[i] !== "," && text[i] !== "]") i++;
      return scalar(text.slice(start, i).trim());
    }
    const out = [];
    blank();
    if (i >= text.length) return out;
    for (;;) {
      out.push(item()); blank();
      if (i >= text.length) return out;
      if (text[i] !== ",") throw new Error("expected a comma");
      i++;
    }
  }
  const flow = (text) => { try { return parseFlow(text); } catch (e) { return text; } };
  function parseWhen(text) {
    if (!text.trim()) return undefined;
    const when = {};
    for (const part of text.split(/,(?![^[]*\])/)) {
      const m = /^\s*([^=:\s]+)\s*[=:]\s*(.+?)\s*$/.exec(part);
      const value = m && flow(m[2]);
      if (!m || !Array.isArray(value) || value.length !== 1) return text; // the server says what is wrong
      when[m[1]] = value[0];
    }
    return when;
  }
  const whenText = (w) => Object.entries(w).map(([k, v]) => `${k} = ${show(v)}`).join(", ");
  const setting = (key) => info.settings.find((s) => s.key === key);

  function blank(key) {
    const r = { key, kind: "float", low: "", high: "", step: "", choices: "", same_as: "", times: "", when: "", extra: {} };
    const s = setting(key);
    if (!s) return r;
    if (s.type === "integer") r.kind = "int";
    else if (s.type !== "number") { r.kind = "categorical"; r.choices = s.choices.map(show).join(", "); }
    return r;
  }
  function fromEntry(key, e) {
    const r = blank(null);
    r.key = key;
    if (!e || typeof e !== "object" || Array.isArray(e) || ("choices" in e && !Array.isArray(e.choices))) return { ...r, raw: e };
    let used;
    if ("same_as" in e) {
      Object.assign(r, { kind: "derived", same_as: String(e.same_as), times: e.times === undefined ? "" : show(e.times) });
      used = ["same_as", "times"];
    } else if ("choices" in e) {
      Object.assign(r, { kind: "categorical", choices: e.choices.map(show).join(", ") });
      used = ["choices"];
    } else {
      r.kind = e.int ? "int" : e.log ? "log-float" : "float";
      for (const k of ["low", "high", "step"]) r[k] = e[k] === undefined ? "" : show(e[k]);
      used = ["low", "high", "step", e.int ? "int" : "log"];
    }
    if (e.when && typeof e.when === "object" && !Array.isArray(e.when)) { r.when = whenText(e.when); used.push("when"); }
    for (const [k, v] of Object.entries(e)) if (!used.includes(k)) r.extra[k] = v;
    return r;
  }
  function toEntry(r) {
    if ("raw" in r) return r.raw;
    const e = {};
    const number = (t) => (isNumber(t.trim()) ? Number(t) : t.trim());
    if (r.kind === "categorical") e.choices = flow(r.choices);
    else if (r.kind === "derived") {
      e.same_as = r.same_as;
      if (r.times.trim()) e.times = number(r.times);
    } else {
      if (r.low.trim()) e.low = number(r.low);
      if (r.high.trim()) e.high = number(r.high);
      if (r.kind === "log-float") e.log = true;
      if (r.kind === "int") e.int = true;
      if (r.step.trim()) e.step = number(r.step);
    }
    const when = parseWhen(r.when);
    if (when !== undefined) e.when = when;
    return { ...e, ...r.extra };
  }
  const entries = () => rows.map((r) => [r.key, toEntry(r)]);
  const canon = (v) => JSON.stringify(v, (k, x) => (x && typeof x === "object" && !Array.isArray(x) ? Object.fromEntries(Object.entries(x).sort()) : x));
  const isDefault = () => canon(entries()) === canon(Object.entries(info.default));

  // The hidden field: the rows' search_space, or empty for ft's default space.
  function sync() {
    if (other !== undefined) { input.value = JSON.stringify(other); return; }
    input.value = !rows.length || isDefault() ? "" : JSON.stringify(Object.fromEntries(entries()));
    note.textContent = !rows.length ? "No rows: a study searches ft's default space (Use ft's default space shows it)."
      : isDefault() ? "ft's default LoRA space: train.yml leaves search_space empty while these rows are unchanged."
      : `Your own space: ${rows.length} row(s), written into tune.search_space.`;
  }

  function cell(r, i, name, text, control) {
    control.id = `ts-${i}-${name}`;
    return el("div", { class: "cell cell-" + name }, el("label", { for: control.id }, text, el("span", { class: "sr", text: " " + (i + 1) })), control);
  }
  function textInput(r, name, placeholder) {
    const x = el("input", { placeholder, spellcheck: "false", autocomplete: "off" });
    x.value = r[name];
    x.addEventListener("input", () => { r[name] = x.value; delete r.raw; sync(); });
    return x;
  }
  function select(options, value) {
    const s = el("select", {}, ...options.map(([v, text]) => el("option", { value: v, text })));
    s.value = value;
    return s;
  }
  function bounds(s) {
    const words = [];
    if (s.minimum !== null) words.push(`at least ${s.minimum}`);
    if (s.exclusive_minimum !== null) words.push(`above ${s.exclusive_minimum}`);
    if (s.maximum !== null) words.push(`at most ${s.maximum}`);
    return words.join(", ");
  }
  function rowNode(r, i) {
    const s = setting(r.key);
    const keys = info.settings.map((x) => [x.key, x.key]);
    if (!s) keys.unshift([r.key, `${r.key} (not a setting a study varies)`]);
    const key = select(keys, r.key);
    key.setAttribute("aria-describedby", `ts-${i}-help`);
    key.addEventListener("change", () => {
      const touched = r.low || r.high || r.step || r.same_as || r.times || r.when;
      Object.assign(r, touched ? { key: key.value } : { ...blank(key.value), when: r.when });
      delete r.raw;
      render();
    });
    const kind = select(KINDS, r.kind);
    kind.addEventListener("change", () => { r.kind = kind.value; delete r.raw; render(); });
    const cells = [cell(r, i, "key", "Setting", key), cell(r, i, "kind", "Kind", kind)];
    if (r.kind === "categorical") cells.push(cell(r, i, "choices", "Choices", textInput(r, "choices", "8, 16, 32")));
    else if (r.kind === "derived") {
      const above = rows.slice(0, i).map((x) => [x.key, x.key]);
      if (r.same_as && !above.some(([k]) => k === r.same_as)) above.push([r.same_as, r.same_as]);
      if (!r.same_as && above.length) r.same_as = above[0][0];
      const same = select(above.length ? above : [["", "(no row above)"]], r.same_as);
      same.addEventListener("change", () => { r.same_as = same.value; delete r.raw; sync(); });
      cells.push(cell(r, i, "same_as", "Same as", same), cell(r, i, "times", "Times", textInput(r, "times", "1")));
    } else {
      cells.push(cell(r, i, "low", "Low", textInput(r, "low", "low")), cell(r, i, "high", "High", textInput(r, "high", "high")),
        cell(r, i, "step", "Step", textInput(r, "step", "none")));
    }
    cells.push(cell(r, i, "when", "Only when", textInput(r, "when", "always")));
    const remove = el("button", { type: "button", text: "Remove", "aria-label": `Remove row ${i + 1} (${r.key})` });
    remove.addEventListener("click", () => {
      rows.splice(i, 1);
      render();
      (document.getElementById(`ts-${Math.min(i, rows.length - 1)}-remove`) || document.getElementById("tune-add")).focus();
      changed();
    });
    remove.id = `ts-${i}-remove`;
    const help = s ? `${s.key}: ${s.help}` + (bounds(s) ? ` Values: ${bounds(s)}.` : "") + (s.default !== null && s.default !== undefined ? ` Default: ${show(s.default)}.` : "") : "";
    const extra = Object.keys(r.extra).length ? ` Also kept as written: ${Object.entries(r.extra).map(([k, v]) => `${k}: ${JSON.stringify(v)}`).join(", ")}.` : "";
    return el("div", { class: "space-row", role: "group", "aria-label": `Row ${i + 1}: ${r.key}`, "data-key": r.key },
      el("div", { class: "cells" }, ...cells, el("div", { class: "cell" }, remove)),
      el("p", { class: "help", id: `ts-${i}-help`, text: help + extra }),
      el("p", { class: "problem", id: `ts-${i}-problem`, hidden: true }));
  }
  function render() {
    const focused = document.activeElement && document.activeElement.id;
    box.replaceChildren(...rows.map(rowNode));
    if (focused && focused.startsWith("ts-") && document.getElementById(focused)) document.getElementById(focused).focus();
    sync();
    mark();
  }

  // Problems of tune.search_space (train.yml's checks, then the study's): each on its row and
  // control (`...method.rank.low` -> the row's Low), the rest under the rows.
  function mark() {
    const seen = new Map();
    const local = [];
    rows.forEach((r, i) => {
      if (seen.has(r.key)) local.push({ key: BASE + r.key, row: i, message: `${r.key} is in row ${seen.get(r.key) + 1} already; a setting is searched once` });
      else seen.set(r.key, i);
    });
    const byRow = rows.map(() => []);
    const left = [];
    for (const p of [...problems, ...local]) {
      let best = p.row ?? -1;
      if (best < 0) rows.forEach((r, i) => { if ((p.key === BASE + r.key || p.key.startsWith(BASE + r.key + ".")) && (best < 0 || r.key.length > rows[best].key.length)) best = i; });
      if (best < 0) left.push(p.text || p.message); else byRow[best].push(p);
    }
    box.querySelectorAll("[aria-invalid]").forEach((c) => { c.removeAttribute("aria-invalid"); c.removeAttribute("aria-errormessage"); });
    byRow.forEach((mine, i) => {
      const out = document.getElementById(`ts-${i}-problem`);
      out.hidden = !mine.length;
      out.textContent = mine.map((p) => p.message).join("; ");
      for (const p of mine) {
        const part = p.key.slice((BASE + rows[i].key).length + 1).split(".")[0];
        const control = document.getElementById(`ts-${i}-${part}`) || document.getElementById(`ts-${i}-key`);
        control.setAttribute("aria-invalid", "true");
        control.setAttribute("aria-errormessage", out.id);
      }
    });
    general.hidden = !left.length;
    general.textContent = left.join("; ");
  }

  function load(space) {
    other = undefined;
    if (space && typeof space === "object" && !Array.isArray(space) && Object.keys(space).length) rows = Object.entries(space).map(([k, e]) => fromEntry(k, e));
    else if (space === undefined || space === null || (typeof space === "object" && !Object.keys(space).length)) rows = Object.entries(info.default).map(([k, e]) => fromEntry(k, e));
    else { rows = []; other = space; } // not a mapping: kept as written, for the server to say so
    problems = [];
    render();
  }
  document.getElementById("tune-add").addEventListener("click", () => {
    const used = new Set(rows.map((r) => r.key));
    const free = info.settings.find((s) => !used.has(s.key));
    rows.push(blank(free ? free.key : info.settings[0].key));
    render();
    document.getElementById(`ts-${rows.length - 1}-key`).focus();
    changed();
  });
  document.getElementById("tune-default").addEventListener("click", () => { load(undefined); changed(); });
  document.getElementById("tune-clear").addEventListener("click", () => { other = undefined; rows = []; render(); changed(); });
  return {
    sync, load,
    showProblems(all) { problems = all.filter((p) => p.key === "tune.search_space" || p.key.startsWith(BASE)); mark(); },
    async start() { info = await api("/api/tune/space"); load(undefined); },
  };
}

/* ---- Exports -------------------------------------------------------------------------------- */

function pageExports() {
  const runSelect = document.getElementById("ex-run");
  async function files() {
    if (!runSelect.value) return;
    const r = await api(`/api/runs/${runSelect.value}/exports`);
    FT.setRows(document.querySelector("#ex-files tbody"), r.files.map((f) => el("tr", {},
      el("td", { text: f.path }), el("td", { text: FT.fmtBytes(f.size) }),
      el("td", {}, el("button", { type: "button", text: "Download " + f.path, onclick: () => FT.download(`/api/runs/${r.run_id}/exports/${f.path}`, f.path.split("/").pop()) })))));
  }
  async function jobs() {
    const { jobs } = await api("/api/jobs");
    const ex = jobs.filter((j) => j.kind === "export").reverse();
    FT.setRows(document.querySelector("#ex-jobs tbody"), ex.map((j) => el("tr", { "data-job": j.id },
      el("td", {}, el("a", { href: jobHref(j), text: j.id })), el("td", { text: j.run_id || "–" }), statusCell(j.status),
      el("td", { text: (j.result && j.result.format) || "–" }),
      el("td", { text: j.result ? (j.result.verified ? "checked" : "not checked") : j.error || "–" }),
      el("td", { text: j.result && j.result.notes ? j.result.notes.join("; ") : "" }))));
    if (ex.some((j) => j.status === "completed")) await files();
  }
  api("/api/runs").then(({ runs }) => {
    runSelect.replaceChildren(...runs.map((r) => el("option", { value: r.id, text: `${r.id} (${r.status}, ${r.method}, step ${r.step})` })));
    const wanted = location.hash.slice(1);
    if (wanted) runSelect.value = wanted;
    files();
  }).catch((e) => FT.notice(e.message));
  runSelect.addEventListener("change", files);
  document.getElementById("export-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = { format: document.getElementById("ex-format").value };
    const quant = document.getElementById("ex-quant").value, cp = document.getElementById("ex-checkpoint").value.trim();
    if (quant) body.quant = quant;
    if (cp) body.checkpoint = cp;
    try { await api(`/api/runs/${runSelect.value}/export`, { method: "POST", json: body }); await jobs(); } catch (err) { FT.notice(err.message); }
  });
  FT.poll(jobs, 2000);
}

/* ---- Runs ----------------------------------------------------------------------------------- */

function flatten(obj, prefix = "", out = {}) {
  for (const [k, v] of Object.entries(obj || {})) {
    if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, prefix + k + ".", out);
    else out[prefix + k] = JSON.stringify(v);
  }
  return out;
}

function pageRuns() {
  const tbody = document.querySelector("#runs-table tbody");
  async function report(id) {
    const r = await api(`/api/runs/${id}/summary`);
    document.getElementById("report").hidden = false;
    document.getElementById("rep-run").textContent = id;
    const facts = [];
    const walk = (obj, prefix) => {
      for (const [k, v] of Object.entries(obj || {})) {
        if (v && typeof v === "object" && !Array.isArray(v)) walk(v, prefix + k + " ");
        else if (!Array.isArray(v)) facts.push([prefix + k, FT.fmtNum(v)]);
      }
    };
    walk(r.summary, "");
    if (r.evaluation) walk(r.evaluation.metrics || r.evaluation, "evaluation ");
    document.getElementById("rep-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
    document.getElementById("rep-settings").textContent = JSON.stringify(r.settings, null, 2);
    const { points } = await api(`/api/runs/${id}/metrics`);
    const box = document.getElementById("rep-chart");
    box.replaceChildren();
    const chart = FT.lineChart(box, ["train loss", "eval loss"]);
    chart.set([points.map((p) => p.step), points.map((p) => (p.train ? p.train.loss : null)), points.map((p) => (p.eval ? p.eval.eval_loss : null))]);
    document.getElementById("report").scrollIntoView();
  }
  async function compare() {
    const ids = [...tbody.querySelectorAll("input:checked")].map((c) => c.value);
    if (ids.length < 2) { FT.notice("Tick two or more runs to compare."); return; }
    FT.notice("");
    const runs = await Promise.all(ids.map((id) => api("/api/runs/" + id)));
    const metrics = await Promise.all(ids.map((id) => api(`/api/runs/${id}/metrics`)));
    const flat = runs.map((r) => flatten(r.config));
    const keys = [...new Set(flat.flatMap(Object.keys))].sort().filter((k) => new Set(flat.map((f) => f[k])).size > 1 && !k.startsWith("output.") && k !== "data.train");
    const head = el("tr", {}, el("th", { text: "setting" }), ...ids.map((id) => el("th", { text: id })));
    document.querySelector("#cmp-settings thead").replaceChildren(head);
    FT.setRows(document.querySelector("#cmp-settings tbody"), keys.length ? keys.map((k) => el("tr", {}, el("th", { text: k }), ...flat.map((f) => el("td", { text: f[k] ?? "–" })))) : [el("tr", {}, el("td", { colspan: ids.length + 1, text: "The runs' settings are the same." }))]);
    const last = (pts, fn) => { for (let i = pts.length - 1; i >= 0; i--) { const v = fn(pts[i]); if (v !== undefined && v !== null) return v; } return null; };
    const rows = [
      ["status", runs.map((r) => r.status)], ["model", runs.map((r) => r.model)], ["steps", runs.map((r) => `${r.step} / ${r.total_steps ?? "?"}`)],
      ["final train loss", metrics.map((m) => FT.fmtNum(last(m.points, (p) => p.train && p.train.loss)))],
      ["final eval loss", metrics.map((m) => FT.fmtNum(last(m.points, (p) => p.eval && p.eval.eval_loss)))],
      ["best eval loss", runs.map((r) => FT.fmtNum(r.best_eval_loss))],
      ["tokens/s (last)", metrics.map((m) => FT.fmtNum(last(m.points, (p) => p.train && p.train.tokens_per_s), 3))],
    ];
    document.querySelector("#cmp-metrics thead").replaceChildren(head.cloneNode(true));
    FT.setRows(document.querySelector("#cmp-metrics tbody"), rows.map(([k, vs]) => el("tr", {}, el("th", { text: k }), ...vs.map((v) => el("td", { text: v ?? "–" })))));
    const steps = [...new Set(metrics.flatMap((m) => m.points.map((p) => p.step)))].sort((a, b) => a - b);
    const box = document.getElementById("cmp-chart");
    document.getElementById("compare").hidden = false;
    box.replaceChildren();
    const chart = FT.lineChart(box, ids.map((id) => id + " loss"));
    chart.set([steps, ...metrics.map((m) => { const by = new Map(m.points.map((p) => [p.step, p.train ? p.train.loss : null])); return steps.map((s) => by.get(s) ?? null); })]);
  }
  api("/api/runs").then(({ runs }) => {
    FT.setRows(tbody, runs.map((r) => el("tr", { id: r.id },
      el("td", {}, el("input", { type: "checkbox", value: r.id, id: "cmp-" + r.id, "aria-label": "Compare " + r.id })),
      el("td", {}, el("label", { for: "cmp-" + r.id, text: r.id })), statusCell(r.status), el("td", { text: r.model }), el("td", { text: r.method }),
      el("td", { text: `${r.step} / ${r.total_steps ?? "?"}` }), el("td", { text: FT.fmtNum(r.best_eval_loss) }),
      el("td", {}, el("button", { type: "button", text: "Report", "aria-label": "Report of " + r.id, onclick: () => report(r.id).catch((e) => FT.notice(e.message)) })))));
    if (location.hash.length > 1) report(location.hash.slice(1)).catch((e) => FT.notice(e.message));
  }).catch((e) => FT.notice(e.message));
  document.getElementById("runs-compare").addEventListener("click", () => compare().catch((e) => FT.notice(e.message)));
}

/* ---- Chat playground ------------------------------------------------------------------------ */

function pageChat() {
  const model = document.getElementById("chat-model"), other = document.getElementById("chat-other");
  const history = { main: [], other: [] };
  api("/v1/models").then(({ data }) => {
    const options = (sel) => data.map((m) => el("option", { value: m.id, text: m.parent ? `${m.id} (adapter on ${m.parent})` : `${m.id} (base)` }));
    model.replaceChildren(...options());
    other.append(...options());
    if (!data.length) FT.notice("The server serves no model: start it with --allow-model NAME (a base model, a run id or '*').");
  }).catch((e) => FT.notice(e.message));
  async function ask(which, modelId, log) {
    const messages = history[which];
    const item = el("li", { class: "assistant" }, el("small", { text: modelId }), "…");
    log.append(item);
    try {
      const r = await api("/v1/chat/completions", { method: "POST", json: { model: modelId, messages, temperature: Number(document.getElementById("chat-temp").value || 0), max_tokens: Number(document.getElementById("chat-max").value || 64) } });
      const text = r.choices[0].message.content;
      messages.push({ role: "assistant", content: text });
      item.replaceChildren(el("small", { text: `${modelId} · ${r.usage.completion_tokens} tokens · ${r.choices[0].finish_reason}` }), text);
    } catch (err) { item.replaceChildren(el("small", { text: modelId }), err.message); item.classList.add("bad"); messages.pop(); }
  }
  document.getElementById("chat-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const input = document.getElementById("chat-input");
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    const jobs = [];
    for (const [which, sel, log] of [["main", model, "chat-log"], ["other", other, "chat-log-other"]]) {
      if (!sel.value) continue;
      history[which].push({ role: "user", content: text });
      document.getElementById(log).append(el("li", { class: "user", text }));
      jobs.push(ask(which, sel.value, document.getElementById(log)));
    }
    await Promise.all(jobs);
  });
  document.getElementById("chat-clear").addEventListener("click", () => {
    history.main = []; history.other = [];
    document.getElementById("chat-log").replaceChildren();
    document.getElementById("chat-log-other").replaceChildren();
  });
}

const PAGES = { home: pageHome, jobs: pageJobs, monitor: pageMonitor, study: pageStudy, models: pageModels, datasets: pageDatasets, config: pageConfig, exports: pageExports, runs: pageRuns, chat: pageChat };
(PAGES[document.body.dataset.page] || (() => {}))();
