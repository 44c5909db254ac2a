// The battery page: passport, live cells (server push), state trends, ECM history, EIS
// spectra with the fitted model, and commands to the BMS with their acknowledgement.
import {
  ApiError,
  PLOT_CONFIG,
  PLOT_LAYOUT,
  api,
  el,
  num,
  page,
  pct,
  showError,
  sowChip,
  subscribe,
  timeAgo,
  when,
} from "/ui/static/app.js";

const batteryId = Number(window.location.pathname.split("/").filter(Boolean).pop());
const base = `/api/dashboard/batteries/${batteryId}`;
const Plotly = window.Plotly;
const HEAT_COLUMNS = 8; // cells per heatmap row
const COMMAND_POLL_MS = 2_000; // while a command waits for its acknowledgement
const COMMAND_IDLE_MS = 15_000;
const RC = [1, 2, 3, 4];
const state = { battery: null, cells: [], ecm: [], eis: null, liveEvents: 0, updatedAt: null };

const $ = (id) => document.getElementById(id);
const cellLabel = (c) => (c.position !== null && c.position !== undefined ? `#${c.position}` : c.cell_name);

function empty(id, text) {
  const box = $(id);
  box.textContent = text || "";
  box.hidden = !text;
}

function layout(extra) {
  return { ...PLOT_LAYOUT, ...extra };
}

// --- header and passport -------------------------------------------------------------

function renderHeader(b) {
  document.title = `${b.battery_name} · batterytwin`;
  $("title").textContent = b.battery_name;
  $("subtitle").textContent = [b.serial_number, b.chemistry, b.model].filter(Boolean).join(" · ");
  const badges = [];
  if (b.online !== null && b.device_id) {
    badges.push(el("span", { class: `badge ${b.online ? "online" : "offline"}`, "data-testid": "online" }, [b.online ? "BMS online" : "BMS offline"]));
  }
  if (b.pillar) badges.push(el("span", { class: "badge info" }, [`Pillar ${b.pillar}`]));
  badges.push(sowChip(b.sow));
  if (b.alarms) badges.push(el("span", { class: "badge alarm", "data-testid": "alarm-badge", title: b.newest_event ? b.newest_event.detail : "" }, [`${b.alarms} alarm${b.alarms > 1 ? "s" : ""} (24 h)`]));
  if (b.warnings) badges.push(el("span", { class: "badge warning" }, [`${b.warnings} warning${b.warnings > 1 ? "s" : ""} (24 h)`]));
  $("header-badges").replaceChildren(...badges);
}

function valueOf(entry, digits = 1) {
  if (!entry || entry.value === null || entry.value === undefined) return "–";
  return `${num(entry.value, digits)} ${entry.unit === "degC" ? "°C" : entry.unit}`;
}

function renderPassport(p) {
  const g = p.generalInformation;
  const perf = p.performanceAndDurability;
  const neg = perf.negativeEvents || {};
  const negative = Object.values(neg).reduce((sum, e) => sum + (e.value || 0), 0);
  const facts = [
    ["Passport id", g.batteryPassportIdentifier],
    ["Serial number", g.batteryIdentifier],
    ["Model", g.batteryModel || "–"],
    ["Status", g.batteryStatus],
    ["Manufacturer", g.manufacturerIdentification || "–"],
    ["Manufactured", g.manufacturingDate || "–"],
    ["Chemistry", p.batteryComposition.batteryChemistry || "–"],
    ["Rated capacity", perf.ratedCapacity !== null ? `${perf.ratedCapacity} Wh` : "–"],
    ["Nominal voltage", perf.nominalVoltage !== null ? `${perf.nominalVoltage} V` : "–"],
    ["Weight", g.batteryWeight !== null ? `${g.batteryWeight} kg` : "–"],
    ["State of health", valueOf(perf.stateOfHealth)],
    ["Resistance increase", valueOf(perf.internalResistanceIncrease)],
    ["Round-trip efficiency", valueOf(perf.roundTripEnergyEfficiency)],
    ["Full cycles", valueOf(perf.numberOfFullCycles, 0)],
    ["Negative events", String(negative)],
    ["Max temperature", valueOf(perf.temperatureInformation.maximumTemperature)],
  ];
  $("passport").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, [k]), el("dd", {}, [String(v)])]));
}

