// The analytics page: upload one cell's cycling data to POST /api/upload, then the seed's
// dashboard cards (capacity fade, health, end of life) and Plotly plots drawn from the
// response's arrays. Results kept on a battery's passport can be reopened (?result=ID).
import { PLOT_CONFIG, PLOT_LAYOUT, api, el, num, page, showError, showInfo, uploadForm, when } from "/ui/static/app.js";

const $ = (id) => document.getElementById(id);
const ATTACHERS = new Set(["admin", "manufacturer", "service"]);
const HEALTH_BADGE = { Excellent: "ok", Good: "ok", Fair: "warning", Poor: "alarm", Critical: "alarm" };
const session = []; // this page's uploads: {key, label, at, result}

// ---------------------------------------------------------------- upload
async function analyse(event) {
  event.preventDefault();
  const files = [...$("upload-file").files];
  if (!files.length) return;
  const data = new FormData();
  for (const file of files) data.append("file", file, file.name);
  const battery = $("attach").value;
  const path = battery ? `/api/upload?attach_to_battery=${battery}` : "/api/upload";
  const button = $("upload-submit");
  const progress = $("upload-progress");
  const status = $("upload-state");
  button.disabled = true;
  progress.hidden = false;
  progress.value = 0;
  status.textContent = "Uploading…";
  try {
    const result = await uploadForm(path, data, (sent, total) => {
      if (sent === null) {
        progress.removeAttribute("value");
        status.textContent = "Analysing…";
      } else if (total) {
        progress.value = sent / total;
        status.textContent = `Uploading… ${Math.round((100 * sent) / total)} %`;
      }
    });
    const names = files.map((f) => f.name).join(", ");
    session.unshift({ key: `s${session.length}`, label: names, at: new Date().toISOString(), result });
    status.textContent = "";
    showInfo(
      battery
        ? `Analysed ${names}; the result is kept on battery ${$("attach").selectedOptions[0].textContent}.`
        : `Analysed ${names}. The result is not stored; pick a battery above to keep one.`,
    );
    show(result, names);
    if (battery) {
      $("earlier-battery").value = battery;
    }
    await listEarlier();
  } catch (err) {
    status.textContent = "";
    showError(err);
  } finally {
    button.disabled = false;
    progress.hidden = true;
  }
}

// ---------------------------------------------------------------- earlier results
async function loadBatteries(user) {
  let batteries = [];
  try {
    batteries = await api("/api/batteries/?limit=100");
  } catch (err) {
    showError(err);
  }
  const options = batteries.map((b) => el("option", { value: b.id }, [`${b.battery_name} (${b.serial_number})`]));
  $("earlier-battery").append(...options);
  if (ATTACHERS.has(user.role) && batteries.length) {
    $("attach-label").hidden = false;
    $("attach").append(...options.map((o) => o.cloneNode(true)));
  }
}

async function listEarlier() {
  const battery = $("earlier-battery").value;
  const list = $("earlier");
  const empty = $("earlier-empty");
  let items;
  if (!battery) {
    items = session.map((s) => ({
      key: s.key,
      title: s.result.metadata.cell_id || s.label,
      detail: `${s.label} · ${when(s.at)}`,
      health: s.result.battery_health,
      open: () => show(s.result, s.label),
    }));
    empty.textContent = "Nothing uploaded in this session yet. Results kept on a battery are listed when you pick it above.";
  } else {
    const rows = await api(`/api/analytics/results/?battery=${battery}&limit=50`);
    items = rows.map((r) => ({
      key: `r${r.id}`,
      title: r.cell_id || `result #${r.id}`,
      detail: `${r.source} · ${when(r.created_at)}`,
      health: { health_status: r.health_status, health_score: r.health_score },
      open: () => reopen(r.id),
    }));
    empty.textContent = "No result kept on this battery yet: upload with it chosen under “Keep the result on a battery's passport”.";
  }
  empty.hidden = items.length > 0;
  list.replaceChildren(
    ...items.map((item) =>
      el("li", {}, [
        el("button", { type: "button", class: "link-button", "data-testid": "earlier-item", "data-key": item.key, onclick: item.open }, [
          el("strong", {}, [item.title]),
          " ",
          item.health && item.health.health_status
            ? el("span", { class: `badge ${HEALTH_BADGE[item.health.health_status] || "info"}` }, [
                `${item.health.health_status} ${num(item.health.health_score, 1)}`,
              ])
            : null,
          el("div", { class: "muted small" }, [item.detail]),
        ]),
      ]),
    ),
  );
}

