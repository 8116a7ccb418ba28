// The state-tasks console page. No framework: the DOM, fetch and EventSource.
// Values arrive as JSON text and are parsed keeping the digits of integers beyond 2**53;
// trees render their children only when opened, so big or deeply nested values stay cheap.
// Characters that show nothing or reorder the text around them are shown as the escapes
// they are; every save and delete carries the version the page showed.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const state = { info: null, writes: false, route: null, pageSize: 50, selected: -1, gPressed: false, timer: null };

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

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString("en-GB", { hour12: false });
}

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  };
  const cap = state.info && state.info.max_body_bytes;
  if (cap && options.body && new Blob([options.body]).size > cap) {
    // refused here rather than cut off by the console: nothing is sent
    throw { code: "BODY_TOO_LARGE", message: `this is ${count(new Blob([options.body]).size)} bytes to send; the console takes at most ${count(cap)} (start it with --max-value-bytes for larger values)` };
  }
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

function errorParts(error) {
  return [h("span", { class: "code", text: error.code || "ERROR" }),
    h("span", { class: "message" }, visible(error.message || String(error)))];
}

function showError(error) {
  const box = $("#error");
  box.replaceChildren(...errorParts(error),
    h("button", { class: "link", type: "button", title: "Dismiss (Esc)", onclick: clearError }, "✕"));
  box.hidden = false;
}

function clearError() { $("#error").hidden = true; }

async function attempt(work) {
  try { clearError(); return await work(); } catch (e) { showError(e); return undefined; }
}

// -- characters that hide: shown as their escapes ------------------------------------------

// Controls (C0, DEL, C1), bidi marks, embeddings, overrides and isolates, zero-width and
// other invisible characters, line and paragraph separators, tag characters, lone
// surrogates: a key named "rtl\u202eevil.exe" must not read as "rtlexe.live".
const INVISIBLE = /[\u0000-\u001f\u007f-\u009f\u00ad\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u2028-\u202e\u2060-\u206f\u3164\ufeff\ufff9-\ufffb\u{e0000}-\u{e007f}\ud800-\udfff]/gu;
const SHORT_ESCAPES = { "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t" };
const CHARACTER_NAMES = {
  0x200b: "ZERO WIDTH SPACE", 0x200c: "ZERO WIDTH NON-JOINER", 0x200d: "ZERO WIDTH JOINER",
  0x200e: "LEFT-TO-RIGHT MARK", 0x200f: "RIGHT-TO-LEFT MARK", 0x202a: "LEFT-TO-RIGHT EMBEDDING",
  0x202b: "RIGHT-TO-LEFT EMBEDDING", 0x202c: "POP DIRECTIONAL FORMATTING", 0x202d: "LEFT-TO-RIGHT OVERRIDE",
  0x202e: "RIGHT-TO-LEFT OVERRIDE", 0x2066: "LEFT-TO-RIGHT ISOLATE", 0x2067: "RIGHT-TO-LEFT ISOLATE",
  0x2068: "FIRST STRONG ISOLATE", 0x2069: "POP DIRECTIONAL ISOLATE", 0xfeff: "ZERO WIDTH NO-BREAK SPACE",
  0x061c: "ARABIC LETTER MARK", 0x00ad: "SOFT HYPHEN", 0x2028: "LINE SEPARATOR", 0x2029: "PARAGRAPH SEPARATOR",
};
// Where a long key or scope name may break before it must break anywhere.
const SEPARATOR_AFTER = /(?<=[/:._\-@|,=])/;

function codePoint(ch) { return ch.codePointAt(0); }

function shownEscape(ch) {
  if (SHORT_ESCAPES[ch]) return SHORT_ESCAPES[ch];
  const cp = codePoint(ch);
  return cp > 0xffff ? `\\u{${cp.toString(16)}}` : `\\u${cp.toString(16).padStart(4, "0")}`;
}

// The same character as a JSON escape (UTF-16 units): the text means the same value.
function jsonEscape(ch) {
  if (SHORT_ESCAPES[ch]) return SHORT_ESCAPES[ch];
  let out = "";
  for (let i = 0; i < ch.length; i += 1) out += `\\u${ch.charCodeAt(i).toString(16).padStart(4, "0")}`;
  return out;
}

// Text as nodes: the invisible characters as <span class="esc">\u202e</span>, and, when
// breakable (names), a break opportunity after each separator.
function visible(text, breakable = false) {
  const out = document.createDocumentFragment();
  const source = String(text);
  const plain = (part) => {
    if (!part) return;
    if (!breakable) { out.append(part); return; }
    part.split(SEPARATOR_AFTER).forEach((piece, i) => { if (i) out.append(h("wbr")); out.append(piece); });
  };
  let last = 0;
  for (const match of source.matchAll(INVISIBLE)) {
    plain(source.slice(last, match.index));
    const cp = codePoint(match[0]);
    const name = CHARACTER_NAMES[cp] || (cp < 0xa0 ? "control character" : "invisible character");
    out.append(h("span", { class: "esc", title: `U+${cp.toString(16).toUpperCase().padStart(4, "0")} ${name}`, text: shownEscape(match[0]) }));
    last = match.index + match[0].length;
  }
  plain(source.slice(last));
  return out;
}

// A name (key, scope, function) in one element, breakable at its separators.
function name(text, attrs = {}, tag = "span") { return h(tag, attrs, visible(text, true)); }