// --- live cells ----------------------------------------------------------------------

function grid(cells, key) {
  const cols = Math.min(HEAT_COLUMNS, Math.max(cells.length, 1));
  const rows = Math.ceil(cells.length / cols);
  const z = [];
  const labels = [];
  for (let r = 0; r < rows; r++) {
    z.push([]);
    labels.push([]);
    for (let c = 0; c < cols; c++) {
      const cell = cells[r * cols + c];
      z[r].push(cell ? cell[key] : null);
      labels[r].push(cell ? `${cellLabel(cell)} · ${cell.cell_name}` : "");
    }
  }
  return { z, labels, cols, rows };
}

function drawHeat(id, cells, key, { title, unit, digits, colorscale }) {
  const { z, labels, cols } = grid(cells, key);
  const trace = {
    type: "heatmap",
    z,
    customdata: labels,
    x: Array.from({ length: cols }, (_, k) => k),
    colorscale,
    texttemplate: `%{z:.${digits}f}`,
    textfont: { size: 11 },
    hovertemplate: `%{customdata}<br>%{z:.${digits}f} ${unit}<extra></extra>`,
    xgap: 3,
    ygap: 3,
    colorbar: { thickness: 10, title: { text: unit, side: "right" } },
  };
  const lay = layout({
    title: { text: title, font: { size: 13 }, x: 0, xanchor: "left" },
    margin: { l: 10, r: 10, t: 28, b: 8 },
    xaxis: { visible: false },
    yaxis: { visible: false, autorange: "reversed" },
  });
  Plotly.react($(id), [trace], lay, { ...PLOT_CONFIG, displayModeBar: false });
}

function renderCells(snapshot) {
  state.cells = snapshot.cells;
  state.updatedAt = snapshot.updated_at;
  const card = $("live-card");
  card.dataset.updated = snapshot.updated_at || "";
  card.dataset.events = String(state.liveEvents);
  const measured = snapshot.cells.filter((c) => c.measured_at);
  if (!measured.length) {
    empty("cells-empty", snapshot.cells.length ? "No measurement stored yet for these cells — they appear here as soon as the BMS reports." : "This battery has no cells in the passport yet.");
    $("heat-voltage").hidden = true;
    $("heat-temperature").hidden = true;
    return;
  }
  empty("cells-empty", "");
  $("heat-voltage").hidden = false;
  $("heat-temperature").hidden = false;
  drawHeat("heat-voltage", snapshot.cells, "voltage", { title: "Cell voltage", unit: "V", digits: 3, colorscale: "Viridis" });
  drawHeat("heat-temperature", snapshot.cells, "temperature", {
    title: "Cell temperature",
    unit: "°C",
    digits: 1,
    colorscale: [[0, "#2c7bb6"], [0.5, "#ffffbf"], [1, "#d7191c"]],
  });
  const volts = measured.map((c) => c.voltage).filter((v) => v !== null);
  const temps = measured.map((c) => c.temperature).filter((v) => v !== null);
  const socs = measured.map((c) => c.soc).filter((v) => v !== null);
  const kpi = (label, value, testid) => el("span", { "data-testid": testid }, [`${label} `, el("b", {}, [value])]);
  $("cell-kpis").replaceChildren(
    kpi("V min", volts.length ? num(Math.min(...volts), 3, "V") : "–", "v-min"),
    kpi("V max", volts.length ? num(Math.max(...volts), 3, "V") : "–", "v-max"),
    kpi("spread", volts.length ? num(1000 * (Math.max(...volts) - Math.min(...volts)), 0, "mV") : "–", "v-spread"),
    kpi("T max", temps.length ? num(Math.max(...temps), 1, "°C") : "–", "t-max"),
    kpi("SoC", socs.length ? pct(socs.reduce((a, b) => a + b, 0) / socs.length) : "–", "soc-mean"),
  );
  $("heat-voltage").dataset.maxVoltage = volts.length ? String(Math.max(...volts)) : "";
  tickUpdated();
}

