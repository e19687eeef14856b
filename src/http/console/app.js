// The context-store console: plain DOM code served by the binary, talking to the same authenticated HTTP
// API as any client (`/auth/token`, `/mcp/tool/{name}`, `/metrics`, `/health/ready`). Text from the store is
// only ever written with textContent, never parsed as HTML.

const TOKEN_KEY = "context-store.console.token";
const $ = (id) => document.getElementById(id);

// --- session: the short-lived token only (the API key is dropped once exchanged) ---

let session = loadSession();

function loadSession() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(TOKEN_KEY) || "null");
    if (saved && Date.parse(saved.expires_at) > Date.now() + 5000) return saved;
  } catch (_) { /* a damaged entry is dropped below */ }
  sessionStorage.removeItem(TOKEN_KEY);
  return null;
}

// Signing out (or a token that stopped working) reloads the page: nothing the last key could see stays in
// the document for whoever signs in next.
function signOut(message) {
  session = null;
  sessionStorage.removeItem(TOKEN_KEY);
  if (message) sessionStorage.setItem(`${TOKEN_KEY}.notice`, message);
  location.reload();
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function request(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  if (session) headers.Authorization = `Bearer ${session.token}`;
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method: options.method || (options.body !== undefined ? "POST" : "GET"),
    headers,
    body: options.body !== undefined ? JSON.stringify(options.body) : undefined,
    credentials: "omit",
    cache: "no-store",
  });
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = text; }
  if (!response.ok) {
    const error = body && body.error ? body.error : {};
    if (response.status === 401 && session) signOut("Your sign-in ended; sign in again.");
    throw new ApiError(response.status, error.code || `http_${response.status}`, error.message || text || response.statusText);
  }
  return body;
}

const tool = (name, args = {}) => request(`/mcp/tool/${name}`, { body: args });

// --- small DOM helpers ---

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) node.append(child);
  return node;
}

function say(message, isError = false) {
  const status = $("status");
  status.textContent = message;
  status.classList.toggle("error", isError);
}

function failed(error) {
  say(error instanceof ApiError ? `${error.code}: ${error.message}` : String(error), true);
}

const short = (text, length = 90) => (text.length > length ? `${text.slice(0, length - 1)}…` : text);
const when = (stamp) => (stamp ? new Date(stamp).toLocaleString() : "");
const score = (value) => (value === undefined || value === null ? "–" : Number(value).toFixed(3));
const fields = (form) => Object.fromEntries([...new FormData(form).entries()].filter(([, v]) => String(v).trim() !== ""));
const has = (permission) => !!session && session.permissions.includes(permission);

// --- sign in ---

$("sign-in-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("api-key");
  const key = input.value.trim();
  input.value = "";
  try {
    const issued = await request("/auth/token", { body: { api_key: key } });
    session = issued;
    sessionStorage.setItem(TOKEN_KEY, JSON.stringify(issued));
    say("");
    render();
  } catch (error) {
    failed(error);
  }
});

$("sign-out").addEventListener("click", () => signOut("Signed out."));

function render() {
  const signedIn = !!session;
  $("sign-in").hidden = signedIn;
  $("app").hidden = !signedIn;
  $("sign-out").hidden = !signedIn;
  $("who").textContent = signedIn ? `${session.agent_id} · ${session.permissions.join(", ")} · until ${when(session.expires_at)}` : "";
  if (!signedIn) {
    $("api-key").focus();
    return;
  }
  $("tab-query").hidden = !has("query") && !has("admin");
  $("state-agent").placeholder = session.agent_id;
  $("state-agent").disabled = !has("admin");
  loadSessions(true);
  loadContexts(true);
  suggestQuery();
}

// The analyst language follows the graph backend: SQL over SQLite's scoped views, Cypher on Neo4j.
const EXAMPLE_QUERIES = {
  sqlite: "SELECT type, COUNT(*) AS contexts FROM contexts GROUP BY type ORDER BY contexts DESC",
  neo4j: "MATCH (c:Context) RETURN c.type AS type, count(*) AS contexts ORDER BY contexts DESC",
};