// JSON text indented, exactly: no number goes through a double, and the invisible
// characters inside strings become escapes (the same value, now visible).
function prettyJson(text, indent = "  ") {
  const parts = [];
  let depth = 0;
  let i = 0;
  const n = text.length;
  const newline = () => "\n" + indent.repeat(depth);
  while (i < n) {
    const c = text[i];
    if (c === '"') {
      let j = i + 1;
      while (j < n && text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
      parts.push(text.slice(i, j + 1).replace(INVISIBLE, jsonEscape));
      i = j + 1;
    } else if (c === "{" || c === "[") {
      let j = i + 1;
      while (j < n && " \n\r\t".includes(text[j])) j += 1;
      if (text[j] === (c === "{" ? "}" : "]")) { parts.push(c + text[j]); i = j + 1; continue; }
      depth += 1;
      parts.push(c + newline());
      i += 1;
    } else if (c === "}" || c === "]") {
      depth -= 1;
      parts.push(newline() + c);
      i += 1;
    } else if (c === ",") {
      parts.push("," + newline());
      i += 1;
    } else if (c === ":") {
      parts.push(": ");
      i += 1;
    } else {
      if (!" \n\r\t".includes(c)) parts.push(c);
      i += 1;
    }
  }
  return parts.join("");
}

// -- copying ------------------------------------------------------------------------------

// Browsers give the clipboard API to secure pages only (https, or the loopback): elsewhere
// the text is copied from a hidden text area; if that is refused too, the caller selects it.
async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try { await navigator.clipboard.writeText(text); return true; } catch (e) { /* below */ }
  }
  const buffer = h("textarea", { class: "copy-buffer", readonly: true, "aria-hidden": "true", tabindex: "-1" });
  buffer.value = text;
  document.body.append(buffer);
  buffer.select();
  let copied = false;
  try { copied = document.execCommand("copy"); } catch (e) { copied = false; }
  buffer.remove();
  return copied;
}

function selectText(node) {
  const range = document.createRange();
  range.selectNodeContents(node);
  const selection = window.getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
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
  if (text.length <= STRING_PREVIEW) return h("span", { class: "s" }, visible(text));
  const span = h("span", { class: "s" }, visible(text.slice(0, STRING_PREVIEW) + "…"));
  const more = h("button", {
    type: "button", class: "more",
    onclick: () => { span.replaceChildren(visible(text)); more.remove(); },
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

function label(key) {
  return key === undefined ? null : h("span", { class: "k" }, visible(`${JSON.stringify(key)}: `));
}

function renderTree(value, key, depth, openDepth) {
  if (!isContainer(value) || summaryText(value).length <= 2) {
    return h("div", { class: "leaf" }, label(key), isContainer(value) ? summaryText(value) : scalar(value));
  }
  let peek = "";
  try { peek = compact(JSON.stringify(value), 100); } catch (e) { /* nested too deeply to preview */ }
  const details = h("details", {}, h("summary", {}, label(key), h("span", { class: "hint", text: summaryText(value) }),
    h("span", { class: "peek" }, visible(peek))));
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
  try { value = parseExact(text); } catch (e) { return h("span", { class: "preview" }, visible(text)); }
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

function listState(listName) {
  if (!lists[listName]) lists[listName] = { filter: "", cursors: [null], page: 0 };
  return lists[listName];
}

function render() {
  state.route = parseRoute();
  state.selected = -1;
  clearInterval(state.timer);
  state.timer = null;
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
  for (const [k, v] of Object.entries(params)) {
    if (Array.isArray(v)) for (const item of v) search.append(k, item);
    else if (v !== null && v !== undefined && v !== "") search.set(k, v);
  }
  return search.toString();
}

// A table whose columns keep their widths whatever the data (table-layout: fixed).
function grid(id, columns, rows) {
  return h("table", { class: "grid", id },
    h("colgroup", {}, columns.map(([, width]) => h("col", { class: width ? `w-${width}` : null }))),
    h("thead", {}, h("tr", {}, columns.map(([title, width]) => h("th", { class: width === "num" ? "num" : null, text: title })))),
    h("tbody", {}, rows));
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
      h("td", { class: "key" }, name(item.scope, { href: scopeHref(item.scope), class: "scope-link" }, "a")),
      h("td", { class: "num", text: count(item.count) })));
    body.replaceChildren(
      rows.length ? grid("scopes", [["Scope"], ["Keys", "num"]], rows)
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
        onclick: () => editDialog({ scope: "", key: "", json: "{}", isNew: true }),
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
      h("td", { class: "key" }, name(item.key, { href: keyHref(scope, item.key), class: "key-link" }, "a")),
      h("td", { class: "value" }, item.truncated
        ? h("span", { class: "preview", title: `${bytes(item.size)}: open the key to see it all` }, visible(compact(item.preview, 300)))
        : tree(item.json, 0)),
      h("td", { class: "num muted", text: bytes(item.size) }),
      h("td", { class: "actions" },
        h("button", {
          type: "button", class: "edit", disabled: !state.writes, title: writesTitle() || "Edit",
          onclick: () => openEditor(scope, item.key, reload),
        }, "Edit"),
        " ",
        h("button", {
          type: "button", class: "danger delete", disabled: !state.writes, title: writesTitle() || "Delete",
          onclick: () => confirmDelete(scope, item.key, reload),
        }, "Delete"))));
    body.replaceChildren(
      rows.length ? grid("keys", [["Key", "key"], ["Value"], ["Size", "size"], ["", "actions"]], rows)
        : h("div", { class: "empty", text: list.filter ? `No key starts with ${JSON.stringify(list.filter)}.` : "This scope holds no key." }),
      pager(list, page.cursor, reload));
  };
  $("#view").replaceChildren(
    h("h1", {}, h("a", { href: "#/", class: "crumb", text: "Scopes" }), h("span", { class: "crumb", text: " / " }),
      name(scope, { class: "mono", id: "scope-name" })),
    h("div", { class: "toolbar" },
      filterBox(list, "Filter keys by prefix (/)", reload),
      h("button", { type: "button", onclick: reload, title: "Reload" }, "Reload"),
      h("button", {
        type: "button", id: "new-key", disabled: !state.writes, title: writesTitle(),
        onclick: () => editDialog({ scope, key: "", json: "{}", isNew: true }),
      }, "+ New key")),
    body);
  reload();
}

