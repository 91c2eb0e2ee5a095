// The job page: live loss curve (Chart.js, the best epoch marked; fed by the job's event
// stream, polling only when the stream keeps breaking), why training stopped, spec
// and metrics; for a finished job the evaluation on each split (a table, and for classification
// the confusion matrix and per-class scores), the model's graph SVG, a weights download, a
// predict form with an input per column and, for 2 numeric columns with 2 or 3 classes, the
// decision boundary (predictions on a grid via the predict endpoint, with the training points).
"use strict";

(function () {
  const T = window.Trainyard;
  const jobId = document.getElementById("main").dataset.jobId;
  const COLORS = ["#2f6fdf", "#e8731a", "#2a9d55"];
  const COLORS_RGB = [[47, 111, 223], [232, 115, 26], [42, 157, 85]];
  const BEST_COLOR = "#7a3fc4";

  let job = null;
  let model = null;
  let lossChart = null;
  let boundaryChart = null;
  let points = null; // the dataset's rows, grouped by class: [[{x, y}, ...], ...]

  // -- loss chart --------------------------------------------------------------------------

  // The best epoch as a dashed vertical line across the plot, labelled; drawn by this small
  // plugin from `options.plugins.bestEpoch.epoch` (1-based; null: none).
  const bestEpochLine = {
    id: "bestEpoch",
    afterDatasetsDraw: function (chart, _args, options) {
      const epoch = options.epoch;
      if (!epoch || epoch > chart.data.labels.length) return;
      const x = chart.scales.x.getPixelForValue(epoch - 1);
      const a = chart.chartArea;
      const ctx = chart.ctx;
      ctx.save();
      ctx.strokeStyle = options.color;
      ctx.lineWidth = 1.5;
      ctx.setLineDash([5, 4]);
      ctx.beginPath();
      ctx.moveTo(x, a.top);
      ctx.lineTo(x, a.bottom);
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.fillStyle = options.color;
      ctx.font = "12px system-ui, sans-serif";
      const text = "best epoch " + epoch;
      const width = ctx.measureText(text).width;
      ctx.textAlign = x + 6 + width > a.right ? "right" : "left";
      ctx.fillText(text, ctx.textAlign === "right" ? x - 6 : x + 6, a.top + 14);
      ctx.restore();
    },
  };

  function makeLossChart() {
    return new window.Chart(document.getElementById("loss-chart"), {
      type: "line",
      data: {
        labels: [],
        datasets: [
          { label: "training", data: [], borderColor: COLORS[0], backgroundColor: COLORS[0], pointRadius: 0, borderWidth: 2, tension: 0.1 },
          { label: "validation", data: [], borderColor: COLORS[1], backgroundColor: COLORS[1], pointRadius: 0, borderWidth: 2, tension: 0.1, hidden: false },
          // one point, at the best epoch on the validation curve
          { label: "best epoch", data: [], borderColor: BEST_COLOR, backgroundColor: BEST_COLOR, showLine: false, pointRadius: 6, pointHoverRadius: 7, pointStyle: "rectRot", hidden: true },
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
        plugins: {
          legend: { position: "bottom" },
          bestEpoch: { epoch: null, color: BEST_COLOR },
          tooltip: {
            filter: function (item) {
              return item.raw !== null && item.raw !== undefined;
            },
          },
        },
      },
      plugins: [bestEpochLine],
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
    const best = job.best_epoch && job.best_epoch <= n ? job.best_epoch : null;
    const curve = val.length ? val : train;
    lossChart.data.datasets[2].data = best ? Array.from({ length: n }, function (_, i) {
      return i === best - 1 ? curve[i] : null;
    }) : [];
    lossChart.data.datasets[2].hidden = !best;
    lossChart.options.plugins.bestEpoch.epoch = best;
    const canvas = document.getElementById("loss-chart");
    if (best) canvas.dataset.bestEpoch = String(best);
    const note = document.getElementById("best-epoch-note");
    note.hidden = !best;
    note.textContent = best ? "Best epoch " + best + ": the lowest " + (val.length ? "validation" : "training") + " loss, " + T.fmtNumber(curve[best - 1]) + "." : "";
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
    const last = history.length ? " · last epoch's loss " + T.fmtNumber(history[history.length - 1]) : "";
    document.getElementById("job-progress-text").textContent = "epoch " + p.epoch + " of " + p.epochs + last;
    const errorBox = document.getElementById("job-error");
    errorBox.textContent = job.error || "";
    errorBox.hidden = !job.error;
    document.getElementById("cancel-button").hidden = T.FINISHED.indexOf(job.status) >= 0;

    const stop = document.getElementById("job-stop");
    stop.textContent = stopText();
    stop.hidden = !stop.textContent;
    if (job.stop_reason) stop.dataset.stopReason = job.stop_reason;

    const m = job.model || {};
    const t = job.training || {};
    const es = t.early_stopping;
    const D = T.specDefaults.value || { training: {}, early_stopping_split: null };
    const defaultSchedule = (D.training.lr_schedule || {}).type;
    const schedule = t.lr_schedule || D.training.lr_schedule || {};
    const scheduleParams = Object.keys(schedule).filter(function (k) { return k !== "type"; }).map(function (k) {
      return k + " " + T.fmtNumber(schedule[k]);
    });
    const pre = t.preprocessing || {};
    const classWeight = t.class_weight;
    kvRows(document.getElementById("spec-table"), [
      ["dataset", job.dataset_id],
      ["layers", (m.layers || []).join(", ")],
      ["activation", m.activation + (m.output_activation ? " / out " + m.output_activation : "")],
      ["loss", t.loss],
      ["optimizer", t.optimizer + (t.momentum ? " (momentum " + t.momentum + ")" : "")],
      ["learning rate", T.fmtNumber(t.learning_rate) + (schedule.type && schedule.type !== defaultSchedule ? " · " + schedule.type + (scheduleParams.length ? " (" + scheduleParams.join(", ") + ")" : "") : "")],
      ["weight decay", t.weight_decay ? T.fmtNumber(t.weight_decay) : "none"],
      ["epochs", t.epochs],
      ["batch size", t.batch_size === null ? "full batch" : t.batch_size],
      ["validation split", (t.validation_split || 0) + (es && !t.validation_split && D.early_stopping_split !== null ? " (" + D.early_stopping_split + " for early stopping)" : "")],
      ["test split", t.test_split || 0],
      ["early stopping", es ? "patience " + es.patience + (es.min_delta ? ", min delta " + T.fmtNumber(es.min_delta) : "") + (es.restore_best ? ", keeps the best epoch" : "") : "off"],
      ["class weights", classWeight === null || classWeight === undefined ? "none" : typeof classWeight === "string" ? classWeight : JSON.stringify(classWeight)],
      ["dtype", t.dtype || D.training.dtype],
      ["preprocessing", pre.numeric ? "numeric " + pre.numeric + " · categorical " + pre.categorical + " · missing " + pre.missing + (t.loss === "mse" ? " · target " + pre.target : "") : "–"],
      ["seed", t.seed],
      ["attempts", job.attempts],
      ["created", T.fmtTime(job.created_at)],
      ["started", T.fmtTime(job.started_at)],
      ["finished", T.fmtTime(job.finished_at)],
    ]);
    // The saved model's scores, named apart from the per-epoch curve (the mean over each
    // epoch's mini-batches while the weights moved).
    const METRIC_LABELS = {
      loss: "loss, saved model, training rows",
      accuracy: "accuracy, training rows",
      val_loss: "loss, saved model, validation rows",
      val_accuracy: "accuracy, validation rows",
    };
    const metrics = job.metrics || {};
    const names = Object.keys(metrics).sort();
    kvRows(document.getElementById("metrics-table"), names.length
      ? names.map(function (k) { return [METRIC_LABELS[k] || k, T.fmtNumber(metrics[k])]; })
      : [["", job.status === "succeeded" ? "none" : "when the job ends"]]);
    updateLossChart();
    showEvaluation();
  }

  // Why training ended, in words.
  function stopText() {
    const p = job.progress || {};
    const last = job.stopped_epoch || p.epoch;
    const best = job.best_epoch ? " Best epoch " + job.best_epoch + "." : "";
    const es = (job.training || {}).early_stopping;
    switch (job.stop_reason) {
      case "early_stopping":
        return "Stopped early at epoch " + last + " of " + p.epochs + ": the validation loss had not improved for " + (es ? es.patience : "several") + " epochs." + best + (es && es.restore_best ? " The saved weights are the best epoch's." : "");
      case "completed":
        return "Ran all " + last + " epochs." + best;
      case "cancelled":
        return "Cancelled at epoch " + last + ".";
      case "failed":
        return "Failed at epoch " + last + ".";
      default:
        return "";
    }
  }

  // -- evaluation ----------------------------------------------------------------------------

  const SPLITS = ["train", "validation", "test"];
  const SPLIT_NAMES = { train: "training", validation: "validation", test: "test" };
  const METRIC_ROWS = [
    ["n", "rows", function (e) { return e.n; }],
    ["loss", "loss", function (e) { return e.loss; }],
    ["accuracy", "accuracy", function (e) { return e.accuracy; }],
    ["balanced_accuracy", "balanced accuracy", function (e) { return e.balanced_accuracy; }],
    ["precision", "precision (macro)", function (e) { return e.precision && e.precision.macro; }],
    ["recall", "recall (macro)", function (e) { return e.recall && e.recall.macro; }],
    ["f1", "F1 (macro)", function (e) { return e.f1 && e.f1.macro; }],
    ["log_loss", "log loss", function (e) { return e.log_loss; }],
    ["roc_auc", "ROC AUC", function (e) { return e.roc_auc; }],
    ["mse", "MSE", function (e) { return e.mse; }],
    ["rmse", "RMSE", function (e) { return e.rmse; }],
    ["mae", "MAE", function (e) { return e.mae; }],
    ["r2", "R²", function (e) { return e.r2; }],
  ];
  let cmSplit = null;

  function showEvaluation() {
    const evaluation = job.evaluation || {};
    const splits = SPLITS.filter(function (s) { return evaluation[s]; });
    document.getElementById("evaluation-panel").hidden = splits.length === 0;
    if (!splits.length) return;
    const table = document.getElementById("evaluation-table");
    table.tHead.replaceChildren(T.el("tr", {}, [T.el("th", { text: "" })].concat(splits.map(function (s) {
      const th = T.el("th", { text: SPLIT_NAMES[s] });
      th.dataset.split = s;
      return th;
    }))));
    const rows = METRIC_ROWS.filter(function (r) {
      return splits.some(function (s) { return r[0] in evaluation[s]; });
    });
    table.tBodies[0].replaceChildren.apply(table.tBodies[0], rows.map(function (r) {
      const tr = T.el("tr", {}, [T.el("th", { text: r[1] })].concat(splits.map(function (s) {
        const value = r[2](evaluation[s]);
        return T.el("td", { text: value === undefined ? "–" : T.fmtNumber(value), className: "num" });
      })));
      tr.dataset.metric = r[0];
      return tr;
    }));

    const withMatrix = splits.filter(function (s) { return evaluation[s].confusion_matrix; });
    document.getElementById("classification-panel").hidden = withMatrix.length === 0;
    if (!withMatrix.length) return;
    // the test rows when there are some, else validation, else training
    if (withMatrix.indexOf(cmSplit) < 0) cmSplit = withMatrix[withMatrix.length - 1];
    const select = document.getElementById("cm-split");
    select.replaceChildren.apply(select, withMatrix.map(function (s) {
      const option = T.el("option", { text: SPLIT_NAMES[s] });
      option.value = s;
      return option;
    }));
    select.value = cmSplit;
    showConfusion(evaluation[cmSplit], cmSplit);
  }

  function showConfusion(e, split) {
    const cm = e.confusion_matrix;
    const labels = cm.labels.map(String);
    const table = document.getElementById("confusion-matrix");
    table.dataset.split = split;
    const head = T.el("tr", {}, [
      T.el("th", { text: "true ↓ predicted →", className: "corner" }),
    ].concat(labels.map(function (label) {
      return T.el("th", { text: label, className: "predicted" });
    })));
    const body = cm.matrix.map(function (counts, i) {
      const total = counts.reduce(function (a, b) { return a + b; }, 0);
      return T.el("tr", {}, [T.el("th", { text: labels[i], className: "true" })].concat(counts.map(function (count, j) {
        const share = total ? count / total : 0;
        const shade = Math.round(share * 10);
        const cell = T.el("td", {
          text: count,
          className: "heat heat-" + shade + (i === j ? " diagonal" : ""),
          title: labels[i] + " predicted as " + labels[j] + ": " + count + " of " + total + " (" + Math.round(100 * share) + "%)",
        });
        cell.dataset.count = String(count);
        return cell;
      })));
    });
    table.replaceChildren(T.el("thead", {}, [head]), T.el("tbody", {}, body));

    document.getElementById("per-class-split").textContent = "(" + SPLIT_NAMES[split] + ")";
    const perClass = document.getElementById("per-class-table").tBodies[0];
    const pc = function (metric, label) {
      return e[metric] && e[metric].per_class ? e[metric].per_class[label] : undefined;
    };
    perClass.replaceChildren.apply(perClass, labels.map(function (label, i) {
      const support = cm.matrix[i].reduce(function (a, b) { return a + b; }, 0);
      return T.el("tr", {}, [
        T.el("td", { text: label }),
        T.el("td", { text: T.fmtNumber(pc("precision", label)), className: "num" }),
        T.el("td", { text: T.fmtNumber(pc("recall", label)), className: "num" }),
        T.el("td", { text: T.fmtNumber(pc("f1", label)), className: "num" }),
        T.el("td", { text: support, className: "num" }),
      ]);
    }));
  }

  document.getElementById("cm-split").addEventListener("change", function (event) {
    cmSplit = event.target.value;
    showEvaluation();
  });

  async function refresh() {
    job = await T.getJson("/jobs/" + encodeURIComponent(jobId));
    show();
    T.flash("");
    await finished();
  }

  async function finished() {
    if (job.status === "succeeded" && job.model_id && !model) {
      await loadModel(job.model_id);
    }
  }

  // -- live: the job's event stream ----------------------------------------------------------

  // Redraw at most once a frame, however fast epochs arrive.
  let drawPending = false;
  function drawSoon() {
    if (drawPending) return;
    drawPending = true;
    window.requestAnimationFrame(function () {
      drawPending = false;
      show();
    });
  }

  // One epoch event into the job: progress and histories (an epoch the job already holds, as
  // a status event's job may be ahead of the epochs that follow it, changes nothing).
  function addEpoch(e) {
    const history = job.loss_history || (job.loss_history = []);
    if (e.epoch > history.length) {
      history.push(e.loss);
      const val = job.val_loss_history || (job.val_loss_history = []);
      if (e.val_loss !== null && e.val_loss !== undefined && e.epoch > val.length) val.push(e.val_loss);
    }
    const p = job.progress || (job.progress = { epoch: 0, epochs: 0 });
    if (e.epoch >= (p.epoch || 0)) {
      p.epoch = e.epoch;
      p.loss = e.loss;
    }
  }

  // Follows the stream until it ends; true if it sent anything. The stream resumes after the
  // last epoch this page holds (Last-Event-ID), so nothing comes twice.
  async function follow() {
    let got = false;
    const last = String((job.loss_history || []).length);
    await T.readEvents("/jobs/" + encodeURIComponent(jobId) + "/events", { "Last-Event-ID": last }, function (type, data) {
      got = true;
      if (type === "status") {
        job = data;
        show();
      } else if (type === "epoch") {
        addEpoch(data);
        drawSoon();
      }
    });
    return got;
  }

  function sleep(ms) {
    return new Promise(function (resolve) { window.setTimeout(resolve, ms); });
  }

  // The page's loop: the job, then its stream until the job is finished. When the stream
  // breaks (a proxy that cuts long answers), poll once and open it again; after three breaks
  // that sent nothing, poll every second instead.
  async function live() {
    let breaks = 0;
    for (;;) {
      try {
        await refresh();
      } catch (e) {
        T.flash(e.status === 401 ? "The API needs a key." : "Could not refresh: " + e.message);
      }
      if (job && T.FINISHED.indexOf(job.status) >= 0) return;
      if (job && breaks < 3) {
        document.getElementById("loss-chart").dataset.live = "stream";
        try {
          breaks = (await follow()) ? 0 : breaks + 1;
        } catch (e) {
          breaks += 1;
        }
        if (T.FINISHED.indexOf(job.status) >= 0) {
          show();
          await finished();
          return;
        }
      } else {
        document.getElementById("loss-chart").dataset.live = "poll";
        await sleep(1000);
      }
    }
  }

  // -- the trained model ---------------------------------------------------------------------

  // The model's input columns: `columns` ([{name, type}]); a model without them takes `nin`
  // numbers.
  function modelColumns() {
    if (model.columns && model.columns.length) return model.columns;
    return Array.from({ length: model.architecture.nin }, function (_, i) {
      return { name: "x" + i, type: "numeric" };
    });
  }

  // Where the model is registered: NAME@vN (aliases), each linking to its registry page.
  function showRegistered(entries) {
    const box = document.getElementById("model-registered");
    box.replaceChildren();
    entries.forEach(function (e, i) {
      if (i > 0) box.appendChild(document.createTextNode(", "));
      const text = e.name + "@v" + e.version + (e.aliases.length ? " (" + e.aliases.join(", ") + ")" : "");
      box.appendChild(T.el("a", { text: text, href: "/registry/" + encodeURIComponent(e.name) }));
    });
    if (entries.length) box.insertBefore(document.createTextNode("Registered as "), box.firstChild);
    box.hidden = entries.length === 0;
  }

  async function loadModel(modelId) {
    model = await T.getJson("/models/" + encodeURIComponent(modelId));
    document.getElementById("model-panel").hidden = false;
    document.getElementById("model-id").textContent = model.id;
    document.getElementById("model-delete").dataset.delete = "/models/" + encodeURIComponent(model.id);
    document.getElementById("model-dataset-gone").hidden = !model.dataset_deleted;
    showRegistered(model.registered || []);
    const arch = model.architecture;
    buildPredictForm();
    const columns = modelColumns();
    const classes = arch.classes || [];
    const numeric = columns.every(function (c) { return c.type === "numeric"; });
    if (columns.length === 2 && numeric && (classes.length === 2 || classes.length === 3)) {
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

  // -- predict: an input per column, a row of inputs per row ----------------------------------

  // The levels a categorical column was fitted with, when the model says (for suggestions).
  function levelsOf(name) {
    const pre = model.architecture.preprocessing || {};
    const step = (pre.steps || []).find(function (s) { return s.name === name; });
    return step && Array.isArray(step.levels) ? step.levels : [];
  }

  function buildPredictForm() {
    const columns = modelColumns();
    const table = document.getElementById("predict-rows");
    table.tHead.replaceChildren(T.el("tr", {}, columns.map(function (c) {
      return T.el("th", {}, [T.el("span", { text: c.name }), T.el("span", { text: " " + c.type, className: "col-type" })]);
    })));
    columns.forEach(function (c, i) {
      const levels = levelsOf(c.name);
      if (c.type !== "categorical" || !levels.length) return;
      const list = document.createElement("datalist");
      list.id = "predict-levels-" + i;
      levels.forEach(function (level) {
        const option = document.createElement("option");
        option.value = String(level);
        list.appendChild(option);
      });
      document.getElementById("predict-form").appendChild(list);
    });
    table.tBodies[0].replaceChildren();
    addPredictRow();
  }

  function addPredictRow() {
    const columns = modelColumns();
    const tbody = document.getElementById("predict-rows").tBodies[0];
    const n = tbody.rows.length;
    tbody.appendChild(T.el("tr", {}, columns.map(function (c, i) {
      const input = document.createElement("input");
      input.dataset.column = c.name;
      input.dataset.type = c.type;
      input.placeholder = "missing";
      input.spellcheck = false;
      input.setAttribute("aria-label", c.name + ", row " + (n + 1));
      if (c.type === "numeric") input.inputMode = "decimal";
      else if (document.getElementById("predict-levels-" + i)) input.setAttribute("list", "predict-levels-" + i);
      return T.el("td", {}, [input]);
    })));
  }

  document.getElementById("predict-add-row").addEventListener("click", addPredictRow);

  // One `{column: value}` per row of inputs: numbers for numeric columns when they parse (else
  // the text, which the API names in its error), text for categorical ones; empty ones left out
  // (a missing cell).
  function predictRows() {
    const tbody = document.getElementById("predict-rows").tBodies[0];
    return Array.from(tbody.rows).map(function (tr) {
      const row = {};
      tr.querySelectorAll("input").forEach(function (input) {
        const raw = input.value.trim();
        if (raw === "") return;
        const number = Number(raw);
        row[input.dataset.column] = input.dataset.type === "numeric" && Number.isFinite(number) ? number : raw;
      });
      return row;
    });
  }

  function describeRow(row) {
    const parts = modelColumns().map(function (c) {
      return c.name + " = " + (c.name in row ? String(row[c.name]) : "missing");
    });
    return parts.join(", ");
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

  // Exports: ONNX (preprocessing and network in one file) and the zip bundle.
  [["onnx-button", "onnx", ".onnx"], ["bundle-button", "bundle", ".zip"]].forEach(function (spec) {
    document.getElementById(spec[0]).addEventListener("click", async function () {
      try {
        const url = await T.blobUrl("/models/" + encodeURIComponent(model.id) + "/export?format=" + spec[1]);
        const link = document.getElementById("weights-link");
        link.href = url;
        link.download = "model-" + model.id + spec[2];
        link.click();
      } catch (e) {
        T.flash("Could not export the model: " + e.message);
      }
    });
  });

  document.getElementById("predict-form").addEventListener("submit", async function (event) {
    event.preventDefault();
    const errorBox = document.getElementById("predict-error");
    errorBox.hidden = true;
    const rows = predictRows();
    try {
      const answer = await T.postJson("/models/" + encodeURIComponent(model.id) + "/predict", { rows: rows });
      const classes = model.architecture.classes || [];
      const table = document.getElementById("predict-table");
      const tbody = table.tBodies[0];
      tbody.replaceChildren.apply(tbody, rows.map(function (row, i) {
        const probs = answer.probabilities
          ? answer.probabilities[i].map(function (p, k) {
            return (k < classes.length ? String(classes[k]) + " " : "") + T.fmtNumber(p);
          }).join(", ")
          : "–";
        const prediction = answer.predictions[i];
        return T.el("tr", {}, [
          T.el("td", { text: describeRow(row) }),
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
    if (model.dataset_deleted) {
      return classes.map(function () { return []; }); // the boundary alone: no rows to show
    }
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
  // the spec table fills a stored spec's missing fields with the spec's defaults
  T.specDefaults().catch(function () { return null; }).then(live);
})();
