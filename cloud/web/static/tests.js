// The test bench page: counts per level and status, a filterable list, one test's details
// and a trend chart of its variables. Filters and the chosen test live in the URL query.
import {
  ApiError,
  PLOT_CONFIG,
  PLOT_LAYOUT,
  api,
  el,
  num,
  page,
  showError,
  showInfo,
  when,
} from "/ui/static/app.js";

const STATUSES = ["started", "in_progress", "completed", "failed", "stopped_by_safety", "rejected"];
const LEVELS = ["cell", "module", "pack"];
const TEST_WRITERS = new Set(["admin", "operator", "service"]);
const PAGE_SIZE = 100;
const REFRESH_MS = 2000;
const AXIS_COLOURS = ["#1f6feb", "#c62828", "#1a7f37", "#8250df"];
const DEFAULT_VARIABLES = ["voltage_v", "current_a"];

const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(window.location.search);
const state = {
  filters: {
    status: query.get("status") || "",
    level: query.get("level") || "",
    test_type: query.get("test_type") || "",
    q: query.get("q") || "",
  },
  selected: query.get("test") ? Number(query.get("test")) : null,
  variables: query.get("vars") ? query.get("vars").split(",").filter(Boolean) : null,
  tests: [],
  more: false,
  detail: null,
  timer: null,
};

function writeUrl() {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(state.filters)) if (value) params.set(key, value);
  if (state.selected !== null) params.set("test", String(state.selected));
  if (state.variables && state.selected !== null) params.set("vars", state.variables.join(","));
  const text = params.toString();
  window.history.replaceState(null, "", text ? `?${text}` : window.location.pathname);
}

const label = (text) => String(text).replaceAll("_", " ");
const badge = (status) => el("span", { class: `badge ${status}`, "data-status": status }, [label(status)]);

// ---------------------------------------------------------------- counts
async function loadCounts() {
  const counts = await api("/api/tests/analytics/");
  const kpis = $("status-kpis");
  const cells = [["total", "Tests", counts.total]];
  for (const status of STATUSES) {
    if (counts.by_status[status] || ["completed", "in_progress", "failed"].includes(status)) {
      cells.push([status, label(status), counts.by_status[status] || 0]);
    }
  }
  kpis.replaceChildren(
    ...cells.map(([key, text, value]) =>
      el("div", { class: "kpi", "data-testid": `kpi-${key}` }, [
        el("div", { class: "label" }, [text]),
        el("div", { class: "value" }, [String(value)]),
      ]),
    ),
  );
  const levels = [...LEVELS, ...Object.keys(counts.by_level).filter((l) => !LEVELS.includes(l))];
  const statuses = STATUSES.filter((s) => counts.by_status[s]);
  const table = el("table", { class: "compact static-head", "data-testid": "level-status-table" }, [
    el("thead", {}, [
      el("tr", {}, [
        el("th", {}, ["Level"]),
        ...statuses.map((s) => el("th", { class: "num" }, [label(s)])),
        el("th", { class: "num" }, ["All"]),
      ]),
    ]),
    el(
      "tbody",
      {},
      levels.map((level) =>
        el("tr", { "data-level": level }, [
          el("td", {}, [level]),
          ...statuses.map((s) =>
            el("td", { class: "num", "data-status": s }, [
              String((counts.by_level_and_status[level] || {})[s] || 0),
            ]),
          ),
          el("td", { class: "num", "data-status": "all" }, [String(counts.by_level[level] || 0)]),
        ]),
      ),
    ),
  ]);
  const types = Object.entries(counts.by_type).sort((a, b) => b[1] - a[1]);
  $("counts-table").replaceChildren(
    ...[
      counts.total
      ? table
      : el("p", { class: "empty" }, ["No tests yet: run one with the form below or `batterytwin bench request`."]),
    types.length
      ? el("p", { class: "muted", "data-testid": "type-counts" }, [
          "By type: ",
          types.map(([type, n]) => `${label(type)} ${n}`).join(" · "),
        ])
      : null,
    ].filter(Boolean),
  );
  const colours = {
    started: "#9aa4b2",
    in_progress: "#e6a23c",
    completed: "#1a7f37",
    failed: "#c62828",
    stopped_by_safety: "#8250df",
    rejected: "#5d6677",
  };
  const traces = statuses.map((s) => ({
    type: "bar",
    name: label(s),
    x: levels,
    y: levels.map((l) => (counts.by_level_and_status[l] || {})[s] || 0),
    marker: { color: colours[s] },
  }));
  Plotly.react(
    "counts-plot",
    traces,
    {
      ...PLOT_LAYOUT,
      barmode: "stack",
      margin: { l: 40, r: 10, t: 10, b: 30 },
      legend: { orientation: "h", y: 1.15 },
      yaxis: { title: { text: "tests" }, rangemode: "tozero", dtick: counts.total < 10 ? 1 : undefined },
    },
    PLOT_CONFIG,
  );
}

