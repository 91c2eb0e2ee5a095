// The registry pages: every registered model (`/registry`), or one of them (`/registry/NAME`):
// its versions with their models' jobs, and its aliases with the history of their moves.
"use strict";

(function () {
  const T = window.Trainyard;
  const name = document.getElementById("main").dataset.name;

  function nameLink(n) {
    return T.el("a", { text: n, href: "/registry/" + encodeURIComponent(n) });
  }

  async function showList() {
    document.getElementById("registry-list").hidden = false;
    const page = await T.getJson("/registry?page_size=100");
    const body = document.getElementById("registry-body");
    body.replaceChildren.apply(body, page.items.map(function (r) {
      const aliases = Object.keys(r.aliases).map(function (a) { return a + " → v" + r.aliases[a]; });
      return T.el("tr", {}, [
        T.el("td", {}, [nameLink(r.name)]),
        T.el("td", { text: "v" + r.latest_version }),
        T.el("td", { text: aliases.join(", ") || "–" }),
        T.el("td", { text: T.fmtTime(r.created_at) }),
      ]);
    }));
    document.getElementById("registry-empty").hidden = page.items.length > 0;
  }

  function move(h) {
    const from = h.from === null ? "created" : "v" + h.from;
    const to = h.to === null ? "deleted" : "v" + h.to;
    return from + " → " + to + " (" + T.fmtTime(h.at) + (h.key_id ? ", key " + h.key_id.slice(0, 8) : "") + ")";
  }

  async function showOne() {
    document.getElementById("registered").hidden = false;
    const got = await T.getJson("/registry/" + encodeURIComponent(name));
    const aliasesOf = {};
    got.aliases.forEach(function (a) { (aliasesOf[a.version] = aliasesOf[a.version] || []).push(a.alias); });
    const versions = document.getElementById("versions-body");
    versions.replaceChildren.apply(versions, got.versions.slice().reverse().map(function (v) {
      return T.el("tr", {}, [
        T.el("td", { text: "v" + v.version }),
        T.el("td", {}, [T.el("code", { text: v.model_id })]),
        T.el("td", {}, [T.el("a", { text: v.job_id.slice(0, 8), href: "/jobs/" + encodeURIComponent(v.job_id), title: v.job_id })]),
        T.el("td", { text: (aliasesOf[v.version] || []).join(", ") || "–" }),
        T.el("td", { text: T.fmtTime(v.created_at) }),
        T.el("td", { text: v.key_id ? v.key_id.slice(0, 8) : "job" }),
      ]);
    }));
    const aliases = document.getElementById("aliases-body");
    aliases.replaceChildren.apply(aliases, got.aliases.map(function (a) {
      const list = T.el("ol", {}, a.history.map(function (h) { return T.el("li", { text: move(h) }); }));
      return T.el("tr", {}, [T.el("td", { text: a.alias }), T.el("td", { text: "v" + a.version }), T.el("td", {}, [list])]);
    }));
    document.getElementById("aliases-empty").hidden = got.aliases.length > 0;
  }

  (name ? showOne() : showList()).catch(function (e) {
    T.flash(e.message || String(e));
  });
})();
