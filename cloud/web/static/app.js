// Shared by every dashboard page: the token, API calls, the navigation bar, small helpers.
// Tokens live in sessionStorage (per tab, gone when the tab closes).

const ACCESS = "batterytwin.access";
const REFRESH = "batterytwin.refresh";

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

function detailOf(body, status) {
  if (body && typeof body.detail === "string") return body.detail;
  if (body && Array.isArray(body.detail)) {
    return body.detail.map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("; ");
  }
  return `HTTP ${status}`;
}

export async function login(username, password) {
  const response = await fetch("/api/token/", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username, password }),
  });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, detailOf(body, response.status));
  sessionStorage.setItem(ACCESS, body.access);
  sessionStorage.setItem(REFRESH, body.refresh);
}

export function logout() {
  sessionStorage.removeItem(ACCESS);
  sessionStorage.removeItem(REFRESH);
  window.location.assign("/ui/login");
}

function toLogin() {
  const next = encodeURIComponent(window.location.pathname + window.location.search);
  window.location.assign(`/ui/login?next=${next}`);
  return new Promise(() => {}); // the page is going away
}

async function refreshAccess() {
  const refresh = sessionStorage.getItem(REFRESH);
  if (!refresh) return false;
  const response = await fetch("/api/token/refresh/", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ refresh }),
  });
  if (!response.ok) return false;
  sessionStorage.setItem(ACCESS, (await response.json()).access);
  return true;
}

function withAuth(options) {
  const headers = new Headers(options.headers || {});
  const token = sessionStorage.getItem(ACCESS);
  if (token) headers.set("Authorization", `Bearer ${token}`);
  return { ...options, headers };
}

// fetch() with the user's token; a 401 refreshes once, then sends the user to the login page.
export async function authFetch(path, options = {}) {
  if (!sessionStorage.getItem(ACCESS)) return toLogin();
  let response = await fetch(path, withAuth(options));
  if (response.status === 401 && (await refreshAccess())) {
    response = await fetch(path, withAuth(options));
  }
  if (response.status === 401) return toLogin();
  return response;
}

// JSON from the API; errors raise ApiError with the server's own message.
export async function api(path, options = {}) {
  const opts = { ...options };
  if (opts.json !== undefined) {
    opts.body = JSON.stringify(opts.json);
    opts.headers = { ...(opts.headers || {}), "Content-Type": "application/json" };
    delete opts.json;
  }
  const response = await authFetch(path, opts);
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = text;
  }
  if (!response.ok) throw new ApiError(response.status, detailOf(body, response.status));
  return body;
}

// Server-sent events read with fetch (EventSource cannot send the Authorization header).
// Calls onEvent(name, data) per event; returns a function that stops the stream.
export function subscribe(path, onEvent, onError = () => {}) {
  const controller = new AbortController();
  (async () => {
    try {
      const response = await authFetch(path, {
        signal: controller.signal,
        headers: { Accept: "text/event-stream" },
      });
      if (!response.ok) throw new ApiError(response.status, `stream ${path}: HTTP ${response.status}`);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let name = "message";
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) name = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
          }
          if (data.length) onEvent(name, JSON.parse(data.join("\n")));
        }
      }
    } catch (err) {
      if (err.name !== "AbortError") onError(err);
    }
  })();
  return () => controller.abort();
}

let me = null;

// The signed-in user ({username, role, models_access}); sends to the login page without one.
export async function currentUser() {
  if (me === null) me = await api("/api/dashboard/me/");
  return me;
}

const NAV = [
  ["fleet", "/ui/", "Fleet"],
  ["tests", "/ui/tests", "Tests"],
  ["models", "/ui/models", "Models"],
  ["analytics", "/ui/analytics", "Analytics"],
];

// Draws the top bar; `active` is one of fleet, tests, models, analytics.
export async function page(active) {
  const user = await currentUser();
  const bar = el("header", { class: "topbar" }, [
    el("a", { class: "brand", href: "/ui/" }, ["batterytwin"]),
    el(
      "nav",
      {},
      NAV.map(([key, href, label]) =>
        el("a", { href, class: key === active ? "active" : "", "data-nav": key }, [label]),
      ),
    ),
    el("span", { class: "user", "data-testid": "user" }, [`${user.username} (${user.role})`]),
    el("button", { class: "link", type: "button", onclick: logout }, ["Log out"]),
  ]);
  document.body.prepend(bar);
  return user;
}