// ---------------------------------------------------------------- list
function listPath(offset) {
  const params = new URLSearchParams({ limit: String(PAGE_SIZE), offset: String(offset) });
  if (state.filters.status) params.append("status", state.filters.status);
  if (state.filters.level) params.set("level", state.filters.level);
  if (state.filters.test_type) params.append("test_type", state.filters.test_type);
  return `/api/tests/?${params}`;
}

async function loadTests({ append = false } = {}) {
  const offset = append ? state.tests.length : 0;
  const rows = await api(listPath(offset));
  state.tests = append ? [...state.tests, ...rows] : rows;
  state.more = rows.length === PAGE_SIZE;
  renderTests();
}

function matches(test) {
  const q = state.filters.q.trim().toLowerCase();
  if (!q) return true;
  return [test.name, test.unit_under_test, test.summary, test.uuid, test.test_type, String(test.id)]
    .filter(Boolean)
    .some((text) => String(text).toLowerCase().includes(q));
}

function renderTests() {
  const shown = state.tests.filter(matches);
  $("tests-body").replaceChildren(
    ...shown.map((t) =>
      el(
        "tr",
        {
          class: `clickable${t.id === state.selected ? " selected" : ""}`,
          "data-testid": "test-row",
          "data-id": t.id,
          tabindex: "0",
          onclick: () => select(t.id),
          onkeydown: (event) => event.key === "Enter" && select(t.id),
        },
        [
          el("td", { class: "num" }, [String(t.id)]),
          el("td", {}, [t.name]),
          el("td", {}, [label(t.test_type)]),
          el("td", {}, [t.level]),
          el("td", {}, [t.unit_under_test]),
          el("td", {}, [t.bench]),
          el("td", {}, [when(t.scheduled_at)]),
          el("td", {}, [badge(t.status)]),
          el("td", { class: "summary" }, [t.summary || ""]),
        ],
      ),
    ),
  );
  const filtered = Object.values(state.filters).some(Boolean);
  const empty = $("tests-empty");
  empty.hidden = shown.length > 0;
  empty.textContent = filtered
    ? "No test matches these filters. Clear them to see every test."
    : "No tests yet: run one with the form above, or `batterytwin bench request request.json` from a LIMS.";
  $("list-count").textContent = `${shown.length} test${shown.length === 1 ? "" : "s"}${state.more ? " (more below)" : ""}`;
  $("load-more").hidden = !state.more;
}

function readFilters() {
  state.filters = {
    status: $("filter-status").value,
    level: $("filter-level").value,
    test_type: $("filter-type").value,
    q: $("filter-text").value,
  };
  writeUrl();
}

function showFilters() {
  $("filter-status").value = state.filters.status;
  $("filter-level").value = state.filters.level;
  $("filter-type").value = state.filters.test_type;
  $("filter-text").value = state.filters.q;
}

// ---------------------------------------------------------------- details
async function select(id) {
  state.selected = id;
  state.detail = null;
  writeUrl();
  renderTests();
  try {
    await loadDetail();
    $("details").scrollIntoView({ behavior: "smooth", block: "start" });
  } catch (err) {
    showError(err);
  }
}

async function loadDetail() {
  if (state.selected === null) return;
  let test;
  try {
    test = await api(`/api/tests/${state.selected}/`);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      state.selected = null;
      writeUrl();
      $("details").hidden = true;
    }
    throw err;
  }
  const previous = state.detail;
  state.detail = test;
  const changed =
    !previous ||
    previous.id !== test.id ||
    previous.status !== test.status ||
    previous.n_samples !== test.n_samples ||
    JSON.stringify(previous.progress) !== JSON.stringify(test.progress);
  if (!changed) return;
  renderDetail(test);
  await loadTrend();
}

function fact(term, value) {
  return [el("dt", {}, [term]), el("dd", {}, [value === null || value === undefined || value === "" ? "–" : value])];
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 120) return `${num(seconds, 0)} s`;
  if (seconds < 7200) return `${num(seconds / 60, 1)} min`;
  return `${num(seconds / 3600, 2)} h`;
}

