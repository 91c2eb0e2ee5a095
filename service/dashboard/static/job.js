// The job page: live loss curve (Chart.js), spec and metrics; for a finished job the model's
// graph SVG, a weights download, a predict form and, for 2-D data with 2 or 3 classes, the
// decision boundary (predictions on a grid via the predict endpoint, with the training points).
"use strict";

(function () {
  const T = window.Trainyard;
  const jobId = document.getElementById("main").dataset.jobId;
  const COLORS = ["#2f6fdf", "#e8731a", "#2a9d55"];
  const COLORS_RGB = [[47, 111, 223], [232, 115, 26], [42, 157, 85]];

  let job = null;
  let model = null;
  let lossChart = null;
  let boundaryChart = null;
  let points = null; // the dataset's rows, grouped by class: [[{x, y}, ...], ...]

  // -- loss chart --------------------------------------------------------------------------

  function makeLossChart() {
    return new window.Chart(document.getElementById("loss-chart"), {
      type: "line",
      data: {
        labels: [],
        datasets: [
          { label: "training", data: [], borderColor: COLORS[0], backgroundColor: COLORS[0], pointRadius: 0, borderWidth: 2, tension: 0.1 },
          { label: "validation", data: [], borderColor: COLORS[1], backgroundColor: COLORS[1], pointRadius: 0, borderWidth: 2, tension: 0.1, hidden: false },
        ],
      },
      options: {
        animation: false,
        maintainAspectRatio: false,
        interaction: { mode: "index", intersect: false },
        scales: {
          x: { title: { display: true, text: "epoch" }, ticks: { maxTicksLimit: 10 } },
          y: { type: "linear", title: { display: true, text: "loss" } },
        },
        plugins: { legend: { position: "bottom" } },
      },
    });
  }

  function updateLossChart() {
    const train = job.loss_history || [];
    const val = job.val_loss_history || [];
    const n = Math.max(train.length, val.length);
    lossChart.data.labels = Array.from({ length: n }, function (_, i) {
      return i + 1;
    });
    lossChart.data.datasets[0].data = train;
    lossChart.data.datasets[1].data = val;
    lossChart.data.datasets[1].hidden = val.length === 0;
    // A log scale shows the long tail of a falling loss; only possible when all are > 0.
    const all = train.concat(val).filter(Number.isFinite);
    const positive = all.length > 1 && all.every(function (v) { return v > 0; });
    const spread = positive ? Math.max.apply(null, all) / Math.min.apply(null, all) : 0;
    lossChart.options.scales.y.type = spread > 100 ? "logarithmic" : "linear";
    lossChart.update();
  }

  // -- job ---------------------------------------------------------------------------------

  function kvRows(table, pairs) {
    const tbody = table.tBodies[0];
    tbody.replaceChildren.apply(tbody, pairs.map(function (pair) {
      return T.el("tr", {}, [T.el("th", { text: pair[0] }), T.el("td", { text: pair[1] })]);
    }));
  }

  function show() {
    const status = document.getElementById("job-status");
    status.textContent = job.status;
    status.className = "badge status-" + job.status;
    const p = job.progress || { epoch: 0, epochs: 0 };
    const bar = document.getElementById("job-progress");
    bar.max = p.epochs || 1;
    bar.value = p.epoch || 0;
    const history = job.loss_history || [];
    const last = history.length ? " · loss " + T.fmtNumber(history[history.length - 1]) : "";
    document.getElementById("job-progress-text").textContent = "epoch " + p.epoch + " of " + p.epochs + last;
    const errorBox = document.getElementById("job-error");
    errorBox.textContent = job.error || "";
    errorBox.hidden = !job.error;
    document.getElementById("cancel-button").hidden = T.FINISHED.indexOf(job.status) >= 0;

    const m = job.model || {};
    const t = job.training || {};
    kvRows(document.getElementById("spec-table"), [
      ["dataset", job.dataset_id],
      ["layers", (m.layers || []).join(", ")],
      ["activation", m.activation + (m.output_activation ? " / out " + m.output_activation : "")],
      ["loss", t.loss],
      ["optimizer", t.optimizer + (t.momentum ? " (momentum " + t.momentum + ")" : "")],
      ["learning rate", T.fmtNumber(t.learning_rate)],
      ["epochs", t.epochs],
      ["batch size", t.batch_size === null ? "full batch" : t.batch_size],
      ["validation split", t.validation_split],
      ["seed", t.seed],
      ["attempts", job.attempts],
      ["created", T.fmtTime(job.created_at)],
      ["started", T.fmtTime(job.started_at)],
      ["finished", T.fmtTime(job.finished_at)],
    ]);
    const metrics = job.metrics || {};
    const names = Object.keys(metrics).sort();
    kvRows(document.getElementById("metrics-table"), names.length
      ? names.map(function (k) { return [k, T.fmtNumber(metrics[k])]; })
      : [["", job.status === "succeeded" ? "none" : "when the job ends"]]);
    updateLossChart();
  }

  async function refresh() {
    job = await T.getJson("/jobs/" + encodeURIComponent(jobId));
    show();
    T.flash("");
    if (job.status === "succeeded" && job.model_id && !model) {
      poller.stop();
      await loadModel(job.model_id);
    }
  }

  // -- the trained model ---------------------------------------------------------------------

  async function loadModel(modelId) {
    model = await T.getJson("/models/" + encodeURIComponent(modelId));
    document.getElementById("model-panel").hidden = false;
    document.getElementById("model-id").textContent = model.id;
    const arch = model.architecture;
    document.getElementById("predict-nin").textContent = String(arch.nin);
    document.getElementById("predict-input").value = Array(arch.nin).fill("0").join(", ");
    const classes = arch.classes || [];
    if (arch.nin === 2 && (classes.length === 2 || classes.length === 3)) {
      document.getElementById("boundary-panel").hidden = false;
      drawBoundary().catch(function (e) {
        T.flash("Could not draw the decision boundary: " + e.message);
      });
    }
    const url = await T.blobUrl("/models/" + encodeURIComponent(modelId) + "/graph.svg");
    const img = document.getElementById("graph-img");
    img.src = url;
    img.hidden = false;
    const open = document.getElementById("graph-open");
    open.href = url;
    open.hidden = false;
  }

  document.getElementById("weights-button").addEventListener("click", async function () {
    try {
      const url = await T.blobUrl("/models/" + encodeURIComponent(model.id) + "/weights");
      const link = document.getElementById("weights-link");
      link.href = url;
      link.download = "model-" + model.id + ".npz";
      link.click();
    } catch (e) {
      T.flash("Could not download the weights: " + e.message);
    }
  });

  document.getElementById("predict-form").addEventListener("submit", async function (event) {
    event.preventDefault();
    const errorBox = document.getElementById("predict-error");
    errorBox.hidden = true;
    const lines = document.getElementById("predict-input").value.split("\n").map(function (l) {
      return l.trim();
    }).filter(Boolean);
    const rows = lines.map(function (line) {
      return line.split(/[,\s]+/).filter(Boolean).map(Number);
    });
    if (rows.some(function (r) { return r.some(function (v) { return !Number.isFinite(v); }); })) {
      T.showError(errorBox, { message: "Every value must be a number." });
      return;
    }
    try {
      const answer = await T.postJson("/models/" + encodeURIComponent(model.id) + "/predict", { features: rows });
      const table = document.getElementById("predict-table");
      const tbody = table.tBodies[0];
      tbody.replaceChildren.apply(tbody, rows.map(function (row, i) {
        const probs = answer.probabilities ? answer.probabilities[i].map(T.fmtNumber).join(", ") : "–";
        const prediction = answer.predictions[i];
        return T.el("tr", {}, [
          T.el("td", { text: row.join(", ") }),
          T.el("td", { text: Array.isArray(prediction) ? prediction.map(T.fmtNumber).join(", ") : (typeof prediction === "number" ? T.fmtNumber(prediction) : prediction), className: "prediction" }),
          T.el("td", { text: probs }),
        ]);
      }));
      table.hidden = false;
    } catch (e) {
      T.showError(errorBox, e);
    }
  });

  // -- decision boundary ---------------------------------------------------------------------

  const GRID = 70;

  function readRange() {
    const v = function (id) { return Number(document.getElementById(id).value); };
    const r = { xmin: v("bx-min"), xmax: v("bx-max"), ymin: v("by-min"), ymax: v("by-max") };
    if (![r.xmin, r.xmax, r.ymin, r.ymax].every(Number.isFinite) || r.xmin >= r.xmax || r.ymin >= r.ymax) {
      throw new Error("the range needs numbers with min < max");
    }
    return r;
  }

  // The grid's class colours (shade = confidence) as a small image the chart stretches over
  // its plot area, under the axes Chart.js draws.
  function boundaryImage(answer, classes) {
    const canvas = document.createElement("canvas");
    canvas.width = GRID;
    canvas.height = GRID;
    const ctx = canvas.getContext("2d");
    const image = ctx.createImageData(GRID, GRID);
    const k = classes.length;
    answer.probabilities.forEach(function (probs, index) {
      const col = index % GRID;
      const rowFromBottom = Math.floor(index / GRID);
      const best = probs.indexOf(Math.max.apply(null, probs));
      const confidence = (probs[best] - 1 / k) / (1 - 1 / k);
      const rgb = COLORS_RGB[best];
      const o = 4 * ((GRID - 1 - rowFromBottom) * GRID + col);
      for (let c = 0; c < 3; c++) {
        image.data[o + c] = Math.round(255 - (255 - rgb[c]) * (0.25 + 0.55 * confidence));
      }
      image.data[o + 3] = 255;
    });
    ctx.putImageData(image, 0, 0);
    return canvas;
  }

  const backgroundImage = {
    id: "backgroundImage",
    beforeDatasetsDraw: function (chart, _args, options) {
      if (!options.image) return;
      const a = chart.chartArea;
      chart.ctx.save();
      chart.ctx.imageSmoothingEnabled = true;
      chart.ctx.drawImage(options.image, a.left, a.top, a.right - a.left, a.bottom - a.top);
      chart.ctx.restore();
    },
  };

  const MAX_POINTS = 1500;

  // The dataset's rows by class (every k-th row past MAX_POINTS); on the first draw the range
  // is fitted to them, with a margin.
  async function loadPoints(classes) {
    const rows = await T.getJson("/datasets/" + encodeURIComponent(model.dataset_id) + "/data");
    const step = Math.max(1, Math.ceil(rows.features.length / MAX_POINTS));
    const byClass = classes.map(function () { return []; });
    rows.features.forEach(function (f, i) {
      const c = classes.indexOf(rows.targets[i]);
      if (i % step === 0 && c >= 0) byClass[c].push({ x: f[0], y: f[1] });
    });
    const xs = rows.features.map(function (f) { return f[0]; });
    const ys = rows.features.map(function (f) { return f[1]; });
    const fit = function (v, lo, hi) {
      const min = Math.min.apply(null, v), max = Math.max.apply(null, v);
      const pad = 0.1 * (max - min || 1);
      document.getElementById(lo).value = String(+(min - pad).toPrecision(3));
      document.getElementById(hi).value = String(+(max + pad).toPrecision(3));
    };
    if (xs.length) {
      fit(xs, "bx-min", "bx-max");
      fit(ys, "by-min", "by-max");
    }
    return byClass;
  }

  async function drawBoundary() {
    const classes = model.architecture.classes;
    if (points === null) points = await loadPoints(classes);
    const r = readRange();
    const features = [];
    for (let j = 0; j < GRID; j++) {
      const y = r.ymin + ((j + 0.5) * (r.ymax - r.ymin)) / GRID;
      for (let i = 0; i < GRID; i++) {
        features.push([r.xmin + ((i + 0.5) * (r.xmax - r.xmin)) / GRID, y]);
      }
    }
    const answer = await T.postJson("/models/" + encodeURIComponent(model.id) + "/predict", { features: features });
    const image = boundaryImage(answer, classes);
    if (boundaryChart) boundaryChart.destroy();
    boundaryChart = new window.Chart(document.getElementById("boundary-chart"), {
      type: "scatter",
      // one dataset per class: its training points, and the legend names the colours
      data: {
        datasets: classes.map(function (label, i) {
          return {
            label: "class " + String(label), data: points[i], backgroundColor: COLORS[i],
            borderColor: "#ffffff", borderWidth: 1, pointRadius: 3,
          };
        }),
      },
      options: {
        animation: false,
        maintainAspectRatio: false,
        scales: {
          x: { type: "linear", min: r.xmin, max: r.xmax, title: { display: true, text: "feature 1" } },
          y: { type: "linear", min: r.ymin, max: r.ymax, title: { display: true, text: "feature 2" } },
        },
        plugins: { legend: { position: "bottom" }, backgroundImage: { image: image } },
      },
      plugins: [backgroundImage],
    });
    document.getElementById("boundary-chart").dataset.drawn = "true";
  }

  document.getElementById("boundary-form").addEventListener("submit", function (event) {
    event.preventDefault();
    drawBoundary().catch(function (e) {
      T.flash("Could not draw the decision boundary: " + e.message);
    });
  });

  document.getElementById("cancel-button").addEventListener("click", async function () {
    try {
      job = await T.postJson("/jobs/" + encodeURIComponent(jobId) + "/cancel");
      show();
    } catch (e) {
      T.flash("Could not cancel: " + e.message);
    }
  });

  lossChart = makeLossChart();
  const poller = T.poll(refresh, function () {
    return job && T.FINISHED.indexOf(job.status) >= 0 ? 0 : 1000;
  });
})();