// -- one key ----------------------------------------------------------------------------------

async function openEditor(scope, key, after) {
  const value = await attempt(() => api(`/api/value?${query({ scope, key })}`));
  if (value) editDialog({ scope, key, json: value.json, version: value.version, expiresInMs: value.expires_in_ms, isNew: false, after });
}

function expiryLeft(ms) {
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  return ms < 3600000 ? `${Math.round(ms / 60000)} min` : `${(ms / 3600000).toFixed(1)} h`;
}

// What a lock's or a barrier's record is (state::lock, state::arrive): its holder and fencing
// token (the key's version when taken, named in the record once extended), or its count.
function coordinationNote(value) {
  let parsed;
  try { parsed = JSON.parse(value.json); } catch { return null; }
  if (!parsed || typeof parsed !== "object" || Array.isArray(parsed) || Object.keys(parsed).length !== 1) return null;
  const { lock, barrier, once } = parsed;
  if (lock && typeof lock === "object") {
    const token = Number.isInteger(lock.token) ? lock.token : value.version;
    return h("span", { id: "value-lock", title: "A lock (state::lock): free at its expiry unless extended" },
      "lock held by ", h("b", { text: String(lock.owner) }), " · token ", h("b", { text: String(token) }));
  }
  if (barrier && typeof barrier === "object") {
    return h("span", { id: "value-barrier", title: "A barrier (state::arrive)" },
      "barrier ", h("b", { text: `${barrier.arrived} of ${barrier.expected}` }),
      barrier.fired ? " · fired" : " · waiting");
  }
  if (once && typeof once === "object") {
    return h("span", { id: "value-once", title: "A once-guard's record: calls within its expiry get this result" },
      "done by ", h("b", { text: String(once.owner) }));
  }
  return null;
}

// When a key expires, from get's expires_in_ms (null: never), as read when the page loaded.
function expiryText(ms) {
  if (ms === null || ms === undefined) return "never";
  const at = new Date(Date.now() + ms).toLocaleTimeString("en-GB", { hour12: false });
  return `in ${expiryLeft(ms)} (at ${at})`;
}

function valueView() {
  const { scope, key } = state.route;
  const body = h("div", { class: "muted", text: "loading…" });
  const reload = async () => {
    const value = await attempt(() => api(`/api/value?${query({ scope, key })}`));
    if (!value) { body.replaceChildren(); return; }
    const pretty = prettyJson(value.json);
    const raw = h("pre", { class: "json", id: "value-json", hidden: true, text: pretty });
    const shown = h("div", { class: "panel", id: "value-tree" }, tree(value.json, 2));
    const toggle = h("button", {
      type: "button", id: "raw-toggle",
      onclick: () => { raw.hidden = !raw.hidden; shown.hidden = !raw.hidden; toggle.textContent = raw.hidden ? "Raw JSON" : "Tree"; },
    }, "Raw JSON");
    const copied = h("span", { class: "small muted", id: "copy-status", role: "status" });
    const copy = async () => {
      if (await copyText(pretty)) {
        copied.textContent = "copied";
        setTimeout(() => { if (copied.textContent === "copied") copied.textContent = ""; }, 3000);
        return;
      }
      raw.hidden = false; shown.hidden = true; toggle.textContent = "Tree";
      selectText(raw);
      copied.textContent = "This browser does not let the page copy here: the JSON is selected, press Ctrl+C.";
    };
    const edit = () => editDialog({ scope, key, json: value.json, version: value.version, expiresInMs: value.expires_in_ms, isNew: false, after: reload });
    body.replaceChildren(
      h("div", { class: "meta" },
        h("span", {}, "size ", h("b", { text: bytes(value.size) })),
        h("span", { id: "value-version", title: "Goes up with every change of the key (set, update, batch)" },
          "version ", h("b", { text: String(value.version) })),
        h("span", { id: "value-expiry", title: "Set with ttl_ms on a set or an update" },
          "expiry ", h("b", { text: expiryText(value.expires_in_ms) })),
        coordinationNote(value)),
      h("div", { class: "toolbar" },
        toggle,
        h("button", { type: "button", id: "copy-json", onclick: copy }, "Copy JSON"),
        h("button", { type: "button", onclick: reload }, "Reload"),
        h("button", {
          type: "button", id: "edit-value", disabled: !state.writes, title: writesTitle() || "Edit (e)", onclick: edit,
        }, "Edit"),
        h("button", {
          type: "button", id: "update-ops", disabled: !state.writes, title: writesTitle() || "Apply update ops",
          onclick: () => opsDialog(scope, key, value.version, reload),
        }, "Update ops"),
        h("button", {
          type: "button", class: "danger", id: "delete-value", disabled: !state.writes, title: writesTitle() || "Delete",
          onclick: () => confirmDelete(scope, key, () => { location.hash = scopeHref(scope); }),
        }, "Delete"),
        copied),
      h("div", { id: "changed-note" }),
      shown, raw);
  };
  state.reloadValue = reload;
  $("#view").replaceChildren(
    h("h1", {}, h("a", { href: "#/", class: "crumb", text: "Scopes" }), h("span", { class: "crumb", text: " / " }),
      name(scope, { href: scopeHref(scope), class: "crumb mono" }, "a"), h("span", { class: "crumb", text: " / " }),
      name(key, { class: "mono", id: "value-key" })),
    body);
  reload();
}

