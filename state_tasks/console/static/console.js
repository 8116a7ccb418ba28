// The state-tasks console page. No framework: the DOM, fetch and EventSource.
// Values arrive as JSON text and are parsed keeping the digits of integers beyond 2**53;
// trees render their children only when opened, so big or deeply nested values stay cheap.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const state = { info: null, writes: false, route: null, pageSize: 50, selected: -1, gPressed: false };

// -- little helpers ------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(2)} MiB`;
}

function count(n) { return Number(n).toLocaleString("en-US"); }

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  };
  let response;
  try {
    response = await fetch(path, { credentials: "same-origin", ...options });
  } catch (e) {
    throw { code: "CONSOLE_UNREACHABLE", message: `the console server cannot be reached (${e})` };
  }
  let data = null;
  try { data = await response.json(); } catch (e) { /* not JSON: reported below */ }
  if (!response.ok || data === null) {
    throw (data && data.error) || { code: `HTTP_${response.status}`, message: response.statusText };
  }
  return data;
}

function showError(error) {
  const box = $("#error");
  box.replaceChildren(
    h("span", { class: "code", text: error.code || "ERROR" }),
    h("span", { class: "message", text: error.message || String(error) }),
    h("button", { class: "link", type: "button", title: "Dismiss (Esc)", onclick: clearError }, "✕"),
  );
  box.hidden = false;
}

function clearError() { $("#error").hidden = true; }

async function attempt(work) {
  try { clearError(); return await work(); } catch (e) { showError(e); return undefined; }
}

// -- JSON: exact parsing and the collapsible tree ---------------------------------------

class RawNumber {
  constructor(source) { this.source = source; }
  toString() { return this.source; }
  toJSON() { return JSON.rawJSON ? JSON.rawJSON(this.source) : Number(this.source); }
}

function parseExact(text) {
  return JSON.parse(text, function (key, value, context) {
    if (typeof value === "number" && context && typeof context.source === "string"
        && /^-?\d+$/.test(context.source) && !Number.isSafeInteger(value)) {
      return new RawNumber(context.source);
    }
    return value;
  });
}

const TREE_CHUNK = 200;
const STRING_PREVIEW = 300;

function scalar(value) {
  if (value === null) return h("span", { class: "z", text: "null" });
  if (value instanceof RawNumber) return h("span", { class: "n", text: value.source });
  if (typeof value === "number") return h("span", { class: "n", text: String(value) });
  if (typeof value === "boolean") return h("span", { class: "b", text: String(value) });
  const text = JSON.stringify(value);
  if (text.length <= STRING_PREVIEW) return h("span", { class: "s", text });
  const span = h("span", { class: "s", text: text.slice(0, STRING_PREVIEW) + "…" });
  const more = h("button", {
    type: "button", class: "more",
    onclick: () => { span.textContent = text; more.remove(); },
  }, `show all ${count(value.length)} characters`);
  return h("span", {}, span, more);
}

function isContainer(value) {
  return value !== null && typeof value === "object" && !(value instanceof RawNumber);
}

function summaryText(value) {
  const n = Array.isArray(value) ? value.length : Object.keys(value).length;
  if (!n) return Array.isArray(value) ? "[]" : "{}";
  const noun = Array.isArray(value) ? (n === 1 ? "item" : "items") : (n === 1 ? "key" : "keys");
  return `${Array.isArray(value) ? "[…]" : "{…}"} ${count(n)} ${noun}`;
}

function label(name) {
  return name === undefined ? null : h("span", { class: "k", text: `${JSON.stringify(name)}: ` });
}

function renderTree(value, name, depth, openDepth) {
  if (!isContainer(value) || summaryText(value).length <= 2) {
    return h("div", { class: "leaf" }, label(name), isContainer(value) ? summaryText(value) : scalar(value));
  }
  let peek = "";
  try { peek = compact(JSON.stringify(value), 100); } catch (e) { /* nested too deeply to preview */ }
  const details = h("details", {}, h("summary", {}, label(name), h("span", { class: "hint", text: summaryText(value) }),
    h("span", { class: "peek", text: peek })));
  const entries = Array.isArray(value) ? value.map((v, i) => [i, v]) : Object.entries(value);
  let shown = 0;
  const children = h("div", { class: "children" });
  const showMore = () => {
    const next = entries.slice(shown, shown + TREE_CHUNK);
    for (const [k, v] of next) children.append(renderTree(v, Array.isArray(value) ? undefined : k, depth + 1, openDepth));
    shown += next.length;
    if (shown < entries.length) {
      children.append(h("button", {
        type: "button", class: "more",
        onclick: (event) => { event.target.remove(); showMore(); },
      }, `show ${count(Math.min(TREE_CHUNK, entries.length - shown))} more of ${count(entries.length - shown)}`));
    }
  };
  details.addEventListener("toggle", () => {
    if (details.open && shown === 0) { showMore(); details.append(children); }
  });
  if (depth < openDepth && entries.length <= 50) details.open = true;
  return details;
}