async function suggestQuery() {
  const box = $("query-text");
  if (box.value.trim()) return;
  const report = await fetch("/health/ready", { cache: "no-store", credentials: "omit" }).then((r) => r.json()).catch(() => null);
  const graph = report && (report.backends || []).find((backend) => backend.role === "graph");
  if (graph && !box.value.trim()) box.value = EXAMPLE_QUERIES[graph.backend] || "";
}

// --- tabs (arrow keys move between them, as the WAI-ARIA tabs pattern has it) ---

const tabs = [...document.querySelectorAll('[role="tab"]')];

function selectTab(tab, focus = true) {
  for (const other of tabs) {
    const selected = other === tab;
    other.setAttribute("aria-selected", String(selected));
    other.tabIndex = selected ? 0 : -1;
    $(other.getAttribute("aria-controls")).hidden = !selected;
  }
  if (focus) tab.focus();
  if (tab.id === "tab-health") loadHealth();
  if (tab.id === "tab-state") loadState(true);
}

for (const tab of tabs) {
  tab.addEventListener("click", () => {
    say("");
    selectTab(tab);
  });
  tab.addEventListener("keydown", (event) => {
    const visible = tabs.filter((t) => !t.hidden);
    const index = visible.indexOf(tab);
    const moves = { ArrowRight: 1, ArrowLeft: -1 };
    if (event.key in moves) {
      event.preventDefault();
      selectTab(visible[(index + moves[event.key] + visible.length) % visible.length]);
    } else if (event.key === "Home" || event.key === "End") {
      event.preventDefault();
      selectTab(event.key === "Home" ? visible[0] : visible[visible.length - 1]);
    }
  });
}

const showTab = (id) => selectTab($(id), false);

// --- sessions and contexts ---

let sessionsCursor = null;
let contextsCursor = null;
let contextFilter = {};

async function loadSessions(fresh) {
  try {
    const page = await tool("list_sessions", { limit: 25, cursor: fresh ? undefined : sessionsCursor });
    const list = $("session-list");
    if (fresh) list.replaceChildren();
    for (const item of page.sessions) {
      const open = el("button", {
        type: "button",
        class: "link",
        text: item.id,
        title: item.purpose,
        onclick: () => {
          $("filter-session").value = item.id;
          $("store-session").value = item.id;
          contextFilter = { session_id: item.id };
          loadContexts(true);
        },
      });
      list.append(el("li", {}, open, el("span", { class: "muted", text: ` ${short(item.purpose || "", 40)}` })));
    }
    sessionsCursor = page.next_cursor || null;
    $("sessions-more").hidden = !sessionsCursor;
  } catch (error) {
    failed(error);
  }
}

$("sessions-more").addEventListener("click", () => loadSessions(false));

function filterArguments(values) {
  const args = {};
  if (values.session_id) args.session_id = values.session_id;
  if (values.agent_id) args.agent_ids = [values.agent_id];
  if (values.context_type) args.types = [values.context_type];
  if (values.tag) args.tags_any = [values.tag];
  if (values.sort) args.sort = values.sort;
  return args;
}

$("context-filter").addEventListener("submit", (event) => {
  event.preventDefault();
  contextFilter = filterArguments(fields(event.target));
  loadContexts(true);
});

async function loadContexts(fresh) {
  try {
    const page = await tool("list_contexts", { ...contextFilter, limit: 20, cursor: fresh ? undefined : contextsCursor });
    const rows = $("context-rows");
    if (fresh) rows.replaceChildren();
    for (const context of page.contexts) {
      const open = el("button", { type: "button", class: "link", text: short(context.content), onclick: () => openContext(context.id) });
      rows.append(el("tr", {},
        el("td", {}, open),
        el("td", { text: context.type }),
        el("td", { text: context.agent_id }),
        el("td", { text: context.session_id }),
        el("td", { text: when(context.created_at) })));
    }
    if (fresh && page.contexts.length === 0) rows.append(el("tr", {}, el("td", { colspan: "5", class: "muted", text: "No contexts match." })));
    contextsCursor = page.next_cursor || null;
    $("contexts-more").hidden = !contextsCursor;
  } catch (error) {
    failed(error);
  }
}

$("contexts-more").addEventListener("click", () => loadContexts(false));

