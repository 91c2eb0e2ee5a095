// Shared by the dashboard pages: the API key, fetch helpers, small DOM helpers.
// Written for a strict CSP: no inline code, user text only ever set with textContent.
"use strict";

(function () {
  const KEY_STORAGE = "trainyard-api-key";
  const API = "/api/v1";

  class ApiError extends Error {
    constructor(status, code, message, fields) {
      super(message);
      this.status = status;
      this.code = code;
      this.fields = fields || {};
    }
  }

  function getKey() {
    try {
      return window.localStorage.getItem(KEY_STORAGE) || "";
    } catch (e) {
      return "";
    }
  }

  function setKey(key) {
    if (key) {
      window.localStorage.setItem(KEY_STORAGE, key);
    } else {
      window.localStorage.removeItem(KEY_STORAGE);
    }
  }

  // Like notebook servers, but in the fragment: /#token=KEY stores the key, then drops it from
  // the address bar. A fragment is never sent to the server, so the key stays out of access logs.
  function takeTokenFromUrl() {
    const url = new URL(window.location.href);
    const fragment = new URLSearchParams(url.hash.replace(/^#/, ""));
    const token = fragment.get("token");
    if (token !== null) {
      setKey(token.trim());
      fragment.delete("token");
      const rest = fragment.toString();
      window.history.replaceState(null, "", url.pathname + url.search + (rest ? "#" + rest : ""));
    }
  }

  function headers(extra) {
    const h = Object.assign({ Accept: "application/json" }, extra || {});
    const key = getKey();
    if (key) {
      h.Authorization = "Bearer " + key;
    }
    return h;
  }

  async function errorFrom(response) {
    let code = "error";
    let message = response.status + " " + response.statusText;
    let fields = {};
    try {
      const body = await response.json();
      if (body && body.error) {
        code = body.error.code || code;
        message = body.error.message || message;
        fields = body.error.fields || {};
      }
    } catch (e) {
      // not JSON: keep the status line
    }
    if (response.status === 401) {
      showKeyPanel("The API needs a key: paste it below.");
    }
    return new ApiError(response.status, code, message, fields);
  }

  async function request(method, path, body) {
    const init = { method: method, headers: headers(), cache: "no-store" };
    if (body instanceof FormData) {
      init.body = body; // multipart/form-data: the browser sets the type and its boundary
    } else if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(API + path, init);
    if (!response.ok) {
      throw await errorFrom(response);
    }
    return response;
  }

  async function getJson(path) {
    return (await request("GET", path)).json();
  }

  async function postJson(path, body) {
    return (await request("POST", path, body)).json();
  }

  // The spec's choices and defaults (GET /spec/defaults, core.spec's): read once per page. The
  // dashboard writes none of its own; `specDefaults.value` holds the answer once it came.
  let specDefaultsPromise = null;
  function specDefaults() {
    if (!specDefaultsPromise) {
      specDefaultsPromise = getJson("/spec/defaults").then(function (value) {
        specDefaults.value = value;
        return value;
      }, function (e) {
        specDefaultsPromise = null;
        throw e;
      });
    }
    return specDefaultsPromise;
  }
  specDefaults.value = null;

  // A multipart/form-data POST (a file upload); the answer is JSON.
  async function postForm(path, formData) {
    return (await request("POST", path, formData)).json();
  }

  // A server-sent-events stream with the key: fetch() with a streamed body, as EventSource
  // cannot send an Authorization header. Calls onEvent(type, data, id) for each event as it
  // arrives; resolves when the stream ends (rejects when it cannot be opened or breaks).
  async function readEvents(path, extraHeaders, onEvent, signal) {
    const init = {
      method: "GET",
      headers: headers(Object.assign({ Accept: "text/event-stream" }, extraHeaders || {})),
      cache: "no-store",
      signal: signal,
    };
    const response = await fetch(API + path, init);
    if (!response.ok) throw await errorFrom(response);
    if (!response.body) throw new ApiError(0, "no_stream", "This browser cannot read a streamed answer.");
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const chunk = await reader.read();
      if (chunk.done) break;
      buffer += decoder.decode(chunk.value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let type = "message";
        let data = "";
        let id = null;
        block.split("\n").forEach(function (line) {
          if (line.startsWith("event:")) type = line.slice(6).trim();
          else if (line.startsWith("data:")) data += line.slice(5).trim();
          else if (line.startsWith("id:")) id = line.slice(3).trim();
        });
        if (data) onEvent(type, JSON.parse(data), id);
      }
    }
  }

  // For what needs the key but is shown by the browser (graph SVG, weights): a blob URL.
  async function blobUrl(path) {
    const response = await request("GET", path);
    return URL.createObjectURL(await response.blob());
  }

  // -- DOM ------------------------------------------------------------------------------------

  function el(tag, options, children) {
    const node = document.createElement(tag);
    const o = options || {};
    if (o.text !== undefined && o.text !== null) node.textContent = String(o.text);
    if (o.className) node.className = o.className;
    if (o.href) node.href = o.href;
    if (o.title) node.title = o.title;
    (children || []).forEach(function (child) {
      node.appendChild(child);
    });
    return node;
  }

  function fmtNumber(value) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    if (typeof value !== "number") return String(value);
    if (value !== 0 && (Math.abs(value) < 1e-3 || Math.abs(value) >= 1e5)) {
      return value.toExponential(3);
    }
    return Number(value.toPrecision(4)).toString();
  }

  function fmtTime(stamp) {
    if (!stamp) return "–";
    const d = new Date(stamp);
    return Number.isNaN(d.getTime()) ? String(stamp) : d.toLocaleString();
  }

  function statusBadge(status) {
    return el("span", { text: status, className: "badge status-" + status });
  }

  function flash(message) {
    const box = document.getElementById("flash");
    if (!box) return;
    box.textContent = message || "";
    box.hidden = !message;
  }

  function showError(box, error) {
    box.replaceChildren();
    box.appendChild(el("strong", { text: error.message || String(error) }));
    const fields = (error && error.fields) || {};
    const names = Object.keys(fields);
    if (names.length) {
      const list = el("ul");
      names.forEach(function (name) {
        list.appendChild(el("li", { text: name + ": " + fields[name] }));
      });
      box.appendChild(list);
    }
    box.hidden = false;
  }

  function showKeyPanel(message) {
    const panel = document.getElementById("key-panel");
    if (!panel) return;
    panel.hidden = false;
    if (message) flash(message);
    document.getElementById("key-input").focus();
  }

  function initKeyPanel() {
    const panel = document.getElementById("key-panel");
    const form = document.getElementById("key-form");
    document.getElementById("key-button").addEventListener("click", function () {
      panel.hidden = !panel.hidden;
    });
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      setKey(document.getElementById("key-input").value.trim());
      window.location.reload();
    });
    document.getElementById("key-forget").addEventListener("click", function () {
      setKey("");
      window.location.reload();
    });
  }

  // Polls `fn` every `interval()` ms (a function, so a page can slow down when idle),
  // never overlapping itself; pauses while the tab is hidden.
  function poll(fn, interval) {
    let timer = null;
    let stopped = false;
    let running = false;
    async function tick() {
      timer = null;
      if (stopped || running) return;
      running = true;
      if (!document.hidden) {
        try {
          await fn();
        } catch (e) {
          flash(e.status === 401 ? "The API needs a key." : "Could not refresh: " + e.message);
        }
      }
      running = false;
      const next = interval();
      if (!stopped && next > 0 && !timer) timer = window.setTimeout(tick, next);
    }
    tick();
    return {
      stop: function () {
        stopped = true;
        if (timer) window.clearTimeout(timer);
      },
      now: function () {
        if (timer) window.clearTimeout(timer);
        tick();
      },
    };
  }

  function fmtBytes(n) {
    if (n === null || n === undefined) {
      return "no quota";
    }
    const units = ["B", "kB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) {
      n /= 1000;
      i += 1;
    }
    return (i === 0 ? String(n) : n.toFixed(1)) + " " + units[i];
  }

  // The top bar's usage against the quotas (GET /usage), when a key is known.
  async function showUsage() {
    const box = document.getElementById("usage");
    if (!box || !getKey()) {
      return;
    }
    try {
      const u = await getJson("/usage");
      box.textContent = fmtBytes(u.bytes.used) + " of " + fmtBytes(u.bytes.quota) + " · " +
        u.active_jobs.used + " of " + u.active_jobs.quota + " jobs";
      box.classList.toggle("over", u.bytes.quota !== null && u.bytes.used >= u.bytes.quota);
      box.hidden = false;
    } catch (e) {
      box.hidden = true;
    }
  }

  // Every `button[data-delete]`: confirm, DELETE its path, then go to `data-after`.
  function initDeleteButtons() {
    document.querySelectorAll("button[data-delete]").forEach(function (button) {
      button.addEventListener("click", async function () {
        const what = button.dataset.what || "this";
        if (!window.confirm("Delete " + what + "? This cannot be undone.")) {
          return;
        }
        button.disabled = true;
        try {
          await request("DELETE", button.dataset.delete);
          window.location.assign(button.dataset.after || "/");
        } catch (e) {
          flash(e.message || String(e));
          button.disabled = false;
        }
      });
    });
  }

  takeTokenFromUrl();
  document.addEventListener("DOMContentLoaded", initKeyPanel);
  document.addEventListener("DOMContentLoaded", initDeleteButtons);
  document.addEventListener("DOMContentLoaded", showUsage);

  window.Trainyard = {
    ApiError: ApiError,
    getKey: getKey,
    setKey: setKey,
    getJson: getJson,
    postJson: postJson,
    request: request,
    postForm: postForm,
    specDefaults: specDefaults,
    blobUrl: blobUrl,
    readEvents: readEvents,
    el: el,
    fmtNumber: fmtNumber,
    fmtTime: fmtTime,
    fmtBytes: fmtBytes,
    statusBadge: statusBadge,
    flash: flash,
    showError: showError,
    poll: poll,
    FINISHED: ["succeeded", "failed", "cancelled"],
  };
})();
