// The fleet overview: every battery the user may read, its BMS status, SoC, SoH, SoW and alarms.
// Filters live in the URL query (?q=&pillar=&status=&severity=) so a filtered view can be shared.
import { api, el, levelBar, page, pct, showError, sowChip, timeAgo, when } from "/ui/static/app.js";

const REFRESH_MS = 10_000;
const MAX_ROWS = 500; // rows drawn at once; the search narrows the rest
const FILTERS = ["q", "pillar", "status", "severity"];
const inputs = {
  q: document.getElementById("search"),
  pillar: document.getElementById("pillar"),
  status: document.getElementById("status"),
  severity: document.getElementById("severity"),
};
let rows = [];

function readQuery() {
  const params = new URLSearchParams(window.location.search);
  for (const key of FILTERS) inputs[key].value = params.get(key) || "";
}

function writeQuery() {
  const params = new URLSearchParams();
  for (const key of FILTERS) if (inputs[key].value) params.set(key, inputs[key].value);
  const query = params.toString();
  history.replaceState(null, "", query ? `?${query}` : window.location.pathname);
}

function matches(row) {
  const q = inputs.q.value.trim().toLowerCase();
  if (q) {
    const text = [row.battery_name, row.serial_number, row.device_name, row.chemistry, row.battery_id]
      .filter((v) => v !== null && v !== undefined)
      .join(" ")
      .toLowerCase();
    if (!text.includes(q)) return false;
  }
  if (inputs.pillar.value && String(row.pillar) !== inputs.pillar.value) return false;
  if (inputs.status.value === "online" && row.online !== true) return false;
  if (inputs.status.value === "offline" && row.online !== false) return false;
  const severity = inputs.severity.value;
  if (severity === "alarm" && !row.alarms) return false;
  if (severity === "warning" && !row.warnings) return false;
  if (severity === "none" && (row.alarms || row.warnings)) return false;
  return true;
}

function statusCell(row) {
  if (row.online === null) return el("span", { class: "muted", title: "your role does not show BMS status" }, ["–"]);
  if (!row.device_id) return el("span", { class: "badge unknown" }, ["no BMS"]);
  return el("div", {}, [
    el("span", { class: `badge ${row.online ? "online" : "offline"}`, "data-testid": "online" }, [
      row.online ? "online" : "offline",
    ]),
    el("span", { class: "sub", title: when(row.last_seen) }, [row.last_seen ? `seen ${timeAgo(row.last_seen)}` : "never seen"]),
  ]);
}

function alarmsCell(row) {
  const parts = [];
  if (row.alarms) parts.push(el("span", { class: "badge alarm", title: "alarms in the last 24 h" }, [`${row.alarms} alarm${row.alarms > 1 ? "s" : ""}`]));
  if (row.warnings) parts.push(el("span", { class: "badge warning", title: "warnings in the last 24 h" }, [`${row.warnings} warn.`]));
  if (!parts.length) parts.push(el("span", { class: "badge ok" }, ["none"]));
  return el("td", { class: "num", "data-testid": "alarms", "data-alarms": row.alarms, "data-warnings": row.warnings }, parts);
}

function eventCell(row) {
  const event = row.newest_event;
  if (!event) return el("td", { class: "alarm-text muted" }, ["–"]);
  return el("td", { class: "alarm-text", "data-testid": "newest-event" }, [
    el("span", { class: `badge ${event.severity}` }, [event.kind.replaceAll("_", " ")]),
    " ",
    event.detail,
    el("span", { class: "sub", title: when(event.occurred_at) }, [timeAgo(event.occurred_at)]),
  ]);
}

function rowFor(row) {
  const href = `/ui/battery/${row.battery_id}`;
  return el(
    "tr",
    {
      class: "clickable",
      "data-testid": "fleet-row",
      "data-battery-id": row.battery_id,
      "data-name": row.battery_name,
      onclick: (event) => {
        if (!event.target.closest("a")) window.location.assign(href);
      },
    },
    [
      el("td", {}, [
        el("a", { href, "data-testid": "battery-link" }, [row.battery_name]),
        el("span", { class: "sub" }, [`${row.serial_number}${row.chemistry ? ` · ${row.chemistry}` : ""}`]),
      ]),
      el("td", {}, [
        row.device_name || el("span", { class: "muted" }, ["–"]),
        row.pillar ? el("span", { class: "sub" }, [`Pillar ${row.pillar}`]) : null,
      ]),
      el("td", {}, [statusCell(row)]),
      el("td", { title: row.soc_at ? `as of ${when(row.soc_at)}` : "" }, [levelBar(row.soc, "soc")]),
      el("td", { title: row.soh_at ? `as of ${when(row.soh_at)}` : "" }, [levelBar(row.soh, "soh")]),
      el("td", {}, [sowChip(row.sow)]),
      alarmsCell(row),
      eventCell(row),
    ],
  );
}

function render() {
  writeQuery();
  const shown = rows.filter(matches);
  shown.sort((a, b) => b.alarms - a.alarms || b.warnings - a.warnings || a.battery_name.localeCompare(b.battery_name));
  document.getElementById("fleet-rows").replaceChildren(...shown.slice(0, MAX_ROWS).map(rowFor));
  const count = document.getElementById("count");
  count.textContent =
    shown.length > MAX_ROWS
      ? `showing ${MAX_ROWS} of ${shown.length} matching batteries — narrow the search`
      : `${shown.length} of ${rows.length} batteries`;
  const empty = document.getElementById("empty");
  empty.hidden = shown.length > 0;
  empty.textContent = rows.length
    ? "No battery matches these filters. Clear the filters to see the whole fleet."
    : "No batteries yet. Batteries appear here once they are registered in the cloud (and your role may read them).";

  const withDevice = rows.filter((r) => r.online !== null && r.device_id);
  document.getElementById("kpi-batteries").textContent = rows.length;
  document.getElementById("kpi-online").textContent = withDevice.length
    ? `${withDevice.filter((r) => r.online).length} / ${withDevice.length}`
    : "–";
  const alarmed = rows.filter((r) => r.alarms).length;
  document.getElementById("kpi-alarms").textContent = alarmed;
  document.getElementById("kpi-alarms-card").classList.toggle("alarm", alarmed > 0);
  document.getElementById("kpi-warnings").textContent = rows.filter((r) => r.warnings).length;
  const soh = rows.map((r) => r.soh).filter((v) => v !== null);
  document.getElementById("kpi-soh").textContent = soh.length ? pct(soh.reduce((a, b) => a + b, 0) / soh.length) : "–";
}

async function load() {
  try {
    const fleet = await api("/api/dashboard/fleet/");
    rows = fleet.rows;
    render();
    const stamp = document.getElementById("refreshed");
    stamp.textContent = `Updated ${new Date(fleet.generated_at).toLocaleTimeString()}`;
    stamp.dataset.generatedAt = fleet.generated_at;
    document.getElementById("message").hidden = true;
  } catch (err) {
    showError(err);
  }
}

async function main() {
  await page("fleet");
  readQuery();
  for (const key of FILTERS) inputs[key].addEventListener(key === "q" ? "input" : "change", render);
  document.getElementById("clear").addEventListener("click", () => {
    for (const key of FILTERS) inputs[key].value = "";
    render();
  });
  await load();
  setInterval(load, REFRESH_MS);
}

main().catch(showError);