function tree(text, openDepth = 1) {
  let value;
  try { value = parseExact(text); } catch (e) { return h("span", { class: "preview", text }); }
  return h("div", { class: "tree" }, renderTree(value, undefined, 0, openDepth));
}

function compact(text, limit = 160) {
  if (text === null || text === undefined) return "—";
  return text.length > limit ? text.slice(0, limit) + "…" : text;
}

// -- routes ----------------------------------------------------------------------------------

function parseRoute() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (parts[0] === "triggers") return { view: "triggers" };
  if (parts[0] === "scope" && parts.length >= 2) {
    if (parts[2] === "key" && parts.length >= 4) return { view: "value", scope: parts[1], key: parts.slice(3).join("/") };
    return { view: "keys", scope: parts[1] };
  }
  return { view: "scopes" };
}

function scopeHref(scope) { return `#/scope/${encodeURIComponent(scope)}`; }
function keyHref(scope, key) { return `#/scope/${encodeURIComponent(scope)}/key/${encodeURIComponent(key)}`; }

const lists = {}; // per list: filter, cursors (a stack), page number

function listState(name) {
  if (!lists[name]) lists[name] = { filter: "", cursors: [null], page: 0 };
  return lists[name];
}

function render() {
  state.route = parseRoute();
  state.selected = -1;
  $("#tab-scopes").classList.toggle("active", state.route.view !== "triggers");
  $("#tab-triggers").classList.toggle("active", state.route.view === "triggers");
  clearError();
  const views = { scopes: scopesView, keys: keysView, value: valueView, triggers: triggersView };
  views[state.route.view]();
}

function filterBox(list, placeholder, reload) {
  let timer = null;
  return h("input", {
    type: "search", id: "filter", placeholder, value: list.filter, "aria-label": placeholder,
    oninput: (event) => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        list.filter = event.target.value; list.cursors = [null]; list.page = 0; reload();
      }, 200);
    },
  });
}

function pager(list, cursor, reload) {
  return h("div", { class: "pager" },
    h("button", {
      type: "button", id: "prev-page", disabled: list.page === 0,
      onclick: () => { list.page -= 1; reload(); },
    }, "‹ Previous"),
    h("span", { class: "muted", text: `page ${list.page + 1}` }),
    h("button", {
      type: "button", id: "next-page", disabled: !cursor,
      onclick: () => { list.cursors[list.page + 1] = cursor; list.page += 1; reload(); },
    }, "Next ›"),
    h("select", {
      "aria-label": "page size",
      onchange: (event) => { state.pageSize = Number(event.target.value); list.cursors = [null]; list.page = 0; reload(); },
    }, [25, 50, 100, 500].map((n) => h("option", { value: n, selected: n === state.pageSize }, `${n} a page`))),
  );
}

function query(params) {
  const search = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") search.set(k, v);
  return search.toString();
}

// -- scopes -----------------------------------------------------------------------------------

function scopesView() {
  const list = listState("scopes");
  const body = h("div", { class: "muted", text: "loading…" });
  const reload = async () => {
    const page = await attempt(() => api(`/api/scopes?${query({
      prefix: list.filter, cursor: list.cursors[list.page], limit: state.pageSize,
    })}`));
    if (!page) { body.replaceChildren(); return; }
    const rows = page.items.map((item) => h("tr", { "data-href": scopeHref(item.scope) },
      h("td", { class: "key" }, h("a", { href: scopeHref(item.scope), class: "scope-link", text: item.scope })),
      h("td", { class: "num", text: count(item.count) })));
    body.replaceChildren(
      rows.length ? h("table", { class: "grid", id: "scopes" },
        h("thead", {}, h("tr", {}, h("th", { text: "Scope" }), h("th", { class: "num", text: "Keys" }))),
        h("tbody", {}, rows))
        : h("div", { class: "empty", text: list.filter ? `No scope starts with ${JSON.stringify(list.filter)}.` : "No scope holds a key yet." }),
      pager(list, page.cursor, reload));
  };
  $("#view").replaceChildren(
    h("h1", {}, "Scopes"),
    h("div", { class: "toolbar" },
      filterBox(list, "Filter scopes by prefix (/)", reload),
      h("button", { type: "button", onclick: reload, title: "Reload" }, "Reload"),
      h("button", {
        type: "button", id: "new-key", disabled: !state.writes, title: writesTitle(),
        onclick: () => editDialog({ scope: "", key: "", text: "{}\n", isNew: true }),
      }, "+ Set a key")),
    body);
  reload();
}

