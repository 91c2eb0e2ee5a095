// The sweeps page: a table of sweeps (live while any runs) and the new-sweep form (a base spec
// and the parameters as JSON, the rest as fields).
"use strict";

(function () {
  const T = window.Trainyard;
  const state = { active: false };
  const body = document.getElementById("sweeps-body");

  function row(sweep) {
    const p = sweep.progress || {};
    const link = T.el("a", { text: sweep.id.slice(0, 8), href: "/sweeps/" + encodeURIComponent(sweep.id), title: sweep.id });
    link.className = "sweep-link";
    const best = sweep.best ? T.fmtNumber(sweep.best.metric_value) : "–";
    const tr = T.el("tr", {}, [
      T.el("td", {}, [link]),
      T.el("td", { text: sweep.name || "" }),
      T.el("td", {}, [T.statusBadge(sweep.status)]),
      T.el("td", { text: (p.succeeded || 0) + "/" + (p.trials || 0) + " succeeded" + (p.running ? ", " + p.running + " running" : "") }),
      T.el("td", { text: sweep.metric.name + " (" + sweep.metric.goal + ")" }),
      T.el("td", { text: best, className: "num" }),
      T.el("td", { text: T.fmtTime(sweep.created_at) }),
    ]);
    tr.dataset.sweepId = sweep.id;
    tr.dataset.status = sweep.status;
    return tr;
  }

  async function refresh() {
    const page = await T.getJson("/sweeps?page_size=50");
    body.replaceChildren.apply(body, page.items.map(row));
    document.getElementById("sweeps-empty").hidden = page.items.length > 0;
    state.active = page.items.some(function (s) {
      return s.status === "queued" || s.status === "running";
    });
    document.getElementById("refresh-note").textContent = state.active ? "live: sweeps are running" : "";
    T.flash("");
  }

  const poller = T.poll(refresh, function () {
    return state.active ? 1000 : 5000;
  });

  // -- the new-sweep form ----------------------------------------------------------------------

  const datasetSelect = document.getElementById("sweep-dataset");
  const datasets = {};
  const baseBox = document.getElementById("sweep-base");
  const paramsBox = document.getElementById("sweep-parameters");

  function lossFor(d) {
    const classes = d.target ? d.target.classes : d.classes;
    if (classes && classes.length === 2) return { loss: "binary_cross_entropy", width: 1 };
    if (classes && classes.length > 2) return { loss: "cross_entropy", width: classes.length };
    return { loss: "mse", width: d.n_targets || 1 };
  }

  // A base spec and a small grid that fit the chosen dataset, as a starting point.
  function suggest() {
    const d = datasets[datasetSelect.value];
    if (!d) return;
    const fit = lossFor(d);
    baseBox.value = JSON.stringify({
      model: { layers: [16, fit.width] }, // the activation: the service's default
      training: { loss: fit.loss, optimizer: "adam", epochs: 50, validation_split: 0.2, seed: 0 },
    }, null, 2);
    paramsBox.value = JSON.stringify({
      "training.learning_rate": { values: [0.003, 0.01, 0.03] },
      "model.layers": { values: [[16, fit.width], [32, 32, fit.width]] },
    }, null, 2);
  }

  async function loadDatasets() {
    const page = await T.getJson("/datasets?page_size=100");
    datasetSelect.replaceChildren();
    page.items.forEach(function (d) {
      datasets[d.id] = d;
      const option = T.el("option", { text: d.name + " · " + d.n_samples + "×" + d.n_features });
      option.value = d.id;
      datasetSelect.appendChild(option);
    });
    if (!page.items.length) {
      const option = T.el("option", { text: "no datasets yet" });
      option.value = "";
      datasetSelect.appendChild(option);
    }
    suggest();
  }
  datasetSelect.addEventListener("change", suggest);

  const early = document.getElementById("sweep-early");
  early.addEventListener("change", function () {
    document.getElementById("sweep-min-epochs").disabled = !early.checked;
  });

  function numberOrNull(id) {
    const raw = document.getElementById(id).value.trim();
    return raw === "" ? null : Number(raw);
  }

  function parseJson(box, field) {
    try {
      return JSON.parse(box.value);
    } catch (e) {
      const fields = {};
      fields[field] = "not valid JSON: " + e.message;
      throw new T.ApiError(0, "bad_json", "The " + field + " box is not valid JSON.", fields);
    }
  }

  document.getElementById("sweep-form").addEventListener("submit", async function (event) {
    event.preventDefault();
    const errorBox = document.getElementById("sweep-form-error");
    errorBox.hidden = true;
    try {
      const spec = {
        dataset_id: datasetSelect.value,
        method: document.getElementById("sweep-method").value,
        base: parseJson(baseBox, "base"),
        parameters: parseJson(paramsBox, "parameters"),
      };
      const name = document.getElementById("sweep-name").value.trim();
      if (name) spec.name = name;
      const maxTrials = numberOrNull("sweep-max-trials");
      if (maxTrials !== null) spec.max_trials = maxTrials;
      const maxParallel = numberOrNull("sweep-max-parallel");
      if (maxParallel !== null) spec.max_parallel = maxParallel;
      const metric = {};
      const metricName = document.getElementById("sweep-metric").value.trim();
      if (metricName) metric.name = metricName;
      const goal = document.getElementById("sweep-goal").value;
      if (goal) metric.goal = goal;
      spec.metric = metric;
      if (early.checked) {
        spec.early_termination = { type: "median", min_epochs: numberOrNull("sweep-min-epochs") || 10 };
      }
      const sweep = await T.postJson("/sweeps", spec);
      window.location.href = "/sweeps/" + encodeURIComponent(sweep.id);
    } catch (e) {
      T.showError(errorBox, e);
    }
  });

  loadDatasets().catch(function (e) {
    T.flash("Could not load datasets: " + e.message);
  });
  void poller;
})();
