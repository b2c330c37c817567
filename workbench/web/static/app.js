// The web view of a workbench gateway: workspaces, the chosen workspace's variables, sleighs,
// clients and pub/sub traffic. The gateway's server-sent events keep it live; a poll every 2 s
// fetches what events do not carry (owners, clients, subscriptions, a sleigh's worker count).
// Everything shown is set as text (textContent, properties), never as HTML made from data.

const POLL_MS = 2000;
const REFRESH_GAP_MS = 250; // a list asked for again on events: at most 4 requests a second
const SETTLE_MS = 20; // ... after the burst of events that asked (a create, then a store) ends
const RATE_WINDOW_S = 10; // a message rate is the messages heard over the last 10 s
const PREVIEW_CHARS = 120;
const MOST_ROWS = 200; // per table: a broker of thousands of workspaces stays drawable

// A sleigh's workspace, as workbench.sleigh makes it: named by the default template
// ("sleigh_ride_%04d") or, whatever its name, holding the worker count the master keeps.
const SLEIGH_NAME = /^sleigh_ride_\d+$/;
const WORKER_COUNT = "workerCount";
const TASK_VAR = /^task(@\d+)?$/; // the shared task queue and eachWorker's queue per rank

const state = {
  status: null, // GET /api/status
  workspaces: {}, // GET /api/workspaces
  values: new Map(), // workspace -> Map(variable -> number of values), from the events
  taken: new Map(), // workspace -> task records taken from its task queues, seen by events
  workers: new Map(), // sleigh workspace -> its workerCount value
  chosen: null, // the workspace whose variables are shown (location.hash "ws=NAME")
  variables: null, // GET /api/workspaces/{chosen}/vars?preview=1, or null: not loaded
  variablesNote: "",
  messages: new Map(), // identifier -> {total, seconds: [{second, count}], last, since}
  live: null, // the event stream's snapshot came (true), or it broke (false)
  problem: "", // why the last request failed, shown in the header
};

// ---------------------------------------------------------------------------- requests

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function getJSON(path) {
  // same origin: the gateway's cookie (set from ?token=) goes with it
  const reply = await fetch(path, { headers: { Accept: "application/json" } });
  const body = await reply.json().catch(() => ({}));
  if (!reply.ok) throw new HttpError(reply.status, body.error || reply.statusText);
  return body;
}

const wsPath = (name) => `/api/workspaces/${encodeURIComponent(name)}`;

// `load` run at most once per `gap` ms and never twice at once; asked for meanwhile, it runs
// once more afterwards, so the last change is always fetched. A run waits SETTLE_MS at least,
// so that the events of one burst cost one request.
function throttled(load, gap) {
  let timer = null;
  let busy = false;
  let again = false;
  let last = -Infinity;
  const run = async () => {
    timer = null;
    busy = true;
    last = performance.now();
    try {
      await load();
      state.problem = "";
    } catch (error) {
      state.problem = error.message;
    }
    busy = false;
    draw();
    if (again) {
      again = false;
      request();
    }
  };
  const request = () => {
    if (busy) again = true;
    else if (timer === null) {
      timer = setTimeout(run, Math.max(SETTLE_MS, last + gap - performance.now()));
    }
  };
  return request;
}

const loadWorkspaces = throttled(async () => {
  state.workspaces = await getJSON("/api/workspaces");
}, REFRESH_GAP_MS);

const loadVariables = throttled(async () => {
  const name = state.chosen;
  if (name === null) return;
  let variables = {};
  let note = "";
  try {
    variables = await getJSON(`${wsPath(name)}/vars?preview=1`);
  } catch (error) {
    if (error.status !== 404) throw error;
    note = `There is no workspace ${name} (yet).`;
  }
  if (name !== state.chosen) return; // another was chosen meanwhile: it is being loaded
  state.variables = variables;
  state.variablesNote = note;
}, REFRESH_GAP_MS);

const loadStatus = throttled(async () => {
  state.status = await getJSON("/api/status");
}, REFRESH_GAP_MS);