function tickUpdated() {
  const box = $("live-updated");
  if (!state.updatedAt) return;
  box.textContent = `newest measurement ${new Date(state.updatedAt).toLocaleTimeString()} (${timeAgo(state.updatedAt)})`;
  box.title = when(state.updatedAt);
}

function setLive(on, text) {
  const dot = $("live-status");
  dot.className = `live-dot ${on ? "on" : "off"}`;
  dot.textContent = text;
}

function startLive() {
  subscribe(
    `${base}/live`,
    (name, data) => {
      if (name !== "cells") return;
      state.liveEvents += 1;
      setLive(true, "live");
      renderCells(data);
    },
    (err) => {
      setLive(false, "disconnected — retrying");
      if (err instanceof ApiError && (err.status === 403 || err.status === 404)) return;
      setTimeout(startLive, 3_000);
    },
  );
}

// --- trends ----------------------------------------------------------------------------

function series(points, key, name, style) {
  const pts = points.filter((p) => p[key] !== null);
  if (!pts.length) return null;
  return { x: pts.map((p) => new Date(p.at)), y: pts.map((p) => 100 * p[key]), name, type: "scatter", ...style };
}

async function loadTrends() {
  const t = await api(`${base}/trends/`);
  const est = { mode: "lines+markers", line: { dash: "dot" }, marker: { size: 6 } };
  const tel = { mode: "lines" };
  const keys = [["soc", "SoC"], ["soh", "SoH"], ["sot", "SoT"], ["sos", "SoS"]];
  const bms = keys.map(([k, label]) => series(t.telemetry, k, `${label} (BMS)`, tel)).filter(Boolean);
  const cloud = keys.map(([k, label]) => series(t.estimates, k, `${label} (cloud)`, est)).filter(Boolean);
  $("trends-note").textContent = t.downsampled ? `averaged to ≤ ${t.limit} points` : "";
  const plot = $("trends");
  if (!bms.length && !cloud.length) {
    plot.hidden = true;
    empty("trends-empty", "No state estimates yet. Pillar 2 BMSs report SoC, SoH, SoT and SoS with their telemetry; the cloud estimates SoH weekly.");
  } else {
    empty("trends-empty", "");
    // The BMS's recent telemetry and the cloud's long-term estimates span very different
    // times: each gets its own panel and time axis.
    const both = bms.length && cloud.length;
    const yPct = (title, domain) => ({ title: { text: title }, range: [0, 105], domain });
    const lay = both
      ? {
          xaxis: { type: "date", anchor: "y" },
          yaxis: yPct("BMS, 7 days [%]", [0.58, 1]),
          xaxis2: { type: "date", anchor: "y2" },
          yaxis2: yPct("cloud [%]", [0, 0.4]),
        }
      : { xaxis: { type: "date" }, yaxis: yPct(bms.length ? "BMS, 7 days [%]" : "cloud estimates [%]") };
    for (const trace of both ? cloud : []) Object.assign(trace, { xaxis: "x2", yaxis: "y2" });
    plot.classList.toggle("tall", Boolean(both));
    Plotly.react(plot, [...bms, ...cloud], layout({ ...lay, margin: { l: 55, r: 15, t: 15, b: 40 }, legend: { orientation: "h", y: both ? -0.12 : -0.2 } }), PLOT_CONFIG);
  }
  const sows = t.sow.slice(-5);
  $("sow-history").replaceChildren(
    ...(sows.length
      ? [el("span", {}, ["State of warranty:"]), ...sows.flatMap((s) => [el("span", {}, [new Date(s.at).toLocaleDateString()]), sowChip({ ...s, message: `RW ${pct(s.rw)} · RH ${pct(s.rh)} · RUW ${pct(s.ruw)}` })])]
      : [el("span", {}, ["No State-of-Warranty estimate yet."])]),
  );
}