function writesTitle() {
  return state.writes ? null : "read-only: start the console with --allow-writes to edit";
}

// -- a scope's keys ------------------------------------------------------------------------

function keysView() {
  const scope = state.route.scope;
  const list = listState(`keys:${scope}`);
  const body = h("div", { class: "muted", text: "loading…" });
  const reload = async () => {
    const page = await attempt(() => api(`/api/keys?${query({
      scope, prefix: list.filter, cursor: list.cursors[list.page], limit: state.pageSize,
    })}`));
    if (!page) { body.replaceChildren(); return; }
    const rows = page.items.map((item) => h("tr", { "data-href": keyHref(scope, item.key), "data-key": item.key },
      h("td", { class: "key" }, h("a", { href: keyHref(scope, item.key), class: "key-link", text: item.key })),
      h("td", {}, item.truncated
        ? h("span", { class: "preview", text: compact(item.preview, 300) + ` (${bytes(item.size)}: open the key to see it all)` })
        : tree(item.json, 0)),
      h("td", { class: "num muted", text: bytes(item.size) }),
      h("td", { class: "actions" },
        h("button", {
          type: "button", class: "edit", disabled: !state.writes, title: writesTitle() || "Edit",
          onclick: () => openEditor(scope, item.key),
        }, "Edit"),
        " ",
        h("button", {
          type: "button", class: "danger delete", disabled: !state.writes, title: writesTitle() || "Delete",
          onclick: () => confirmDelete(scope, item.key, reload),
        }, "Delete"))));
    body.replaceChildren(
      rows.length ? h("table", { class: "grid", id: "keys" },
        h("thead", {}, h("tr", {}, h("th", { text: "Key" }), h("th", { text: "Value" }),
          h("th", { class: "num", text: "Size" }), h("th", {}))),
        h("tbody", {}, rows))
        : h("div", { class: "empty", text: list.filter ? `No key starts with ${JSON.stringify(list.filter)}.` : "This scope holds no key." }),
      pager(list, page.cursor, reload));
  };
  $("#view").replaceChildren(
    h("h1", {}, h("a", { href: "#/", class: "crumb", text: "Scopes" }), h("span", { class: "crumb", text: " / " }),
      h("span", { class: "mono", text: scope })),
    h("div", { class: "toolbar" },
      filterBox(list, "Filter keys by prefix (/)", reload),
      h("button", { type: "button", onclick: reload, title: "Reload" }, "Reload"),
      h("button", {
        type: "button", id: "new-key", disabled: !state.writes, title: writesTitle(),
        onclick: () => editDialog({ scope, key: "", text: "{}\n", isNew: true }),
      }, "+ New key")),
    body);
  reload();
}

// -- one key ----------------------------------------------------------------------------------

async function openEditor(scope, key) {
  const value = await attempt(() => api(`/api/value?${query({ scope, key })}`));
  if (value) editDialog({ scope, key, text: value.pretty + "\n", isNew: false });
}

// When a key expires, from get's expires_in_ms (null: never), as read when the page loaded.
function expiryText(ms) {
  if (ms === null || ms === undefined) return "never";
  const at = new Date(Date.now() + ms).toLocaleTimeString("en-GB", { hour12: false });
  const left = ms < 60000 ? `${(ms / 1000).toFixed(1)} s` : ms < 3600000 ? `${Math.round(ms / 60000)} min` : `${(ms / 3600000).toFixed(1)} h`;
  return `in ${left} (at ${at})`;
}

