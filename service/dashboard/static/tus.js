// A small client of the tus 1.0 resumable-upload protocol (POST /api/v1/uploads, then PATCH
// chunks; see the README's "Resumable uploads (tus)"), for the datasets page: no npm here, so
// not tus-js-client. Chunks go with XMLHttpRequest (its upload progress events feed the bar),
// each with its SHA-256 in Upload-Checksum where the browser offers crypto.subtle (secure
// contexts: https or localhost). A network error or a 5xx waits (1, 2, 4, ... s), asks the
// server for its offset (HEAD) and goes on. The upload's URL is kept in localStorage under the
// file's name, size and modification time, so picking the same file again after a reload, a
// closed tab or a lost connection resumes it; the entry is removed once the dataset is made.
"use strict";

(function () {
  const T = window.Trainyard;
  const API = "/api/v1";
  const TUS = { "Tus-Resumable": "1.0.0" };
  const CHUNK_SIZE = 8 * 1024 * 1024;
  const MAX_FAILURES = 6;
  const STORAGE_PREFIX = "trainyard-upload:";

  function storageKey(file) {
    return STORAGE_PREFIX + file.name + ":" + file.size + ":" + file.lastModified;
  }

  function remembered(file) {
    try {
      return window.localStorage.getItem(storageKey(file));
    } catch (e) {
      return null;
    }
  }

  function remember(file, url) {
    try {
      if (url) window.localStorage.setItem(storageKey(file), url);
      else window.localStorage.removeItem(storageKey(file));
    } catch (e) {
      // no storage (private mode): the upload still works, it just cannot resume after a reload
    }
  }

  function base64(text) {
    const bytes = new TextEncoder().encode(text);
    let binary = "";
    bytes.forEach(function (b) {
      binary += String.fromCharCode(b);
    });
    return window.btoa(binary);
  }

  function encodeMetadata(pairs) {
    return Object.keys(pairs).map(function (key) {
      return key + " " + base64(String(pairs[key]));
    }).join(",");
  }

  function authHeaders(extra) {
    const h = Object.assign({}, TUS, extra || {});
    const key = T.getKey();
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  async function errorOf(response) {
    let message = response.status + " " + response.statusText;
    let code = "error";
    let fields = {};
    try {
      const body = await response.json();
      if (body && body.error) {
        message = body.error.message || message;
        code = body.error.code || code;
        fields = body.error.fields || {};
      }
    } catch (e) {
      // no JSON body (HEAD): keep the status line
    }
    return new T.ApiError(response.status, code, message, fields);
  }

  // A network failure, or an answer the server may not give next time: worth another try.
  function retryable(error) {
    return !(error instanceof T.ApiError) || error.status >= 500 || error.status === 409 || error.status === 460;
  }

  async function create(file, metadata) {
    const response = await fetch(API + "/uploads", {
      method: "POST",
      cache: "no-store",
      headers: authHeaders({ "Upload-Length": String(file.size), "Upload-Metadata": encodeMetadata(metadata) }),
    });
    if (response.status !== 201) throw await errorOf(response);
    return new URL(response.headers.get("Location"), window.location.href).href;
  }

  async function head(url) {
    const response = await fetch(url, { method: "HEAD", cache: "no-store", headers: authHeaders() });
    if (!response.ok) throw await errorOf(response);
    return {
      offset: Number(response.headers.get("Upload-Offset")),
      datasetId: response.headers.get("Upload-Dataset-Id"),
    };
  }

  async function checksum(blob) {
    if (!window.crypto || !window.crypto.subtle) return null;
    const digest = new Uint8Array(await window.crypto.subtle.digest("SHA-256", await blob.arrayBuffer()));
    let binary = "";
    digest.forEach(function (b) {
      binary += String.fromCharCode(b);
    });
    return "sha256 " + window.btoa(binary);
  }

  // One PATCH; resolves with the dataset's id once the last chunk made it (else null).
  function patch(url, offset, blob, digest, onSent, signal) {
    return new Promise(function (resolve, reject) {
      const xhr = new XMLHttpRequest();
      xhr.open("PATCH", url);
      const h = authHeaders({ "Upload-Offset": String(offset), "Content-Type": "application/offset+octet-stream" });
      if (digest) h["Upload-Checksum"] = digest;
      Object.keys(h).forEach(function (name) {
        xhr.setRequestHeader(name, h[name]);
      });
      xhr.upload.onprogress = function (event) {
        onSent(offset + event.loaded);
      };
      xhr.onload = function () {
        if (xhr.status === 204) {
          resolve(xhr.getResponseHeader("Upload-Dataset-Id"));
          return;
        }
        errorOf(new Response(xhr.responseText || null, { status: xhr.status, statusText: xhr.statusText })).then(reject);
      };
      xhr.onerror = function () {
        reject(new Error("the connection failed"));
      };
      xhr.onabort = function () {
        reject(new DOMException("the upload was stopped", "AbortError"));
      };
      if (signal) signal.addEventListener("abort", function () {
        xhr.abort();
      });
      xhr.send(blob);
    });
  }

  function wait(seconds, signal) {
    return new Promise(function (resolve, reject) {
      const timer = window.setTimeout(resolve, seconds * 1000);
      if (signal) signal.addEventListener("abort", function () {
        window.clearTimeout(timer);
        reject(new DOMException("the upload was stopped", "AbortError"));
      });
    });
  }

  // Upload `file` with `metadata` (name, target, column_types, filename ...); resolves with the
  // dataset's id. options: onProgress(sent, total, resumedAt), signal (an AbortSignal: stops,
  // the upload stays resumable), chunkSize.
  async function upload(file, metadata, options) {
    const opts = options || {};
    const chunkSize = opts.chunkSize || CHUNK_SIZE;
    const progress = opts.onProgress || function () {};
    let url = remembered(file);
    let state = null;
    if (url) {
      try {
        state = await head(url);
      } catch (e) {
        if (!(e instanceof T.ApiError) || (e.status !== 404 && e.status !== 410)) throw e;
        remember(file, null);
        url = null;
      }
    }
    if (!url) {
      url = await create(file, metadata);
      remember(file, url);
      state = { offset: 0, datasetId: null };
    }
    const resumedAt = state.offset;
    let offset = state.offset;
    let datasetId = state.datasetId;
    let failures = 0;
    progress(offset, file.size, resumedAt);
    while (!datasetId) {
      try {
        const blob = file.slice(offset, Math.min(offset + chunkSize, file.size));
        const digest = await checksum(blob);
        datasetId = await patch(url, offset, blob, digest, function (sent) {
          progress(sent, file.size, resumedAt);
        }, opts.signal);
        offset += blob.size;
        failures = 0;
        progress(offset, file.size, resumedAt);
        if (!datasetId && offset >= file.size) {
          state = await head(url);
          datasetId = state.datasetId;
          if (!datasetId) await wait(1, opts.signal);
        }
      } catch (e) {
        if (e.name === "AbortError") throw e;
        if (!retryable(e)) {
          remember(file, null);
          throw e;
        }
        failures += 1;
        if (failures > MAX_FAILURES) throw e;
        if (!(e instanceof T.ApiError)) await wait(Math.min(30, Math.pow(2, failures - 1)), opts.signal);
        state = await head(url);
        offset = state.offset;
        datasetId = state.datasetId;
      }
    }
    remember(file, null);
    return datasetId;
  }

  window.TrainyardTus = { upload: upload, storageKey: storageKey };
})();
