// ferry dashboard: plain DOM, no framework. Views are fetched as JSON from
// /api/*, re-fetched when /api/live says something changed, and swapped in
// place (inputs and focus kept), never by reloading the page.
"use strict";

const state = {
  token: sessionStorage.getItem("ferry-operator-token") || "",
  readOnly: null,
  connection: { connected: null, stale_since: null },
  streamDownSince: null,
  viewStaleSince: null,
  route: null,
  pending: null,
  generation: 0,
};

// ---- small helpers ------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "style") Object.assign(el.style, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function badge(word, cls) {
  return h("span", { class: "badge s-" + (cls || word || "other").replace(/[^a-z_]/g, "") }, word || "—");
}

function clock(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
}

function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
  if (s < 60) return s + "s ago";
  if (s < 3600) return Math.round(s / 60) + "m ago";
  if (s < 86400) return Math.round(s / 3600) + "h ago";
  return Math.round(s / 86400) + "d ago";
}

function when(iso) {
  if (!iso) return h("span", { class: "time" }, "—");
  const d = new Date(iso);
  return h("time", { class: "time", datetime: iso, title: d.toLocaleString() }, clock(iso) + " · " + ago(iso));
}

function num(v, digits) {
  return typeof v === "number" ? v.toFixed(digits) : "—";
}

async function getJson(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

let toastTimer = null;
function toast(text, ok) {
  const el = document.getElementById("toast");
  el.textContent = text;
  el.className = "toast " + (ok ? "ok" : "error");
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, ok ? 6000 : 12000);
}

// ---- connection and mode banners ---------------------------------------

function staleSince() {
  const c = state.connection;
  const candidates = [c.connected === false ? c.stale_since : null, state.streamDownSince, state.viewStaleSince].filter(Boolean);
  if (candidates.length === 0) return null;
  return candidates.sort()[0];
}

function renderBanners() {
  const conn = document.getElementById("connection");
  const since = staleSince();
  if (since) {
    conn.className = "conn conn-stale";
    conn.textContent = "stale since " + clock(since);
    conn.title = "The controller's NATS connection is down (or the dashboard is unreachable): the data shown is the last known.";
  } else if (state.connection.connected) {
    conn.className = "conn conn-live";
    conn.textContent = "live";
    conn.title = "Updates arrive as they happen.";
  } else {
    conn.className = "conn conn-wait";
    conn.textContent = "connecting…";
  }
  const mode = document.getElementById("mode");
  const tokenButton = document.getElementById("token-button");
  if (since) {
    mode.hidden = false;
    mode.className = "mode stale";
    mode.textContent = "Stale since " + new Date(since).toLocaleString([], { hourCycle: "h23" }) +
      ": the controller has lost its NATS connection. This page shows the last data it had and updates again when the connection is back.";
  } else if (state.readOnly === true) {
    mode.hidden = false;
    mode.className = "mode";
    mode.textContent = "Read-only: no operators are configured ([[dashboard.operators]] in the controller's configuration), so actions are off.";
  } else {
    mode.hidden = true;
  }
  tokenButton.hidden = state.readOnly === true;
  tokenButton.textContent = state.token ? "Operator token ✓" : "Operator token";
}

// ---- live notices --------------------------------------------------------

function connectLive() {
  const source = new EventSource("/api/live");
  source.addEventListener("open", () => {
    if (state.streamDownSince) {
      state.streamDownSince = null;
      refresh();
    }
    renderBanners();
  });
  source.addEventListener("connection", (e) => {
    const c = JSON.parse(e.data);
    const wasDown = state.connection.connected === false;
    state.connection = c;
    renderBanners();
    if (c.connected && wasDown) refresh();
  });
  source.addEventListener("change", (e) => {
    const notice = JSON.parse(e.data);
    const r = state.route;
    if (r && r.name === "service" && notice.service && notice.service !== r.service) return;
    scheduleRefresh();
  });
  source.addEventListener("error", () => {
    // EventSource reconnects by itself; until then the page is stale.
    if (!state.streamDownSince) state.streamDownSince = new Date().toISOString();
    renderBanners();
  });
}