function valueView() {
  const { scope, key } = state.route;
  const body = h("div", { class: "muted", text: "loading…" });
  const reload = async () => {
    const value = await attempt(() => api(`/api/value?${query({ scope, key })}`));
    if (!value) { body.replaceChildren(); return; }
    const raw = h("pre", { class: "json", id: "value-json", hidden: true, text: value.pretty });
    const shown = h("div", { class: "panel", id: "value-tree" }, tree(value.json, 2));
    const toggle = h("button", {
      type: "button", id: "raw-toggle",
      onclick: () => { raw.hidden = !raw.hidden; shown.hidden = !raw.hidden; toggle.textContent = raw.hidden ? "Raw JSON" : "Tree"; },
    }, "Raw JSON");
    body.replaceChildren(
      h("div", { class: "meta" },
        h("span", {}, "size ", h("b", { text: bytes(value.size) })),
        h("span", { id: "value-version", title: "Goes up with every change of the key (set, update, batch)" },
          "version ", h("b", { text: String(value.version) })),
        h("span", { id: "value-expiry", title: "Set with ttl_ms on a set or an update" },
          "expiry ", h("b", { text: expiryText(value.expires_in_ms) }))),
      h("div", { class: "toolbar" },
        toggle,
        h("button", { type: "button", onclick: () => navigator.clipboard && navigator.clipboard.writeText(value.pretty) }, "Copy JSON"),
        h("button", { type: "button", onclick: reload }, "Reload"),
        h("button", {
          type: "button", id: "edit-value", disabled: !state.writes, title: writesTitle() || "Edit (e)",
          onclick: () => editDialog({ scope, key, text: value.pretty + "\n", isNew: false, after: reload }),
        }, "Edit"),
        h("button", {
          type: "button", id: "update-ops", disabled: !state.writes, title: writesTitle() || "Apply update ops",
          onclick: () => opsDialog(scope, key, reload),
        }, "Update ops"),
        h("button", {
          type: "button", class: "danger", id: "delete-value", disabled: !state.writes, title: writesTitle() || "Delete",
          onclick: () => confirmDelete(scope, key, () => { location.hash = scopeHref(scope); }),
        }, "Delete")),
      h("div", { id: "changed-note" }),
      shown, raw);
  };
  state.reloadValue = reload;
  $("#view").replaceChildren(
    h("h1", {}, h("a", { href: "#/", class: "crumb", text: "Scopes" }), h("span", { class: "crumb", text: " / " }),
      h("a", { href: scopeHref(scope), class: "crumb mono", text: scope }), h("span", { class: "crumb", text: " / " }),
      h("span", { class: "mono", id: "value-key", text: key })),
    body);
  reload();
}

// -- dialogs: edit, update ops, delete ------------------------------------------------------

function openDialog(children, onclose) {
  const dialog = $("#dialog");
  dialog.replaceChildren(...children);
  dialog.onclose = onclose || null;
  dialog.showModal();
  return dialog;
}

function jsonEditor(text, check) {
  const note = h("div", { class: "small", id: "editor-note" });
  const area = h("textarea", { class: "editor", id: "editor", spellcheck: "false", "aria-label": "JSON" });
  area.value = text;
  const validate = () => {
    let problem = null;
    try { const value = JSON.parse(area.value); problem = check ? check(value) : null; } catch (e) { problem = e.message; }
    area.classList.toggle("invalid", problem !== null);
    note.className = problem === null ? "small valid" : "small invalid-text";
    note.textContent = problem === null ? "valid JSON" : `not sent: ${problem}`;
    return problem === null;
  };
  area.addEventListener("input", validate);
  area.addEventListener("keydown", (event) => {
    if (event.key === "Tab") {
      event.preventDefault();
      area.setRangeText("  ", area.selectionStart, area.selectionEnd, "end");
      validate();
    }
  });
  validate();
  return { area, note, validate };
}

