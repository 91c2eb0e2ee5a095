// The datasets pages. `/datasets`: the table of datasets and a form to upload a CSV, Parquet or
// JSON-lines file, resumably (tus.js: chunks to /api/v1/uploads, with a progress bar; the same
// file picked again after an interruption goes on where it stopped). `/datasets/<id>`: one dataset's target and
// columns (type, missing cells, stats or most frequent levels).
"use strict";

(function () {
  const T = window.Trainyard;
  const main = document.getElementById("main");

  function targetText(d) {
    const t = d.target || {};
    const name = t.name ? t.name : "target";
    if (d.classes) return name + " · " + d.classes.length + " classes";
    return name + " · " + (d.n_targets > 1 ? d.n_targets + " numbers" : "numeric");
  }

  // -- /datasets -----------------------------------------------------------------------------

  function listPage() {
    const PAGE_SIZE = 20;
    const state = { page: 1, pages: 1 };
    const body = document.getElementById("datasets-body");

    function row(d) {
      const link = T.el("a", { text: d.name, href: "/datasets/" + encodeURIComponent(d.id), title: d.id });
      link.className = "dataset-link";
      const tr = T.el("tr", {}, [
        T.el("td", {}, [link]),
        T.el("td", { text: d.n_samples, className: "num" }),
        T.el("td", { text: (d.feature_names || []).join(", ") || d.n_features }),
        T.el("td", { text: targetText(d) }),
        T.el("td", { text: T.fmtTime(d.created_at) }),
      ]);
      tr.dataset.datasetId = d.id;
      return tr;
    }

    async function refresh() {
      const page = await T.getJson("/datasets?page=" + state.page + "&page_size=" + PAGE_SIZE);
      body.replaceChildren.apply(body, page.items.map(row));
      document.getElementById("datasets-empty").hidden = page.items.length > 0;
      state.pages = Math.max(page.pagination.pages, 1);
      document.getElementById("page-info").textContent = "page " + state.page + " of " + state.pages + " · " + page.pagination.total + " datasets";
      document.getElementById("prev-page").disabled = state.page <= 1;
      document.getElementById("next-page").disabled = state.page >= state.pages;
      T.flash("");
    }

    const poller = T.poll(refresh, function () {
      return 10000;
    });
    document.getElementById("prev-page").addEventListener("click", function () {
      state.page = Math.max(1, state.page - 1);
      poller.now();
    });
    document.getElementById("next-page").addEventListener("click", function () {
      state.page = Math.min(state.pages, state.page + 1);
      poller.now();
    });

    // The header row of the picked file, read in the browser, offers the column names.
    const fileInput = document.getElementById("upload-file");
    const targetInput = document.getElementById("upload-target");
    const hint = document.getElementById("upload-columns-hint");

    function headerNames(text) {
      const line = text.replace(/^\uFEFF/, "").split(/\r?\n/, 1)[0];
      const names = [];
      let cell = "";
      let quoted = false;
      for (let i = 0; i < line.length; i++) {
        const c = line[i];
        if (quoted) {
          if (c === '"' && line[i + 1] === '"') {
            cell += '"';
            i++;
          } else if (c === '"') {
            quoted = false;
          } else {
            cell += c;
          }
        } else if (c === '"') {
          quoted = true;
        } else if (c === ",") {
          names.push(cell.trim());
          cell = "";
        } else {
          cell += c;
        }
      }
      names.push(cell.trim());
      return names.filter(Boolean);
    }

    fileInput.addEventListener("change", async function () {
      const list = document.getElementById("upload-columns");
      list.replaceChildren();
      hint.hidden = true;
      const file = fileInput.files[0];
      if (!file || /\.(parquet|pq|jsonl|ndjson)(\.gz)?$/i.test(file.name)) return;
      const names = headerNames(await file.slice(0, 65536).text());
      names.forEach(function (name) {
        const option = document.createElement("option");
        option.value = name;
        list.appendChild(option);
      });
      if (names.length) {
        targetInput.placeholder = names[names.length - 1] + " (the last column)";
        hint.textContent = "Columns: " + names.join(", ");
        hint.hidden = false;
      }
    });

    document.getElementById("upload-form").addEventListener("submit", async function (event) {
      event.preventDefault();
      const errorBox = document.getElementById("upload-error");
      errorBox.hidden = true;
      const file = fileInput.files[0];
      if (!file) return;
      const metadata = { filename: file.name };
      const target = targetInput.value.trim();
      if (target) metadata.target = target;
      const name = document.getElementById("upload-name").value.trim();
      if (name) metadata.name = name;
      const categorical = document.getElementById("upload-categorical").value.split(",").map(function (c) {
        return c.trim();
      }).filter(Boolean);
      if (categorical.length) {
        const types = {};
        categorical.forEach(function (c) {
          types[c] = "categorical";
        });
        metadata.column_types = JSON.stringify(types);
      }
      const button = document.getElementById("upload-submit");
      const stop = document.getElementById("upload-stop");
      const row = document.getElementById("upload-progress-row");
      const bar = document.getElementById("upload-progress");
      const text = document.getElementById("upload-progress-text");
      const controller = new AbortController();
      function onStop() {
        controller.abort();
      }
      stop.addEventListener("click", onStop);
      button.disabled = true;
      stop.hidden = false;
      row.hidden = false;
      try {
        const datasetId = await window.TrainyardTus.upload(file, metadata, {
          signal: controller.signal,
          onProgress: function (sent, total, resumedAt) {
            bar.max = total;
            bar.value = sent;
            const percent = total ? Math.floor((100 * sent) / total) : 100;
            text.textContent = megabytes(sent) + " of " + megabytes(total) + " MB (" + percent + "%)" +
              (resumedAt ? " · resumed at " + megabytes(resumedAt) + " MB" : "") +
              (sent >= total ? " · making the dataset…" : "");
          },
        });
        window.location.assign("/datasets/" + encodeURIComponent(datasetId));
      } catch (e) {
        if (e.name === "AbortError") {
          text.textContent += " · stopped: pick the same file and upload again to resume";
        } else {
          T.showError(errorBox, e);
        }
      } finally {
        button.disabled = false;
        stop.hidden = true;
        stop.removeEventListener("click", onStop);
      }
    });
  }

  function megabytes(bytes) {
    return (bytes / (1024 * 1024)).toFixed(1);
  }

  // -- /datasets/<id> ------------------------------------------------------------------------

  function kvRows(table, pairs) {
    const tbody = table.tBodies[0];
    tbody.replaceChildren.apply(tbody, pairs.map(function (pair) {
      return T.el("tr", {}, [T.el("th", { text: pair[0] }), T.el("td", { text: pair[1] })]);
    }));
  }

  function columnSummary(c) {
    if (c.type === "numeric") {
      if (c.min === null || c.min === undefined) return "no present cells";
      return "min " + T.fmtNumber(c.min) + " · max " + T.fmtNumber(c.max) + " · mean " + T.fmtNumber(c.mean) + " · std " + T.fmtNumber(c.std);
    }
    const top = (c.top || []).map(function (level) {
      return String(level.value) + " (" + level.count + ")";
    });
    const more = c.n_levels > top.length ? ", …" : "";
    return c.n_levels + (c.n_levels === 1 ? " level: " : " levels: ") + top.join(", ") + more;
  }

  async function detailPage(datasetId) {
    const d = await T.getJson("/datasets/" + encodeURIComponent(datasetId));
    document.getElementById("dataset-name").textContent = d.name;
    document.title = d.name + " · trainyard";
    const train = document.getElementById("train-link");
    train.href = "/?dataset=" + encodeURIComponent(d.id);
    train.hidden = false;
    kvRows(document.getElementById("dataset-summary"), [
      ["rows", d.n_samples],
      ["feature columns", d.n_features],
      ["created", T.fmtTime(d.created_at)],
    ]);
    const t = d.target || {};
    kvRows(document.getElementById("target-table"), [
      ["column", t.name || "(unnamed)"],
      ["kind", t.kind || "–"],
      ["outputs", d.n_targets],
      ["classes", d.classes ? d.classes.length + ": " + d.classes.map(String).join(", ") : "none (regression)"],
    ]);
    const body = document.getElementById("columns-body");
    body.replaceChildren.apply(body, (d.columns || []).map(function (c) {
      const missing = c.missing ? c.missing + " (" + T.fmtNumber((100 * c.missing) / d.n_samples) + "%)" : "0";
      const tr = T.el("tr", {}, [
        T.el("td", { text: c.name, className: "column-name" }),
        T.el("td", {}, [T.el("span", { text: c.type, className: "badge type-" + c.type })]),
        T.el("td", { text: missing, className: "num" + (c.missing ? " has-missing" : "") }),
        T.el("td", { text: columnSummary(c) }),
      ]);
      tr.dataset.column = c.name;
      tr.dataset.type = c.type;
      tr.dataset.missing = String(c.missing || 0);
      return tr;
    }));
    T.flash("");
  }

  const datasetId = main.dataset.datasetId;
  if (datasetId) {
    detailPage(datasetId).catch(function (e) {
      T.flash("Could not load the dataset: " + e.message);
    });
  } else {
    listPage();
  }
})();
