// The models exchange page: the FMU folder tree, one version's details and variables,
// download, and (with write access) upload and delete. The chosen version is ?model=ID.
import { api, download, el, page, showError, showInfo, uploadForm, when } from "/ui/static/app.js";

const $ = (id) => document.getElementById(id);
const state = {
  user: null,
  canWrite: false,
  tree: [],
  open: new Set(),
  model: null,
  versions: [],
  touched: false, // the user opened or closed a folder: keep that on refresh
};

const KIND_NAMES = { physics_based: "Physics-based models", data_driven: "Data-driven models" };

function size(bytes) {
  if (bytes >= 2 ** 20) return `${(bytes / 2 ** 20).toFixed(1)} MB`;
  if (bytes >= 1024) return `${(bytes / 1024).toFixed(1)} kB`;
  return `${bytes} bytes`;
}

function setUrl(modelId) {
  const params = new URLSearchParams(window.location.search);
  if (modelId === null) params.delete("model");
  else params.set("model", String(modelId));
  const text = params.toString();
  window.history.replaceState(null, "", text ? `?${text}` : window.location.pathname);
}

// ---------------------------------------------------------------- tree
function folderNode({ path, title, count, children, testid }) {
  const open = state.open.has(path) || (!state.touched && (count > 0 || !path.includes("/")));
  if (open) state.open.add(path);
  const node = el("details", { class: "node", "data-testid": testid, "data-path": path, open }, [
    el("summary", {}, [
      el("span", { class: "node-title" }, [title]),
      " ",
      el("span", { class: `count${count ? "" : " zero"}`, title: "stored versions below" }, [String(count)]),
    ]),
    el("div", { class: "children" }, children),
  ]);
  node.addEventListener("toggle", () => {
    state.touched = true;
    if (node.open) state.open.add(path);
    else state.open.delete(path);
  });
  return node;
}

function testLeaf(folder, test) {
  const path = `${folder.category}/${folder.level}/${folder.chemistry}/${folder.kind}/${test.test_name}`;
  const selected = state.model && state.model.folder === Object.values(folder).join("/") && state.model.test_name === test.test_name;
  return el(
    "button",
    {
      type: "button",
      class: `leaf${selected ? " selected" : ""}`,
      "data-testid": "tree-test",
      "data-path": path,
      onclick: () => openModel(test.latest_id).catch(showError),
    },
    [
      el("span", { class: "leaf-name" }, [test.test_name]),
      el("span", { class: "muted" }, [
        ` v${test.latest_version}`,
        test.versions > 1 ? ` · ${test.versions} versions` : "",
      ]),
    ],
  );
}

function renderTree() {
  const chemistries = new Set();
  const nodes = state.tree.map((category) =>
    folderNode({
      path: category.category,
      title: category.display_name,
      count: category.count,
      testid: "tree-category",
      children: category.levels.map((level) =>
        folderNode({
          path: `${category.category}/${level.level}`,
          title: level.display_name,
          count: level.count,
          testid: "tree-level",
          children: level.chemistries.length
            ? level.chemistries.map((chem) => {
                chemistries.add(chem.chemistry);
                return folderNode({
                  path: `${category.category}/${level.level}/${chem.chemistry}`,
                  title: chem.chemistry,
                  count: chem.count,
                  testid: "tree-chemistry",
                  children: chem.kinds.map((kind) =>
                    folderNode({
                      path: `${category.category}/${level.level}/${chem.chemistry}/${kind.kind}`,
                      title: kind.display_name,
                      count: kind.count,
                      testid: "tree-kind",
                      children: kind.tests.length
                        ? kind.tests.map((test) =>
                            testLeaf(
                              { category: category.category, level: level.level, chemistry: chem.chemistry, kind: kind.kind },
                              test,
                            ),
                          )
                        : [el("p", { class: "muted small" }, ["no FMU yet"])],
                    }),
                  ),
                });
              })
            : [el("p", { class: "muted small" }, ["no FMU yet"])],
        }),
      ),
    }),
  );
  const total = state.tree.reduce((n, c) => n + c.count, 0);
  $("tree").replaceChildren(...nodes);
  if (!total) {
    $("tree").append(
      el("p", { class: "empty", "data-testid": "tree-empty" }, [
          state.canWrite
            ? "No FMU stored yet: upload one with the form on the right (e.g. `batterytwin fmu export --format c` makes one of the ECM twin)."
            : "No FMU stored yet. Users with write access upload them here or with `POST /api/models/`.",
        ]),
    );
  }
  $("chemistries").replaceChildren(...[...chemistries].map((c) => el("option", { value: c })));
  $("tree").dataset.total = String(total);
}

