// The taskbeat dashboard: plain JavaScript, no build step. Every view renders from the JSON
// API (the CLI's --output json documents) and refreshes itself while it is shown. Text from
// tasks is only ever set as text, never parsed as HTML.
"use strict";

const REFRESH_MS = { tasks: 1000, task: 700, queues: 2000, schedules: 10000, charts: 15000 };
let info = { backend: "embedded" };
let timer = null;
let generation = 0;
// The element whose handler runs (so that an action can disable its button).
let clicked = null;

// ---- helpers ---------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), (e) => { clicked = e.currentTarget; return value(e); });
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// Replaces an element's children; arrays are spread and empty values skipped.
function fill(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false && c !== "")
    .map((c) => (c instanceof Node ? c : document.createTextNode(String(c)))));
}

async function api(path, options = {}) {
  const init = { credentials: "same-origin", headers: {} };
  if (options.method === "POST") {
    init.method = "POST";
    init.headers["X-Taskbeat"] = "1";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(options.body || {});
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = { error: text }; }
  if (!response.ok) {
    const error = new Error((body && body.error) || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

// The banner under the header. A refresh's failure is cleared by the next refresh that works;
// what an action says stays until the next action or view.
let noticeFromRefresh = false;

function notice(message, isError, fromRefresh) {
  const box = document.getElementById("notice");
  box.textContent = message;
  box.className = isError ? "error" : "";
  box.hidden = !message;
  noticeFromRefresh = Boolean(fromRefresh && message);
}

function live(state) {
  const el = document.getElementById("live");
  el.className = "live " + (state === "ok" ? "" : state);
  el.textContent = state === "error" ? "disconnected" : state === "off" ? "paused" : "live";
}

function stateBadge(state) {
  return h("span", { class: `state state-${state}`, "data-state": state }, state);
}

function progressBar(record, wide) {
  const pct = Math.max(0, Math.min(100, record.progress || 0));
  const bar = h("span", { class: `bar ${record.state}${wide ? " wide" : ""}`, role: "progressbar",
    "aria-valuenow": pct, "aria-valuemin": 0, "aria-valuemax": 100 });
  const fill = h("span");
  fill.style.width = pct + "%";
  bar.append(fill);
  return h("span", {}, h("span", { class: "pct" }, pct + "%"), bar);
}

function human(ms) {
  if (ms === null || ms === undefined) return "-";
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 3600000) return `${Math.floor(ms / 60000)} min ${Math.floor((ms % 60000) / 1000)} s`;
  if (ms < 86400000) return `${Math.floor(ms / 3600000)} h ${Math.floor((ms % 3600000) / 60000)} min`;
  return `${Math.floor(ms / 86400000)} d ${Math.floor((ms % 86400000) / 3600000)} h`;
}

function shorten(text, max) {
  return text.length > max ? text.slice(0, max - 1) + "…" : text;
}

function json(value) {
  return JSON.stringify(value, null, 2);
}

function taskLink(id, label) {
  return h("a", { href: `/tasks/${id}`, class: "mono" }, label || id);
}

// Runs `render` now and then every `ms` while this view is shown (less often on AWS, where each
// refresh is DynamoDB queries).
function every(ms, render) {
  if (info.backend === "aws") ms *= 2;
  const mine = ++generation;
  const tick = async () => {
    if (mine !== generation) return;
    try {
      await render();
      live("ok");
      if (noticeFromRefresh) notice("", false);
    } catch (e) {
      // An answer with an error status means the server is there; only a failed fetch is not.
      live(e.status ? "ok" : "error");
      notice(e.message, true, true);
      const loading = document.querySelector("#view > p.muted");
      if (loading && loading.textContent === "Loading…") loading.remove();
    }
    if (mine === generation && ms) timer = setTimeout(tick, ms);
  };
  clearTimeout(timer);
  tick();
}

// Runs an action once at a time: its button is disabled until the answer comes.
async function act(label, path, body, after, button) {
  const target = button || (clicked instanceof HTMLButtonElement ? clicked : null);
  clicked = null;
  if (target) {
    if (target.disabled) return;
    target.disabled = true;
  }
  try {
    const result = await api(path, { method: "POST", body });
    notice(label(result), false);
    if (after) after(result);
  } catch (e) {
    notice(e.message, true);
  } finally {
    if (target) target.disabled = false;
  }
}

// ---- tasks -----------------------------------------------------------------------------------

async function tasksView(root) {
  const params = new URLSearchParams(location.search);
  const registered = await api("/api/registered").catch(() => ({ tasks: [] }));
  const stateSelect = h("select", { name: "state", id: "filter-state" }, h("option", { value: "" }, "any"),
    (info.states || []).map((s) => h("option", { value: s, selected: params.get("state") === s }, s)));
  const taskInput = h("input", { name: "task", id: "filter-task", list: "task-names", size: 42,
    value: params.get("task") || "", placeholder: "any task" });
  const names = h("datalist", { id: "task-names" }, registered.tasks.map((t) => h("option", { value: t })));
  const sinceChoices = [["", "any time"], ["15m", "15 minutes"], ["1h", "1 hour"], ["6h", "6 hours"], ["1d", "1 day"],
    ["7d", "7 days"]];
  const given = params.get("since") || "";
  // A value typed in the address (`?since=2h`) is shown as it is.
  if (!sinceChoices.some(([v]) => v === given)) sinceChoices.push([given, given]);
  const since = h("select", { name: "since", id: "filter-since" },
    sinceChoices.map(([v, label]) => h("option", { value: v, selected: given === v }, label)));
  const form = h("form", { class: "filters", onsubmit: (e) => {
    e.preventDefault();
    const next = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) next.set(k, v);
    history.pushState(null, "", "/" + (next.toString() ? "?" + next : ""));
    route();
  } },
  h("label", {}, "State", stateSelect), h("label", {}, "Task", taskInput, names), h("label", {}, "Sent within", since),
  h("button", { type: "submit" }, "Filter"));
  stateSelect.addEventListener("change", () => form.requestSubmit());
  since.addEventListener("change", () => form.requestSubmit());
  const body = h("tbody", { id: "task-rows" });
  const more = h("p", { class: "muted" });
  fill(root, h("h1", {}, "Tasks"), form,
    h("table", { id: "tasks" }, h("thead", {}, h("tr", {}, h("th", {}, "Task"), h("th", {}, "State"),
      h("th", {}, "Progress"), h("th", {}, "Status"), h("th", { class: "num" }, "Age"),
      h("th", { class: "num" }, "Duration"), h("th", {}, "Id"))), body), more);
  every(REFRESH_MS.tasks, async () => {
    const query = new URLSearchParams(params);
    query.set("limit", "50");
    const page = await api("/api/tasks?" + query);
    fill(body, page.tasks.map((t) => h("tr", { "data-id": t.id, "data-state": t.state },
      h("td", {}, h("a", { href: `/tasks/${t.id}` }, t.task)),
      h("td", {}, stateBadge(t.state)),
      h("td", {}, progressBar(t)),
      h("td", {}, t.error ? `${t.error.type}: ${t.error.message}` : t.status || ""),
      h("td", { class: "num" }, human(t.age_ms)),
      h("td", { class: "num" }, human(t.duration_ms)),
      h("td", { class: "mono" }, t.id.slice(0, 8)))));
    if (!page.tasks.length) body.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No tasks match.")));
    fill(more);
    if (page.next) {
      const older = new URLSearchParams(params);
      older.set("cursor", page.next);
      more.append(h("a", { href: "/?" + older }, "Older tasks →"));
    }
  });
}

// ---- one task --------------------------------------------------------------------------------

function section(title, ...content) {
  return [h("h2", {}, title), ...content];
}

async function taskView(root, id) {
  let shown = null;
  every(REFRESH_MS.task, async () => {
    const r = await api(`/api/tasks/${encodeURIComponent(id)}`);
    // Redraw only on a change, so that a button is not replaced under the pointer.
    const seen = JSON.stringify(r);
    if (seen === shown) return;
    shown = seen;
    const actions = h("div", { class: "actions" });
    if (!["SUCCESS", "FAILURE", "REVOKED"].includes(r.state)) {
      actions.append(h("button", { class: "danger", id: "revoke", onclick: () => act(
        (x) => `Revoked (was ${x.previous_state}).`, `/api/tasks/${r.id}/revoke`) }, "Revoke"));
    }
    if (["FAILURE", "REVOKED"].includes(r.state)) {
      actions.append(h("button", { id: "retry", onclick: () => act(
        (x) => `Sent again as ${x.id}.`, `/api/tasks/${r.id}/retry`, {},
        (x) => { history.pushState(null, "", `/tasks/${x.id}`); route(); }) }, "Retry as a new task"));
    }
    const fields = h("dl", { class: "fields" },
      h("dt", {}, "Id"), h("dd", { class: "mono" }, r.id),
      h("dt", {}, "Queue"), h("dd", {}, r.queue),
      h("dt", {}, "Retries"), h("dd", {}, String(r.retries || 0)),
      h("dt", {}, "Sent"), h("dd", {}, r.created_at || "-"),
      h("dt", {}, "Started"), h("dd", {}, r.started_at || "-"),
      h("dt", {}, "Finished"), h("dd", {}, r.finished_at || "-"),
      r.parent_id ? [h("dt", {}, "Parent"), h("dd", {}, taskLink(r.parent_id))] : [],
      r.root_id && r.root_id !== r.id ? [h("dt", {}, "Root"), h("dd", {}, taskLink(r.root_id))] : [],
      r.origin ? [h("dt", {}, "Sent by"), h("dd", {}, r.origin)] : []);
    const changes = r.history || [];
    const timeline = h("ol", { class: "timeline", id: "timeline" }, changes.map((c, i) => h("li", { class: `s-${c.state}` },
      stateBadge(c.state), " ", c.at,
      i > 0 ? h("span", { class: "muted" }, `  +${human(Date.parse(c.at) - Date.parse(changes[i - 1].at))}`) : null)));
    fill(root, 
      h("h1", {}, r.task, " ", stateBadge(r.state)),
      h("p", { id: "progress" }, progressBar(r, true), " ", h("span", { id: "status" }, r.status || "")),
      actions, fields,
      section("Arguments", h("pre", { id: "args" }, `args   ${json(r.args || [])}\nkwargs ${json(r.kwargs || {})}`)),
      r.meta ? section("Meta (update_state)", h("pre", { id: "meta" }, json(r.meta))) : [],
      r.result !== undefined && r.result !== null ? section("Result", h("pre", { id: "result" }, json(r.result))) : [],
      r.error ? section("Error", h("pre", { class: "error", id: "error" }, `${r.error.type}: ${r.error.message}`)) : [],
      section("Timeline", changes.length ? timeline : h("p", { class: "muted" }, "No history kept for this record.")));
  });
}

// ---- queues and dead letters -------------------------------------------------------------------

async function queuesView(root) {
  const queues = h("tbody", { id: "queue-rows" });
  const letters = h("tbody", { id: "dead-letter-rows" });
  const refresh = h("button", { onclick: () => loadLetters() }, "Refresh dead letters");
  const sqsNote = info.backend === "aws"
    ? h("p", { class: "muted" }, "SQS has no peek: each listing receives the dead letters and releases them at once, " +
      "so they are listed when you ask, not live.")
    : null;
  fill(root, h("h1", {}, "Queues"),
    h("table", { id: "queues" }, h("thead", {}, h("tr", {}, h("th", {}, "Module"), h("th", {}, "Queue"),
      h("th", { class: "num" }, "Waiting"), h("th", { class: "num" }, "In flight"), h("th", { class: "num" }, "Delayed"),
      h("th", { class: "num" }, "Dead letters"), h("th", {}, ""))), queues),
    h("h2", {}, "Dead letters"), sqsNote, h("div", { class: "actions" }, refresh),
    h("table", { id: "dead-letters" }, h("thead", {}, h("tr", {}, h("th", {}, "Queue"), h("th", {}, "Task"),
      h("th", {}, "Reason"), h("th", { class: "num" }, "Age"), h("th", { class: "num" }, "Receives"),
      h("th", {}, "Message"), h("th", {}, ""))), letters));
  const redrive = (body, what) => act((reports) => {
    const moved = reports.reduce((n, r) => n + r.moved, 0);
    return `Moved ${moved} dead letter${moved === 1 ? "" : "s"} back (${what}).`;
  }, "/api/dead-letters/redrive", body, () => loadLetters().catch((e) => notice(e.message, true)));
  let shownLetters = null;
  async function loadLetters() {
    const found = await api("/api/dead-letters");
    const seen = JSON.stringify(found);
    if (seen === shownLetters) return;
    shownLetters = seen;
    const now = Date.now();
    fill(letters, found.map((d) => h("tr", { class: "dead", "data-message": d.message_id },
      h("td", {}, d.queue),
      h("td", {}, d.task_id ? taskLink(d.task_id, d.task || d.task_id) : d.task || "-"),
      h("td", {}, d.reason || "moved by SQS after its max receive count"),
      h("td", { class: "num" }, human(now - Date.parse(d.sent_at))),
      h("td", { class: "num" }, String(d.receive_count)),
      h("td", { class: "mono" }, d.message_id),
      h("td", {}, h("button", { class: "redrive", onclick: () => redrive({ queue: d.queue, message: d.message_id },
        d.message_id) }, "Redrive")))));
    if (!found.length) letters.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No dead letters.")));
  }
  await loadLetters().catch((e) => notice(e.message, true));
  let shownQueues = null;
  every(REFRESH_MS.queues, async () => {
    const rows = await api("/api/queues");
    const seen = JSON.stringify(rows);
    if (info.backend !== "aws") await loadLetters();
    if (seen === shownQueues) return;
    shownQueues = seen;
    fill(queues, rows.map((q) => h("tr", { "data-queue": q.queue },
      h("td", {}, q.module), h("td", { class: "mono" }, q.name),
      h("td", { class: "num" }, String(q.waiting)), h("td", { class: "num" }, String(q.in_flight)),
      h("td", { class: "num" }, String(q.delayed)), h("td", { class: "num" }, String(q.dlq)),
      h("td", {}, q.dlq > 0 ? h("button", { class: "redrive-all", onclick: () => redrive({ queue: q.queue, all: true },
        `all of ${q.queue}`) }, "Redrive all") : ""))));
  });
}

// ---- schedules ---------------------------------------------------------------------------------

async function schedulesView(root) {
  const rows = h("tbody", { id: "schedule-rows" });
  const note = info.backend === "aws" ? null : h("p", { class: "muted" },
    "Enable and disable switch a deployed EventBridge rule: run `taskbeat --aws dashboard` to use them. " +
    "Here, `taskbeat local` fires the schedules of taskbeat.toml (enabled there).");
  fill(root, h("h1", {}, "Schedules"), note,
    h("table", { id: "schedules" }, h("thead", {}, h("tr", {}, h("th", {}, "Schedule"), h("th", {}, "Task"),
      h("th", {}, "When"), h("th", {}, "Next fire times (UTC)"), h("th", {}, "Rule"), h("th", {}, ""))), rows));
  every(REFRESH_MS.schedules, async () => {
    const list = await api("/api/schedules");
    fill(rows, list.map((s) => {
      let rule = s.enabled ? "enabled in taskbeat.toml" : "disabled in taskbeat.toml";
      if ("deployed" in s) rule = s.deployed ? `deployed ${s.deployed.enabled ? "ENABLED" : "DISABLED"}` : "not deployed";
      const deployed = s.deployed || null;
      const switchable = info.backend === "aws" && deployed;
      const why = info.backend === "aws" ? "the rule is not deployed" : "needs --aws: switches the deployed rule";
      return h("tr", { "data-schedule": s.name },
        h("td", {}, h("strong", {}, s.name)),
        h("td", {}, s.task, h("div", { class: "muted" }, `queue ${s.queue}`), h("div", { class: "mono muted args",
          title: JSON.stringify(s.args) }, shorten(JSON.stringify(s.args), 120))),
        h("td", {}, h("span", { class: "mono" }, s.expression), h("div", { class: "muted" }, s.description)),
        h("td", { class: "mono nowrap" }, (s.next.length ? s.next : ["never again"]).map((t) => h("div", {},
          t.replace("T", " ").replace("Z", "")))),
        h("td", {}, h("span", { class: "mono" }, s.rule), h("div", { class: "muted rule-state" }, rule)),
        h("td", {}, h("div", { class: "actions" },
          h("button", { class: "run", onclick: () => act((x) => `Sent ${s.task} now: ${x.id}.`,
            `/api/schedules/${encodeURIComponent(s.name)}/run`, {}, (x) => { history.pushState(null, "", `/tasks/${x.id}`); route(); }) }, "Run now"),
          h("button", { class: "toggle", disabled: !switchable, title: switchable ? null : why,
            onclick: () => act((x) => `${x.rule}: ${x.enabled ? "ENABLED" : "DISABLED"}.`,
              `/api/schedules/${encodeURIComponent(s.name)}/${deployed && deployed.enabled ? "disable" : "enable"}`, {},
              () => route()) }, deployed && deployed.enabled ? "Disable" : "Enable"))));
    }));
    if (!list.length) rows.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No schedules in the manifest.")));
  });
}

// ---- charts ------------------------------------------------------------------------------------

async function chartsView(root) {
  const throughput = h("img", { class: "chart", id: "chart-throughput", alt: "tasks per minute by final state", width: 960, height: 340 });
  const durations = h("img", { class: "chart", id: "chart-durations", alt: "duration percentiles per task", width: 960, height: 340 });
  const totals = h("p", { id: "totals" });
  const table = h("tbody", { id: "duration-rows" });
  fill(root, h("h1", {}, "Charts"), totals, throughput, durations,
    h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Task"), h("th", { class: "num" }, "Finished"),
      h("th", { class: "num" }, "p50"), h("th", { class: "num" }, "p90"), h("th", { class: "num" }, "p99"),
      h("th", { class: "num" }, "max"))), table));
  every(REFRESH_MS.charts, async () => {
    const data = await api("/api/charts");
    const stamp = Date.now();
    throughput.src = `/charts/throughput.svg?t=${stamp}`;
    durations.src = `/charts/durations.svg?t=${stamp}`;
    fill(totals, `Finished in the last ${data.window_minutes} minutes: `,
      ...data.per_minute.map((s) => h("span", {}, stateBadge(s.state), ` ${s.total}  `)),
      data.truncated ? h("span", { class: "muted" }, " (a sample: the busiest states were read in part)") : "");
    fill(table, data.durations.map((d) => h("tr", {}, h("td", {}, d.task),
      h("td", { class: "num" }, String(d.count)), h("td", { class: "num" }, human(d.p50_ms)),
      h("td", { class: "num" }, human(d.p90_ms)), h("td", { class: "num" }, human(d.p99_ms)),
      h("td", { class: "num" }, human(d.max_ms)))));
    if (!data.durations.length) table.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No task finished in the last hour.")));
  });
}