$("store-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const values = fields(event.target);
  const args = { session_id: values.session_id, content: values.content, type: values.context_type || "note" };
  if (values.tags) args.tags = values.tags.split(",").map((t) => t.trim()).filter(Boolean);
  try {
    const stored = await tool("store_context", args);
    say(`Stored context ${stored.context.id}.`);
    $("store-content").value = "";
    contextFilter = { session_id: values.session_id };
    $("filter-session").value = values.session_id;
    await loadContexts(true);
    await openContext(stored.context.id);
  } catch (error) {
    failed(error);
  }
});

async function openContext(id) {
  try {
    const [got, related] = await Promise.all([
      tool("get_context", { id, include_versions: true }),
      tool("get_related", { id, depth: 1, both_directions: true, limit: 50 }),
    ]);
    const context = got.context;
    showTab("tab-sessions");
    $("context-detail").hidden = false;
    $("detail-id").textContent = context.id;
    $("detail-content").textContent = context.content;
    const dl = $("detail-fields");
    dl.replaceChildren();
    const facts = {
      type: context.type, agent: context.agent_id, session: context.session_id, visibility: context.visibility,
      version: context.version, tags: context.tags.join(", "), created: when(context.created_at), updated: when(context.updated_at),
      expires: when(context.expires_at), metadata: JSON.stringify(context.metadata),
    };
    for (const [name, value] of Object.entries(facts)) {
      if (value === "" || value === undefined) continue;
      dl.append(el("dt", { text: name }), el("dd", { text: String(value) }));
    }
    const versions = $("detail-versions");
    versions.replaceChildren();
    for (const version of got.versions || []) {
      versions.append(el("tr", {}, el("td", { text: String(version.version) }), el("td", { text: short(version.content, 120) }), el("td", { text: when(version.updated_at) })));
    }
    if (!(got.versions || []).length) versions.append(el("tr", {}, el("td", { colspan: "3", class: "muted", text: "No earlier versions." })));
    const list = $("detail-related");
    list.replaceChildren();
    for (const item of related.related) {
      list.append(el("li", {}, el("span", { class: "tag", text: item.relation }), " ",
        el("button", { type: "button", class: "link", text: short(item.context.content, 80), onclick: () => openContext(item.context.id) })));
    }
    if (!related.related.length) list.append(el("li", { class: "muted", text: "No relations." }));
    $("detail-graph").onclick = () => openGraph(context.id);
    $("context-detail").scrollIntoView({ block: "nearest" });
  } catch (error) {
    failed(error);
  }
}

// --- search playground ---

$("search-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const values = fields(form);
  const stages = [...form.querySelectorAll('input[name="stage"]:checked')].map((box) => box.value);
  const args = { query: values.query, limit: Number(values.limit || 10), stages };
  if (values.session_id) args.session_id = values.session_id;
  const started = performance.now();
  try {
    const result = await tool("search_context", args);
    const elapsed = performance.now() - started;
    $("search-summary").textContent =
      `${result.hits.length} hits in ${elapsed.toFixed(1)} ms (round trip) · mode ${result.mode} · stages ${result.stages.join(" → ")} · ` +
      `${result.candidates} candidates${result.cached ? " · from the result cache" : ""}${result.degraded_reason ? ` · ${result.degraded_reason}` : ""}`;
    const rows = $("search-rows");
    rows.replaceChildren();
    result.hits.forEach((hit, index) => {
      const open = el("button", { type: "button", class: "link", text: short(hit.context.content, 120), onclick: () => openContext(hit.context.id) });
      rows.append(el("tr", {},
        el("td", { text: String(index + 1) }),
        el("td", {}, open),
        el("td", { class: "num", "data-label": "vector", text: score(hit.scores.vector) }),
        el("td", { class: "num", "data-label": "lexical", text: score(hit.scores.lexical) }),
        el("td", { class: "num", "data-label": "fuzzy", text: score(hit.scores.fuzzy) }),
        el("td", { class: "num", "data-label": "final", text: score(hit.scores.final) })));
    });
  } catch (error) {
    failed(error);
  }
});

// --- graph view: the neighbourhood laid out in rings by depth ---

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attributes = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  return node;
}

function openGraph(id) {
  $("graph-id").value = id;
  showTab("tab-graph");
  drawGraph(id, Number($("graph-depth").value));
}

$("graph-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const values = fields(event.target);
  drawGraph(values.id.trim(), Number(values.depth));
});

