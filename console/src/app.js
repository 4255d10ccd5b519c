// keyward console: a static page that talks only to the control API on its
// own origin with the signed-in user's access token. Every piece of API
// text is rendered with textContent / DOM APIs, never as HTML.

const TOKEN_KEY = "keyward.console.token";
const PAGE_SIZE = 20;
const $ = (id) => document.getElementById(id);

/** What a signed-in session holds; signing out starts again from this. */
function freshState() {
  return {
    token: null,
    me: null,
    keys: { cursors: [""], page: 0, nextCursor: null, items: [] },
    audit: { cursors: [""], page: 0, nextCursor: null },
    view: "keys",
    headroom: null,
    canRead: false,
  };
}

const state = freshState();
/** The key the open revoke or roll dialog is about. */
let revoking = null;
let rolling = null;
/** Bumped at every sign-in and sign-out: an answer to an earlier session's request is dropped. */
let session = 0;

// ------------------------------------------------------------------ DOM

/** el("td", {class: "x"}, "text", child…): an element; strings become text nodes. */
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === false || v === null || v === undefined) continue;
    if (k === "class") e.className = v;
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v === true) e.setAttribute(k, "");
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, ...children) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function fmtTime(s) {
  if (!s) return "—";
  const d = new Date(s);
  return Number.isNaN(d.getTime()) ? String(s) : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function showError(err) {
  const box = $("error");
  box.replaceChildren();
  if (!err) {
    box.hidden = true;
    return;
  }
  box.append(errorNodes(err));
  box.hidden = false;
}

function errorNodes(err) {
  const f = document.createDocumentFragment();
  f.append(el("strong", {}, err.code ? `${err.code}: ` : "Error: "), err.message || String(err));
  if (err.requestId) f.append(" ", el("span", { class: "rid" }, `(request id ${err.requestId})`));
  return f;
}

function formError(container, err) {
  const box = container.querySelector(".form-error");
  box.replaceChildren();
  box.hidden = !err;
  if (err) box.append(errorNodes(err));
}

// ------------------------------------------------------------------ API

class ApiError extends Error {
  constructor(status, error, requestId) {
    super((error && error.message) || `HTTP ${status}`);
    this.status = status;
    this.code = error && error.code;
    this.requestId = (error && error.request_id) || requestId || null;
  }
}

async function api(method, path, body) {
  const mine = session;
  if (!state.token) throw new ApiError(401, { code: "INVALID_TOKEN", message: "Not signed in." });
  const headers = { authorization: `Bearer ${state.token}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store" });
  } catch (e) {
    throw new ApiError(0, { message: `Network error: ${e.message}` });
  }
  const limit = res.headers.get("RateLimit-Limit");
  const remaining = res.headers.get("RateLimit-Remaining");
  if (limit !== null && remaining !== null) {
    state.headroom = { limit, remaining, reset: res.headers.get("RateLimit-Reset") };
  }
  let json = null;
  try {
    json = await res.json();
  } catch {
    // not JSON: reported below
  }
  if (mine !== session) {
    // Signed out (or in as someone else) meanwhile: nothing of it shows.
    throw new ApiError(0, { message: "The session changed." });
  }
  if (!res.ok || !json || json.success === false) {
    const err = new ApiError(res.status, json && json.error, res.headers.get("X-Request-Id"));
    if (res.status === 401 && err.code === "INVALID_TOKEN") {
      signOut("Your session has ended: sign in again.");
    }
    throw err;
  }
  return json;
}

// -------------------------------------------------------------- session

/** The token's claims, read for display only (keyward verifies the token). */
function tokenClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
  } catch {
    return {};
  }
}

function setToken(t) {
  state.token = t;
  if (t) sessionStorage.setItem(TOKEN_KEY, t);
  else sessionStorage.removeItem(TOKEN_KEY);
}

async function signIn(ev) {
  ev.preventDefault();
  showError(null);
  const form = ev.currentTarget;
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const res = await fetch("/api/v1/auth/login", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ email: $("signin-email").value, password: $("signin-password").value }),
      cache: "no-store",
    });
    let json = null;
    try {
      json = await res.json();
    } catch {
      // handled below
    }
    if (!res.ok || !json || typeof json.access_token !== "string") {
      const e = (json && json.error) || { message: (json && json.detail) || `Sign-in failed (HTTP ${res.status})` };
      throw new ApiError(res.status, e, res.headers.get("X-Request-Id"));
    }
    // The refresh token is deliberately not kept: sign in again after expiry.
    setToken(json.access_token);
    $("signin-password").value = "";
    await start();
  } catch (e) {
    // Signed in at the provider but the console could not start: keep nothing.
    if (state.token) setToken(null);
    showError(e);
  } finally {
    button.disabled = false;
  }
}

function signOut(message) {
  session++;
  setToken(null);
  // Nothing of the signed-out user stays: its state, tables and header.
  Object.assign(state, freshState());
  for (const d of document.querySelectorAll("dialog")) closeDialog(d);
  // The dialogs' text and forms name the user's keys and scopes.
  revoking = null;
  rolling = null;
  for (const id of ["confirm-text", "roll-text", "snippet-origins"]) $(id).textContent = "";
  $("snippet-code").value = "";
  $("secret-dialog").replaceChildren();
  $("ck-scopes").querySelectorAll("label, p").forEach((n) => n.remove());
  for (const f of document.querySelectorAll("dialog form")) {
    f.reset();
    formError(f, null);
  }
  for (const tbody of document.querySelectorAll("tbody")) tbody.replaceChildren();
  $("usage-list").replaceChildren();
  $("keys-status").textContent = "";
  for (const id of ["who-org", "who-user", "who-role"]) $(id).textContent = "";
  $("who").hidden = true;
  $("tabs").hidden = true;
  for (const v of ["keys", "usage", "audit"]) $(`view-${v}`).hidden = true;
  $("view-signin").hidden = false;
  document.body.dataset.state = "signed-out";
  showError(message ? { message } : null);
  $("signin-email").focus();
}

async function start() {
  session++;
  let me;
  // GET /v1/me needs the scope of every read the console makes (the keys,
  // usage and audit: control:read in the policy): its answer is the test.
  let canRead = true;
  try {
    me = (await api("GET", "/v1/me")).data;
  } catch (e) {
    if (e.code !== "MISSING_SCOPE") throw e;
    // A role without control:read (the shipped viewer, seeds/003: no audit
    // log, no changes) may see nothing here: say so, with who it is (the
    // token's own claims, for display only), and make no call that would
    // be refused.
    const claims = tokenClaims(state.token);
    me = { org_id: claims.org_id || "", user_id: claims.sub || "", role: "—", scopes: [], may_create_keys: false };
    canRead = false;
  }
  state.me = me;
  $("who-org").textContent = me.org_id;
  $("who-user").textContent = me.user_id;
  $("who-role").textContent = me.role;
  $("who").hidden = false;
  $("tabs").hidden = false;
  $("view-signin").hidden = true;
  state.canRead = canRead;
  $("new-key").hidden = !me.may_create_keys;
  $("keys-note").hidden = !!me.may_create_keys;
  $("keys-note").textContent = state.canRead
    ? "Your role may view keys but not create them."
    : "Your role may neither view nor create API keys, usage or the audit log (it lacks control:read): ask an admin.";
  for (const b of $("tabs").querySelectorAll("button")) b.hidden = !state.canRead && b.dataset.view !== "keys";
  showError(null);
  await show("keys");
  document.body.dataset.state = "ready";
  $("main").focus();
}

// ---------------------------------------------------------------- views

async function show(view) {
  state.view = view;
  for (const b of $("tabs").querySelectorAll("button")) {
    if (b.dataset.view === view) b.setAttribute("aria-current", "page");
    else b.removeAttribute("aria-current");
  }
  for (const v of ["keys", "usage", "audit"]) $(`view-${v}`).hidden = v !== view;
  showError(null);
  document.body.dataset.view = view;
  $("keys-table").closest(".scroll").hidden = !state.canRead;
  $("keys-prev").parentElement.hidden = !state.canRead;
  if (!state.canRead) return;
  try {
    if (view === "keys") await loadKeys();
    else if (view === "usage") await loadUsage();
    else await loadAudit();
  } catch (e) {
    showError(e);
  }
}

function limitsText(k) {
  const parts = (k.rate_limits || []).map((l) => `${l.limit}/${l.window_seconds}s`);
  if (k.credits && typeof k.credits === "object" && k.credits.remaining !== undefined) {
    parts.push(`credits ${k.credits.remaining}`);
  }
  if (Array.isArray(k.allowed_ips) && k.allowed_ips.length) parts.push(`IPs ${k.allowed_ips.join(", ")}`);
  if (k.consistency) parts.push(k.consistency);
  return parts.length ? parts.join(" · ") : "policy default";
}

async function loadKeys() {
  const k = state.keys;
  const cursor = k.cursors[k.page];
  const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (cursor) q.set("cursor", cursor);
  const res = await api("GET", `/v1/api_keys?${q}`);
  k.items = res.data || [];
  k.nextCursor = res.meta && res.meta.has_more ? res.meta.next_cursor : null;
  const body = $("keys-table").tBodies[0];
  body.replaceChildren();
  if (!k.items.length) {
    body.append(el("tr", {}, el("td", { colspan: 9 }, "No keys yet.")));
  }
  for (const key of k.items) {
    const actions = el("td", { class: "row-actions" });
    if (key.kind === "widget") {
      actions.append(el("button", { type: "button", onclick: () => openSnippet(key, null), "aria-label": `Embed snippet for ${key.name}` }, "Snippet"));
    }
    if (state.me && state.me.may_create_keys) {
      actions.append(
        el("button", { type: "button", onclick: () => openRoll(key), "aria-label": `Roll ${key.name}` }, "Roll"),
        el("button", { type: "button", class: "danger", onclick: () => openRevoke(key), "aria-label": `Revoke ${key.name}` }, "Revoke"),
      );
    }
    body.append(
      el(
        "tr",
        { dataset: { keyId: key.id } },
        el("td", { class: "name" }, key.name),
        el("td", {}, el("code", {}, `${key.prefix}…${key.last_four}`)),
        el("td", {}, key.kind),
        el("td", {}, (key.scopes || []).join(", ")),
        el("td", {}, fmtTime(key.created_at)),
        el("td", {}, fmtTime(key.last_used_at)),
        el("td", {}, key.expires_at ? fmtTime(key.expires_at) : "never"),
        el("td", {}, limitsText(key)),
        actions,
      ),
    );
  }
  $("keys-prev").disabled = k.page === 0;
  $("keys-next").disabled = !k.nextCursor;
  document.body.dataset.keysPage = String(k.page);
  document.body.dataset.keysLoads = String(Number(document.body.dataset.keysLoads || 0) + 1);
}

async function loadAudit() {
  const a = state.audit;
  const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (a.cursors[a.page]) q.set("cursor", a.cursors[a.page]);
  const res = await api("GET", `/v1/audit?${q}`);
  a.nextCursor = res.meta && res.meta.has_more ? res.meta.next_cursor : null;
  const body = $("audit-table").tBodies[0];
  body.replaceChildren();
  const rows = res.data || [];
  if (!rows.length) body.append(el("tr", {}, el("td", { colspan: 5 }, "Nothing yet.")));
  for (const r of rows) {
    body.append(
      el(
        "tr",
        {},
        el("td", {}, fmtTime(r.created_at)),
        el("td", {}, r.actor),
        el("td", {}, r.action),
        el("td", {}, r.target || "—"),
        el("td", {}, el("code", {}, r.request_id || "—")),
      ),
    );
  }
  $("audit-prev").disabled = a.page === 0;
  $("audit-next").disabled = !a.nextCursor;
}

function page(which, delta) {
  const s = state[which];
  if (delta > 0) {
    if (!s.nextCursor) return;
    s.cursors[s.page + 1] = s.nextCursor;
    s.page += 1;
  } else if (s.page > 0) {
    s.page -= 1;
  }
  show(which);
}

// ---------------------------------------------------------------- usage

async function loadUsage() {
  const to = new Date();
  to.setUTCMinutes(0, 0, 0);
  to.setUTCHours(to.getUTCHours() + 1);
  const from = new Date(to.getTime() - 24 * 3600 * 1000);
  const q = new URLSearchParams({ from: from.toISOString().replace(/\.000Z$/, "Z"), to: to.toISOString().replace(/\.000Z$/, "Z") });
  const res = await api("GET", `/v1/usage?${q}`);
  const byKey = new Map();
  for (const r of res.data || []) {
    if (!byKey.has(r.key_id)) byKey.set(r.key_id, []);
    byKey.get(r.key_id).push(r);
  }
  const names = new Map(state.keys.items.map((k) => [k.id, k.name]));
  const list = $("usage-list");
  list.replaceChildren();
  if (!byKey.size) list.append(el("p", {}, "No requests in the last 24 hours."));
  for (const [keyId, rows] of byKey) {
    list.append(usageChart(keyId, names.get(keyId), rows, from));
  }
  const h = state.headroom;
  $("usage-headroom").textContent = h
    ? `Your session's rate-limit headroom: ${h.remaining} of ${h.limit} requests left` + (h.reset ? ` (resets in ${h.reset} s).` : ".")
    : "";
  if (res.meta && res.meta.rollup_interval_seconds !== undefined) {
    $("usage-headroom").textContent += ` Counts are up to ${res.meta.rollup_interval_seconds} s behind.`;
  }
}

/** One key's allowed/refused requests per hour, as a bar chart in SVG. */
function usageChart(keyId, name, rows, from) {
  const hours = Array.from({ length: 24 }, () => ({ allowed: 0, refused: 0, reasons: {} }));
  for (const r of rows) {
    const i = Math.floor((new Date(r.hour).getTime() - from.getTime()) / 3600000);
    if (i < 0 || i >= 24) continue;
    hours[i].allowed += r.allowed || 0;
    hours[i].refused += r.refused || 0;
    for (const [k, v] of Object.entries(r.refused_by_reason || {})) hours[i].reasons[k] = (hours[i].reasons[k] || 0) + v;
  }
  const max = Math.max(1, ...hours.map((h) => h.allowed + h.refused));
  const W = 720, H = 160, pad = 30, bw = (W - pad) / 24;
  const title = `${name ? `${name} (${keyId})` : keyId}`;
  const totals = hours.reduce((t, h) => ({ a: t.a + h.allowed, r: t.r + h.refused }), { a: 0, r: 0 });
  const reasons = {};
  for (const h of hours) for (const [k, v] of Object.entries(h.reasons)) reasons[k] = (reasons[k] || 0) + v;
  const desc = `${totals.a} allowed and ${totals.r} refused requests in the last 24 hours` +
    (Object.keys(reasons).length ? ` (refused: ${Object.entries(reasons).map(([k, v]) => `${k} ${v}`).join(", ")})` : "");
  const id = `chart-${keyId.replace(/[^A-Za-z0-9_-]/g, "_")}`;
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H + 20}`, role: "img", "aria-labelledby": `${id}-t ${id}-d`, class: "chart" },
    svg("title", { id: `${id}-t` }, `Requests per hour for ${title}`),
    svg("desc", { id: `${id}-d` }, desc),
    svg("line", { x1: pad, y1: H, x2: W, y2: H, class: "axis" }),
    svg("text", { x: 0, y: 12, class: "tick" }, String(max)),
    svg("text", { x: 0, y: H, class: "tick" }, "0"));
  hours.forEach((h, i) => {
    const x = pad + i * bw + 1;
    const ha = (h.allowed / max) * (H - 10);
    const hr = (h.refused / max) * (H - 10);
    const when = new Date(from.getTime() + i * 3600000).toISOString().slice(11, 16);
    const why = Object.entries(h.reasons).map(([k, v]) => `${k} ${v}`).join(", ");
    const g = svg("g", {}, svg("title", {}, `${when} UTC: ${h.allowed} allowed, ${h.refused} refused${why ? ` (${why})` : ""}`));
    if (ha > 0) g.append(svg("rect", { x, y: H - ha, width: bw - 2, height: ha, class: "allowed" }));
    if (hr > 0) g.append(svg("rect", { x, y: H - ha - hr, width: bw - 2, height: hr, class: "refused" }));
    chart.append(g);
    if (i % 6 === 0) chart.append(svg("text", { x, y: H + 16, class: "tick" }, when));
  });
  return el("figure", { class: "card", dataset: { keyId } },
    el("figcaption", {}, name ? [el("strong", {}, name), " "] : null, el("code", {}, keyId), el("br"), desc),
    chart,
    el("p", { class: "legend", "aria-hidden": "true" }, el("span", { class: "sw allowed" }), " allowed ", el("span", { class: "sw refused" }), " refused"));
}

// -------------------------------------------------------------- dialogs

// Each dialog returns the focus to what opened it (a dialog opened from
// another one returns it to what opened the first), or to the main region
// when that is gone (a revoked key's row).
const returnTo = new Map();

function openDialog(d) {
  const active = document.activeElement;
  const from = active && active.closest ? active.closest("dialog") : null;
  returnTo.set(d, from ? returnTo.get(from) : active);
  d.showModal();
  const first = d.querySelector("input:not([disabled]):not([type=hidden]), textarea, select, button");
  if (first) first.focus();
}

function closeDialog(d) {
  if (d.open) d.close();
  // The plaintext leaves the DOM at once (the close event comes later).
  if (d.id === "secret-dialog") d.replaceChildren();
}

function onDialogClose(d, fn) {
  d.addEventListener("close", () => {
    if (fn) fn();
    if (document.querySelector("dialog[open]")) return; // another dialog has the focus
    const to = returnTo.get(d);
    if (to && to.isConnected && !to.closest("[hidden]") && to !== document.body) to.focus();
    else $("main").focus();
  });
}

function openCreate() {
  const form = $("create-form");
  form.reset();
  formError(form, null);
  const box = $("ck-scopes");
  box.querySelectorAll("label, p").forEach((n) => n.remove());
  const me = state.me;
  const grantable = new Set(me.grantable_scopes || []);
  // Every scope of the policy's catalogue: those the role may grant, and
  // the others disabled with the reason.
  const all = [...new Set([...(me.catalogue_scopes || []), ...(me.grantable_scopes || [])])].sort();
  for (const s of all) {
    const ok = grantable.has(s);
    const id = `ck-scope-${s.replace(/[^A-Za-z0-9]/g, "-")}`;
    const label = el("label", { class: "inline", for: id },
      el("input", { type: "checkbox", id, name: "scope", value: s, disabled: !ok, "aria-describedby": ok ? null : `${id}-why` }),
      ` ${s}`);
    box.append(label);
    if (!ok) box.append(el("p", { id: `${id}-why`, class: "why" }, `${s}: your role may not grant this scope.`));
  }
  syncKind();
  openDialog($("create-dialog"));
}

function syncKind() {
  const widget = $("create-form").elements.kind.value === "widget";
  $("ck-widget").hidden = !widget;
  $("ck-origins").required = widget;
  $("ck-secret-only").hidden = widget;
}

function lines(text) {
  return text.split(/[\n,]/).map((s) => s.trim()).filter(Boolean);
}

async function submitCreate(ev) {
  ev.preventDefault();
  const form = ev.currentTarget;
  formError(form, null);
  const body = { name: $("ck-name").value.trim(), scopes: [...form.querySelectorAll("input[name=scope]:checked")].map((c) => c.value) };
  const kind = form.elements.kind.value;
  body.kind = kind;
  if (kind === "widget") body.allowed_origins = lines($("ck-origins").value);
  else if (lines($("ck-ips").value).length) body.allowed_ips = lines($("ck-ips").value);
  if ($("ck-expiry").value) body.expires_at = new Date($("ck-expiry").value).toISOString().replace(/\.\d+Z$/, "Z");
  const rl = [];
  if ($("ck-minute").value) rl.push({ name: "minute", limit: Number($("ck-minute").value), window_seconds: 60 });
  if ($("ck-hour").value) rl.push({ name: "hour", limit: Number($("ck-hour").value), window_seconds: 3600 });
  if (rl.length) body.rate_limits = rl;
  if ($("ck-credits").value !== "") {
    body.credits = { remaining: Number($("ck-credits").value) };
    if ($("ck-refill").value) body.credits.refill = { amount: Number($("ck-refill").value), interval: $("ck-refill-interval").value };
  }
  if ($("ck-consistency").value) body.consistency = $("ck-consistency").value;
  if (!body.scopes.length) {
    formError(form, { message: "Choose at least one scope." });
    return;
  }
  const submit = $("ck-submit");
  submit.disabled = true;
  try {
    const res = await api("POST", "/v1/api_keys", body);
    closeDialog($("create-dialog"));
    showSecret(res.data, "created");
    $("keys-status").textContent = `Created “${res.data.name}”.`;
    refreshKeys();
  } catch (e) {
    formError(form, e);
  } finally {
    submit.disabled = false;
  }
}

/** The plaintext, once: built on open, removed from the DOM on close. */
function showSecret(key, what) {
  const d = $("secret-dialog");
  const input = el("input", { id: "secret-value", readonly: true, class: "secret", spellcheck: "false", autocomplete: "off" });
  input.value = key.plaintext;
  const status = el("p", { id: "secret-copied", role: "status", class: "note" });
  const copy = el("button", {
    type: "button", id: "secret-copy",
    onclick: async () => {
      try {
        await navigator.clipboard.writeText(key.plaintext);
        status.textContent = "Copied to the clipboard.";
      } catch {
        input.select();
        status.textContent = "Copy failed: the key is selected, press Ctrl+C.";
      }
    },
  }, "Copy key");
  const parts = [
    el("h2", { id: "secret-title" }, `Key ${what}: ${key.name}`),
    el("p", { id: "secret-warning", class: "warning" }, "Copy this key now. It will not be shown again: keyward keeps only its hash."),
    el("label", { for: "secret-value" }, "Your new key"),
    input,
    el("div", { class: "actions" }, copy),
    status,
  ];
  if (key.old_key_expires_at) parts.push(el("p", {}, `The old key keeps working until ${fmtTime(key.old_key_expires_at)}.`));
  if (key.kind === "widget") {
    const snippet = el("textarea", { id: "secret-snippet", rows: 10, readonly: true });
    snippet.value = widgetSnippet(key.plaintext);
    parts.push(el("label", { for: "secret-snippet" }, `Embed snippet (works on ${(key.allowed_origins || []).join(", ")})`), snippet);
  }
  parts.push(el("div", { class: "actions" }, el("button", { type: "button", id: "secret-done", onclick: () => closeDialog(d) }, "I have copied it, close")));
  d.replaceChildren(...parts);
  openDialog(d);
  copy.focus();
}

function widgetSnippet(key) {
  const edge = location.origin;
  return `<!-- keyward widget: works only on this key's allowed origins -->
<form id="kw-chat"><label for="kw-msg">Message</label>
  <input id="kw-msg" required><button type="submit">Send</button></form>
<div id="kw-answer" role="status"></div>
<script>
  document.getElementById("kw-chat").addEventListener("submit", async (e) => {
    e.preventDefault();
    const res = await fetch(${JSON.stringify(`${edge}/v1/ai/chat`)}, {
      method: "POST",
      headers: { "Authorization": ${JSON.stringify(`Bearer ${key}`)}, "Content-Type": "application/json" },
      body: JSON.stringify({ messages: [{ role: "user", content: document.getElementById("kw-msg").value }] }),
    });
    const body = await res.json();
    document.getElementById("kw-answer").textContent = res.ok ? JSON.stringify(body) : body.error.message;
  });
</script>`;
}

function openSnippet(key) {
  $("snippet-origins").textContent =
    `Allowed origins: ${(key.allowed_origins || []).join(", ") || "none"}. The key itself was shown once at creation: put it where the snippet says.`;
  $("snippet-code").value = widgetSnippet(`<your ${key.prefix}…${key.last_four} key>`);
  openDialog($("snippet-dialog"));
}

function openRevoke(key) {
  revoking = key;
  formError($("confirm-dialog"), null);
  $("confirm-text").textContent = `Revoke “${key.name}” (${key.prefix}…${key.last_four})? Requests with it are refused at once, and so are the keys it minted. This cannot be undone.`;
  openDialog($("confirm-dialog"));
  $("confirm-dialog").querySelector("[data-close]").focus();
}

async function confirmRevoke() {
  const d = $("confirm-dialog");
  const b = $("confirm-yes");
  formError(d, null);
  b.disabled = true;
  try {
    await api("DELETE", `/v1/api_keys/${encodeURIComponent(revoking.id)}`);
    closeDialog(d);
    $("keys-status").textContent = `Revoked “${revoking.name}”.`;
    await refreshKeys();
    // Its row (and the button that opened the dialog) is gone.
    if (!document.activeElement || document.activeElement === document.body) $("main").focus();
  } catch (e) {
    formError(d, e);
  } finally {
    b.disabled = false;
  }
}

function openRoll(key) {
  rolling = key;
  formError($("roll-form"), null);
  $("roll-text").textContent = `Replace “${key.name}” (${key.prefix}…${key.last_four}) with a new key with the same settings.`;
  $("roll-grace").value = "0";
  openDialog($("roll-dialog"));
}

async function submitRoll(ev) {
  ev.preventDefault();
  const form = ev.currentTarget;
  formError(form, null);
  try {
    const res = await api("POST", `/v1/api_keys/${encodeURIComponent(rolling.id)}/roll`, { grace_seconds: Number($("roll-grace").value) });
    closeDialog($("roll-dialog"));
    showSecret(res.data, "rolled");
    refreshKeys();
  } catch (e) {
    formError(form, e);
  }
}

function refreshKeys() {
  state.keys.page = 0;
  state.keys.cursors = [""];
  return loadKeys().catch(showError);
}

// ----------------------------------------------------------------- boot

function boot() {
  $("signin-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut("Signed out."));
  for (const b of $("tabs").querySelectorAll("button")) b.addEventListener("click", () => show(b.dataset.view));
  $("keys-prev").addEventListener("click", () => page("keys", -1));
  $("keys-next").addEventListener("click", () => page("keys", 1));
  $("audit-prev").addEventListener("click", () => page("audit", -1));
  $("audit-next").addEventListener("click", () => page("audit", 1));
  $("new-key").addEventListener("click", openCreate);
  $("create-form").addEventListener("submit", submitCreate);
  for (const r of $("create-form").elements.kind) r.addEventListener("change", syncKind);
  $("confirm-yes").addEventListener("click", confirmRevoke);
  $("roll-form").addEventListener("submit", submitRoll);
  $("snippet-copy").addEventListener("click", () => navigator.clipboard.writeText($("snippet-code").value).catch(() => $("snippet-code").select()));
  for (const d of document.querySelectorAll("dialog")) {
    d.addEventListener("click", (e) => {
      if (e.target.closest("[data-close]")) closeDialog(d);
    });
  }
  for (const id of ["create-dialog", "confirm-dialog", "roll-dialog", "snippet-dialog"]) onDialogClose($(id));
  // The plaintext leaves the DOM when its dialog closes (Escape included).
  onDialogClose($("secret-dialog"), () => $("secret-dialog").replaceChildren());

  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    state.token = saved;
    start().catch((e) => {
      if (state.token) signOut();
      showError(e);
    });
  } else {
    signOut();
  }
}

boot();