function scheduleRefresh() {
  if (state.pending) return;
  state.pending = setTimeout(() => {
    state.pending = null;
    refresh();
  }, 250);
}

// ---- routing -------------------------------------------------------------

function parseRoute() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean);
  if (parts[0] === "service" && parts[1]) return { name: "service", service: decodeURIComponent(parts[1]), params };
  if (parts[0] === "approvals") return { name: "approvals", params };
  if (parts[0] === "audit") return { name: "audit", params };
  return { name: "overview", params };
}

function onRoute() {
  state.route = parseRoute();
  for (const a of document.querySelectorAll("[data-nav]")) {
    const current = a.dataset.nav === state.route.name ||
      (state.route.name === "service" && a.dataset.nav === "overview");
    if (current) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  const main = document.getElementById("main");
  main.replaceChildren(h("p", { class: "loading" }, "Loading…"));
  refresh(true);
}

// Fetches the current view and swaps it in, keeping what the user typed and
// where the keyboard focus was.
async function refresh(moveFocus) {
  const generation = ++state.generation;
  const route = state.route;
  let node;
  try {
    node = await VIEWS[route.name](route);
  } catch (e) {
    node = h("div", { class: "panel" }, h("h1", {}, "Could not load this view"), h("p", {}, e.message));
  }
  if (generation !== state.generation) return;
  const main = document.getElementById("main");
  const kept = {};
  for (const input of main.querySelectorAll("[data-keep]")) kept[input.dataset.keep] = input.value;
  const focused = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.key : null;
  main.replaceChildren(node);
  for (const input of main.querySelectorAll("[data-keep]")) {
    if (kept[input.dataset.keep] !== undefined) input.value = kept[input.dataset.keep];
  }
  if (focused) {
    const again = main.querySelector(`[data-key="${CSS.escape(focused)}"]`);
    if (again) again.focus();
  } else if (moveFocus) {
    main.focus({ preventScroll: true });
  }
  renderBanners();
  updateApprovalsCount();
}

async function view(path) {
  const answer = await getJson(path);
  state.readOnly = answer.read_only;
  state.viewStaleSince = answer.stale_since;
  return answer.data;
}

// ---- overview: the environments x services grid -------------------------

function stateWord(row) {
  if (!row.agent_up) return ["agent down", "down"];
  if (row.maintenance) return ["maintenance", "maintenance"];
  if (row.rollout && (row.rollout.state === "progressing" || row.rollout.state === "paused")) {
    return [row.rollout.state, row.rollout.state];
  }
  return [row.state, row.state];
}

function replicas(row) {
  const pct = row.replicas_desired ? Math.round((100 * row.replicas_healthy) / row.replicas_desired) : 0;
  return h("span", { class: "replicas", title: `${row.replicas_healthy} of ${row.replicas_desired} replicas pass their health checks` },
    h("span", { class: "bar", "aria-hidden": "true" }, h("span", { style: { width: pct + "%" } })),
    `${row.replicas_healthy}/${row.replicas_desired} healthy`);
}

function gridCell(env, row, alerts) {
  if (!row) return h("td", { class: "cell none", "data-env": env }, "not deployed");
  const [word, cls] = stateWord(row);
  const up = alerts.filter((a) => a.environment === env && a.service === row.service);
  return h("td", { class: "cell", "data-env": env },
    h("div", {}, h("span", { class: "version" }, row.version || "—"), " ", badge(word, cls)),
    h("div", { class: "line" }, replicas(row)),
    row.rollout ? h("div", { class: "line" },
      `${row.rollout.strategy} ${row.rollout.version}: step ${row.rollout.step}/${row.rollout.steps}, ${row.rollout.weight_percent}% of traffic`) : null,
    row.last_outcome ? h("div", { class: "line" }, "last: ", badge(row.last_outcome), " ", when(row.last_outcome_at)) : null,
    up.length ? h("div", { class: "line" }, up.map((a) => badge("alert: " + a.text, "alert"))) : null,
  );
}

async function VIEWS_overview() {
  const data = await view("/api/overview");
  const pipeline = data.pipeline;
  const services = [...new Set(data.rows.filter((r) => r.service).map((r) => r.service))].sort();
  const byEnv = Object.fromEntries(pipeline.map((e) => [e, data.rows.filter((r) => r.environment === e)]));
  const agentUp = (e) => byEnv[e].some((r) => r.agent_up);
  const lastSeen = (e) => byEnv[e].map((r) => r.agent_last_seen).filter(Boolean).sort().pop();
  const rolling = data.rows.filter((r) => r.rollout && (r.rollout.state === "progressing" || r.rollout.state === "paused")).length;
  const unhealthy = data.rows.filter((r) => r.service && r.agent_up && r.replicas_healthy < r.replicas_desired).length;

  const tiles = h("div", { class: "tiles" },
    tile(pipeline.filter(agentUp).length + " / " + pipeline.length, "environments with a live agent"),
    tile(services.length, "services"),
    tile(rolling, "rollouts in progress"),
    tile(unhealthy, "services short of healthy replicas"),
    tile(data.alerts.length, "alerts up"));

  const head = h("tr", {}, h("th", { scope: "col" }, "Service"),
    pipeline.map((e) => h("th", { scope: "col" },
      h("div", { class: "env-head" },
        h("span", { class: "name" }, e),
        h("span", {}, agentUp(e) ? badge("agent up", "running") : badge("agent down", "down"),
          " ", h("span", { class: "wide-only" }, "seen " + ago(lastSeen(e))))))));
  const body = services.length === 0
    ? [h("tr", {}, h("td", { colspan: pipeline.length + 1, class: "empty" }, "No services reported yet: start an agent, then publish a release (ferry release publish)."))]
    : services.map((s) => h("tr", {},
      h("th", { scope: "row" }, h("a", { href: "#/service/" + encodeURIComponent(s), "data-key": "svc-" + s }, s)),
      pipeline.map((e) => gridCell(e, byEnv[e].find((r) => r.service === s), data.alerts))));
  return h("section", { "aria-labelledby": "overview-title" },
    h("h1", { id: "overview-title" }, "Overview"),
    h("p", { class: "sub" }, "Every service in every environment of the pipeline, " + pipeline.join(" → ") + "."),
    tiles,
    h("div", { class: "grid-wrap" },
      h("table", { class: "grid", id: "grid" },
        h("caption", { class: "visually-hidden" }, "Environments × services: version, replicas healthy of desired, state, agent, alerts"),
        h("thead", {}, head), h("tbody", {}, body))));
};

function tile(n, label) {
  return h("div", { class: "tile" }, h("div", { class: "n" }, n), h("div", { class: "l" }, label));
}

// ---- service page --------------------------------------------------------

function actionButton(label, action, env, service, extra, cls) {
  return h("button", {
    type: "button", class: "button " + (cls || ""), "data-key": `act-${action}-${env}`,
    "data-action": action, "data-env": env,
    onclick: () => act(action, env, service, extra ? extra() : {}),
  }, label);
}

function rolloutTimeline(env, service, entries, row) {
  const latest = entries[entries.length - 1];
  const status = latest ? latest.status : row && row.rollout;
  if (!status) return null;
  const phaseOf = (e) => e.phase.phase;
  const ended = latest && (phaseOf(latest) === "promoted" || phaseOf(latest) === "aborted");
  const aborted = latest && phaseOf(latest) === "aborted";
  const steps = [];
  for (let i = 1; i <= status.steps; i++) {
    const at = entries.filter((e) => e.status.step === i);
    const started = at.find((e) => phaseOf(e) === "step_started");
    const last = at[at.length - 1];
    let cls = "pending", word = "pending";
    if (i < status.step || (status.state === "promoted")) { cls = "done"; word = "done"; }
    if (i === status.step && status.state !== "promoted") {
      cls = aborted ? "failed" : "current";
      word = aborted ? "aborted here" : status.state === "paused" ? "paused here" : "in progress";
    }
    const asked = started ? started.status.weight_percent : (i === status.step ? status.weight_percent : null);
    // The most the step reached before the rollout ended (an abort drops it to 0).
    const during = at.filter((e) => phaseOf(e) !== "aborted" && phaseOf(e) !== "promoted");
    const reached = during.length ? Math.max(...during.map((e) => e.status.weight_percent)) : (last ? last.status.weight_percent : null);
    steps.push(h("li", { class: "step " + cls, "aria-current": cls === "current" ? "step" : null },
      h("div", { class: "k" }, `Step ${i} of ${status.steps} · ${word}`),
      h("div", { class: "w" }, asked === null ? "—" : asked + "%"),
      h("div", { class: "r" }, reached === null ? "not started" : `asked ${asked === null ? "—" : asked + "%"} · reached ${reached}%`)));
  }
  const analyses = entries.filter((e) => phaseOf(e) === "analysed" || phaseOf(e) === "both_failing").slice(-12).reverse();
  const abortEntry = aborted ? latest : null;
  const canControl = !ended && state.readOnly === false;
  return h("section", { class: "panel rollout", "aria-labelledby": `rollout-${env}` },
    h("div", { class: "rollout-head" },
      h("h3", { id: `rollout-${env}` }, `${status.strategy} of ${status.version}`),
      h("span", { class: "where" }, "in " + env),
      badge(status.state),
      latest ? h("span", { class: "where" }, "updated ", when(latest.time)) : null),
    abortEntry ? h("div", { class: "abort", role: "alert" }, h("strong", {}, "Aborted and rolled back"), abortEntry.explanation || "") : null,
    h("ol", { class: "steps", "aria-label": "Rollout steps" }, steps),
    canControl ? h("div", { class: "actions", "aria-label": "Rollout actions" },
      actionButton("Pause", "pause", env, service),
      actionButton("Resume", "resume", env, service),
      actionButton("Promote now", "promote", env, service, null, "primary"),
      actionButton("Abort", "abort", env, service, null, "danger")) : null,
    analyses.length ? analysisTable(analyses) : h("p", { class: "empty" }, entries.length ? "No analysis reported yet." :
      "Started before the dashboard did: its earlier steps are not shown."));
}

function analysisTable(entries) {
  const cell = (value, limit, unit, digits, below) => {
    const over = typeof limit === "number" && typeof value === "number" && (below ? value < limit : value > limit);
    return h("td", { class: "num" + (over ? " over" : "") },
      num(value, digits) + unit,
      typeof limit === "number" ? h("span", { class: "lim" }, (below ? " ≥ " : " ≤ ") + num(limit, digits) + unit) : null);
  };
  const rows = entries.map((e) => {
    const p = e.phase;
    if (p.phase === "both_failing") {
      return h("tr", {}, h("td", {}, when(e.time)), h("td", {}, e.status.step),
        h("td", { colspan: 5 }, e.explanation || "stable fails too"), h("td", {}, badge("stable fails too", "paused")));
    }
    const s = p.signals, l = p.limits || {};
    const verdict = p.breaches && p.breaches.length ? badge("breach", "breach")
      : p.conclusive ? badge("pass", "pass") : badge("too few requests", "inconclusive");
    return h("tr", {},
      h("td", {}, when(e.time)), h("td", {}, `${e.status.step} (${e.status.weight_percent}%)`),
      h("td", { class: "num" }, s.requests),
      cell(s.error_rate_percent, l.error_rate_percent, "%", 1, false),
      cell(s.p95_ms, l.p95_ms, " ms", 0, false),
      cell(s.p99_ms, l.p99_ms, " ms", 0, false),
      cell(s.availability_percent, l.availability_percent, "%", 1, true),
      h("td", {}, verdict, e.explanation ? h("div", { class: "lim" }, e.explanation) : null));
  });
  return h("div", { class: "grid-wrap" }, h("table", { class: "analysis", id: "analysis" },
    h("caption", { class: "visually-hidden" }, "Analysis verdicts, newest first, each value against its threshold"),
    h("thead", {}, h("tr", {}, ["Time", "Step", "Requests", "Error rate", "p95", "p99", "Availability", "Verdict"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows)));
}

async function VIEWS_service(route) {
  const service = route.service;
  const data = await view("/api/service?service=" + encodeURIComponent(service));
  const rows = data.pipeline.map((e) => data.rows.find((r) => r.environment === e)).filter(Boolean);
  const where = h("div", { class: "grid-wrap" }, h("table", { id: "where" },
    h("caption", { class: "visually-hidden" }, "What runs where"),
    h("thead", {}, h("tr", {}, ["Environment", "Version", "State", "Replicas", "Address", "Agent", state.readOnly === false ? "Actions" : null]
      .filter(Boolean).map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows.length ? rows.map((r) => {
      const [word, cls] = stateWord(r);
      return h("tr", {},
        h("th", { scope: "row" }, r.environment),
        h("td", { class: "mono" }, r.version || "—"),
        h("td", {}, badge(word, cls), r.maintenance ? h("div", { class: "lim" }, "“" + r.maintenance.message + "”") : null),
        h("td", {}, replicas(r)),
        h("td", { class: "mono" }, r.address || "—"),
        h("td", {}, r.agent_up ? "up" : "down", " · seen ", ago(r.agent_last_seen)),
        state.readOnly === false ? h("td", {}, h("div", { class: "actions" },
          actionButton("Roll back", "rollback", r.environment, service, null, "danger"),
          h("span", { class: "sep", "aria-hidden": "true" }),
          h("label", { class: "visually-hidden", for: `replicas-${r.environment}` }, `Replicas in ${r.environment}`),
          h("input", { type: "number", min: 0, max: 100, id: `replicas-${r.environment}`, "data-keep": `replicas-${r.environment}`, "data-key": `replicas-${r.environment}`, value: r.replicas_desired }),
          actionButton("Scale", "scale", r.environment, service, () => ({ replicas: Number(document.getElementById(`replicas-${r.environment}`).value) })),
          h("span", { class: "sep", "aria-hidden": "true" }),
          r.maintenance ? actionButton("End maintenance", "maintenance_off", r.environment, service)
            : actionButton("Maintenance on", "maintenance_on", r.environment, service, () => ({ message: "down for maintenance" })))) : null);
    }) : h("tr", {}, h("td", { colspan: 6, class: "empty" }, "No environment reports this service.")))));

  const timelines = data.pipeline
    .map((e) => rolloutTimeline(e, service, data.timelines[e] || [], data.rows.find((r) => r.environment === e)))
    .filter(Boolean);
  const history = h("div", { class: "grid-wrap" }, h("table", { id: "deployments" },
    h("caption", { class: "visually-hidden" }, "Deployment history, newest first"),
    h("thead", {}, h("tr", {}, ["Time", "Environment", "Version", "Action", "Outcome", "By", "Detail"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, data.history.length ? data.history.slice().reverse().map((r) => h("tr", {},
      h("td", {}, when(r.time)), h("td", {}, r.environment || "—"), h("td", { class: "mono" }, r.version || "—"),
      h("td", {}, r.action), h("td", {}, badge(r.outcome)), h("td", {}, r.actor || "—"), h("td", {}, r.detail)))
      : h("tr", {}, h("td", { colspan: 7, class: "empty" }, "No deployments recorded yet.")))));
  return h("section", { "aria-labelledby": "service-title" },
    h("div", { class: "crumbs" }, h("a", { href: "#/" }, "Overview"), " / ", service),
    h("h1", { id: "service-title" }, service),
    data.alerts.length ? h("p", {}, data.alerts.map((a) => badge(`alert in ${a.environment}: ${a.text}`, "alert"))) : null,
    h("h2", {}, "What runs where"), where,
    h("h2", {}, "Rollouts"), timelines.length ? timelines : h("p", { class: "empty" }, "No rollout since the dashboard started."),
    h("h2", {}, "Deployment history"), history);
};

// ---- approvals -----------------------------------------------------------

async function VIEWS_approvals() {
  const data = await view("/api/approvals");
  const cards = data.promotions.map((p) => {
    const v = p.promotion;
    const copyId = `cmd-${v.service}-${v.version}-${v.environment}`;
    return h("article", { class: "card", "aria-labelledby": copyId + "-t" },
      h("h3", { id: copyId + "-t" }, `${v.service} ${v.version} → ${v.environment}`),
      h("div", {}, badge(v.state), " ", h("span", { class: "meter" }, `${v.approvals_valid} of ${v.approvals_required} approvals`),
        v.overrides_required ? h("span", {}, ` · ${v.overrides_valid} of ${v.overrides_required} security overrides`) : null),
      h("p", {}, v.detail),
      v.approvals_required === 0 && !v.overrides_required ? null : h("div", {}, h("div", { class: "label" }, "Who may approve"),
        h("div", { class: "who" }, p.reviewers.length ? p.reviewers.map((r) =>
          badge(r + (v.waiting_for.includes(r) ? "" : " ✓"), v.waiting_for.includes(r) ? "idle" : "pass")) : "no reviewers configured")),
      v.eligible_at ? h("div", {}, "Eligible from ", when(v.eligible_at)) : null,
      h("div", {}, h("div", { class: "label", id: copyId + "-l" }, p.kind === "approve"
        ? "Approve with your reviewer key (FERRY_REVIEWER_KEY or --key FILE):"
        : "No approval is missing; it waits to be promoted:"),
        h("div", { class: "cmd" },
          h("code", { id: copyId, class: p.kind + "-command", tabindex: 0, "aria-labelledby": copyId + "-l" }, p.command),
          h("button", { type: "button", class: "button", "data-key": "copy-" + copyId, onclick: () => copy(p.command) }, "Copy"))));
  });
  state.approvals = data.promotions.length;
  return h("section", { "aria-labelledby": "approvals-title" },
    h("h1", { id: "approvals-title" }, "Approvals waiting"),
    h("p", { class: "sub" }, "Reviewers sign approvals with their own key, on their own machine: the key never reaches this page."),
    cards.length ? h("div", { class: "cards", id: "approvals" }, cards) : h("p", { class: "empty", id: "approvals" }, "Nothing waits for an approval."));
};

async function copy(text) {
  try {
    await navigator.clipboard.writeText(text);
    toast("Copied: " + text, true);
  } catch (_) {
    toast("Select the command and copy it (the browser refused the clipboard).", false);
  }
}

async function updateApprovalsCount() {
  try {
    const answer = await getJson("/api/approvals");
    const n = answer.data.promotions.length;
    const el = document.getElementById("approvals-count");
    el.hidden = n === 0;
    el.textContent = n;
    el.setAttribute("aria-label", n + " waiting");
  } catch (_) { /* the view itself reports failures */ }
}

// ---- audit trail ---------------------------------------------------------

const AUDIT_FILTERS = [["environment", "Environment"], ["service", "Service"], ["actor", "Actor"], ["action", "Action"], ["since", "Since (1h, 2d or a time)"], ["limit", "At most"]];

async function VIEWS_audit(route) {
  const params = route.params;
  const query = new URLSearchParams();
  for (const [k] of AUDIT_FILTERS) if (params.get(k)) query.set(k, params.get(k));
  const data = await view("/api/audit?" + query.toString());
  const form = h("form", { class: "filters", id: "audit-filters", onsubmit: (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const el of e.target.elements) if (el.name && el.value.trim()) q.set(el.name, el.value.trim());
    location.hash = "#/audit" + (q.toString() ? "?" + q.toString() : "");
  } }, AUDIT_FILTERS.map(([k, label]) => h("div", {},
    h("label", { for: "f-" + k }, label),
    k === "environment"
      ? h("select", { id: "f-" + k, name: k }, h("option", { value: "" }, "all"),
        data.pipeline.map((e) => h("option", { value: e, selected: params.get(k) === e }, e)))
      : h("input", { id: "f-" + k, name: k, value: params.get(k) || "", size: k === "limit" ? 4 : 12, inputmode: k === "limit" ? "numeric" : null }))),
  h("button", { type: "submit", class: "button primary" }, "Filter"));
  const rows = data.records.slice().reverse().map((r) => h("tr", {},
    h("td", {}, when(r.time)), h("td", {}, r.environment || "—"), h("td", {}, r.service), h("td", { class: "mono" }, r.version || "—"),
    h("td", {}, r.action), h("td", {}, badge(r.outcome)), h("td", {}, r.actor || "—"), h("td", {}, r.detail)));
  return h("section", { "aria-labelledby": "audit-title" },
    h("h1", { id: "audit-title" }, "Audit trail"),
    h("p", { class: "sub" }, "What was done, by whom, and how it ended: the records of ferry history, newest first."),
    form,
    h("div", { class: "grid-wrap" }, h("table", { id: "audit" },
      h("caption", { class: "visually-hidden" }, "Audit records"),
      h("thead", {}, h("tr", {}, ["Time", "Environment", "Service", "Version", "Action", "Outcome", "Actor", "Detail"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 8, class: "empty" }, "No records match."))))));
};

const VIEWS = { overview: VIEWS_overview, service: VIEWS_service, approvals: VIEWS_approvals, audit: VIEWS_audit };

// ---- actions -------------------------------------------------------------

async function act(action, environment, service, extra) {
  const headers = { "Content-Type": "application/json", Accept: "application/json" };
  if (state.token) headers.Authorization = "Bearer " + state.token;
  let response, body;
  try {
    response = await fetch("/api/actions", {
      method: "POST", headers, credentials: "omit",
      body: JSON.stringify(Object.assign({ action, environment, service }, extra)),
    });
    body = await response.json().catch(() => ({ error: response.statusText }));
  } catch (e) {
    toast("Could not reach the dashboard: " + e.message, false);
    return;
  }
  if (response.ok) {
    toast(`${body.message} (as ${body.operator})`, true);
    scheduleRefresh();
  } else {
    toast(`${response.status}: ${body.error}`, false);
  }
}

function setupTokenDialog() {
  const dialog = document.getElementById("token-dialog");
  const input = document.getElementById("token-input");
  document.getElementById("token-button").addEventListener("click", () => {
    input.value = "";
    dialog.showModal();
    input.focus();
  });
  dialog.addEventListener("close", () => {
    if (dialog.returnValue === "save" && input.value.trim()) {
      state.token = input.value.trim();
      sessionStorage.setItem("ferry-operator-token", state.token);
      toast("Token set for this tab.", true);
    } else if (dialog.returnValue === "forget") {
      state.token = "";
      sessionStorage.removeItem("ferry-operator-token");
      toast("Token forgotten.", true);
    }
    input.value = "";
    renderBanners();
  });
}

// Relative times ("12s ago") move on between updates.
setInterval(() => {
  for (const t of document.querySelectorAll("time[datetime]")) {
    t.textContent = clock(t.getAttribute("datetime")) + " · " + ago(t.getAttribute("datetime"));
  }
}, 5000);

window.addEventListener("hashchange", onRoute);
document.addEventListener("DOMContentLoaded", () => {
  setupTokenDialog();
  connectLive();
  onRoute();
});