function modelText(model) {
  if (!model) return "–";
  if (model.kind === "ecm") {
    return `ECM ${model.parameter_set || "nmc_okane2022"}, SoH ${model.soh ?? 1}, resistance ×${model.resistance_factor ?? 1}`;
  }
  if (model.kind === "pybamm") return `PyBaMM ${model.model || "SPMe"} ${model.parameter_set || "OKane2022"}`;
  if (model.kind === "fmu") return `FMU #${model.model_id} of the models exchange`;
  return JSON.stringify(model);
}

function renderDetail(test) {
  $("details").hidden = false;
  $("details-title").replaceChildren(`#${test.id} ${test.name} `, badge(test.status));
  const request = test.request || {};
  const outcome = test.outcome || {};
  const progress = test.progress
    ? `step ${test.progress.step_index + 1} of ${test.progress.n_steps}: ${test.progress.step} (t = ${duration(test.progress.time_s)})`
    : null;
  const steps = request.procedure
    ? el("ol", { class: "steps" }, request.procedure.map((s) => el("li", {}, [s])))
    : "the test type's default";
  const safety = Object.entries(request.safety || {}).filter(([, v]) => v !== null);
  $("details-facts").replaceChildren(
    ...fact("Type", label(test.test_type)),
    ...fact("Level", test.level),
    ...fact("Unit under test", test.unit_under_test),
    ...fact("Bench", test.bench),
    ...fact("Model", modelText(request.model)),
    ...fact("Procedure", steps),
    ...fact(
      "Conditions",
      `ambient ${num(request.ambient_c ?? 25, 1)} °C, time step ${request.dt_s ? `${request.dt_s} s` : "default"}${request.n_cycles ? `, ${request.n_cycles} cycles` : ""}`,
    ),
    ...fact("Safety overrides", safety.length ? safety.map(([k, v]) => `${k} ${v}`).join(", ") : "none"),
    ...fact("Scheduled", when(test.scheduled_at)),
    ...fact("Started", when(test.started_at)),
    ...fact("Finished", when(test.finished_at)),
    ...fact("Test time", duration(outcome.duration_s ?? test.progress?.time_s)),
    ...fact("Samples", String(test.n_samples ?? 0)),
    ...(progress ? fact("Progress", progress) : []),
    ...fact("UUID", el("code", {}, [test.uuid])),
  );
  const verdict = [];
  if (outcome.summary) {
    verdict.push(el("p", { class: `verdict ${test.status}`, "data-testid": "verdict" }, [outcome.summary]));
  } else if (!outcome.end) {
    verdict.push(el("p", { class: "muted", "data-testid": "verdict" }, ["No verdict yet: the test is ", label(test.status), "."]));
  }
  if (outcome.error) verdict.push(el("p", { class: "message error" }, [`Error: ${outcome.error}`]));
  if (outcome.safety_stop) {
    const s = outcome.safety_stop;
    verdict.push(
      el("p", { class: "message error", "data-testid": "safety-stop" }, [
        `Safety stop: ${s.limit} ${num(s.value, 3)} (limit ${num(s.threshold, 3)}) at ${duration(s.time_s)}`,
      ]),
    );
  }
  $("details-verdict").replaceChildren(...verdict);
  $("details-kpis").replaceChildren(...kpiBlocks(outcome));
  $("details-request").textContent = JSON.stringify(request, null, 2);
}

function unitOf(name) {
  const units = { _ah: "Ah", _wh: "Wh", _v: "V", _a: "A", _c: "°C", _s: "s", _ohm: "Ω" };
  for (const [suffix, unit] of Object.entries(units)) if (name.endsWith(suffix)) return unit;
  return "";
}