function editDialog({ scope, key, text, isNew, after }) {
  const scopeInput = h("input", { id: "edit-scope", value: scope, required: true, "aria-label": "scope" });
  const keyInput = h("input", { id: "edit-key", value: key, required: true, "aria-label": "key" });
  const editor = jsonEditor(text);
  const error = h("div", { class: "error", hidden: true, id: "dialog-error" });
  const save = async (event) => {
    if (event) event.preventDefault();
    if (!editor.validate()) { editor.area.focus(); return; }
    const target = { scope: isNew ? scopeInput.value : scope, key: isNew ? keyInput.value : key };
    try {
      await api("/api/set", { ...target, value_json: editor.area.value });
    } catch (e) {
      error.replaceChildren(h("span", { class: "code", text: e.code }), h("span", { class: "message", text: e.message }));
      error.hidden = false;
      return;
    }
    $("#dialog").close();
    if (after) after(); else location.hash = keyHref(target.scope, target.key);
    if (!after && parseRoute().view === "value") render();
  };
  editor.area.addEventListener("keydown", (event) => { if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) save(event); });
  openDialog([
    h("form", { class: "stack", onsubmit: save },
      h("h2", {}, isNew ? "Set a key" : "Edit value"),
      isNew ? h("label", {}, "Scope", scopeInput) : h("div", { class: "mono", text: `${scope} / ${key}` }),
      isNew ? h("label", {}, "Key", keyInput) : null,
      editor.area, editor.note, error,
      h("div", { class: "buttons" },
        h("button", { type: "button", onclick: () => $("#dialog").close() }, "Cancel"),
        h("button", { type: "submit", class: "primary", id: "save" }, "Save (Ctrl+Enter)"))),
  ]);
  (isNew && !scope ? scopeInput : isNew ? keyInput : editor.area).focus();
}

function opsDialog(scope, key, after) {
  const editor = jsonEditor('[\n  {"increment": {"field": "n", "by": 1}}\n]\n',
    (value) => (Array.isArray(value) ? null : "update ops are a JSON array"));
  const error = h("div", { class: "error", hidden: true, id: "dialog-error" });
  const apply = async (event) => {
    if (event) event.preventDefault();
    if (!editor.validate()) return;
    try {
      await api("/api/update", { scope, key, ops_json: editor.area.value });
    } catch (e) {
      error.replaceChildren(h("span", { class: "code", text: e.code }), h("span", { class: "message", text: e.message }));
      error.hidden = false;
      return;
    }
    $("#dialog").close();
    after();
  };
  editor.area.addEventListener("keydown", (event) => { if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) apply(event); });
  openDialog([
    h("form", { class: "stack", onsubmit: apply },
      h("h2", {}, "Apply update ops"),
      h("div", { class: "small muted" }, "set, merge, increment, decrement, append, remove: all or nothing (see docs/update-ops.md)"),
      editor.area, editor.note, error,
      h("div", { class: "buttons" },
        h("button", { type: "button", onclick: () => $("#dialog").close() }, "Cancel"),
        h("button", { type: "submit", class: "primary", id: "apply-ops" }, "Apply (Ctrl+Enter)"))),
  ]);
  editor.area.focus();
}

function confirmDelete(scope, key, after) {
  const cancel = h("button", { type: "button", id: "cancel-delete", onclick: () => $("#dialog").close() }, "Cancel");
  openDialog([
    h("h2", {}, "Delete this key?"),
    h("p", {}, h("span", { class: "mono", text: `${scope} / ${key}` })),
    h("p", { class: "muted small" }, "Its state:deleted triggers fire. This cannot be undone."),
    h("div", { class: "buttons" }, cancel,
      h("button", {
        type: "button", class: "danger primary", id: "confirm-delete",
        onclick: async () => {
          $("#dialog").close();
          const done = await attempt(() => api("/api/delete", { scope, key }));
          if (done) after();
        },
      }, "Delete")),
  ]);
  cancel.focus();
}

// -- triggers ---------------------------------------------------------------------------------

