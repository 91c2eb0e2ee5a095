// A small client of the tus 1.0 resumable-upload protocol (POST /api/v1/uploads, then PATCH
// chunks; see the README's "Resumable uploads (tus)"), for the datasets page: no npm here, so
// not tus-js-client. Chunks go with XMLHttpRequest (its upload progress events feed the bar),
// each with its SHA-256 in Upload-Checksum where the browser offers crypto.subtle (secure
// contexts: https or localhost). A network error or a 5xx waits (1, 2, 4, ... s), asks the
// server for its offset (HEAD) and goes on. The upload's URL is kept in localStorage under the
// file's name, size and modification time and a hash of the metadata (other options are another
// upload), so picking the same file again with the same options after a reload, a closed tab or
// a lost connection resumes it; the entry is removed once the dataset is made. Once every byte
// is sent, it asks GET /uploads/{id} (waiting longer each time) while the status is
// `completing`, until `completed` or `failed`.
"use strict";

(function () {
  const T = window.Trainyard;
  const API = "/api/v1";
  const TUS = { "Tus-Resumable": "1.0.0" };
  const CHUNK_SIZE = 8 * 1024 * 1024;
  const MAX_FAILURES = 6;
  const STORAGE_PREFIX = "trainyard-upload:";

  const COMPLETION_TIMEOUT_S = 3600;

  // FNV-1a (32 bits) of the metadata, its keys sorted: tells uploads of other options apart
  function metadataHash(metadata) {
    const pairs = Object.keys(metadata || {}).sort().map(function (k) {
      return [k, String(metadata[k])];
    });
    const text = JSON.stringify(pairs);
    let h = 0x811c9dc5;
    for (let i = 0; i < text.length; i++) {
      h ^= text.charCodeAt(i);
      h = Math.imul(h, 0x01000193) >>> 0;
    }
    return h.toString(16);
  }

  function storageKey(file, metadata) {
    return STORAGE_PREFIX + file.name + ":" + file.size + ":" + file.lastModified + ":" + metadataHash(metadata);
  }

  function remembered(key) {
    try {
      return window.localStorage.getItem(key);
    } catch (e) {
      return null;
    }
  }

  function remember(key, url) {
    try {
      if (url) window.localStorage.setItem(key, url);
      else window.localStorage.removeItem(key);
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

  // nothing left to resume: the upload is gone, or the server will never take it
  function hopeless(error) {
    return error instanceof T.ApiError && [404, 410, 413, 415, 422].indexOf(error.status) >= 0;
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

  // Every byte is there: wait while the dataset is being made (`completing`), asking again
  // later each time; resolves with the dataset's id (null when it took too long).
  async function finish(url, length, signal) {
    const deadline = Date.now() + COMPLETION_TIMEOUT_S * 1000;
    let delay = 0.5;
    while (Date.now() < deadline) {
      const response = await fetch(url, { cache: "no-store", headers: authHeaders(), signal: signal });
      if (!response.ok) throw await errorOf(response);
      const upload = await response.json();
      if (upload.status === "completed") return upload.dataset_id;
      if (upload.status === "failed") throw new T.ApiError(422, "validation_error", upload.error || "failed", {});
      if (upload.status === "receiving") return await patch(url, length, new Blob([]), null, function () {}, signal);
      await wait(delay, signal);
      delay = Math.min(5, delay * 1.5);
    }
    return null;
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
    const key = storageKey(file, metadata);
    let url = remembered(key);
    let state = null;
    if (url) {
      try {
        state = await head(url);
      } catch (e) {
        if (!(e instanceof T.ApiError) || (e.status !== 404 && e.status !== 410)) throw e;
        remember(key, null);
        url = null;
      }
    }
    if (!url) {
      url = await create(file, metadata);
      remember(key, url);
      state = { offset: 0, datasetId: null };
    }
    const resumedAt = state.offset;
    let offset = state.offset;
    let datasetId = state.datasetId;
    let failures = 0;
    progress(offset, file.size, resumedAt);
    while (!datasetId) {
      try {
        if (offset >= file.size) {
          datasetId = await finish(url, file.size, opts.signal);
          if (!datasetId) throw new Error("the dataset was not made in time");
          break;
        }
        const blob = file.slice(offset, Math.min(offset + chunkSize, file.size));
        const digest = await checksum(blob);
        datasetId = await patch(url, offset, blob, digest, function (sent) {
          progress(sent, file.size, resumedAt);
        }, opts.signal);
        offset += blob.size;
        failures = 0;
        progress(offset, file.size, resumedAt);
      } catch (e) {
        if (e.name === "AbortError") throw e;
        if (!retryable(e)) {
          if (hopeless(e)) remember(key, null); // a 400, 401, 403 or 429 may be resumed later
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
    remember(key, null);
    return datasetId;
  }

  window.TrainyardTus = { upload: upload, storageKey: storageKey };
})();