async function reopen(id) {
  const stored = await api(`/api/analytics/results/${id}/`);
  const params = new URLSearchParams(window.location.search);
  params.set("result", String(id));
  window.history.replaceState(null, "", `?${params}`);
  show(stored.result, `${stored.source}, kept ${when(stored.created_at)}`);
}

// ---------------------------------------------------------------- cards
function card(testid, label, value, sub, raw) {
  return el("div", { class: "kpi", "data-testid": testid, "data-value": raw === undefined || raw === null ? "" : String(raw) }, [
    el("div", { class: "label" }, [label]),
    el("div", { class: "value" }, [value]),
    sub ? el("div", { class: "muted small" }, [sub]) : null,
  ]);
}

function cards(result) {
  const meta = result.metadata;
  const fade = result.capacity_fade;
  const health = result.battery_health;
  const life = result.statistical_metrics.cycle_life_projection;
  const ce = (result.statistical_metrics.charge_discharge_stats || {}).coulombic_efficiency || {};
  const temp = result.temperature_analysis;
  const interval = life.projected_eol_interval;
  const intervalText = interval
    ? `${Math.round((life.interval_level || 0.9) * 100)} %: ${interval[0] ?? "?"} – ${interval[1] ?? "open"}`
    : life.note || "no projection";
  return [
    card(
      "card-health",
      "Health",
      el("span", { class: `badge big ${HEALTH_BADGE[health.health_status] || "info"}` }, [health.health_status || "–"]),
      `score ${num(health.health_score, 1)} / 100`,
      health.health_score,
    ),
    card(
      "card-retention",
      "Capacity retention",
      num(fade.capacity_retention_percentage, 2, "%"),
      `fade ${num(fade.capacity_fade_percentage, 2, "%")}, ${num(fade.capacity_fade_rate_per_cycle, 4, "% / cycle")}`,
      fade.capacity_retention_percentage,
    ),
    card(
      "card-capacity",
      "Capacity now",
      num(fade.final_capacity_in_Ah, 2, "Ah"),
      `from ${num(fade.initial_capacity_in_Ah, 2, "Ah")} (nominal ${num(meta.nominal_capacity_in_Ah, 1, "Ah")})`,
      fade.final_capacity_in_Ah,
    ),
    card(
      "card-eol",
      `End of life (${num(life.eol_threshold_percentage, 0, "%")})`,
      life.projected_eol_cycle === null || life.projected_eol_cycle === undefined ? "–" : `cycle ${life.projected_eol_cycle}`,
      intervalText,
      life.projected_eol_cycle,
    ),
    card(
      "card-fade-rate",
      "Fade now, mAh/cycle",
      num(life.fade_rate === null ? null : life.fade_rate * 1000, 1),
      life.confidence === null || life.confidence === undefined ? "no confidence" : `confidence ${num(life.confidence, 2)}, R² ${num(life.r_squared, 3)}`,
      life.fade_rate,
    ),
    card(
      "card-cycles",
      "Cycles",
      String(meta.total_cycles ?? "–"),
      `cycles ${meta.first_cycle_number ?? "?"} – ${meta.last_cycle_number ?? "?"}`,
      meta.total_cycles,
    ),
    card("card-ce", "Coulombic efficiency", num(ce.mean, 2, "%"), `min ${num(ce.min, 2, "%")}`, ce.mean),
    card(
      "card-temperature",
      "Temperature",
      temp.has_temperature_data ? num(temp.average_temperature, 1, "°C") : "–",
      temp.has_temperature_data ? `${num(temp.temperature_range.min, 1)} – ${num(temp.temperature_range.max, 1)} °C` : "no temperature data",
      temp.average_temperature,
    ),
  ];
}

// ---------------------------------------------------------------- plots
const layout = (x, y, extra = {}) => ({
  ...PLOT_LAYOUT,
  margin: { l: 55, r: 10, t: 10, b: 45 },
  xaxis: { title: { text: x } },
  yaxis: { title: { text: y } },
  legend: { orientation: "v", x: 1.02, y: 1, font: { size: 11 } },
  ...extra,
});

// cycle colours from light (early) to dark (late), as the server's PNGs
function shade(index, count, hue) {
  const t = count > 1 ? index / (count - 1) : 1;
  return `hsl(${hue}, 70%, ${70 - 40 * t}%)`;
}

