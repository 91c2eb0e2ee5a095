// The sweep page: status and best trial, the trials table (sortable by any column, the metric
// included; live while the sweep runs), every trial's validation-loss curve overlaid, and each
// parameter against the metric (a scatter per parameter).
"use strict";

(function () {
  const T = window.Trainyard;
  const sweepId = document.getElementById("main").dataset.sweepId;
  const PALETTE = ["#2f6fdf", "#e8731a", "#2a9d55", "#c43f6e", "#7a3fc4", "#1c9fb0", "#b8860b", "#5a6b7d", "#d14b2d", "#3f8f3f"];
  const BEST_COLOR = "#7a3fc4";

  let sweep = null;
  let jobs = {}; // job id -> the job (loss histories)
  let curves = null;
  const paramCharts = {};
  const sort = { key: "index", desc: false };

  function color(i) {
    return PALETTE[i % PALETTE.length];
  }

  function show(value) {
    return typeof value === "number" ? T.fmtNumber(value) : JSON.stringify(value);
  }

  // -- trials table ------------------------------------------------------------------------

  function columns() {
    const params = Object.keys(sweep.parameters || {});
    return [
      { key: "best", label: "", value: function (t) { return sweep.best && sweep.best.job_id === t.job_id ? 0 : 1; } },
      { key: "index", label: "#", value: function (t) { return t.index; } },
      { key: "job", label: "job", value: function (t) { return t.job_id; } },
    ].concat(params.map(function (path) {
      return { key: "param:" + path, label: path, value: function (t) { return t.params[path]; } };
    })).concat([
      { key: "status", label: "status", value: function (t) { return t.status; } },
      { key: "epoch", label: "epochs", value: function (t) { return t.epoch; } },
      { key: "metric", label: sweep.metric.name, value: function (t) { return t.metric_value; } },
    ]);
  }

  function compare(a, b) {
    const missingA = a === null || a === undefined;
    const missingB = b === null || b === undefined;
    if (missingA || missingB) return missingA === missingB ? 0 : missingA ? 1 : -1; // last
    if (typeof a === "number" && typeof b === "number") return a - b;
    return JSON.stringify(a) < JSON.stringify(b) ? -1 : JSON.stringify(a) > JSON.stringify(b) ? 1 : 0;
  }

  function renderHead(cols) {
    const head = document.getElementById("trials-head");
    head.replaceChildren.apply(head, cols.map(function (c) {
      const th = T.el("th", { text: c.label });
      th.dataset.key = c.key;
      th.className = "sortable" + (sort.key === c.key ? (sort.desc ? " sorted-desc" : " sorted-asc") : "");
      th.addEventListener("click", function () {
        if (sort.key === c.key) sort.desc = !sort.desc;
        else {
          sort.key = c.key;
          // the metric sorts best first
          sort.desc = c.key === "metric" && sweep.metric.goal === "maximize";
        }
        render();
      });
      return th;
    }));
  }

  function renderTrials() {
    const cols = columns();
    renderHead(cols);
    const col = cols.find(function (c) { return c.key === sort.key; }) || cols[1];
    const trials = sweep.trials.slice().sort(function (a, b) {
      const missing = [col.value(a), col.value(b)].map(function (v) { return v === null || v === undefined; });
      let order = compare(col.value(a), col.value(b));
      if (sort.desc && !(missing[0] || missing[1])) order = -order;
      return order || a.index - b.index;
    });
    const bodyEl = document.getElementById("trials-body");
    bodyEl.replaceChildren.apply(bodyEl, trials.map(function (t) {
      const isBest = sweep.best && sweep.best.job_id === t.job_id;
      const link = T.el("a", { text: t.job_id.slice(0, 8), href: "/jobs/" + encodeURIComponent(t.job_id), title: t.job_id });
      const status = t.status === "cancelled" && t.stop_reason === "early_termination" ? "early_termination" : t.status;
      const cells = [
        T.el("td", { text: isBest ? "\u2605 best" : "", className: "best-mark" }),
        T.el("td", { text: t.index + 1, className: "num" }),
        T.el("td", {}, [link]),
      ].concat(Object.keys(sweep.parameters || {}).map(function (path) {
        return T.el("td", { text: show(t.params[path]) });
      })).concat([
        T.el("td", {}, [T.statusBadge(status)]),
        T.el("td", { text: t.epoch + "/" + t.epochs, className: "num" }),
        T.el("td", { text: T.fmtNumber(t.metric_value), className: "num metric" }),
      ]);
      const tr = T.el("tr", { className: isBest ? "best-row" : "" }, cells);
      tr.dataset.jobId = t.job_id;
      tr.dataset.status = t.status;
      return tr;
    }));
  }

  // -- charts ------------------------------------------------------------------------------

  function renderCurves() {
    if (!curves) {
      curves = new window.Chart(document.getElementById("curves-chart"), {
        type: "line",
        data: { labels: [], datasets: [] },
        options: {
          animation: false,
          maintainAspectRatio: false,
          interaction: { mode: "nearest", intersect: false },
          scales: { x: { title: { display: true, text: "epoch" }, ticks: { maxTicksLimit: 10 } }, y: { title: { display: true, text: "validation loss" } } },
          plugins: { legend: { position: "bottom" } },
        },
      });
    }
    let n = 0;
    const sets = sweep.trials.map(function (t, i) {
      const job = jobs[t.job_id] || {};
      const val = job.val_loss_history || [];
      const data = val.length ? val : job.loss_history || [];
      n = Math.max(n, data.length);
      const isBest = sweep.best && sweep.best.job_id === t.job_id;
      return {
        label: "#" + (t.index + 1) + (isBest ? " (best)" : ""),
        data: data,
        borderColor: isBest ? BEST_COLOR : color(i),
        backgroundColor: isBest ? BEST_COLOR : color(i),
        borderWidth: isBest ? 3 : 1.5,
        pointRadius: 0,
        tension: 0.1,
      };
    });
    curves.data.labels = Array.from({ length: n }, function (_, i) { return i + 1; });
    curves.data.datasets = sets;
    curves.update();
    document.getElementById("curves-chart").dataset.curves = String(sets.filter(function (s) { return s.data.length; }).length);
  }

  function renderParams() {
    const box = document.getElementById("param-charts");
    Object.keys(sweep.parameters || {}).forEach(function (path) {
      const done = sweep.trials.filter(function (t) { return t.metric_value !== null && t.metric_value !== undefined; });
      const numeric = sweep.trials.every(function (t) { return typeof t.params[path] === "number"; });
      const categories = [];
      if (!numeric) {
        sweep.trials.forEach(function (t) {
          const label = JSON.stringify(t.params[path]);
          if (categories.indexOf(label) < 0) categories.push(label);
        });
      }
      const points = done.map(function (t) {
        return { x: numeric ? t.params[path] : categories.indexOf(JSON.stringify(t.params[path])), y: t.metric_value };
      });
      const xs = sweep.trials.map(function (t) { return t.params[path]; });
      const logX = numeric && xs.every(function (v) { return v > 0; }) && Math.max.apply(null, xs) / Math.min.apply(null, xs) >= 50;
      let chart = paramCharts[path];
      if (!chart) {
        const canvas = T.el("canvas");
        canvas.setAttribute("role", "img");
        canvas.setAttribute("aria-label", path + " against " + sweep.metric.name);
        canvas.dataset.param = path;
        const holder = T.el("div", { className: "param-chart" }, [canvas]);
        box.appendChild(T.el("div", {}, [T.el("h3", { text: path }), holder]));
        chart = paramCharts[path] = new window.Chart(canvas, {
          type: "scatter",
          data: { datasets: [{ label: sweep.metric.name, data: [], backgroundColor: PALETTE[0], pointRadius: 5 }] },
          options: {
            animation: false,
            maintainAspectRatio: false,
            scales: {
              x: { type: logX ? "logarithmic" : "linear", title: { display: true, text: path }, ticks: {} },
              y: { title: { display: true, text: sweep.metric.name } },
            },
            plugins: { legend: { display: false } },
          },
        });
        if (!numeric) {
          chart.options.scales.x.min = -0.5;
          chart.options.scales.x.max = categories.length - 0.5;
          // one tick per value, at its index, labelled with the value
          chart.options.scales.x.afterBuildTicks = function (axis) {
            axis.ticks = categories.map(function (_, i) { return { value: i }; });
          };
          chart.options.scales.x.ticks = { callback: function (v) { return categories[v] !== undefined ? categories[v] : ""; } };
        }
      }
      chart.data.datasets[0].data = points;
      chart.data.datasets[0].pointBackgroundColor = done.map(function (t) {
        return sweep.best && sweep.best.job_id === t.job_id ? BEST_COLOR : PALETTE[0];
      });
      chart.update();
      chart.canvas.dataset.points = String(points.length);
    });
  }

  // -- page --------------------------------------------------------------------------------

  function render() {
    const p = sweep.progress;
    const status = document.getElementById("sweep-status");
    status.textContent = sweep.status;
    status.className = "badge status-" + sweep.status;
    document.getElementById("main").dataset.status = sweep.status;
    document.getElementById("sweep-name").textContent = sweep.name || "";
    const bar = document.getElementById("sweep-progress");
    bar.max = p.trials || 1;
    bar.value = p.succeeded + p.failed + p.cancelled;
    document.getElementById("sweep-progress-text").textContent = p.succeeded + " succeeded, " + p.running + " running, " + p.queued + " queued, " + p.failed + " failed, " + p.cancelled + " cancelled of " + p.trials + " · " + sweep.method + ", metric " + sweep.metric.name + " (" + sweep.metric.goal + ")" + (sweep.max_parallel ? ", at most " + sweep.max_parallel + " at once" : "");
    const best = document.getElementById("sweep-best");
    best.hidden = !sweep.best;
    if (sweep.best) {
      best.replaceChildren(
        document.createTextNode((T.FINISHED.indexOf(sweep.status) >= 0 ? "Best trial: " : "Best so far: ") + sweep.metric.name + " " + T.fmtNumber(sweep.best.metric_value) + " with " + JSON.stringify(sweep.best.params) + " · "),
        T.el("a", { text: "job " + sweep.best.job_id.slice(0, 8), href: "/jobs/" + encodeURIComponent(sweep.best.job_id) })
      );
    }
    document.getElementById("sweep-cancel").hidden = T.FINISHED.indexOf(sweep.status) >= 0 || sweep.cancel_requested;
    renderTrials();
    renderCurves();
    renderParams();
  }

  async function refresh() {
    sweep = await T.getJson("/sweeps/" + encodeURIComponent(sweepId));
    // the trials' curves: their histories too
    const page = await T.getJson("/jobs?sweep_id=" + encodeURIComponent(sweepId) + "&page_size=100&include=history");
    jobs = {};
    page.items.forEach(function (job) { jobs[job.id] = job; });
    render();
    T.flash("");
  }

  const poller = T.poll(refresh, function () {
    return sweep && T.FINISHED.indexOf(sweep.status) >= 0 ? 0 : 1000;
  });

  document.getElementById("sweep-cancel").addEventListener("click", async function () {
    try {
      await T.postJson("/sweeps/" + encodeURIComponent(sweepId) + "/cancel");
      poller.now();
    } catch (e) {
      T.flash("Could not cancel: " + e.message);
    }
  });

  document.getElementById("compare-trials").addEventListener("click", function () {
    const ids = (sweep ? sweep.trials : []).filter(function (t) { return t.status === "succeeded"; }).slice(0, 10).map(function (t) { return t.job_id; });
    if (ids.length) window.location.href = "/compare?jobs=" + ids.join(",");
  });
})();