// -- dialogs: edit, update ops, delete, conflicts -------------------------------------------

function openDialog(children, { onclose, wide } = {}) {
  const dialog = $("#dialog");
  dialog.replaceChildren(...children);
  dialog.classList.toggle("wide", Boolean(wide));
  dialog.onclose = onclose || null;
  if (!dialog.open) dialog.showModal();
  return dialog;
}

function closeDialog() { $("#dialog").close(); }

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

function dialogError(box, error) {
  box.replaceChildren(...errorParts(error));
  box.hidden = false;
}

// The expiry of a save: keep it (the default), set a new one, or remove it.
function ttlField(expiresInMs, isNew) {
  const hasExpiry = expiresInMs !== null && expiresInMs !== undefined;
  const amount = h("input", { type: "number", id: "ttl-amount", min: "1", step: "any", "aria-label": "expire after", class: "ttl-amount" });
  const unit = h("select", { id: "ttl-unit", "aria-label": "unit" },
    h("option", { value: "1000", selected: true }, "s"), h("option", { value: "1" }, "ms"));
  const option = (mode, checked, ...text) => h("label", { class: "ttl-option" },
    h("input", { type: "radio", name: "ttl", value: mode, checked }), ...text);
  const keepText = isNew ? "none: the key does not expire"
    : hasExpiry ? `keep: expires ${expiryText(expiresInMs)}` : "keep: never expires";
  const box = h("fieldset", { class: "ttl", id: "ttl" },
    h("legend", {}, "Expiry"),
    option("keep", true, keepText),
    option("set", false, "expire in ", amount, " ", unit),
    hasExpiry ? option("remove", false, "never: remove the expiry") : null);
  amount.addEventListener("input", () => { box.querySelector('input[value="set"]').checked = true; });
  // What the save sends; a string says why it cannot be sent.
  const choice = () => {
    const mode = box.querySelector('input[name="ttl"]:checked').value;
    if (mode !== "set") return { mode };
    const ms = Math.round(Number(amount.value) * Number(unit.value));
    if (!amount.value || !Number.isFinite(ms) || ms < 1) return "give the expiry as a positive number of seconds or ms";
    return { mode, ms };
  };
  return { box, choice };
}

// Side by side: the key as it is now (theirs) and what the user sent (yours); lines found
// in one and not in the other are marked.
function comparison(theirsText, yoursText, theirsTitle, yoursTitle) {
  const lines = (text) => (text === null ? [] : text.split("\n"));
  const theirs = lines(theirsText);
  const yours = lines(yoursText);
  const column = (id, title, own, other, empty) => {
    const others = new Set(other);
    const pre = h("pre", { class: "json compare" }, own.length
      ? own.map((line) => h("span", { class: others.has(line) ? "line" : "line differs" }, visible(line), "\n"))
      : h("span", { class: "muted", text: empty }));
    return h("section", { id, class: "side" }, h("h3", {}, title), pre);
  };
  return h("div", { class: "side-by-side" },
    column("theirs", theirsTitle, theirs, yours, "(the key does not exist now)"),
    column("yours", yoursTitle, yours, theirs, "(delete the key)"));
}