async function loadTree() {
  state.tree = await api("/api/models/tree/");
  renderTree();
}

function setAllOpen(open) {
  state.touched = true;
  for (const node of document.querySelectorAll("#tree details")) {
    node.open = open;
    if (open) state.open.add(node.dataset.path);
    else state.open.delete(node.dataset.path);
  }
}

// ---------------------------------------------------------------- one version
async function openModel(id) {
  const model = await api(`/api/models/${id}/`);
  const params = new URLSearchParams({
    category: model.category,
    level: model.level,
    chemistry: model.chemistry,
    kind: model.kind,
    test_name: model.test_name,
  });
  state.versions = await api(`/api/models/?${params}`);
  state.model = model;
  const parts = model.folder.split("/");
  parts.forEach((_, i) => state.open.add(parts.slice(0, i + 1).join("/"))); // reveal it
  setUrl(model.id);
  renderModel();
  renderTree();
  prefillUpload(model);
}

function fact(term, value, testid) {
  return [
    el("dt", {}, [term]),
    el("dd", testid ? { "data-testid": testid } : {}, [value === null || value === undefined || value === "" ? "–" : value]),
  ];
}

function folderText(model) {
  const category = state.tree.find((c) => c.category === model.category);
  return [
    category ? category.display_name : model.category,
    model.level,
    model.chemistry,
    KIND_NAMES[model.kind] || model.kind,
  ].join(" / ");
}

