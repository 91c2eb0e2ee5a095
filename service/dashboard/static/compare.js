// The compare view (`/compare?jobs=a,b,c`): the jobs' loss curves overlaid (training solid,
// validation dashed), a table of the spec fields where they differ, and their metrics.
"use strict";

(function () {
  const T = window.Trainyard;
  const PALETTE = ["#2f6fdf", "#e8731a", "#2a9d55", "#c43f6e", "#7a3fc4", "#1c9fb0", "#b8860b", "#5a6b7d", "#d14b2d", "#3f8f3f"];
  const ids = (new URLSearchParams(window.location.search).get("jobs") || "").split(",").filter(Boolean).slice(0, 20);

  // {"model": {"layers": [..]}, "training": {"early_stopping": {"patience": 3}}} ->
  // {"model.layers": "[..]", "training.early_stopping.patience": "3"}
  function flatten(value, prefix, out) {
    if (value && typeof value === "object" && !Array.isArray(value) && Object.keys(value).length) {
      Object.keys(value).forEach(function (key) {
        flatten(value[key], prefix ? prefix + "." + key : key, out);
      });
    } else {
      out[prefix] = JSON.stringify(value === undefined ? null : value);
    }
    return out;
  }

  function label(job, i) {
    return "#" + (i + 1) + " " + (job.name || job.id.slice(0, 8));
  }

  function headRow(id, first, jobs) {
    const head = document.getElementById(id);
    head.replaceChildren.apply(head, [T.el("th", { text: first })].concat(jobs.map(function (job, i) {
      return T.el("th", {}, [T.el("a", { text: label(job, i), href: "/jobs/" + encodeURIComponent(job.id), title: job.id })]);
    })));
  }

  function renderDiff(jobs) {
    const flat = jobs.map(function (job) {
      return flatten({ dataset_id: job.dataset_id, model: job.model, training: job.training }, "", {});
    });
    const keys = [];
    flat.forEach(function (f) {
      Object.keys(f).forEach(function (k) {
        if (keys.indexOf(k) < 0) keys.push(k);
      });
    });
    const differ = keys.filter(function (k) {
      return flat.some(function (f) { return f[k] !== flat[0][k]; });
    });
    headRow("diff-head", "field", jobs);
    const body = document.getElementById("diff-body");
    body.replaceChildren.apply(body, differ.map(function (k) {
      const tr = T.el("tr", {}, [T.el("th", { text: k })].concat(flat.map(function (f) {
        return T.el("td", { text: f[k] === undefined ? "–" : f[k], className: "diff-cell" });
      })));
      tr.dataset.field = k;
      return tr;
    }));
    document.getElementById("diff-same").hidden = differ.length > 0 || jobs.length < 2;
  }

  function renderMetrics(jobs) {
    headRow("metrics-head", "metric", jobs);
    const rows = [["status", function (j) { return j.status; }], ["stop reason", function (j) { return j.stop_reason || "–"; }]];
    ["loss", "val_loss", "accuracy", "val_accuracy"].forEach(function (name) {
      rows.push([name, function (j) { return T.fmtNumber((j.metrics || {})[name]); }]);
    });
    ["validation", "test"].forEach(function (split) {
      rows.push([split + ".accuracy", function (j) { return T.fmtNumber(((j.evaluation || {})[split] || {}).accuracy); }]);
    });
    const body = document.getElementById("metrics-body");
    body.replaceChildren.apply(body, rows.map(function (r) {
      return T.el("tr", {}, [T.el("th", { text: r[0] })].concat(jobs.map(function (job) {
        return T.el("td", { text: r[1](job), className: "num" });
      })));
    }));
  }

  function renderChart(jobs) {
    const sets = [];
    let n = 0;
    jobs.forEach(function (job, i) {
      const c = PALETTE[i % PALETTE.length];
      const train = job.loss_history || [];
      const val = job.val_loss_history || [];
      n = Math.max(n, train.length, val.length);
      sets.push({ label: label(job, i) + " training", data: train, borderColor: c, backgroundColor: c, pointRadius: 0, borderWidth: 2 });
      if (val.length) {
        sets.push({ label: label(job, i) + " validation", data: val, borderColor: c, backgroundColor: c, pointRadius: 0, borderWidth: 2, borderDash: [6, 4] });
      }
    });
    const canvas = document.getElementById("compare-chart");
    canvas.dataset.curves = String(sets.length);
    return new window.Chart(canvas, {
      type: "line",
      data: { labels: Array.from({ length: n }, function (_, i) { return i + 1; }), datasets: sets },
      options: {
        animation: false,
        maintainAspectRatio: false,
        interaction: { mode: "nearest", intersect: false },
        scales: { x: { title: { display: true, text: "epoch" }, ticks: { maxTicksLimit: 10 } }, y: { title: { display: true, text: "loss" } } },
        plugins: { legend: { position: "bottom" } },
      },
    });
  }

  async function load() {
    document.getElementById("compare-empty").hidden = ids.length > 0;
    if (!ids.length) return;
    const jobs = await Promise.all(ids.map(function (id) {
      return T.getJson("/jobs/" + encodeURIComponent(id));
    }));
    document.getElementById("compare-count").textContent = jobs.length + " jobs";
    renderChart(jobs);
    renderDiff(jobs);
    renderMetrics(jobs);
    document.getElementById("main").dataset.loaded = "true";
  }

  document.addEventListener("DOMContentLoaded", function () {
    load().catch(function (e) {
      T.flash("Could not load the jobs: " + e.message);
    });
  });
})();