// A write refused with VERSION_CONFLICT: the key changed since the page read it.
// retry(version) sends the same write again against the version read now; retryLabel(gone)
// names that button (null: no such button, as for deleting a key that is gone already);
// done() follows a retry that went through (default: reload()).
function conflictDialog({ scope, key, error, yoursText, yoursTitle, retryLabel, retry, back, reload, done }) {
  const details = error.details || {};
  const theirs = details.theirs;
  const gone = theirs && !theirs.version;
  const why = theirs
    ? (gone ? `It was deleted after you read version ${details.expected}.`
      : `You read version ${details.expected}; someone changed it since: it is at version ${theirs.version} now.`)
    : "It changed since you read it, and reading it again failed: reload.";
  const problem = h("div", { class: "error", hidden: true, id: "dialog-error" });
  const theirsTitle = theirs
    ? (gone ? "Theirs: deleted" : `Theirs: version ${theirs.version}, expires ${expiryText(theirs.expires_in_ms)}`)
    : "Theirs: unknown";
  const overwrite = async () => {
    try {
      await retry(theirs.version);
    } catch (e) {
      if (e.code === "VERSION_CONFLICT") { conflictDialog({ scope, key, error: e, yoursText, yoursTitle, retryLabel, retry, back, reload, done }); return; }
      dialogError(problem, e);
      return;
    }
    closeDialog();
    (done || reload)();
  };
  openDialog([
    h("h2", { id: "conflict-title" }, "Not saved: this key changed meanwhile"),
    h("p", { class: "mono" }, visible(`${scope} / ${key}`, true)),
    h("p", { id: "conflict-why" }, why, " Nothing was written. Compare, then reload, or overwrite knowing what you replace."),
    comparison(theirs && theirs.json !== null ? prettyJson(theirs.json) : null, yoursText, theirsTitle, yoursTitle),
    problem,
    h("div", { class: "buttons" },
      back ? h("button", { type: "button", id: "conflict-back", onclick: back }, "Back to my edit") : null,
      h("button", { type: "button", id: "conflict-reload", onclick: () => { closeDialog(); reload(); } }, "Reload (drop mine)"),
      theirs && retryLabel(gone)
        ? h("button", { type: "button", class: "danger primary", id: "conflict-overwrite", onclick: overwrite }, retryLabel(gone))
        : null),
  ], { wide: true });
  $("#conflict-reload").focus();
}

function editDialog({ scope, key, json, version, expiresInMs, isNew, after }) {
  const scopeInput = h("input", { id: "edit-scope", value: scope, required: true, "aria-label": "scope" });
  const keyInput = h("input", { id: "edit-key", value: key, required: true, "aria-label": "key" });
  const editor = jsonEditor(prettyJson(json) + "\n");
  const ttl = ttlField(expiresInMs, isNew);
  const error = h("div", { class: "error", hidden: true, id: "dialog-error" });
  const baseVersion = isNew ? 0 : version;
  const target = () => ({ scope: isNew ? scopeInput.value : scope, key: isNew ? keyInput.value : key });
  const done = (where) => {
    closeDialog();
    if (after) after(); else location.hash = keyHref(where.scope, where.key);
    if (!after && parseRoute().view === "value") render();
  };
  const send = (where, text, choice, ifVersion) => api("/api/set", { ...where, value_json: text, if_version: ifVersion, ttl: choice });
  const show = () => {
    openDialog([form], { onclose: null });
    (isNew && !scopeInput.value ? scopeInput : isNew ? keyInput : editor.area).focus();
  };
  const save = async (event) => {
    if (event) event.preventDefault();
    if (!editor.validate()) { editor.area.focus(); return; }
    const choice = ttl.choice();
    if (typeof choice === "string") { dialogError(error, { code: "VALIDATION_ERROR", message: choice }); return; }
    const where = target();
    const text = editor.area.value;
    try {
      await send(where, text, choice, baseVersion);
    } catch (e) {
      if (e.code !== "VERSION_CONFLICT") { dialogError(error, e); return; }
      conflictDialog({
        scope: where.scope, key: where.key, error: e, yoursText: prettyJson(text),
        yoursTitle: `Yours: edited from ${isNew ? "nothing (a new key)" : `version ${baseVersion}`}`,
        retryLabel: (gone) => (gone ? "Create it with mine" : "Overwrite with mine"),
        retry: (theirsVersion) => send(where, text, choice, theirsVersion),
        back: show,
        reload: () => done(where),
      });
      return;
    }
    done(where);
  };
  editor.area.addEventListener("keydown", (event) => { if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) save(event); });
  const form = h("form", { class: "stack", onsubmit: save },
    h("h2", {}, isNew ? "Set a key" : "Edit value"),
    isNew ? h("label", {}, "Scope", scopeInput)
      : h("div", { class: "mono" }, visible(`${scope} / ${key}`, true), h("span", { class: "muted small", id: "edit-version", text: `  version ${version}` })),
    isNew ? h("label", {}, "Key", keyInput) : null,
    isNew ? h("div", { class: "small muted", text: "Saved only if the key does not exist yet; else you are shown what it holds." }) : null,
    editor.area, editor.note, ttl.box, error,
    h("div", { class: "buttons" },
      h("button", { type: "button", onclick: closeDialog }, "Cancel"),
      h("button", { type: "submit", class: "primary", id: "save" }, "Save (Ctrl+Enter)")));
  show();
}

function opsDialog(scope, key, version, after) {
  const editor = jsonEditor('[\n  {"increment": {"field": "n", "by": 1}}\n]\n',
    (value) => (Array.isArray(value) ? null : "update ops are a JSON array"));
  const error = h("div", { class: "error", hidden: true, id: "dialog-error" });
  const send = (text, ifVersion) => api("/api/update", { scope, key, ops_json: text, if_version: ifVersion });
  const show = () => { openDialog([form]); editor.area.focus(); };
  const apply = async (event) => {
    if (event) event.preventDefault();
    if (!editor.validate()) return;
    const text = editor.area.value;
    try {
      await send(text, version);
    } catch (e) {
      if (e.code !== "VERSION_CONFLICT") { dialogError(error, e); return; }
      conflictDialog({
        scope, key, error: e, yoursText: prettyJson(text), yoursTitle: `Your update ops, for version ${version}`,
        retryLabel: () => "Apply them to theirs", retry: (theirsVersion) => send(text, theirsVersion),
        back: show, reload: after,
      });
      return;
    }
    closeDialog();
    after();
  };
  editor.area.addEventListener("keydown", (event) => { if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) apply(event); });
  const form = h("form", { class: "stack", onsubmit: apply },
    h("h2", {}, "Apply update ops"),
    h("div", { class: "small muted" }, `To version ${version}. set, merge, increment, decrement, append, remove: all or nothing (see docs/update-ops.md); the key's expiry is kept.`),
    editor.area, editor.note, error,
    h("div", { class: "buttons" },
      h("button", { type: "button", onclick: closeDialog }, "Cancel"),
      h("button", { type: "submit", class: "primary", id: "apply-ops" }, "Apply (Ctrl+Enter)")));
  show();
}