function capacityPlot(result) {
  const fade = result.capacity_fade;
  const life = result.statistical_metrics.cycle_life_projection;
  const cycles = fade.cycle_numbers;
  const traces = [
    { type: "scatter", mode: "markers", name: "discharge", x: cycles, y: fade.discharge_capacities, marker: { color: "#c62828", size: 5 } },
    { type: "scatter", mode: "markers", name: "charge", x: cycles, y: fade.charge_capacities, marker: { color: "#1f6feb", size: 4, opacity: 0.5 } },
  ];
  const p = life.parameters;
  let reachesEol = false; // the EOL line and point only when the fit gets there on this chart
  if (p && cycles.length) {
    const spent = Number(result.metadata.already_spent_cycles) > 0 ? Number(result.metadata.already_spent_cycles) : 0;
    const first = cycles[0];
    const last = cycles[cycles.length - 1];
    const toCycle = Math.min(first, 1) - 1 - spent; // as the server: x + toCycle = cycle number
    const projected = life.projected_eol_cycle;
    const end = Math.max(projected ? Math.min(projected * 1.05, last * 3) : last * 1.2, last);
    reachesEol = Boolean(projected) && projected <= end;
    const grid = Array.from({ length: 80 }, (_, i) => first + ((end - first) * i) / 79);
    traces.push({
      type: "scatter",
      mode: "lines",
      name: `fit Q = q0 − a·x^${num(p.b, 2)}`,
      x: grid,
      y: grid.map((c) => p.q0_in_Ah - p.a_in_Ah * Math.max(c - toCycle, 0) ** p.b),
      line: { color: "#1d2330", width: 2 },
    });
    if (reachesEol) {
      traces.push({
        type: "scatter",
        mode: "markers",
        name: `EOL at cycle ${projected}`,
        x: [projected],
        y: [life.eol_capacity_in_Ah],
        marker: { color: "#1d2330", symbol: "x", size: 10 },
      });
    }
  }
  const eol = life.eol_capacity_in_Ah;
  const shapes = reachesEol
    ? [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: eol, y1: eol, line: { dash: "dash", color: "#5d6677", width: 1 } }]
    : [];
  const note = life.projected_eol_cycle
    ? reachesEol
      ? null
      : `EOL (${num(eol, 1)} Ah) projected at cycle ${life.projected_eol_cycle}, beyond this chart`
    : `no EOL projection${life.note ? `: ${life.note}` : ""}`;
  const annotations = note
    ? [{ xref: "paper", yref: "paper", x: 0.02, y: 0.02, xanchor: "left", yanchor: "bottom", showarrow: false, text: note, font: { size: 11, color: "#5d6677" } }]
    : [];
  Plotly.react("capacity-plot", traces, layout("cycle", "capacity [Ah]", { shapes, annotations }), PLOT_CONFIG);
}

function voltagePlot(result) {
  const curves = result.voltage_profile.voltage_curves || [];
  const traces = [];
  curves.forEach((curve, i) => {
    for (const [phase, hue, dash] of [["discharge_data", 0, "solid"], ["charge_data", 215, "dot"]]) {
      const data = curve[phase];
      if (!data || !data.capacities || !data.capacities.length) continue;
      traces.push({
        type: "scatter",
        mode: "lines",
        name: `${phase === "charge_data" ? "charge" : "discharge"} ${curve.cycle_number}`,
        legendgroup: String(curve.cycle_number),
        x: data.capacities,
        y: data.voltages,
        line: { color: shade(i, curves.length, hue), dash, width: 1.6 },
      });
    }
  });
  Plotly.react("voltage-plot", traces, layout("capacity [Ah]", "voltage [V]"), PLOT_CONFIG);
}

function incrementalPlot(result) {
  const ic = result.voltage_profile.incremental_capacity || {};
  const curves = ic.curves || [];
  const traces = curves.map((curve, i) => ({
    type: "scatter",
    mode: "lines",
    name: `cycle ${curve.cycle_number}`,
    x: ic.voltage_grid_V,
    y: curve.dq_dv_Ah_per_V,
    line: { color: shade(i, curves.length, 0), width: 1.6 },
  }));
  (ic.peaks || []).forEach((peak, i) => {
    traces.push({
      type: "scatter",
      mode: "markers",
      name: `peak ${i + 1}: ${num(peak.shift_mV, 1)} mV shift`,
      x: peak.voltage_V,
      y: peak.height_Ah_per_V,
      marker: { size: 4, color: "#1d2330" },
    });
  });
  Plotly.react("ic-plot", traces, layout("voltage [V]", "dQ/dV [Ah/V]"), PLOT_CONFIG);
}