function triggersView() {
  const body = h("div", { class: "muted", text: "loading…" });
  const reload = async () => {
    const result = await attempt(() => api("/api/triggers"));
    if (!result) { body.replaceChildren(); return; }
    const cell = (text) => h("td", { class: "mono", text: text === undefined ? "any" : text });
    const rows = result.items.map((t) => h("tr", { "data-id": t.id, "data-function": t.function_id },
      h("td", { class: "mono", text: t.function_id }), cell(t.config.scope), cell(t.config.key),
      h("td", { class: "mono", text: t.config.condition_function_id || "—" }),
      h("td", { class: "mono muted small", text: t.id }),
      h("td", { class: "actions" }, h("button", {
        type: "button", class: "danger unregister", disabled: !state.writes, title: writesTitle() || "Unregister",
        onclick: () => confirmUnregister(t, reload),
      }, "Unregister"))));
    body.replaceChildren(rows.length
      ? h("table", { class: "grid", id: "triggers" },
        h("thead", {}, h("tr", {}, ...["Function", "Scope", "Key", "Condition", "Id", ""].map((t) => h("th", { text: t })))),
        h("tbody", {}, rows))
      : h("div", { class: "empty", text: "No trigger is registered." }));
  };
  const field = (name, label) => h("label", {}, label, h("input", { name, "aria-label": label }));
  const form = h("form", {
    class: "toolbar", id: "register-trigger",
    onsubmit: async (event) => {
      event.preventDefault();
      const data = Object.fromEntries(new FormData(event.target).entries());
      if (await attempt(() => api("/api/triggers/register", data))) { event.target.reset(); reload(); }
    },
  },
  field("function_id", "Function id"), field("scope", "Scope (any)"), field("key", "Key (any)"),
  field("condition_function_id", "Condition function (none)"),
  h("button", { type: "submit", class: "primary", disabled: !state.writes, title: writesTitle() }, "Register"));
  $("#view").replaceChildren(h("h1", {}, "Triggers"), form, body);
  reload();
}

function confirmUnregister(trigger, after) {
  const cancel = h("button", { type: "button", id: "cancel-unregister", onclick: () => $("#dialog").close() }, "Cancel");
  const where = [trigger.config.scope, trigger.config.key].map((part) => (part === undefined ? "any" : part)).join(" / ");
  openDialog([
    h("h2", {}, "Unregister this trigger?"),
    h("p", {}, h("span", { class: "mono", text: `${trigger.function_id} on ${where}` })),
    h("p", { class: "muted small" }, "Changes stop calling its function. Registering it again brings it back."),
    h("div", { class: "buttons" }, cancel,
      h("button", {
        type: "button", class: "danger primary", id: "confirm-unregister",
        onclick: async () => {
          $("#dialog").close();
          const done = await attempt(() => api("/api/triggers/unregister", { id: trigger.id }));
          if (done) after();
        },
      }, "Unregister")),
  ]);
  cancel.focus();
}

// -- the live feed ----------------------------------------------------------------------------

// The feed is the deployment's change log as the console reads it. lastId: the cursor of the
// last change this page got (a reconnection, the browser's own or after a console restart,
// resumes right after it); seen: the event ids shown, so a change read twice shows once.
const feed = { source: null, paused: false, held: [], lastId: "", lastTime: null, seen: new Set(), max: 500 };
const FEED_SEEN_MAX = 5000;
const DIFF_CHARS = 120;

function connectFeed() {
  if (feed.source) feed.source.close();
  const filter = $("#feed-filter").value;
  feed.source = new EventSource(`/api/changes?${query({ scope: filter, after: feed.lastId })}`);
  feed.source.addEventListener("change", (event) => {
    const change = JSON.parse(event.data);
    if (event.lastEventId) feed.lastId = event.lastEventId;
    if (feed.seen.has(change.event_id)) return;
    feed.seen.add(change.event_id);
    if (feed.seen.size > FEED_SEEN_MAX) feed.seen.delete(feed.seen.values().next().value);
    feed.lastTime = change.time;
    showInFeed(() => addChange(change));
    noticeChange(change);
  });
  feed.source.addEventListener("notice", (event) => {
    const data = JSON.parse(event.data);
    showInFeed(() => addNotice(data));
  });
  feed.source.addEventListener("status", (event) => {
    if (event.lastEventId) feed.lastId = event.lastEventId;
    showStatus(JSON.parse(event.data));
  });
  feed.source.onerror = () => {
    $("#live-dot").className = "dot down";
    $("#live-dot").title = "reconnecting to the console";
    // The browser reconnects by itself (sending the last change's cursor), unless the
    // console answered with an error: then try again, from that cursor, a little later.
    const source = feed.source;
    if (source.readyState === EventSource.CLOSED) setTimeout(() => { if (feed.source === source) connectFeed(); }, 5000);
  };
}

function showInFeed(show) {
  if (!feed.paused) { show(); return; }
  feed.held.push(show);
  $("#feed-pause").textContent = `Resume (${feed.held.length})`;
}