function kpiBlocks(outcome) {
  const kpis = outcome.kpis || {};
  const scalars = Object.entries(kpis).filter(([, v]) => typeof v === "number" || typeof v === "string");
  const tables = Object.entries(kpis).filter(([, v]) => Array.isArray(v) && v.length && typeof v[0] === "object");
  if (!scalars.length && !tables.length) {
    return [el("p", { class: "empty" }, ["No results yet: KPIs appear when the test ends."])];
  }
  const blocks = [];
  const limits = Object.entries(outcome.limits || {}).filter(([, v]) => v !== null);
  if (outcome.model_capacity_ah || limits.length) {
    blocks.push(
      el("p", { class: "muted small", "data-testid": "limits" }, [
        outcome.model_capacity_ah ? `Model capacity ${num(outcome.model_capacity_ah, 3)} Ah. ` : "",
        limits.length ? `Bench limits: ${limits.map(([k, v]) => `${label(k.replace(/_(v|c|s)$/, ""))} ${v}${unitOf(k) ? ` ${unitOf(k)}` : ""}`).join(", ")}.` : "",
      ]),
    );
  }
  if (scalars.length) {
    blocks.push(
      el(
        "dl",
        { class: "facts", "data-testid": "kpis" },
        scalars.flatMap(([k, v]) => [
          el("dt", {}, [label(k)]),
          el("dd", { "data-kpi": k }, [typeof v === "number" ? num(v, Math.abs(v) >= 100 ? 1 : 3, unitOf(k)) : v]),
        ]),
      ),
    );
  }
  for (const [name, rows] of tables) {
    const columns = Object.keys(rows[0]);
    blocks.push(
      el("h2", { class: "sub" }, [label(name)]),
      el("div", { class: "table-scroll short" }, [
        el("table", { class: "compact" }, [
          el("thead", {}, [el("tr", {}, columns.map((c) => el("th", {}, [label(c)])))]),
          el(
            "tbody",
            {},
            rows.slice(0, 200).map((row) =>
              el(
                "tr",
                {},
                columns.map((c) =>
                  el("td", { class: typeof row[c] === "number" ? "num" : "" }, [
                    typeof row[c] === "number" ? num(row[c], 4) : String(row[c] ?? "–"),
                  ]),
                ),
              ),
            ),
          ),
        ]),
      ]),
    );
  }
  return blocks;
}

// ---------------------------------------------------------------- trend chart
function chosenVariables(test) {
  const names = test.variables.filter((v) => v.type !== "time").map((v) => v.name);
  if (state.variables !== null && state.variables.length === 0) return [];
  let chosen = (state.variables || DEFAULT_VARIABLES).filter((n) => names.includes(n));
  if (!chosen.length) chosen = names.slice(0, 2);
  return chosen;
}

function renderPicker(test, chosen) {
  $("variable-picker").replaceChildren(
    ...test.variables
      .filter((v) => v.type !== "time")
      .map((v) =>
        el("label", { class: "check", title: v.description || "" }, [
          el("input", {
            type: "checkbox",
            value: v.name,
            "data-variable": v.name,
            checked: chosen.includes(v.name),
            onchange: (event) => {
              // chart order is the order of picking: the first variable's unit gets the left axis
              const rest = chosen.filter((n) => n !== v.name);
              state.variables = event.target.checked ? [...rest, v.name] : rest;
              writeUrl();
              loadTrend().catch(showError);
            },
          }),
          ` ${v.name} [${v.unit}] `,
          el("span", { class: "muted" }, [v.type]),
        ]),
      ),
  );
}

async function loadTrend() {
  const test = state.detail;
  if (!test) return;
  const chosen = chosenVariables(test);
  renderPicker(test, chosen);
  const empty = $("trend-empty");
  const checked = chosen;
  if (!test.n_samples || !checked.length) {
    Plotly.purge("trend-plot");
    $("trend-plot").hidden = true;
    empty.hidden = false;
    empty.textContent = !test.n_samples
      ? test.status === "started" || test.status === "in_progress"
        ? "No samples yet: the chart fills in while the bench runs (this page refreshes itself)."
        : "This test recorded no samples."
      : "Pick one or more variables above to chart them.";
    return;
  }
  const results = await api(`/api/tests/${test.id}/results/?variables=${checked.join(",")}&max_points=4000`);
  if (state.detail !== test) return; // another test was picked meanwhile
  empty.hidden = true;
  $("trend-plot").hidden = false;
  const time = results.data.time_s;
  const span = time.length ? time[time.length - 1] - time[0] : 0;
  const [scale, timeUnit] = span > 7200 ? [3600, "h"] : span > 120 ? [60, "min"] : [1, "s"];
  const x = time.map((t) => t / scale);
  const units = [...new Set(checked.map((n) => results.units[n] || "-"))];
  const axisOf = (unit) => units.indexOf(unit) + 1;
  const traces = checked.map((name) => {
    const axis = axisOf(results.units[name] || "-");
    return {
      type: "scattergl",
      mode: "lines",
      name: `${name} [${results.units[name]}]`,
      x,
      y: results.data[name],
      yaxis: axis === 1 ? "y" : `y${axis}`,
      line: { width: 1.5 },
    };
  });
  const layout = {
    ...PLOT_LAYOUT,
    margin: { l: 60, r: units.length > 1 ? 60 : 15, t: 20, b: 45 },
    xaxis: { title: { text: `test time [${timeUnit}]` }, domain: [0, units.length > 2 ? 0.86 : 1] },
    legend: { orientation: "h", y: -0.18 },
    uirevision: `${test.id}-${checked.join(",")}`,
  };
  units.forEach((unit, index) => {
    const key = index === 0 ? "yaxis" : `yaxis${index + 1}`;
    const colour = AXIS_COLOURS[index % AXIS_COLOURS.length];
    const names = checked.filter((n) => (results.units[n] || "-") === unit).join(", ");
    layout[key] = {
      title: { text: `${names} [${unit}]`, font: { color: colour } },
      tickfont: { color: colour },
      zeroline: false,
      ...(index === 0
        ? {}
        : {
            overlaying: "y",
            side: "right",
            anchor: index === 1 ? "x" : "free",
            position: index === 1 ? undefined : Math.min(1, 0.86 + 0.07 * (index - 1)),
            showgrid: false,
          }),
    };
  });
  traces.forEach((trace, i) => {
    if (units.length > 1) trace.line.color = AXIS_COLOURS[(axisOf(results.units[checked[i]] || "-") - 1) % 4];
    if (units.length > 1 && checked.filter((n) => results.units[n] === results.units[checked[i]]).length > 1) {
      trace.line.dash = checked.indexOf(checked[i]) % 2 ? "dot" : "solid";
    }
  });
  Plotly.react("trend-plot", traces, layout, PLOT_CONFIG);
  $("trend-plot").dataset.points = String(results.n_points);
}