function renderModel() {
  const model = state.model;
  const description = model.model_description || {};
  $("model").hidden = false;
  $("model-empty").hidden = true;
  $("model-title").textContent = model.file_name;
  const experiment = description.default_experiment || {};
  const experimentText = Object.keys(experiment).length
    ? Object.entries(experiment)
        .map(([k, v]) => (k.endsWith("_s") ? `${k.slice(0, -2).replaceAll("_", " ")} ${v} s` : `${k.replaceAll("_", " ")} ${v}`))
        .join(", ")
    : null;
  $("model-facts").replaceChildren(
    ...fact("Folder", folderText(model), "model-folder"),
    ...fact("Model kind", KIND_NAMES[model.kind] || model.kind, "model-kind"),
    ...fact("FMI version", model.fmi_version, "model-fmi"),
    ...fact("Model name", model.model_name),
    ...fact("Interfaces", (description.interfaces || []).join(", ")),
    ...fact("Platforms", (description.platforms || []).join(", "), "model-platforms"),
    ...fact("Generated by", description.generation_tool),
    ...fact("Default experiment", experimentText),
    ...fact("GUID / token", description.guid ? el("code", {}, [description.guid]) : null),
    ...fact("Size", size(model.size_bytes)),
    ...fact("SHA-256", el("code", { class: "hash" }, [model.sha256])),
    ...fact("Uploaded", `${when(model.uploaded_at)}${model.uploaded_by_id ? ` by user #${model.uploaded_by_id}` : ""}`),
    ...fact("Note", model.note),
  );
  $("versions-body").replaceChildren(
    ...state.versions.map((v) =>
      el(
        "tr",
        {
          class: `clickable${v.id === model.id ? " selected" : ""}`,
          "data-testid": "version-row",
          "data-id": v.id,
          tabindex: "0",
          onclick: () => openModel(v.id).catch(showError),
        },
        [
          el("td", {}, [`v${v.version}`]),
          el("td", {}, [when(v.uploaded_at)]),
          el("td", { class: "num" }, [size(v.size_bytes)]),
          el("td", {}, [v.fmi_version]),
          el("td", {}, [v.note || ""]),
        ],
      ),
    ),
  );
  const variables = description.variables || [];
  const causalities = [...new Set(variables.map((v) => v.causality))].sort();
  const select = $("causality");
  const keep = causalities.includes(select.value) ? select.value : "";
  select.replaceChildren(
    el("option", { value: "" }, ["every causality"]),
    ...causalities.map((c) => el("option", { value: c }, [c])),
  );
  select.value = keep;
  renderVariables();
  $("delete").hidden = !state.canWrite;
}

function renderVariables() {
  const variables = (state.model.model_description || {}).variables || [];
  const causality = $("causality").value;
  const shown = variables.filter((v) => !causality || v.causality === causality);
  $("variables-body").replaceChildren(
    ...shown.map((v) =>
      el("tr", { "data-testid": "variable-row", "data-name": v.name }, [
        el("td", {}, [el("code", {}, [v.name])]),
        el("td", {}, [v.causality]),
        el("td", {}, [v.variability]),
        el("td", {}, [v.type]),
        el("td", {}, [v.unit || ""]),
        el("td", {}, [v.start ?? ""]),
        el("td", {}, [v.description || ""]),
      ]),
    ),
  );
  $("variable-count").textContent = `${shown.length} of ${variables.length}`;
}

async function downloadModel() {
  const model = state.model;
  const button = $("download");
  button.disabled = true;
  try {
    await download(model.download_url, model.file_name);
  } finally {
    button.disabled = false;
  }
}

async function deleteModel() {
  const model = state.model;
  const sure = window.confirm(
    `Delete ${model.file_name}? Its bytes are removed and version ${model.version} is never given again.`,
  );
  if (!sure) return;
  await api(`/api/models/${model.id}/`, { method: "DELETE" });
  showInfo(`${model.file_name} deleted.`);
  const rest = state.versions.filter((v) => v.id !== model.id);
  state.model = null;
  setUrl(null);
  await loadTree(); // the API commits before it answers: the tree no longer has it
  if (rest.length) {
    await openModel(rest[0].id);
  } else {
    $("model").hidden = true;
    $("model-empty").hidden = false;
  }
}

// ---------------------------------------------------------------- upload
function prefillUpload(model) {
  if (!state.canWrite || $("upload-file").files.length) return;
  $("upload-category").value = model.category;
  $("upload-level").value = model.level;
  $("upload-chemistry").value = model.chemistry;
  $("upload-kind").value = model.kind;
  $("upload-test").value = model.test_name;
}

async function upload(event) {
  event.preventDefault();
  const form = event.target;
  const data = new FormData(form);
  for (const optional of ["version", "note"]) if (!String(data.get(optional) || "").trim()) data.delete(optional);
  const button = $("upload-submit");
  const progress = $("upload-progress");
  button.disabled = true;
  progress.hidden = false;
  progress.value = 0;
  try {
    const stored = await uploadForm("/api/models/", data, (sent, total) => {
      if (sent === null) progress.removeAttribute("value");
      else if (total) progress.value = sent / total;
    });
    showInfo(`Stored ${stored.file_name} in ${stored.folder}.`);
    form.reset();
    await loadTree();
    await openModel(stored.id);
  } catch (err) {
    showError(err);
  } finally {
    button.disabled = false;
    progress.hidden = true;
  }
}

// ---------------------------------------------------------------- start
async function main() {
  state.user = await page("models");
  state.canWrite = state.user.role === "admin" || state.user.models_access === "write";
  if (state.canWrite) {
    $("upload-card").hidden = false;
    $("upload-form").addEventListener("submit", upload);
  } else {
    const note = $("upload-refused");
    note.hidden = false;
    note.textContent =
      "You have read access: browse and download. Uploading needs write access, which an admin grants with `batterytwin cloud user models-access <user> write`.";
  }
  $("download").addEventListener("click", () => downloadModel().catch(showError));
  $("delete").addEventListener("click", () => deleteModel().catch(showError));
  $("causality").addEventListener("change", renderVariables);
  $("expand-all").addEventListener("click", () => setAllOpen(true));
  $("collapse-all").addEventListener("click", () => setAllOpen(false));
  await loadTree();
  const wanted = new URLSearchParams(window.location.search).get("model");
  if (wanted) await openModel(Number(wanted)).catch(showError);
  document.body.dataset.ready = "yes";
}

main().catch(showError);