const loadWorkers = throttled(async () => {
  const asked = sleighNames().map(async (name) => {
    const view = await getJSON(`${wsPath(name)}/vars/${WORKER_COUNT}`);
    state.workers.set(name, view.value);
  });
  await Promise.allSettled(asked); // a sleigh that stopped meanwhile answers 404
}, REFRESH_GAP_MS);

function poll() {
  loadStatus();
  loadWorkspaces();
  loadWorkers();
  loadVariables();
}

// ---------------------------------------------------------------------------- events

function valuesOf(ws) {
  if (!state.values.has(ws)) state.values.set(ws, new Map());
  return state.values.get(ws);
}

// The first event of a stream: events flow from here on (a reconnected stream sends it again).
function onSnapshot(snapshot) {
  state.live = true;
  state.values = new Map(Object.entries(snapshot).map(([ws, vars]) =>
    [ws, new Map(Object.entries(vars).map(([name, [values]]) => [name, values]))]));
  loadWorkspaces();
  loadVariables();
  draw();
}

// A batch holds one item per (workspace, event, variable), its count merged and `values` the
// number of values after the batch: a task queue's records taken are those it held before,
// plus those stored, less those it holds now.
function onWorkspaceEvents(batch) {
  const changes = new Map(); // "ws\0var" -> {ws, var, stored, deleted, values}
  let listChanged = false;
  for (const event of batch) {
    if (event.event.startsWith("ws_")) {
      listChanged = true;
      if (event.event !== "ws_created") {
        state.values.delete(event.ws);
        state.taken.delete(event.ws);
        state.workers.delete(event.ws);
      }
      continue;
    }
    if (event.event === "created" || event.event === "deleted") listChanged = true;
    const key = `${event.ws}\0${event.var}`;
    const change = changes.get(key) ||
      { ws: event.ws, var: event.var, stored: 0, deleted: false, values: 0 };
    if (event.event === "stored") change.stored += event.count;
    if (event.event === "deleted") change.deleted = true;
    change.values = event.values ?? change.values;
    changes.set(key, change);
  }
  for (const change of changes.values()) {
    const vars = valuesOf(change.ws);
    const before = vars.get(change.var) ?? 0;
    if (TASK_VAR.test(change.var) && !change.deleted) {
      const taken = Math.max(0, before + change.stored - change.values);
      state.taken.set(change.ws, (state.taken.get(change.ws) ?? 0) + taken);
    }
    if (change.deleted && change.values === 0) vars.delete(change.var);
    else vars.set(change.var, change.values);
  }
  if (listChanged) loadWorkspaces();
  if (batch.some((event) => event.ws === state.chosen)) loadVariables();
  draw();
}

function onMessage({ identifier, value }) {
  const second = Math.floor(Date.now() / 1000);
  const heard = state.messages.get(identifier) ||
    { total: 0, seconds: [], last: null, since: Date.now() / 1000 };
  heard.total += 1;
  heard.last = value;
  const tail = heard.seconds[heard.seconds.length - 1];
  if (tail && tail.second === second) tail.count += 1;
  else heard.seconds.push({ second, count: 1 });
  while (heard.seconds[0].second <= second - RATE_WINDOW_S) heard.seconds.shift();
  state.messages.set(identifier, heard);
  draw();
}

// Messages per second over the window, or since the identifier was first heard if that is
// shorter (one heard for 2 s has not had 10 s to send in).
function rate(heard) {
  const now = Date.now() / 1000;
  const first = Math.floor(now) - RATE_WINDOW_S + 1; // the window's whole seconds, this one too
  const count = heard.seconds.reduce((n, s) => n + (s.second >= first ? s.count : 0), 0);
  const listened = Math.max(1, Math.min(now - first, now - heard.since));
  return Math.round((count / listened) * 10) / 10;
}