// Delete what the dialog shows: the key is read first, and deleted only at that version.
async function confirmDelete(scope, key, after) {
  const value = await attempt(() => api(`/api/value?${query({ scope, key })}`));
  if (!value) return;
  const cancel = h("button", { type: "button", id: "cancel-delete", onclick: closeDialog }, "Cancel");
  const error = h("div", { class: "error", hidden: true, id: "dialog-error" });
  const send = (ifVersion) => api("/api/delete", { scope, key, if_version: ifVersion });
  const remove = async () => {
    try {
      await send(value.version);
    } catch (e) {
      if (e.code !== "VERSION_CONFLICT") { dialogError(error, e); return; }
      conflictDialog({
        scope, key, error: e, yoursText: null, yoursTitle: `Yours: delete version ${value.version}`,
        retryLabel: (gone) => (gone ? null : "Delete anyway"), retry: send,
        reload: render, // the view as it is now: the key with what it holds
        done: after,
      });
      return;
    }
    closeDialog();
    after();
  };
  openDialog([
    h("h2", {}, "Delete this key?"),
    h("p", { class: "mono" }, visible(`${scope} / ${key}`, true)),
    h("p", { class: "small" }, `version ${value.version} · ${bytes(value.size)} · expires ${expiryText(value.expires_in_ms)}`),
    h("pre", { class: "json delete-preview" }, visible(compact(value.json, 400))),
    h("p", { class: "muted small" }, "Its state:deleted triggers fire. This cannot be undone. If the key changed since this dialog read it, nothing is deleted and you are shown what it holds."),
    error,
    h("div", { class: "buttons" }, cancel,
      h("button", { type: "button", class: "danger primary", id: "confirm-delete", onclick: remove }, "Delete")),
  ]);
  cancel.focus();
}

// -- triggers ---------------------------------------------------------------------------------

const EVENTS_SAID = {
  on: (events) => `Runs and failures from the workers' task events since ${clock(events.since)} (from ${events.sending.join(", ")}), counted per function: triggers that share a function or a condition share its counts.`,
  off: (events) => `Task events are off on the workers (${events.workers.join(", ")} send heartbeats but no task event): runs and failures cannot be counted. Start the workers with task events on (worker_send_task_events = True, or celery worker -E).`,
  no_workers: () => "No worker sends events (none running, or all started without events): runs and failures cannot be counted.",
  waiting: () => "Waiting for the workers' task events…",
  unknown: (events) => `The console does not receive the workers' events${events.error ? `: ${events.error}` : ""}; runs and failures cannot be counted.`,
};

function runsText(runs) {
  if (!runs || !runs.runs) return "no run";
  const failed = runs.failed ? ` · ${count(runs.failed)} failed` : "";
  return `${count(runs.runs)} run${runs.runs === 1 ? "" : "s"}${failed} · last ${clock(runs.last_run_at)}`;
}

// A task name with a mark when no worker that answered has it (or none answered).
function taskName(taskId, known) {
  if (!taskId) return h("span", { class: "muted", text: "—" });
  const mark = known === false
    ? h("span", { class: "warn-badge", title: "no running worker has this task: changes this trigger matches send work no worker runs", text: "⚠ no worker has it" })
    : known === null || known === undefined
      ? h("span", { class: "muted small", title: "no worker answered inspect registered", text: " ?" })
      : null;
  return h("span", {}, name(taskId), mark ? " " : null, mark);
}

function fillRuns(table, runs, events) {
  if (!table) return;
  const counting = events.task_events === "on";
  for (const row of table.querySelectorAll("tbody tr")) {
    const own = runs[row.dataset.function];
    const condition = row.dataset.condition ? runs[row.dataset.condition] : null;
    const runsCell = row.querySelector("td.runs");
    const errorCell = row.querySelector("td.last-error");
    if (!counting && !(own && own.runs)) {
      runsCell.replaceChildren(h("span", { class: "muted", title: "the workers' task events are needed", text: "unknown" }));
      errorCell.replaceChildren(h("span", { class: "muted", text: "—" }));
      continue;
    }
    runsCell.replaceChildren(h("div", { class: own && own.failed ? "failed" : "" }, runsText(own)));
    if (condition) runsCell.append(h("div", { class: `small muted ${condition.failed ? "failed" : ""}` }, `condition: ${runsText(condition)}`));
    const errors = [own, condition].filter((r) => r && r.last_error).sort((a, b) => b.last_error_at - a.last_error_at);
    errorCell.replaceChildren(errors.length
      ? h("span", { class: "error-text", title: errors[0].last_error }, visible(`${clock(errors[0].last_error_at)} ${errors[0].last_error}`))
      : h("span", { class: "muted", text: "—" }));
  }
}