// ---------------------------------------------------------------- run a test
function showTypeFields() {
  const type = $("run-type").value;
  for (const node of document.querySelectorAll("[data-for-type]")) {
    node.hidden = node.dataset.forType !== type;
  }
}

function requestBody(form) {
  const data = new FormData(form);
  const body = {
    unit_under_test: data.get("unit_under_test").trim(),
    level: data.get("level"),
    test_type: data.get("test_type"),
    model: { kind: "ecm", parameter_set: data.get("parameter_set").trim() || "nmc_okane2022" },
  };
  const soh = data.get("soh");
  if (soh) body.model.soh = Number(soh);
  if (data.get("name").trim()) body.name = data.get("name").trim();
  if (data.get("dt_s")) body.dt_s = Number(data.get("dt_s"));
  if (body.test_type === "cycle_ageing" && data.get("n_cycles")) body.n_cycles = Number(data.get("n_cycles"));
  if (body.test_type === "custom") {
    body.procedure = data
      .get("procedure")
      .split("\n")
      .map((s) => s.trim())
      .filter(Boolean);
  }
  return body;
}

async function runTest(event) {
  event.preventDefault();
  const button = $("run-submit");
  button.disabled = true;
  try {
    const test = await api("/api/tests/", { method: "POST", json: requestBody(event.target) });
    showInfo(`Test #${test.id} "${test.name}" accepted (${label(test.status)}); it runs on the virtual bench.`);
    await Promise.all([loadCounts(), loadTests()]);
    await select(test.id);
    schedule();
  } catch (err) {
    showError(err);
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------- refresh
function active(test) {
  return test.status === "in_progress" || (test.status === "started" && test.bench === "virtual");
}

function schedule() {
  clearTimeout(state.timer);
  const running = state.tests.some(active) || (state.detail && active(state.detail));
  $("tests-table").dataset.refreshing = running ? "yes" : "no";
  if (!running) return;
  state.timer = setTimeout(async () => {
    try {
      await Promise.all([loadCounts(), loadTests({ append: false }), loadDetail()]);
    } catch (err) {
      showError(err);
    }
    schedule();
  }, REFRESH_MS);
}

async function refreshList() {
  readFilters();
  await loadTests();
  schedule();
}

// ---------------------------------------------------------------- start
async function main() {
  const user = await page("tests");
  showFilters();
  if (TEST_WRITERS.has(user.role)) {
    $("run-card").hidden = false;
    $("run-type").addEventListener("change", showTypeFields);
    $("run-form").addEventListener("submit", runTest);
  } else {
    const note = $("run-refused");
    note.hidden = false;
    note.textContent = `Your role (${user.role}) may read tests but not request them; admins, operators and service accounts may.`;
  }
  for (const id of ["filter-status", "filter-level", "filter-type"]) {
    $(id).addEventListener("change", () => refreshList().catch(showError));
  }
  $("filter-text").addEventListener("input", () => {
    readFilters();
    renderTests();
  });
  $("filter-clear").addEventListener("click", () => {
    state.filters = { status: "", level: "", test_type: "", q: "" };
    showFilters();
    refreshList().catch(showError);
  });
  $("load-more").addEventListener("click", () => loadTests({ append: true }).catch(showError));
  await Promise.all([loadCounts(), loadTests()]);
  if (state.selected !== null) await loadDetail().catch(showError);
  schedule();
  document.body.dataset.ready = "yes";
}

main().catch(showError);