function differentialPlot(result) {
  const curves = result.voltage_profile.differential_voltage || [];
  const traces = curves.map((curve, i) => ({
    type: "scatter",
    mode: "lines",
    name: `cycle ${curve.cycle_number}`,
    x: curve.capacities,
    y: curve.dv_dq,
    line: { color: shade(i, curves.length, 215), width: 1.6 },
  }));
  Plotly.react("dv-plot", traces, layout("discharged capacity [Ah]", "−dV/dQ [V/Ah]"), PLOT_CONFIG);
}

// ---------------------------------------------------------------- details
function facts(target, pairs) {
  $(target).replaceChildren(
    ...pairs.flatMap(([term, value]) => [el("dt", {}, [term]), el("dd", {}, [value === null || value === undefined || value === "" ? "–" : value])]),
  );
}

function indicators(result) {
  const health = result.battery_health;
  const details = health.indicator_details || [];
  const names = health.degradation_indicators || [];
  if (!names.length) {
    return [el("p", { class: "ok-text", "data-testid": "no-indicators" }, ["No degradation indicator raised."]), el("p", { class: "muted small" }, [health.scale || ""])];
  }
  return [
    el(
      "ul",
      { class: "indicators" },
      names.map((name) => {
        const detail = details.find((d) => d.indicator === name) || {};
        return el("li", { "data-testid": "indicator" }, [
          el("span", { class: "badge warning" }, [name]),
          " ",
          detail.detail || "",
        ]);
      }),
    ),
    el("p", { class: "muted small" }, [health.scale || ""]),
  ];
}

function show(result, source) {
  $("result").hidden = false;
  $("result-empty").hidden = true;
  const meta = result.metadata;
  $("result-title").textContent = `Cell ${meta.cell_id || "(no id)"}`;
  $("result-subtitle").textContent = [
    source,
    [meta.form_factor, meta.cathode_material, meta.anode_material].filter(Boolean).join(", "),
    meta.test_temperature_C !== null && meta.test_temperature_C !== undefined ? `tested at ${meta.test_temperature_C} °C` : null,
  ]
    .filter(Boolean)
    .join(" · ");
  $("cards").replaceChildren(...cards(result));
  $("indicators").replaceChildren(...indicators(result));
  const stats = result.statistical_metrics;
  const v = stats.voltage_stats || {};
  const c = stats.current_stats || {};
  const dq = stats.charge_discharge_stats || {};
  facts("stats", [
    ["Discharge capacity", `mean ${num(dq.discharge_capacity?.mean, 3)} Ah, σ ${num(dq.discharge_capacity?.std_dev, 3)} Ah`],
    ["Voltage", `${num(v.min, 3)} – ${num(v.max, 3)} V, mean ${num(v.mean, 3)} V`],
    ["Over-voltage", v.over_voltage ? `${v.over_voltage.samples} samples in ${v.over_voltage.cycles} cycles above ${num(v.over_voltage.limit_in_V, 2)} V (+${num(1000 * v.over_voltage.tolerance_in_V, 0)} mV)` : null],
    ["Under-voltage", v.under_voltage ? `${v.under_voltage.samples} samples in ${v.under_voltage.cycles} cycles below ${num(v.under_voltage.limit_in_V, 2)} V` : null],
    ["Current", `charge up to ${num(c.max_charge_current_in_A, 2)} A, discharge up to ${num(c.max_discharge_current_in_A, 2)} A`],
    ["EOL capacity", `${num(stats.cycle_life_projection.eol_capacity_in_Ah, 2)} Ah`],
    ["Fade model", stats.cycle_life_projection.model],
    ["Projection note", stats.cycle_life_projection.note],
  ]);
  const quality = result.data_quality || {};
  facts(
    "quality",
    Object.entries(quality).map(([key, value]) => [
      key.replaceAll("_", " "),
      Array.isArray(value) ? value.join("; ") || "none" : typeof value === "object" && value !== null ? Object.entries(value).map(([k, x]) => `${k}: ${Array.isArray(x) ? x.join(", ") : x}`).join("; ") : String(value),
    ]),
  );
  capacityPlot(result);
  voltagePlot(result);
  incrementalPlot(result);
  differentialPlot(result);
  $("result").scrollIntoView({ behavior: "smooth", block: "start" });
}

// ---------------------------------------------------------------- start
async function main() {
  const user = await page("analytics");
  $("upload-form").addEventListener("submit", analyse);
  $("earlier-battery").addEventListener("change", () => listEarlier().catch(showError));
  await loadBatteries(user);
  await listEarlier();
  const wanted = new URLSearchParams(window.location.search).get("result");
  if (wanted) await reopen(Number(wanted)).catch(showError);
  document.body.dataset.ready = "yes";
}

main().catch(showError);