function triggersView() {
  const body = h("div", { class: "muted", text: "loading…" });
  const warnings = h("div", { id: "trigger-warnings", role: "alert", hidden: true });
  const workers = h("p", { class: "small muted", id: "workers-status" });
  const events = h("p", { class: "small muted", id: "events-status" });
  let names = [];
  const showEvents = (status) => {
    events.dataset.state = status.task_events;
    events.className = status.task_events === "on" || status.task_events === "waiting" ? "small muted" : "small notice";
    events.textContent = (EVENTS_SAID[status.task_events] || EVENTS_SAID.unknown)(status);
  };
  const reload = async () => {
    const result = await attempt(() => api("/api/triggers"));
    if (!result) { body.replaceChildren(); return; }
    workers.textContent = `Workers: ${result.workers.said}.`;
    showEvents(result.events);
    const cell = (text) => h("td", { class: "mono" }, text === undefined ? h("span", { class: "muted", text: "any" }) : name(text));
    const rows = result.items.map((t) => h("tr", {
      "data-id": t.id, "data-function": t.function_id, "data-condition": t.config.condition_function_id || "",
    },
    h("td", { class: "mono fn" }, taskName(t.function_id, t.known.function)), cell(t.config.scope), cell(t.config.key),
    h("td", { class: "mono cond" }, taskName(t.config.condition_function_id, t.known.condition)),
    whenCell(t.config.when),
    h("td", { class: "runs" }), h("td", { class: "last-error" }),
    h("td", { class: "mono muted small trigger-id", title: t.id, text: t.id }),
    h("td", { class: "actions" }, h("button", {
      type: "button", class: "danger unregister", disabled: !state.writes, title: writesTitle() || "Unregister",
      onclick: () => confirmUnregister(t, reload),
    }, "Unregister"))));
    names = [...new Set(result.items.flatMap((t) => [t.function_id, t.config.condition_function_id].filter(Boolean)))];
    const table = rows.length
      ? grid("triggers", [["Function", "fn"], ["Scope", "scope"], ["Key", "tkey"], ["Condition", "fn"], ["When", "when"], ["Runs", "runs"], ["Last error"], ["Id", "id"], ["", "actions"]], rows)
      : null;
    body.replaceChildren(table || h("div", { class: "empty", text: "No trigger is registered." }));
    fillRuns(table, result.runs, result.events);
  };
  const refreshRuns = async () => {
    if (!names.length || document.hidden) return;
    try {
      const result = await api(`/api/triggers/runs?${query({ name: names })}`);
      showEvents(result.events);
      fillRuns($("#triggers"), result.runs, result.events);
    } catch (e) { /* the next refresh tries again */ }
  };
  const field = (fieldName, text) => h("label", {}, text, h("input", { name: fieldName, "aria-label": text }));
  const form = h("form", {
    class: "toolbar", id: "register-trigger",
    onsubmit: async (event) => {
      event.preventDefault();
      const data = Object.fromEntries(new FormData(event.target).entries());
      const done = await attempt(() => api("/api/triggers/register", data));
      if (!done) return;
      event.target.reset();
      warnings.hidden = !done.warnings.length;
      warnings.className = "warnings";
      warnings.replaceChildren(...done.warnings.map((w) => h("div", { class: "warning", "data-code": w.code },
        h("b", { text: "Registered, but: " }), visible(w.message))));
      reload();
    },
  },
  field("function_id", "Function id"), field("scope", "Scope (any)"), field("key", "Key (any)"),
  field("condition_function_id", "Condition function (none)"),
  h("label", {}, "When (a filter as JSON, none)", h("input", {
    name: "when", "aria-label": "When (a filter as JSON, none)", class: "mono",
    placeholder: '{"changed": ["email"]}',
  })),
  h("button", { type: "submit", class: "primary", disabled: !state.writes, title: writesTitle() }, "Register"));
  $("#view").replaceChildren(h("h1", {}, "Triggers"), form, warnings, workers, events, body);
  reload();
  state.timer = setInterval(refreshRuns, 3000);
}

// A trigger's declarative filter (config.when), on one line, cut within its cell (the whole
// JSON on hover); none: "always".
function whenCell(when) {
  if (when === undefined || when === null) return h("td", { class: "when" }, h("span", { class: "muted", text: "always" }));
  const text = JSON.stringify(when);
  return h("td", { class: "mono small when", title: text }, visible(text));
}

