// The owner's API keys (`/keys`: create, revoke with a confirmation) and audit log (`/audit`:
// newest first, paginated, filtered by action).
"use strict";

(function () {
  const T = window.Trainyard;

  // -- /keys ---------------------------------------------------------------------------------

  function keysPage() {
    const body = document.getElementById("keys-body");

    function row(k) {
      const cell = T.el("td", {});
      if (!k.revoked_at) {
        const revoke = T.el("button", { text: "Revoke", className: "secondary revoke-key" });
        revoke.type = "button";
        revoke.addEventListener("click", async function () {
          if (!window.confirm("Revoke the key " + k.prefix + "… (" + (k.name || "no name") + ")? Requests with it are refused at once.")) return;
          try {
            await T.request("DELETE", "/keys/" + encodeURIComponent(k.id));
            await refresh();
          } catch (e) {
            T.flash(e.message);
          }
        });
        cell.appendChild(revoke);
      }
      const tr = T.el("tr", {}, [
        T.el("td", { text: k.name || "—" }),
        T.el("td", { text: k.prefix + "…" }),
        T.el("td", { text: k.scope }),
        T.el("td", { text: T.fmtTime(k.created_at) }),
        T.el("td", { text: k.last_used_at ? T.fmtTime(k.last_used_at) : "—" }),
        T.el("td", { text: k.expires_at ? T.fmtTime(k.expires_at) : "never" }),
        T.el("td", { text: k.revoked_at ? T.fmtTime(k.revoked_at) : "—" }),
        cell,
      ]);
      tr.dataset.keyId = k.id;
      return tr;
    }

    async function refresh() {
      const page = await T.getJson("/keys?page_size=100");
      body.replaceChildren.apply(body, page.items.map(row));
      document.getElementById("keys-info").textContent = page.pagination.total + " keys";
      T.flash("");
    }

    document.getElementById("key-create-form").addEventListener("submit", async function (event) {
      event.preventDefault();
      const box = document.getElementById("key-create-error");
      box.hidden = true;
      try {
        const made = await T.postJson("/keys", {
          name: document.getElementById("key-create-name").value,
          scope: document.getElementById("key-create-scope").value,
        });
        document.getElementById("key-created-secret").textContent = made.key;
        document.getElementById("key-created").hidden = false;
        await refresh();
      } catch (e) {
        T.showError(box, e);
      }
    });
    refresh().catch(function (e) {
      T.flash(e.message);
    });
  }

  // -- /audit --------------------------------------------------------------------------------

  function auditPage() {
    const PAGE_SIZE = 50;
    const state = { page: 1, pages: 1, action: "" };
    const body = document.getElementById("audit-body");

    function row(e) {
      const tr = T.el("tr", {}, [
        T.el("td", { text: T.fmtTime(e.at) }),
        T.el("td", { text: e.action }),
        T.el("td", { text: e.status_code, className: "num" }),
        T.el("td", { text: e.method + " " + e.route }),
        T.el("td", { text: Object.values(e.resource_ids || {}).join(", ") }),
        T.el("td", { text: (e.key_id || "").slice(0, 8), title: e.key_id || "" }),
      ]);
      tr.className = e.status_code >= 400 ? "audit-failed" : "";
      return tr;
    }

    async function refresh() {
      let path = "/audit?page=" + state.page + "&page_size=" + PAGE_SIZE;
      if (state.action) path += "&action=" + encodeURIComponent(state.action);
      const page = await T.getJson(path);
      body.replaceChildren.apply(body, page.items.map(row));
      document.getElementById("audit-empty").hidden = page.items.length > 0;
      state.pages = Math.max(page.pagination.pages, 1);
      document.getElementById("page-info").textContent = "page " + state.page + " of " + state.pages + " · " + page.pagination.total + " entries";
      document.getElementById("prev-page").disabled = state.page <= 1;
      document.getElementById("next-page").disabled = state.page >= state.pages;
      T.flash("");
    }

    function show() {
      refresh().catch(function (e) {
        T.flash(e.message);
      });
    }

    document.getElementById("audit-filter").addEventListener("submit", function (event) {
      event.preventDefault();
      state.action = document.getElementById("audit-action").value.trim();
      state.page = 1;
      show();
    });
    document.getElementById("prev-page").addEventListener("click", function () {
      state.page = Math.max(1, state.page - 1);
      show();
    });
    document.getElementById("next-page").addEventListener("click", function () {
      state.page = Math.min(state.pages, state.page + 1);
      show();
    });
    show();
  }

  if (document.getElementById("keys-body")) keysPage();
  if (document.getElementById("audit-body")) auditPage();
})();