// document.createElement with attributes and children; on* attributes become listeners.
export function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else {
      node.setAttribute(key, value === true ? "" : value);
    }
  }
  for (const child of [].concat(children)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

// A number with `digits` decimals, or an en dash when missing.
export function num(value, digits = 2, unit = "") {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return `${Number(value).toFixed(digits)}${unit ? ` ${unit}` : ""}`;
}

export function pct(fraction, digits = 1) {
  if (fraction === null || fraction === undefined) return "–";
  return `${(100 * fraction).toFixed(digits)} %`;
}

export function when(iso) {
  if (!iso) return "–";
  return new Date(iso).toLocaleString();
}

// Shows an error in the page's message area (#message) instead of failing silently.
export function showError(err) {
  const box = document.getElementById("message");
  const text = err instanceof ApiError ? `${err.message} (HTTP ${err.status})` : String(err);
  if (box) {
    box.textContent = text;
    box.className = "message error";
    box.hidden = false;
  } else {
    console.error(text);
  }
}

export function showInfo(text) {
  const box = document.getElementById("message");
  if (!box) return;
  box.textContent = text;
  box.className = "message info";
  box.hidden = false;
}

// Plotly's shared look: light grid, compact margins, responsive.
export const PLOT_LAYOUT = {
  margin: { l: 55, r: 15, t: 30, b: 45 },
  paper_bgcolor: "rgba(0,0,0,0)",
  plot_bgcolor: "rgba(0,0,0,0)",
  font: { family: "system-ui, sans-serif", size: 12 },
  legend: { orientation: "h", y: -0.2 },
};
export const PLOT_CONFIG = { responsive: true, displaylogo: false };

// POSTs a FormData with the user's token, reporting upload progress: onProgress(sent, total)
// while the body goes out, onProgress(null, null) once it is sent and the server works.
// Resolves to the JSON answer; errors raise ApiError with the server's own message.
export async function uploadForm(path, form, onProgress = () => {}) {
  if (!sessionStorage.getItem(ACCESS)) return toLogin();
  const send = () =>
    new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", path);
      xhr.setRequestHeader("Authorization", `Bearer ${sessionStorage.getItem(ACCESS)}`);
      xhr.upload.onprogress = (event) => onProgress(event.loaded, event.lengthComputable ? event.total : null);
      xhr.upload.onload = () => onProgress(null, null);
      xhr.onload = () => resolve(xhr);
      xhr.onerror = () => reject(new ApiError(0, `the upload to ${path} failed (network error)`));
      xhr.send(form);
    });
  let xhr = await send();
  if (xhr.status === 401 && (await refreshAccess())) xhr = await send();
  if (xhr.status === 401) return toLogin();
  let body = null;
  try {
    body = xhr.responseText ? JSON.parse(xhr.responseText) : null;
  } catch {
    body = xhr.responseText;
  }
  if (xhr.status < 200 || xhr.status >= 300) throw new ApiError(xhr.status, detailOf(body, xhr.status));
  return body;
}

// A file from the API saved under the server's name (Content-Disposition) or `fallback`.
export async function download(path, fallback = "download") {
  const response = await authFetch(path);
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    throw new ApiError(response.status, detailOf(body, response.status));
  }
  const disposition = response.headers.get("Content-Disposition") || "";
  const match = /filename="?([^";]+)"?/.exec(disposition);
  const url = URL.createObjectURL(await response.blob());
  const link = el("a", { href: url, download: match ? match[1] : fallback, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

// --- fleet and battery pages ---

// D1.2's SoW as a coloured chip: the colour from the server (green ... black, grey).
export function sowChip(sow) {
  if (!sow) return el("span", { class: "sow-chip grey", "data-testid": "sow", title: "no SoW estimate yet" }, ["–"]);
  const label = sow.state.replaceAll("_", " ");
  return el(
    "span",
    { class: `sow-chip ${sow.colour}`, "data-testid": "sow", "data-severity": sow.severity, title: sow.message },
    [label],
  );
}

// A fraction 0..1 as a small horizontal bar with its percentage.
export function levelBar(fraction, testid = undefined) {
  if (fraction === null || fraction === undefined) return el("span", { class: "muted", "data-testid": testid }, ["–"]);
  const width = Math.max(0, Math.min(100, 100 * fraction));
  const tone = fraction < 0.2 ? "low" : fraction < 0.5 ? "mid" : "high";
  return el("span", { class: "level", "data-testid": testid, "data-value": fraction.toFixed(4) }, [
    el("span", { class: `level-track` }, [el("span", { class: `level-fill ${tone}`, style: `width:${width.toFixed(1)}%` })]),
    el("span", { class: "level-text" }, [pct(fraction, 0)]),
  ]);
}

// "5 s ago", "3 min ago", "2 h ago", "4 d ago" (or an en dash).
export function timeAgo(iso) {
  if (!iso) return "–";
  const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}