function listen() {
  const events = new EventSource("/api/events?ws=*&subscribe=*");
  const on = (name, handle) =>
    events.addEventListener(name, (message) => handle(JSON.parse(message.data)));
  on("snapshot", onSnapshot);
  on("workspace", onWorkspaceEvents);
  on("message", onMessage);
  // the gateway dropped events this page read too slowly: start again from a new snapshot
  on("overflow", () => {
    events.close();
    listen();
  });
  events.onerror = () => {
    state.live = false;
    draw();
    // the browser retries by itself, unless the answer was no event stream at all
    if (events.readyState === EventSource.CLOSED) setTimeout(listen, POLL_MS);
  };
}

// ---------------------------------------------------------------------------- showing

// A value's view as text: JSON as JSON, text quoted, bytes as Python writes them.
function describe(view) {
  if (!view) return "";
  switch (view.kind) {
    case "json": return view.truncated ? view.value : JSON.stringify(view.value);
    case "text": return JSON.stringify(view.value);
    case "int": return String(view.value);
    case "bytes": return view.truncated ? `${view.size} bytes` : bytesText(view.value);
    case "pickle": {
      const shape = view.shape ? `${view.shape.join("×")} ${view.dtype || ""} ` : "";
      return view.repr ? `${shape}${view.repr}` : `${view.type}, ${view.size} bytes pickled`;
    }
    default: return JSON.stringify(view);
  }
}

function bytesText(base64) {
  const shown = [...atob(base64)].map((c) => {
    const code = c.charCodeAt(0);
    return code >= 32 && code < 127 && c !== "\\" && c !== "'"
      ? c : `\\x${code.toString(16).padStart(2, "0")}`;
  });
  return `b'${shown.join("")}'`;
}

function sleighNames() {
  const names = new Set(Object.keys(state.workspaces));
  for (const [ws, vars] of state.values) if (vars.has(WORKER_COUNT)) names.add(ws);
  return [...names].filter((name) => SLEIGH_NAME.test(name) ||
    state.values.get(name)?.has(WORKER_COUNT) ||
    state.workspaces[name]?.vars?.includes(WORKER_COUNT)).sort();
}

function cell(spec) {
  const td = document.createElement("td");
  if (typeof spec === "number") {
    td.className = "number";
    td.textContent = String(spec);
  } else if (spec && spec.ws !== undefined) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "workspace";
    button.textContent = spec.ws;
    button.setAttribute("aria-pressed", String(spec.ws === state.chosen));
    button.addEventListener("click", () => {
      location.hash = new URLSearchParams({ ws: spec.ws }).toString();
    });
    td.append(button);
  } else if (spec && spec.progress !== undefined) {
    const bar = document.createElement("progress");
    bar.max = spec.max;
    bar.value = spec.progress;
    bar.setAttribute("aria-label", `${spec.progress} of ${spec.max} tasks`);
    td.append(bar);
  } else if (spec && spec.preview !== undefined) {
    td.className = "preview";
    td.title = spec.preview;
    td.textContent = spec.preview.length > PREVIEW_CHARS
      ? `${spec.preview.slice(0, PREVIEW_CHARS)}…` : spec.preview;
  } else {
    td.textContent = spec ?? "";
  }
  return td;
}

// A table's body is rebuilt only when what it shows changed, so that a focused button keeps
// its focus and screen readers hear only real changes.
const shown = new WeakMap();

function fill(id, rows, empty) {
  const body = document.querySelector(`#${id} tbody`);
  const key = JSON.stringify([rows, empty, state.chosen]);
  if (shown.get(body) === key) return;
  shown.set(body, key);
  const trs = rows.slice(0, MOST_ROWS).map((row) => {
    const tr = document.createElement("tr");
    tr.append(...row.map(cell));
    return tr;
  });
  if (rows.length > MOST_ROWS) trs.push(note(`… ${rows.length - MOST_ROWS} more`));
  if (!rows.length) trs.push(note(empty));
  body.replaceChildren(...trs);
}

function note(text) {
  const tr = document.createElement("tr");
  const td = cell(text);
  td.className = "empty";
  td.colSpan = 9;
  tr.append(td);
  return tr;
}