async function drawGraph(id, depth) {
  try {
    const [centre, related] = await Promise.all([
      tool("get_context", { id }),
      tool("get_related", { id, depth, both_directions: true, limit: 100 }),
    ]);
    const nodes = new Map([[id, { context: centre.context, depth: 0 }]]);
    for (const item of related.related) {
      if (!nodes.has(item.context.id)) nodes.set(item.context.id, { context: item.context, depth: item.depth });
    }
    const edges = related.related.filter((item) => nodes.has(item.via)).map((item) => ({ from: item.via, to: item.context.id, relation: item.relation }));
    const rings = new Map();
    for (const [key, node] of nodes) {
      if (!rings.has(node.depth)) rings.set(node.depth, []);
      rings.get(node.depth).push(key);
    }
    const outer = Math.max(...rings.keys());
    const step = outer ? Math.min(200, 250 / outer) : 0;
    for (const [ring, keys] of rings) {
      keys.forEach((key, index) => {
        const angle = (2 * Math.PI * index) / keys.length + ring * 0.6;
        const radius = ring * step;
        nodes.get(key).x = Math.cos(angle) * radius * 1.3;
        nodes.get(key).y = Math.sin(angle) * radius;
      });
    }
    const canvas = $("graph");
    canvas.replaceChildren();
    for (const edge of edges) {
      const a = nodes.get(edge.from);
      const b = nodes.get(edge.to);
      canvas.append(svg("line", { x1: a.x, y1: a.y, x2: b.x, y2: b.y, class: "edge" }));
      const label = svg("text", { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 - 4, class: "edge-label" });
      label.textContent = edge.relation;
      canvas.append(label);
    }
    const list = $("graph-list");
    list.replaceChildren();
    for (const [key, node] of nodes) {
      const group = svg("g", { class: key === id ? "node centre" : "node", tabindex: "0", role: "button", transform: `translate(${node.x},${node.y})` });
      const name = `${short(node.context.content, 60)} (depth ${node.depth})`;
      group.setAttribute("aria-label", key === id ? `Centre: ${name}` : `Centre on: ${name}`);
      const title = svg("title");
      title.textContent = node.context.content;
      group.append(title, svg("circle", { r: key === id ? 16 : 11 }));
      const text = svg("text", { y: 28, "text-anchor": "middle" });
      text.textContent = short(node.context.content, 24);
      group.append(text);
      const go = () => { $("graph-id").value = key; drawGraph(key, depth); };
      group.addEventListener("click", go);
      group.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); go(); }
      });
      canvas.append(group);
      list.append(el("li", {}, el("span", { class: "tag", text: `depth ${node.depth}` }), " ",
        el("button", { type: "button", class: "link", text: short(node.context.content, 90), onclick: () => openContext(key) })));
    }
    $("graph-summary").textContent = `${nodes.size} contexts and ${edges.length} relations within depth ${depth} of ${short(centre.context.content, 60)}.`;
  } catch (error) {
    failed(error);
  }
}

// --- agent state ---

let stateCursor = null;
let stateFilter = {};

$("state-form").addEventListener("submit", (event) => {
  event.preventDefault();
  stateFilter = fields(event.target);
  loadState(true);
});

async function loadState(fresh) {
  try {
    const page = await tool("list_agent_state", { ...stateFilter, limit: 50, cursor: fresh ? undefined : stateCursor });
    const rows = $("state-rows");
    if (fresh) rows.replaceChildren();
    for (const state of page.states) {
      rows.append(el("tr", {},
        el("td", { text: state.key }),
        el("td", {}, el("code", { text: short(JSON.stringify(state.value), 160) })),
        el("td", { text: state.session_id || "" }),
        el("td", { text: when(state.updated_at) })));
    }
    if (fresh && page.states.length === 0) rows.append(el("tr", {}, el("td", { colspan: "4", class: "muted", text: "No agent state." })));
    stateCursor = page.next_cursor || null;
    $("state-more").hidden = !stateCursor;
  } catch (error) {
    failed(error);
  }
}

$("state-more").addEventListener("click", () => loadState(false));

// --- analyst query ---