// --- ECM history -------------------------------------------------------------------------

function meanBy(rows, keys) {
  const groups = new Map();
  for (const r of rows) {
    const g = groups.get(r.created_at) || [];
    g.push(r);
    groups.set(r.created_at, g);
  }
  return [...groups.entries()]
    .map(([at, g]) => {
      const out = { created_at: at };
      for (const k of keys) {
        const v = g.map((r) => r[k]).filter((x) => x !== null && x !== undefined);
        out[k] = v.length ? v.reduce((a, b) => a + b, 0) / v.length : null;
      }
      return out;
    })
    .sort((a, b) => a.created_at.localeCompare(b.created_at));
}

const ECM_KEYS = ["voltage", "r0", ...RC.map((k) => `r${k}`), ...RC.map((k) => `c${k}`)];

function renderEcm() {
  const choice = $("ecm-cell").value;
  const rows = choice ? state.ecm.filter((r) => String(r.cell_id) === choice) : state.ecm;
  if (!rows.length) {
    $("ecm-r").hidden = true;
    $("ecm-c").hidden = true;
    $("ecm-cell").parentElement.hidden = !state.ecm.length;
    empty("ecm-empty", "No ECM parameters stored yet — the cloud fits them from each EIS sweep.");
    return;
  }
  empty("ecm-empty", "");
  $("ecm-cell").parentElement.hidden = false;
  $("ecm-r").hidden = false;
  $("ecm-c").hidden = false;
  const points = meanBy(rows, ECM_KEYS);
  const x = points.map((p) => new Date(p.created_at));
  const line = (key, scale, name) => {
    if (!points.some((p) => p[key] !== null)) return null;
    return { x, y: points.map((p) => (p[key] === null ? null : p[key] * scale)), name, mode: "lines+markers", type: "scatter" };
  };
  const rTraces = ["r0", ...RC.map((k) => `r${k}`)].map((k) => line(k, 1000, k.toUpperCase())).filter(Boolean);
  const cTraces = RC.map((k) => line(`c${k}`, 1, `C${k}`)).filter(Boolean);
  Plotly.react($("ecm-r"), rTraces, layout({ yaxis: { title: { text: "R [mΩ]" } }, xaxis: { type: "date" }, margin: { l: 55, r: 10, t: 10, b: 30 }, legend: { orientation: "v", x: 1.02, y: 1 } }), PLOT_CONFIG);
  Plotly.react($("ecm-c"), cTraces, layout({ yaxis: { title: { text: "C [F]" }, type: "log" }, xaxis: { type: "date" }, margin: { l: 55, r: 10, t: 10, b: 30 }, legend: { orientation: "v", x: 1.02, y: 1 } }), PLOT_CONFIG);
}

async function loadEcm() {
  state.ecm = await api(`/api/ecm_parameters/?battery=${batteryId}&ordering=-created_at&limit=1000`);
  const cellIds = [...new Set(state.ecm.map((r) => r.cell_id).filter((c) => c !== null))];
  const names = new Map(state.cells.map((c) => [c.cell_id, cellLabel(c)]));
  $("ecm-cell").replaceChildren(
    el("option", { value: "" }, ["mean over cells"]),
    ...cellIds.map((c) => el("option", { value: String(c) }, [`cell ${names.get(c) || c}`])),
  );
  renderEcm();
}

// The newest set (mean over the cells fitted at that time), to prefill the ECM update form.
function newestEcm() {
  if (!state.ecm.length) return null;
  const points = meanBy(state.ecm, ECM_KEYS);
  return points[points.length - 1];
}

// --- EIS ---------------------------------------------------------------------------------

function phaseDeg(re, im) {
  return (Math.atan2(im, re) * 180) / Math.PI;
}