function confirmUnregister(trigger, after) {
  const cancel = h("button", { type: "button", id: "cancel-unregister", onclick: closeDialog }, "Cancel");
  const where = [trigger.config.scope, trigger.config.key].map((part) => (part === undefined ? "any" : part)).join(" / ");
  openDialog([
    h("h2", {}, "Unregister this trigger?"),
    h("p", { class: "mono" }, visible(`${trigger.function_id} on ${where}`, true)),
    h("p", { class: "muted small" }, "Changes stop calling its function. Registering it again brings it back."),
    h("div", { class: "buttons" }, cancel,
      h("button", {
        type: "button", class: "danger primary", id: "confirm-unregister",
        onclick: async () => {
          closeDialog();
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
// resumes right after it); seen: the event ids shown, so a change read twice shows once;
// live: whether what comes now is newer than the page (the changes the console held when
// the page connected come first, then a "live" event).
const feed = { source: null, paused: false, held: [], lastId: "", lastTime: null, seen: new Set(), max: 500, live: false };
const FEED_SEEN_MAX = 5000;
const DIFF_CHARS = 120;

function connectFeed() {
  if (feed.source) feed.source.close();
  if (!feed.lastId) feed.live = false;
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
    if (feed.live) noticeChange(change);
  });
  feed.source.addEventListener("live", () => { feed.live = true; });
  feed.source.addEventListener("notice", (event) => {
    const data = JSON.parse(event.data);
    showInFeed(() => addNotice(data));
  });
  feed.source.addEventListener("status", (event) => {
    if (event.lastEventId) feed.lastId = event.lastEventId;
    showStatus(JSON.parse(event.data));
  });
  feed.source.onerror = () => {
    showStatus({ state: "console", error: "the console cannot be reached; reconnecting" });
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

// The dot: green live, grey no worker answers, red the broker (or the console) cannot be
// reached or another failure, amber the change log is off, hollow connecting.
const DOT = {
  connecting: ["connecting", "connecting", () => ""],
  live: ["live", "live: reading the change log", () => ""],
  no_worker: ["no-worker", "no worker answers", (s) => `No worker answers: the broker takes the console's calls but no worker ran them. ${s.error || ""}`],
  unreachable: ["down", "the broker cannot be reached", (s) => `The broker cannot be reached: ${s.error || ""}`],
  error: ["down", "not reading the change log", (s) => `Not reading the change log now: ${s.error || ""}`],
  console: ["down", "the console cannot be reached", () => "The console cannot be reached; reconnecting…"],
  off: ["off", "the change log is off", (s) => `The change log is off on this deployment, so the feed has no changes to show. ${s.error || ""}`],
};

function showStatus(status) {
  const dot = $("#live-dot");
  const note = $("#feed-note");
  const which = status.state || (status.log === "off" ? "off" : status.connected ? "live" : "error");
  const [css, title, says] = DOT[which] || DOT.error;
  const text = says(status).trim();
  dot.className = `dot ${css}`;
  dot.dataset.state = which;
  dot.title = status.error && which !== "live" ? `${title}: ${status.error}` : title;
  note.dataset.state = text ? which : "";
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
      h("pre", { class: "json preview" }, visible(`${shown.preview}…`)),
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
    change.old ? h("span", { class: "old" }, visible(cut(change.old))) : null,
    change.old && change.new ? h("span", { class: "arrow", text: "→" }) : null,
    change.new ? h("span", { class: "new" }, visible(cut(change.new))) : null);
  const long = [change.old, change.new].some((shown) => shown && (shown.truncated || shown.json.length > DIFF_CHARS));
  const full = long ? h("details", {},
    h("summary", { class: "small muted" }, "values"),
    valuePanel(change, "old"), valuePanel(change, "new")) : null;
  const time = new Date(change.time);
  const row = h("li", {
    class: `change ${kind}${feed.live ? " fresh" : ""}`, "data-scope": change.scope, "data-key": change.key,
    "data-kind": change.event_type, "data-reason": change.reason || "", "data-event-id": change.event_id,
  },
  h("div", { class: "line1" },
    h("time", { datetime: change.time, title: change.time, text: time.toLocaleTimeString("en-GB", { hour12: false }) + "." + String(time.getMilliseconds()).padStart(3, "0") }),
    h("span", { class: `kind ${kind}`, text: expired ? "expired" : kind, title: expired ? "deleted: its ttl_ms ran out" : "" }),
    h("a", { href: keyHref(change.scope, change.key), class: "where", title: "the key's current value" }, visible(`${change.scope} / ${change.key}`, true)),
    change.version ? h("span", { class: "version muted small", title: "the key's version after this change", text: `v${change.version}` }) : null),
  diff, full);
  prependRow(row);
}

// A change newer than the page: the open key says so, the open scope marks its row.
function noticeChange(change) {
  const route = state.route;
  const at = new Date(change.time).toLocaleTimeString("en-GB", { hour12: false });
  if (route && route.view === "value" && route.scope === change.scope && route.key === change.key) {
    const note = $("#changed-note");
    if (note) {
      note.replaceChildren(h("div", { class: "notice" }, `This key was ${change.reason === "expired" ? "removed: it expired" : change.event_type.replace("state:", "")} at ${at}${change.version ? ` (version ${change.version})` : ""}. `,
        h("button", { type: "button", onclick: () => state.reloadValue() }, "Reload")));
    }
  }
  if (route && route.view === "keys" && route.scope === change.scope) {
    for (const row of document.querySelectorAll("#keys tbody tr")) {
      if (row.dataset.key === change.key) {
        row.classList.add("changed");
        row.title = `changed at ${at}, after this page was loaded: reload to see it`;
      }
    }
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
      h("div", { class: "buttons" }, h("button", { type: "button", onclick: closeDialog }, "Close"))]); break;
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
    $("#sign-out").hidden = info.authorization !== "session";
    // signed in over plain HTTP: the session id crosses the network in clear
    $("#no-tls").hidden = info.authorization !== "session" || info.tls;
    if (info.feed) showStatus(info.feed);
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