function drawHeader() {
  const header = document.getElementById("broker");
  const status = state.status;
  const parts = [state.live ? "live" : state.live === null ? "connecting…" : "reconnecting…"];
  if (status) {
    parts.push(`workbench ${status.version}`, `up ${Math.round(status.uptime)} s`,
      `${status.workspaces} workspaces`, `${status.values} values`,
      `${(status.memory / 2 ** 20).toFixed(1)} MiB`, `${status.clients.length} clients`);
  }
  if (state.problem) parts.push(state.problem);
  header.textContent = parts.join(" · ");
  header.classList.toggle("lost", !state.live || Boolean(state.problem));
}

function drawWorkspaces() {
  const sum = (vars) => [...vars.values()].reduce((n, v) => n + v, 0);
  fill("workspaces", Object.keys(state.workspaces).sort().map((name) => {
    const ws = state.workspaces[name];
    const vars = state.values.get(name);
    return [{ ws: name }, ws.owner || "-", ws.persistent ? "yes" : "", ws.variables,
      vars ? sum(vars) : 0]; // no events of it since the snapshot: made empty since
  }), "no workspaces");
}

function drawVariables() {
  const notice = document.getElementById("variables-note");
  const chosen = state.chosen;
  notice.textContent = chosen === null ? "No workspace chosen."
    : state.variablesNote || `Workspace ${chosen}`;
  const vars = state.variables || {};
  fill("variables", Object.keys(vars).sort().map((name) => {
    const v = vars[name];
    return [name, v.mode, v.values, v.fetchers, v.finders, { preview: describe(v.preview) }];
  }), chosen === null ? "" : state.variables === null ? "loading…" : "no variables");
}

function drawSleighs() {
  fill("sleighs", sleighNames().map((name) => {
    const vars = state.values.get(name) || new Map();
    let queued = 0;
    for (const [variable, values] of vars) if (TASK_VAR.test(variable)) queued += values;
    const done = state.taken.get(name) ?? 0;
    const progress = done + queued ? { progress: done, max: done + queued } : "idle";
    return [{ ws: name }, state.workers.get(name) ?? "", done, queued, progress];
  }), "no sleighs");
}

function drawClients() {
  const status = state.status || { clients: [], subscribers: [] };
  const clients = [...status.clients].sort((a, b) => a.label.localeCompare(b.label));
  const gateway = new Set((status.gateway || {}).sessions || []);
  fill("clients", clients.map((c) =>
    [gateway.has(c.label) ? `${c.label} (this gateway)` : c.label,
     c.owned.join(", ") || "-", c.requests, c.waiting]), "no clients");
  fill("subscribers", (status.subscribers || []).map((s) =>
    [s.client, [...s.patterns, ...s.watches.map((w) => `watch ${w}`)].join(", ") || "-",
      s.delivered, s.dropped]), "no subscriptions");
}

function drawMessages() {
  const rows = [...state.messages.entries()].sort(([a], [b]) => a.localeCompare(b));
  fill("messages", rows.map(([identifier, heard]) =>
    [identifier, rate(heard), heard.total, { preview: describe(heard.last) }]),
  "no messages yet");
}

// Drawing waits for the next frame, so a burst of events costs one redraw.
let frame = null;
function draw() {
  if (frame !== null) return;
  frame = requestAnimationFrame(() => {
    frame = null;
    drawHeader();
    drawWorkspaces();
    drawVariables();
    drawSleighs();
    drawClients();
    drawMessages();
  });
}

function choose() {
  const chosen = new URLSearchParams(location.hash.slice(1)).get("ws");
  if (chosen === state.chosen) return;
  state.chosen = chosen;
  state.variables = null;
  state.variablesNote = "";
  loadVariables();
  draw();
}

// ---------------------------------------------------------------------------- start

// The token has done its work once the gateway set its cookie: keep it out of the history.
const address = new URL(location.href);
if (address.searchParams.has("token")) {
  address.searchParams.delete("token");
  history.replaceState(null, "", address);
}
window.addEventListener("hashchange", choose);
choose();
listen();
poll();
setInterval(poll, POLL_MS);
setInterval(draw, 1000); // rates fall as time passes without messages