function showStatus(status) {
  const dot = $("#live-dot");
  const note = $("#feed-note");
  let state = "live";
  let text = "";
  if (status.log === "off") {
    state = "off";
    dot.title = "the change log is off";
    text = `The change log is off on this deployment, so the feed has no changes to show. ${status.error || ""}`;
  } else if (status.connected) {
    dot.title = "live: reading the change log";
  } else {
    state = "down";
    dot.title = `not reading the change log: ${status.error || "connecting"}`;
    text = status.error ? `Not reading the change log now: ${status.error}` : "";
  }
  dot.className = `dot ${state}`;
  note.dataset.state = text ? state : "";
  note.className = text ? "notice small" : "muted small";
  note.textContent = text;
}

function prependRow(row) {
  const rows = $("#feed-rows");
  rows.prepend(row);
  while (rows.children.length > feed.max) rows.lastElementChild.remove();
}

function when(iso) {
  return new Date(iso).toLocaleString("en-GB", { hour12: false });
}

function addNotice(data) {
  let text = data.message;
  if (data.notice === "compacted") {
    const since = data.since || feed.lastTime;
    text = `Changes between ${since ? when(since) : "the last one shown"} and ${data.until ? when(data.until) : "the oldest kept"} `
      + "were trimmed from the log; continuing from the oldest kept.";
  }
  prependRow(h("li", { class: "feed-notice", "data-notice": data.notice, role: "status" }, text));
}

// A value in one line: its JSON text, cut with its whole size when long.
function cut(shown) {
  const text = shown.truncated ? shown.preview : shown.json;
  if (!shown.truncated && text.length <= DIFF_CHARS) return text;
  return `${text.slice(0, DIFF_CHARS)}…, ${count(shown.size)} bytes`;
}

function wholeValue(shown) {
  const raw = h("pre", { class: "json raw", hidden: true, text: shown.json });
  const shownTree = tree(shown.json, 1);
  const toggle = h("button", {
    type: "button", class: "raw-toggle",
    onclick: () => { raw.hidden = !raw.hidden; shownTree.hidden = !raw.hidden; toggle.textContent = raw.hidden ? "Raw JSON" : "Tree"; },
  }, "Raw JSON");
  return h("div", { class: "whole" }, toggle, shownTree, raw);
}

// One value of a change, opened: a tree, or for a long one its preview and a button that
// reads the change back from the log, its values whole.
function valuePanel(change, which) {
  const shown = change[which];
  if (!shown) return null;
  const body = h("div", { class: "value", "data-which": which });
  if (!shown.truncated) body.append(tree(shown.json, 1));
  else {
    body.append(
      h("pre", { class: "json preview", text: `${shown.preview}…` }),
      h("button", {
        type: "button", class: "load-value",
        onclick: async () => {
          const whole = await attempt(() => api(`/api/change?${query({ from: change.from, event_id: change.event_id })}`));
          if (whole && whole[which]) body.replaceChildren(wholeValue(whole[which]));
        },
      }, `load all ${bytes(shown.size)}`));
  }
  return h("div", {}, h("div", { class: "small muted", text: which }), body);
}

function addChange(change) {
  const kind = change.event_type.replace("state:", "");
  const expired = kind === "deleted" && change.reason === "expired";
  const diff = h("div", { class: "diff" },
    change.old ? h("span", { class: "old", text: cut(change.old) }) : null,
    change.old && change.new ? h("span", { class: "arrow", text: "→" }) : null,
    change.new ? h("span", { class: "new", text: cut(change.new) }) : null);
  const long = [change.old, change.new].some((shown) => shown && (shown.truncated || shown.json.length > DIFF_CHARS));
  const full = long ? h("details", {},
    h("summary", { class: "small muted" }, "values"),
    valuePanel(change, "old"), valuePanel(change, "new")) : null;
  const time = new Date(change.time);
  const row = h("li", {
    class: `change fresh ${kind}`, "data-scope": change.scope, "data-key": change.key,
    "data-kind": change.event_type, "data-reason": change.reason || "", "data-event-id": change.event_id,
  },
  h("div", { class: "line1" },
    h("time", { datetime: change.time, title: change.time, text: time.toLocaleTimeString("en-GB", { hour12: false }) + "." + String(time.getMilliseconds()).padStart(3, "0") }),
    h("span", { class: `kind ${kind}`, text: expired ? "expired" : kind, title: expired ? "deleted: its ttl_ms ran out" : "" }),
    h("a", { href: keyHref(change.scope, change.key), class: "where", title: "the key's current value", text: `${change.scope} / ${change.key}` }),
    change.version ? h("span", { class: "version muted small", title: "the key's version after this change", text: `v${change.version}` }) : null),
  diff, full);
  prependRow(row);
}