function renderEis() {
  const view = state.eis;
  const sweep = view.sweeps.find((s) => String(s.cell_id) === $("eis-cell").value) || view.sweeps[0];
  const mOhm = (v) => (v === null ? null : 1000 * v);
  const f = sweep.frequency_hz;
  const measuredStyle = { mode: "markers", marker: { size: 7, color: "#1f6feb" } };
  const fitStyle = { mode: "lines", line: { color: "#c62828", width: 2 } };
  const nyquist = [
    { x: sweep.z_re_ohm.map(mOhm), y: sweep.z_im_ohm.map((v) => (v === null ? null : -1000 * v)), name: "measured", text: f.map((v) => `${num(v, 3)} Hz`), hovertemplate: "%{text}<br>Z' %{x:.3f} mΩ<br>-Z'' %{y:.3f} mΩ<extra>measured</extra>", ...measuredStyle },
  ];
  const mod = (re, im) => re.map((r, k) => (r === null || im[k] === null ? null : 1000 * Math.hypot(r, im[k])));
  const phase = (re, im) => re.map((r, k) => (r === null || im[k] === null ? null : phaseDeg(r, im[k])));
  const bode = [
    { x: f, y: mod(sweep.z_re_ohm, sweep.z_im_ohm), name: "|Z| measured", ...measuredStyle },
    { x: f, y: phase(sweep.z_re_ohm, sweep.z_im_ohm), name: "phase measured", yaxis: "y2", mode: "markers", marker: { size: 6, symbol: "diamond-open", color: "#0b5cad" } },
  ];
  const note = $("eis-fit-note");
  if (sweep.fit) {
    const fit = sweep.fit;
    nyquist.push({ x: fit.z_re_ohm.map(mOhm), y: fit.z_im_ohm.map((v) => -1000 * v), name: `fitted ECM #${fit.ecm_id}`, hoverinfo: "skip", ...fitStyle });
    bode.push({ x: f, y: mod(fit.z_re_ohm, fit.z_im_ohm), name: "|Z| fit", ...fitStyle });
    bode.push({ x: f, y: phase(fit.z_re_ohm, fit.z_im_ohm), name: "phase fit", yaxis: "y2", mode: "lines", line: { color: "#e16f24", dash: "dash" } });
    note.textContent =
      fit.linked_by === "source"
        ? `Fit: ECM set #${fit.ecm_id}, fitted from this sweep (R0 ${num(1000 * fit.parameters.r0, 2)} mΩ)`
        : `Fit: ECM set #${fit.ecm_id}, the cell's newest set after this sweep (not linked to it)`;
  } else {
    note.textContent = "No fitted model for this sweep yet (the cloud fits new sweeps on its next run).";
  }
  $("eis-card").dataset.traces = String(nyquist.length + bode.length);
  Plotly.react(
    $("nyquist"),
    nyquist,
    layout({
      title: { text: "Nyquist", font: { size: 13 }, x: 0, xanchor: "left" },
      xaxis: { title: { text: "Z' [mΩ]" } },
      yaxis: { title: { text: "−Z'' [mΩ]" }, scaleanchor: "x", scaleratio: 1 },
      margin: { l: 55, r: 15, t: 30, b: 50 },
      legend: { orientation: "h", y: -0.3 },
    }),
    PLOT_CONFIG,
  );
  Plotly.react(
    $("bode"),
    bode,
    layout({
      title: { text: "Bode", font: { size: 13 }, x: 0, xanchor: "left" },
      xaxis: { title: { text: "frequency [Hz]" }, type: "log" },
      yaxis: { title: { text: "|Z| [mΩ]" }, type: "log" },
      yaxis2: { title: { text: "phase [°]" }, overlaying: "y", side: "right", showgrid: false, tickformat: ".0f" },
      margin: { l: 55, r: 55, t: 30, b: 50 },
      legend: { orientation: "h", y: -0.3 },
    }),
    PLOT_CONFIG,
  );
}