$("query-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const started = performance.now();
  try {
    const result = await tool("query_graph", { query: $("query-text").value });
    const head = $("query-head");
    head.replaceChildren(el("tr", {}, ...result.columns.map((name) => el("th", { scope: "col", text: name }))));
    const rows = $("query-rows");
    rows.replaceChildren();
    for (const row of result.rows) {
      rows.append(el("tr", {}, ...row.map((cell) => el("td", { text: typeof cell === "string" ? cell : JSON.stringify(cell) }))));
    }
    $("query-summary").textContent = `${result.rows.length} rows (${result.language}) in ${(performance.now() - started).toFixed(1)} ms${result.truncated ? "; more matched than the row limit" : ""}.`;
  } catch (error) {
    failed(error);
  }
});

// --- health ---

$("health-refresh").addEventListener("click", () => loadHealth());

function tile(label, value, good) {
  return el("div", { class: `tile ${good === undefined ? "" : good ? "good" : "bad"}` },
    el("span", { class: "label", text: label }), el("strong", { text: value }));
}

/// Percentiles of a Prometheus histogram from its cumulative buckets (upper bounds, as Prometheus does).
function percentile(buckets, total, p) {
  if (!total) return null;
  const rank = total * p;
  for (const [bound, count] of buckets) if (count >= rank) return bound;
  return Infinity;
}

function latencies(text) {
  const tools = new Map();
  for (const line of text.split("\n")) {
    const match = /^(?:context_store_)?tool_latency_seconds_bucket\{(.*)\} (\S+)$/.exec(line);
    if (!match) continue;
    const labels = Object.fromEntries([...match[1].matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
    const name = labels.tool || labels.name || "?";
    if (!tools.has(name)) tools.set(name, []);
    tools.get(name).push([labels.le === "+Inf" ? Infinity : Number(labels.le), Number(match[2])]);
  }
  return tools;
}

async function loadHealth() {
  const cards = $("health-cards");
  cards.replaceChildren();
  try {
    // Readiness answers 503 with the same report when a backend is down: read the body either way.
    const probe = await fetch("/health/ready", { cache: "no-store", credentials: "omit" });
    const ready = await probe.json().catch(() => ({ status: "unreachable", backends: [] }));
    cards.append(tile("service", ready.status || "unknown", ready.status === "ready"));
    for (const backend of ready.backends || []) {
      cards.append(tile(`${backend.role} (${backend.backend})`, backend.ok ? "up" : backend.error || "down", backend.ok));
    }
    const metrics = await tool("get_metrics");
    if (metrics.items) for (const [name, value] of Object.entries(metrics.items)) cards.append(tile(name.replaceAll("_", " "), String(value)));
    if (metrics.embed_cache_hit_ratio !== undefined) {
      cards.append(tile("embedding cache hit ratio", `${(metrics.embed_cache_hit_ratio * 100).toFixed(1)} %`));
      const searches = metrics.search_cache_hits + metrics.search_cache_misses;
      cards.append(tile("search cache hit ratio", searches ? `${((metrics.search_cache_hits / searches) * 100).toFixed(1)} %` : "–"));
    }
    const rows = $("latency-rows");
    rows.replaceChildren();
    if (has("query") || has("admin")) {
      const text = await request("/metrics", { headers: { Accept: "text/plain" } });
      for (const [name, buckets] of latencies(text)) {
        buckets.sort((a, b) => a[0] - b[0]);
        const total = buckets.length ? buckets[buckets.length - 1][1] : 0;
        if (!total) continue;
        const ms = (p) => { const v = percentile(buckets, total, p); return v === Infinity ? "> max" : (v * 1000).toFixed(1); };
        rows.append(el("tr", {}, el("td", { text: name }), el("td", { class: "num", text: String(total) }),
          el("td", { class: "num", text: ms(0.5) }), el("td", { class: "num", text: ms(0.9) }), el("td", { class: "num", text: ms(0.99) })));
      }
    } else {
      rows.append(el("tr", {}, el("td", { colspan: "5", class: "muted", text: "Latencies need the query permission." })));
    }
  } catch (error) {
    failed(error);
  }
}

render();
const notice = sessionStorage.getItem(`${TOKEN_KEY}.notice`);
if (notice) {
  sessionStorage.removeItem(`${TOKEN_KEY}.notice`);
  say(notice, true);
}
