// The jobs page: a table of jobs (filter by status, pages), refreshed quickly while any job
// is queued or running, and a form to submit a job on an uploaded dataset.
"use strict";

(function () {
  const T = window.Trainyard;
  const PAGE_SIZE = 20;
  const state = { page: 1, pages: 1, status: "", active: false };
  const picked = new Set(); // job ids ticked for the compare view (kept across refreshes)
  const compareButton = document.getElementById("compare-button");

  function updateCompare() {
    compareButton.disabled = picked.size < 2;
    compareButton.textContent = "Compare" + (picked.size ? " (" + picked.size + ")" : "");
  }
  compareButton.addEventListener("click", function () {
    window.location.href = "/compare?jobs=" + Array.from(picked).join(",");
  });

  const body = document.getElementById("jobs-body");
  const filter = document.getElementById("status-filter");
  const note = document.getElementById("refresh-note");

  // The list's items carry no loss history (the page would download every job's): the saved
  // model's loss, else the last finished epoch's.
  function finalLoss(job) {
    if (job.metrics && typeof job.metrics.loss === "number") return job.metrics.loss;
    const p = job.progress || {};
    return typeof p.loss === "number" ? p.loss : null;
  }

  function row(job) {
    const p = job.progress || { epoch: 0, epochs: 0 };
    const bar = document.createElement("progress");
    bar.max = p.epochs || 1;
    bar.value = p.epoch || 0;
    const link = T.el("a", { text: job.id.slice(0, 8), href: "/jobs/" + encodeURIComponent(job.id), title: job.id });
    link.className = "job-link";
    const model = job.model || {};
    const training = job.training || {};
    const pick = document.createElement("input");
    pick.type = "checkbox";
    pick.className = "pick";
    pick.checked = picked.has(job.id);
    pick.setAttribute("aria-label", "pick job " + job.id.slice(0, 8) + " to compare");
    pick.addEventListener("change", function () {
      if (pick.checked) picked.add(job.id);
      else picked.delete(job.id);
      updateCompare();
    });
    const tr = T.el("tr", {}, [
      T.el("td", {}, [link]),
      T.el("td", {}, [T.statusBadge(job.status)]),
      T.el("td", { className: "progress-cell" }, [bar, T.el("span", { text: " " + p.epoch + "/" + p.epochs, className: "hint" })]),
      T.el("td", { text: T.fmtNumber(finalLoss(job)), className: "num" }),
      T.el("td", { text: (model.layers || []).join("-") + " " + (model.activation || "") + " · " + (training.loss || "") }),
      T.el("td", { text: T.fmtTime(job.created_at) }),
      T.el("td", {}, [pick]),
    ]);
    tr.dataset.jobId = job.id;
    tr.dataset.status = job.status;
    return tr;
  }

  async function refresh() {
    // training jobs only: a batch prediction (kind "predict") has no epochs, spec or loss
    let query = "?kind=train&page=" + state.page + "&page_size=" + PAGE_SIZE;
    if (state.status) query += "&status=" + encodeURIComponent(state.status);
    const page = await T.getJson("/jobs" + query);
    body.replaceChildren.apply(body, page.items.map(row));
    document.getElementById("jobs-empty").hidden = page.items.length > 0;
    state.pages = Math.max(page.pagination.pages, 1);
    document.getElementById("page-info").textContent = "page " + state.page + " of " + state.pages + " · " + page.pagination.total + " jobs";
    document.getElementById("prev-page").disabled = state.page <= 1;
    document.getElementById("next-page").disabled = state.page >= state.pages;
    state.active = page.items.some(function (job) {
      return job.status === "queued" || job.status === "running";
    });
    note.textContent = state.active ? "live: jobs are running" : "";
    T.flash("");
  }

  // Fast while jobs run; slower when idle so new jobs still show up.
  const poller = T.poll(refresh, function () {
    return state.active ? 1000 : 5000;
  });

  filter.addEventListener("change", function () {
    state.status = filter.value;
    state.page = 1;
    poller.now();
  });
  document.getElementById("prev-page").addEventListener("click", function () {
    state.page = Math.max(1, state.page - 1);
    poller.now();
  });
  document.getElementById("next-page").addEventListener("click", function () {
    state.page = Math.min(state.pages, state.page + 1);
    poller.now();
  });

  // -- the new-job form ------------------------------------------------------------------------

  const datasetSelect = document.getElementById("job-dataset");
  const datasets = {};
  const form = document.getElementById("job-form");

  // Words for a few choices' values; every choice and default comes from GET /spec/defaults.
  const CHOICE_LABELS = { minmax: "min-max", none: "as is", onehot: "one-hot" };

  // `a.b` in the defaults: a training field's default (`epochs`, `preprocessing.numeric`),
  // else a top-level entry's (`early_stopping.patience`).
  function lookup(D, path) {
    const parts = path.split(".");
    let value = D.training[parts[0]] !== undefined && D.training[parts[0]] !== null ? D.training : D;
    parts.forEach(function (part) { value = value === null || value === undefined ? value : value[part]; });
    return value;
  }

  // The selects list the spec's choices (`data-choices`) with the spec's default picked (or the
  // form's own `data-preset`); the inputs start at the spec's defaults (`data-default`).
  async function loadSpecDefaults() {
    const D = await T.specDefaults();
    form.querySelectorAll("select[data-choices]").forEach(function (select) {
      const key = select.dataset.choices;
      let choices = D.choices;
      key.split(".").forEach(function (part) { choices = choices[part]; });
      choices.forEach(function (value) {
        const option = T.el("option", { text: CHOICE_LABELS[value] || value });
        option.value = value;
        select.appendChild(option);
      });
      if (key === "loss") return; // "auto" stays picked: the service picks the loss
      select.value = select.dataset.preset || (key in D.model ? D.model[key] : lookup(D, key));
    });
    form.querySelectorAll("input[data-default]").forEach(function (input) {
      const value = lookup(D, input.dataset.default);
      input.value = value === null || value === undefined ? "" : String(value);
    });
  }

  async function loadDatasets() {
    const page = await T.getJson("/datasets?page_size=100");
    datasetSelect.replaceChildren();
    page.items.forEach(function (d) {
      datasets[d.id] = d;
      const label = d.name + " · " + d.n_samples + "×" + d.n_features + (d.classes ? " · " + d.classes.length + " classes" : "");
      const option = T.el("option", { text: label });
      option.value = d.id;
      datasetSelect.appendChild(option);
    });
    if (!page.items.length) {
      const option = T.el("option", { text: "no datasets yet" });
      option.value = "";
      datasetSelect.appendChild(option);
    }
    // `/?dataset=ID` (the dataset page's "Train a model on it") picks that dataset
    const wanted = new URLSearchParams(window.location.search).get("dataset");
    if (wanted && datasets[wanted]) datasetSelect.value = wanted;
    suggest();
  }

  // The loss the service picks when none is given (core.spec.default_loss).
  function autoLoss(d) {
    const classes = d.target ? d.target.classes : d.classes;
    if (d.target && d.target.kind === "labels" && classes) {
      return classes.length === 2 ? "binary_cross_entropy" : "cross_entropy";
    }
    if (classes && d.n_targets === 1 && classes.length === 2) return "binary_cross_entropy";
    return "mse";
  }

  // Fit the output width to the chosen dataset and loss ("auto": the one the service picks).
  function suggest() {
    const d = datasets[datasetSelect.value];
    if (!d) return;
    const loss = document.getElementById("job-loss").value || autoLoss(d);
    const layers = document.getElementById("job-layers");
    const hidden = layers.value.split(",").slice(0, -1).join(",") || "16,16";
    let width = d.n_targets;
    if (loss === "binary_cross_entropy") width = 1;
    else if (loss === "cross_entropy" && d.classes) width = d.classes.length;
    layers.value = hidden + "," + width;
  }
  datasetSelect.addEventListener("change", suggest);
  document.getElementById("job-loss").addEventListener("change", suggest);

  const early = document.getElementById("job-early");
  early.addEventListener("change", function () {
    document.getElementById("job-patience").disabled = !early.checked;
  });

  function numberOrNull(id) {
    const raw = document.getElementById(id).value.trim();
    return raw === "" ? null : Number(raw);
  }

  document.getElementById("job-form").addEventListener("submit", async function (event) {
    event.preventDefault();
    const errorBox = document.getElementById("job-form-error");
    errorBox.hidden = true;
    const layers = document.getElementById("job-layers").value.split(",").map(function (w) {
      return Number(w.trim());
    });
    const training = {
      optimizer: document.getElementById("job-optimizer").value,
      epochs: numberOrNull("job-epochs"),
      batch_size: numberOrNull("job-batch"),
      validation_split: numberOrNull("job-val"),
      test_split: numberOrNull("job-test"),
      seed: numberOrNull("job-seed"),
      dtype: document.getElementById("job-dtype").value,
      preprocessing: {
        numeric: document.getElementById("job-numeric").value,
        categorical: document.getElementById("job-categorical").value,
      },
    };
    // a field left empty is left out: the service fills its default
    ["epochs", "validation_split", "test_split", "seed"].forEach(function (key) {
      if (training[key] === null) delete training[key];
    });
    const loss = document.getElementById("job-loss").value;
    if (loss) training.loss = loss; // "auto": left out, the service picks it from the target
    const lr = numberOrNull("job-lr");
    if (lr !== null) training.learning_rate = lr;
    if (early.checked) {
      const patience = numberOrNull("job-patience");
      training.early_stopping = patience === null ? {} : { patience: patience };
    }
    const classWeight = document.getElementById("job-class-weight").value;
    if (classWeight) training.class_weight = classWeight;
    const spec = {
      dataset_id: datasetSelect.value,
      model: { layers: layers, activation: document.getElementById("job-activation").value },
      training: training,
    };
    try {
      await T.postJson("/jobs", spec);
      if (state.status && state.status !== "queued") filter.value = state.status = "";
      state.page = 1;
      poller.now();
    } catch (e) {
      T.showError(errorBox, e);
    }
  });

  loadSpecDefaults().then(loadDatasets).catch(function (e) {
    T.flash("Could not load datasets: " + e.message);
  });
})();