async function loadEis(eventId) {
  const query = eventId ? `?event_id=${encodeURIComponent(eventId)}` : "";
  state.eis = await api(`${base}/eis/${query}`);
  const view = state.eis;
  if (!view.sweeps.length) {
    $("eis-plots").hidden = true;
    $("eis-sweep").parentElement.hidden = true;
    $("eis-cell").parentElement.hidden = true;
    $("eis-fit-note").textContent = "";
    empty("eis-empty", "No EIS sweep stored yet — send an EIS request below.");
    return;
  }
  empty("eis-empty", "");
  $("eis-plots").hidden = false;
  $("eis-sweep").parentElement.hidden = false;
  $("eis-cell").parentElement.hidden = false;
  const previous = $("eis-cell").value;
  $("eis-sweep").replaceChildren(
    ...view.available.map((s) =>
      el("option", { value: s.event_id, selected: s.event_id === view.event_id }, [`${new Date(s.measured_at).toLocaleString()} · ${s.cells} cell${s.cells > 1 ? "s" : ""}`]),
    ),
  );
  $("eis-cell").replaceChildren(
    ...view.sweeps.map((s) => el("option", { value: String(s.cell_id), selected: String(s.cell_id) === previous }, [`cell ${cellLabel(s)}`])),
  );
  renderEis();
}

// --- commands ----------------------------------------------------------------------------

function field(name, label, attrs = {}) {
  return el("label", {}, [label, el("input", { name, type: "number", step: "any", inputmode: "decimal", ...attrs })]);
}

function numberOf(form, name) {
  const raw = form.elements[name].value.trim();
  return raw === "" ? null : Number(raw);
}

function validateEcm(form) {
  const errors = [];
  const params = {};
  const voltage = numberOf(form, "voltage");
  if (voltage === null || !Number.isFinite(voltage)) errors.push("Voltage: enter the voltage (V) where the parameters apply.");
  else params.voltage = voltage;
  for (const key of ["r0", "r1", "c1"]) {
    const v = numberOf(form, key);
    if (v === null || !(v > 0)) errors.push(`${key.toUpperCase()} is required and must be > 0.`);
    else params[key] = key.startsWith("r") ? v / 1000 : v; // R entered in mΩ
  }
  for (const k of [2, 3, 4]) {
    const r = numberOf(form, `r${k}`);
    const c = numberOf(form, `c${k}`);
    if ((r === null) !== (c === null)) errors.push(`R${k} and C${k} come together: give both or neither.`);
    else if (r !== null && !(r > 0 && c > 0)) errors.push(`R${k} and C${k} must be > 0.`);
    else if (r !== null) {
      params[`r${k}`] = r / 1000;
      params[`c${k}`] = c;
    }
  }
  return { errors, params };
}

function validateEis(form) {
  const errors = [];
  const params = {};
  const raw = form.elements.cells.value.trim();
  if (raw) {
    const cells = raw.split(/[\s,;]+/).filter(Boolean).map(Number);
    if (cells.some((c) => !Number.isInteger(c) || c < 0)) errors.push("Cells: positions as whole numbers ≥ 0, separated by commas (empty: every cell).");
    else params.cells = cells;
  } else {
    params.cells = null;
  }
  const fMin = numberOf(form, "f_min_hz");
  const fMax = numberOf(form, "f_max_hz");
  const points = numberOf(form, "points");
  if (!(fMin > 0)) errors.push("f min must be > 0 Hz.");
  if (!(fMax > 0)) errors.push("f max must be > 0 Hz.");
  if (fMin > 0 && fMax > 0 && fMax < fMin) errors.push("f max must be ≥ f min.");
  if (!Number.isInteger(points) || points < 1 || points > 1000) errors.push("Points: a whole number from 1 to 1000.");
  Object.assign(params, { f_min_hz: fMin, f_max_hz: fMax, points });
  return { errors, params };
}

function validateInterval(form) {
  const v = numberOf(form, "interval_s");
  if (v === null || !(v > 0)) return { errors: ["Interval must be > 0 s."], params: {} };
  return { errors: [], params: { interval_s: v } };
}