function noticeChange(change) {
  const route = state.route;
  if (route && route.view === "value" && route.scope === change.scope && route.key === change.key) {
    const note = $("#changed-note");
    if (note) {
      note.replaceChildren(h("div", { class: "notice" }, `This key was ${change.reason === "expired" ? "removed: it expired" : change.event_type.replace("state:", "")} at ${new Date(change.time).toLocaleTimeString("en-GB")}. `,
        h("button", { type: "button", onclick: () => state.reloadValue() }, "Reload")));
    }
  }
  if (route && route.view === "keys" && route.scope === change.scope) {
    for (const row of document.querySelectorAll("#keys tbody tr")) if (row.dataset.key === change.key) row.classList.add("changed");
  }
}

function togglePause() {
  feed.paused = !feed.paused;
  if (!feed.paused) { for (const show of feed.held) show(); feed.held = []; }
  $("#feed-pause").textContent = feed.paused ? "Resume" : "Pause";
}

// -- keyboard ---------------------------------------------------------------------------------

function listRows() { return [...document.querySelectorAll("#view table.grid tbody tr")]; }

function select(index) {
  const rows = listRows();
  if (!rows.length) return;
  state.selected = Math.max(0, Math.min(rows.length - 1, index));
  rows.forEach((row, i) => row.classList.toggle("selected", i === state.selected));
  rows[state.selected].scrollIntoView({ block: "nearest" });
}

function onKey(event) {
  const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName);
  if (event.key === "Escape") {
    if (typing) document.activeElement.blur();
    clearError();
    return;
  }
  if (typing || event.ctrlKey || event.metaKey || event.altKey || $("#dialog").open) return;
  if (state.gPressed) {
    state.gPressed = false;
    if (event.key === "s") { location.hash = "#/"; return; }
    if (event.key === "t") { location.hash = "#/triggers"; return; }
  }
  const route = state.route;
  switch (event.key) {
    case "/": event.preventDefault(); ($("#filter") || $("#feed-filter")).focus(); break;
    case "j": case "ArrowDown": event.preventDefault(); select(state.selected + 1); break;
    case "k": case "ArrowUp": event.preventDefault(); select(state.selected - 1); break;
    case "Enter": {
      const row = listRows()[state.selected];
      if (row && row.dataset.href) location.hash = row.dataset.href;
      break;
    }
    case "n": { const b = $("#next-page"); if (b && !b.disabled) b.click(); break; }
    case "b": { const b = $("#prev-page"); if (b && !b.disabled) b.click(); break; }
    case "u": case "Backspace":
      if (route.view === "value") location.hash = scopeHref(route.scope);
      else if (route.view !== "scopes") location.hash = "#/";
      break;
    case "e": { const b = $("#edit-value"); if (b && !b.disabled) { event.preventDefault(); b.click(); } break; }
    case "p": togglePause(); break;
    case "g": state.gPressed = true; break;
    case "?": openDialog([h("div", {}, $("#help").content.cloneNode(true)),
      h("div", { class: "buttons" }, h("button", { type: "button", onclick: () => $("#dialog").close() }, "Close"))]); break;
    default: break;
  }
}

// -- start ------------------------------------------------------------------------------------

async function start() {
  const info = await attempt(() => api("/api/info"));
  state.info = info;
  state.writes = Boolean(info && info.writes);
  if (info) {
    state.pageSize = info.page_size;
    $("#broker").textContent = info.broker;
    const writes = $("#writes");
    writes.textContent = state.writes ? "writes allowed" : "read-only";
    writes.classList.toggle("on", state.writes);
    writes.title = state.writes ? "started with --allow-writes" : "start with --allow-writes to edit";
  }
  document.body.dataset.ready = "true";
  window.addEventListener("hashchange", render);
  document.addEventListener("keydown", onKey);
  $("#help-button").addEventListener("click", () => onKey(new KeyboardEvent("keydown", { key: "?" })));
  $("#feed-pause").addEventListener("click", togglePause);
  $("#feed-clear").addEventListener("click", () => { $("#feed-rows").replaceChildren(); });
  let timer = null;
  $("#feed-filter").addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      $("#feed-rows").replaceChildren(); feed.lastId = ""; feed.seen.clear(); connectFeed();
    }, 300);
  });
  connectFeed();
  render();
}

start();