// ---- routing -----------------------------------------------------------------------------------

function route() {
  const root = document.getElementById("view");
  const path = location.pathname;
  let view = "tasks";
  let run = () => tasksView(root);
  const task = path.match(/^\/tasks\/([^/]+)$/);
  if (task) {
    view = "tasks";
    run = async () => {
      let id;
      try { id = decodeURIComponent(task[1]); } catch (_) { throw new Error(`${task[1]} is not a task id`); }
      return taskView(root, id);
    };
  }
  else if (path === "/queues") { view = "queues"; run = () => queuesView(root); }
  else if (path === "/schedules") { view = "schedules"; run = () => schedulesView(root); }
  else if (path === "/charts") { view = "charts"; run = () => chartsView(root); }
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.view === view);
  document.title = `taskbeat · ${view}`;
  generation++;
  clearTimeout(timer);
  notice("", false);
  run().catch((e) => notice(e.message, true));
}

document.addEventListener("click", (e) => {
  const a = e.target.closest("a");
  if (!a || a.origin !== location.origin || e.ctrlKey || e.metaKey || e.shiftKey) return;
  e.preventDefault();
  history.pushState(null, "", a.pathname + a.search);
  route();
});
window.addEventListener("popstate", route);
document.addEventListener("visibilitychange", () => {
  if (document.hidden) { generation++; clearTimeout(timer); live("off"); } else route();
});

(async () => {
  try {
    info = await api("/api/info");
    document.getElementById("backend").textContent =
      `${info.project} · ${info.backend === "aws" ? "AWS" : "embedded"} · ${info.location}`;
  } catch (e) {
    notice(e.message, true);
  }
  route();
})();