function commandForm({ id, kind, title, fields, validate, button, hint }) {
  const error = el("p", { class: "form-error", "data-testid": `${id}-error`, role: "alert" });
  const ok = el("p", { class: "form-ok", "data-testid": `${id}-ok` });
  const form = el("form", { class: "command", id, novalidate: true }, [
    el("h3", {}, [title]),
    hint ? el("p", { class: "muted small", style: "margin:0" }, [hint]) : null,
    el("div", { class: "fields" }, fields),
    el("div", {}, [el("button", { type: "submit", id: `${id}-send` }, [button])]),
    error,
    ok,
  ]);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    ok.textContent = "";
    const { errors, params } = validate(form);
    if (errors.length) {
      error.textContent = errors.join(" ");
      return;
    }
    const button = form.querySelector("button");
    button.disabled = true;
    try {
      const cmd = await api("/api/commands/", { method: "POST", json: { device_id: Number($("device").value), kind, params } });
      ok.textContent = `Command #${cmd.id} ${cmd.status} — waiting for the BMS to acknowledge.`;
      await loadCommands();
    } catch (err) {
      error.textContent = err instanceof ApiError ? `Not sent: ${err.message} (HTTP ${err.status})` : String(err);
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

function buildForms() {
  const device = state.battery.device_list.find((d) => String(d.id) === $("device").value) || state.battery.device_list[0];
  const ecm = newestEcm();
  const pre = (key, scale = 1) => (ecm && ecm[key] !== null && ecm[key] !== undefined ? String(+(ecm[key] * scale).toPrecision(6)) : undefined);
  const ecmFields = [
    field("voltage", "Voltage [V]", { value: pre("voltage") }),
    field("r0", "R0 [mΩ]", { value: pre("r0", 1000) }),
    ...RC.flatMap((k) => [field(`r${k}`, `R${k} [mΩ]`, { value: pre(`r${k}`, 1000) }), field(`c${k}`, `C${k} [F]`, { value: pre(`c${k}`) })]),
  ];
  $("command-forms").replaceChildren(
    commandForm({
      id: "ecm-form",
      kind: "ecm_update",
      title: "ECM update",
      hint: ecm ? `Prefilled from the newest set (${new Date(ecm.created_at).toLocaleString()}).` : "No stored set to start from.",
      fields: ecmFields,
      validate: validateEcm,
      button: "Send ECM update",
    }),
    commandForm({
      id: "eis-form",
      kind: "eis_request",
      title: "EIS request",
      hint: "Run an impedance sweep on the BMS.",
      fields: [
        el("label", { style: "grid-column: 1 / -1" }, ["Cells (positions; empty: all)", el("input", { name: "cells", type: "text", placeholder: "e.g. 0, 3, 7" })]),
        field("f_min_hz", "f min [Hz]", { value: "0.1" }),
        field("f_max_hz", "f max [Hz]", { value: "1000" }),
        field("points", "Points", { value: "30", step: "1" }),
      ],
      validate: validateEis,
      button: "Request EIS sweep",
    }),
    commandForm({
      id: "interval-form",
      kind: "reporting_interval",
      title: "Reporting interval",
      hint: `Now: every ${num(device.reporting_interval_s, 1, "s")}.`,
      fields: [field("interval_s", "Interval [s]", { value: String(device.reporting_interval_s) })],
      validate: validateInterval,
      button: "Set interval",
    }),
  );
}

const STATUS_TEXT = { pending: "pending", sent: "sent · awaiting ack", acked: "acked", failed: "failed" };

function summary(cmd) {
  const p = cmd.params || {};
  if (cmd.kind === "ecm_update") return `ECM update: R0 ${num(1000 * p.r0, 2)} mΩ at ${num(p.voltage, 2)} V`;
  if (cmd.kind === "eis_request") return `EIS ${p.f_min_hz}–${p.f_max_hz} Hz, ${p.points} pts, cells ${p.cells ? p.cells.join(",") : "all"}`;
  if (cmd.kind === "reporting_interval") return `Report every ${p.interval_s} s`;
  return cmd.kind;
}

let commandTimer = null;

async function loadCommands() {
  clearTimeout(commandTimer);
  const device = $("device").value;
  let commands = [];
  try {
    commands = await api(`/api/commands/?device=${device}&limit=50`);
  } catch (err) {
    showError(err);
  }
  $("commands").replaceChildren(
    ...commands.map((c) =>
      el("tr", { "data-testid": "command-row", "data-command-id": c.id, "data-status": c.status }, [
        el("td", {}, [String(c.id)]),
        el("td", {}, [summary(c)]),
        el("td", {}, [el("span", { class: `badge ${c.status}`, "data-testid": "command-status" }, [STATUS_TEXT[c.status] || c.status])]),
        el("td", { title: when(c.created_at) }, [timeAgo(c.created_at)]),
        el("td", { title: when(c.acked_at) }, [c.acked_at ? timeAgo(c.acked_at) : "–"]),
        el("td", { class: "small" }, [c.ack_detail || ""]),
      ]),
    ),
  );
  empty("commands-empty", commands.length ? "" : "No command sent to this BMS yet.");
  const waiting = commands.some((c) => c.status === "pending" || c.status === "sent");
  commandTimer = setTimeout(loadCommands, waiting ? COMMAND_POLL_MS : COMMAND_IDLE_MS);
}

function setupCommands() {
  const b = state.battery;
  const note = $("commands-note");
  if (!b.can_command) {
    note.hidden = false;
    note.textContent = b.device_list.length || b.online === null ? "Your role may not send commands to BMSs." : "No BMS is registered for this battery, so there is nothing to command.";
    $("commands-table").hidden = true;
    return;
  }
  $("device").replaceChildren(...b.device_list.map((d) => el("option", { value: String(d.id) }, [`${d.name} (pillar ${d.pillar})`])));
  $("device-choice").hidden = b.device_list.length < 2;
  $("device").addEventListener("change", () => {
    buildForms();
    loadCommands();
  });
  buildForms();
  loadCommands();
}

// --- events ------------------------------------------------------------------------------

async function loadEvents() {
  const events = await api(`/api/events/?battery=${batteryId}&ordering=-occurred_at&limit=20`);
  $("events").replaceChildren(
    ...events.map((e) =>
      el("tr", { "data-testid": "event-row", "data-severity": e.severity }, [
        el("td", { title: when(e.occurred_at), class: "small" }, [timeAgo(e.occurred_at)]),
        el("td", {}, [el("span", { class: `badge ${e.severity}` }, [e.severity])]),
        el("td", {}, [el("b", {}, [e.kind.replaceAll("_", " ")]), e.detail ? el("span", { class: "sub" }, [e.detail]) : null]),
      ]),
    ),
  );
  empty("events-empty", events.length ? "" : "No events reported by the BMS.");
}

// --- start -------------------------------------------------------------------------------

async function section(loader) {
  try {
    await loader();
  } catch (err) {
    showError(err);
  }
}

async function main() {
  await page("fleet");
  if (!Number.isInteger(batteryId)) throw new Error("no battery id in the address; open a battery from the fleet page");
  try {
    state.battery = await api(`${base}/`);
  } catch (err) {
    showError(err);
    for (const card of document.querySelectorAll("main section.card")) card.hidden = true;
    return;
  }
  renderHeader(state.battery);
  const first = await api(`${base}/cells/`);
  renderCells(first);
  startLive();
  setInterval(tickUpdated, 1_000);
  $("ecm-cell").addEventListener("change", renderEcm);
  $("eis-sweep").addEventListener("change", () => section(() => loadEis($("eis-sweep").value)));
  $("eis-cell").addEventListener("change", renderEis);
  await Promise.all([
    section(async () => renderPassport(await api(`/api/batteries/${batteryId}/passport`))),
    section(loadTrends),
    section(loadEcm),
    section(() => loadEis(null)),
    section(loadEvents),
  ]);
  setupCommands();
}

main().catch(showError);
