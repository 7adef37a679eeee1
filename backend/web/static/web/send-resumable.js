/* Sending one file resumably: tus 1.0.0 to /uploads/ (CONTRACT section 8), with the session cookie.
 *
 * POST creates the upload (Upload-Length, Upload-Metadata filename), then PATCHes of at most
 * CHUNK_BYTES carry slices of the File (XMLHttpRequest, for its upload progress; a Blob slice is
 * read from disk as it goes, never copied into memory). The upload's URL is kept in localStorage
 * under the file's fingerprint as soon as the server makes it, so after a reload, a crash or a
 * closed tab, choosing the same file again asks the server with HEAD where it stopped and sends
 * only the rest.
 *
 * A request that fails on the way (the network dropped, the server restarting, 409 or 423 after a
 * cut connection, 5xx) is tried again after a backoff (0.5 s doubling to 10 s, with jitter), each
 * time from the offset HEAD answers, since a cut-off PATCH keeps what arrived. While the browser
 * says it is offline the sender waits for it to come back, without counting attempts. After
 * MAX_FAILURES failures in a row with no byte getting through it stops, paused, and `start` again
 * resumes. Any other refusal is final.
 *
 * Another sender (issue 21's direct-to-bucket uploads) has the same shape: `start()` resolves to
 * the upload's id once the server has every byte; `pause()` and `cancel()`.
 */

import { ApiError, errorOf } from "./api.js";

const TUS_HEADERS = { "Tus-Resumable": "1.0.0" };
const CHUNK_BYTES = 64 * 1024 * 1024;
const MAX_FAILURES = 10;
const PLACES_KEY = "upload-service.resumable";
const RETRY_STATUSES = new Set([0, 409, 423, 500, 502, 503, 504]);

// --- where uploads were left: fingerprint -> {id, url}, in localStorage ---------------------------

function placesRead() {
  try {
    const places = JSON.parse(localStorage.getItem(PLACES_KEY) || "{}");
    return places && typeof places === "object" ? places : {};
  } catch {
    return {};
  }
}

function placesWrite(change) {
  const places = placesRead();
  change(places);
  try {
    localStorage.setItem(PLACES_KEY, JSON.stringify(places));
  } catch {
    // Storage full or refused (private mode): the upload still goes on, it just cannot be resumed.
  }
}

export const places = {
  get: (fingerprint) => placesRead()[fingerprint] || null,
  /** The fingerprint an upload was started with, if it was started in this browser. */
  fingerprintOf: (uploadId) => {
    const found = Object.entries(placesRead()).find(([, place]) => place.id === uploadId);
    return found ? found[0] : null;
  },
  put: (fingerprint, place) => placesWrite((all) => (all[fingerprint] = place)),
  forget: (uploadId) =>
    placesWrite((all) => {
      for (const [key, place] of Object.entries(all)) if (place.id === uploadId) delete all[key];
    }),
};

async function sha256Hex(blob) {
  if (!(window.crypto && crypto.subtle)) return "no-digest"; // not a secure context: name, size, date only
  const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** What identifies "the same file": name, size, last modified and the sha256 of its first MiB. */
export async function fingerprintOf(file) {
  const head = await sha256Hex(file.slice(0, 1024 * 1024));
  return ["tus", file.name, file.size, file.lastModified, head].join("|");
}

function metadata(values) {
  const b64 = (text) => btoa(String.fromCharCode(...new TextEncoder().encode(text)));
  return Object.entries(values)
    .map(([key, value]) => `${key} ${b64(value)}`)
    .join(",");
}

function idOf(url) {
  return new URL(url, location.href).pathname.replace(/\/$/, "").split("/").pop();
}

class Retry extends Error {}

/** One request; resolves to the XHR once answered (any status), rejects with Retry on a network error. */
function request(method, url, { headers = {}, body = null, onSent = null, track = null } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, url);
    for (const [name, value] of Object.entries({ ...TUS_HEADERS, ...headers })) xhr.setRequestHeader(name, value);
    if (onSent) xhr.upload.onprogress = (event) => onSent(event.loaded);
    xhr.onload = () => resolve(xhr);
    xhr.onerror = () => reject(new Retry("the connection to the server was lost"));
    xhr.ontimeout = xhr.onerror;
    xhr.onabort = () => reject(new ApiError("ABORTED", "stopped"));
    if (track) track(xhr);
    xhr.send(body);
  });
}

function refusal(xhr) {
  let body = null;
  try {
    body = JSON.parse(xhr.responseText);
  } catch {
    // not JSON: the status says it
  }
  return errorOf(body, xhr.status);
}

export class ResumableSend {
  /**
   * `events`: created(id, resumedAt) once the server has the upload (resumedAt: the offset an
   * earlier upload of this file is taken up at, or null for a new one), sent(bytes) as bytes go
   * out, waiting(error, ms) before another try.
   */
  constructor(file, { collection, events }) {
    this.file = file;
    this.collection = collection;
    this.events = events;
    this.url = null;
    this.xhr = null;
    this.stopped = false;
    this.wake = null;
  }

  get uploadId() {
    return this.url ? idOf(this.url) : null;
  }

  /** Send every byte; resolves to the upload's id (the server then moves it on: QUEUED or FAILED). */
  async start() {
    this.stopped = false;
    const fingerprint = await fingerprintOf(this.file);
    let offset = await this.resume(fingerprint);
    if (offset === null) {
      this.url = await this.create();
      places.put(fingerprint, { id: this.uploadId, url: this.url, name: this.file.name, size: this.file.size });
      this.events.created(this.uploadId, null);
      offset = 0;
    } else {
      this.events.created(this.uploadId, offset);
    }
    try {
      let failures = 0;
      let stale = false;
      while (offset < this.file.size) {
        this.check();
        try {
          if (stale) offset = await this.head(this.url);
          stale = true;
          if (offset >= this.file.size) break;
          const before = offset;
          offset = await this.patch(offset);
          stale = false;
          if (offset > before) failures = 0;
        } catch (error) {
          if (!(error instanceof Retry) || this.stopped) throw error;
          failures += 1;
          if (failures >= MAX_FAILURES) throw new ApiError("NETWORK", `${error.message}; paused`);
          await this.backoff(error, failures);
        }
      }
    } catch (error) {
      if (!(error.code === "NETWORK" || error.code === "ABORTED")) places.forget(this.uploadId);
      throw error;
    }
    places.forget(this.uploadId);
    return this.uploadId;
  }

  /** Stop sending, keeping the place: `start()` again (or a reload and the same file) resumes. */
  pause() {
    this.stopped = true;
    if (this.xhr) this.xhr.abort();
    if (this.wake) this.wake();
  }

  /** Stop sending and terminate the upload on the server (tus DELETE). */
  async cancel() {
    this.pause();
    if (!this.url) return;
    places.forget(this.uploadId);
    const xhr = await request("DELETE", this.url).catch(() => null);
    if (xhr && xhr.status === 423) {
      // The PATCH just aborted may still hold the upload's lock for a moment.
      await new Promise((resolve) => setTimeout(resolve, 500));
      await request("DELETE", this.url).catch(() => null);
    }
  }

  check() {
    if (this.stopped) throw new ApiError("ABORTED", "stopped");
  }

  /** The offset of an earlier upload of this file that the server still has, or null. */
  async resume(fingerprint) {
    const place = places.get(fingerprint);
    if (!place) return null;
    try {
      const offset = await this.head(place.url);
      this.url = place.url;
      return offset;
    } catch (error) {
      if (error instanceof Retry) throw new ApiError("NETWORK", error.message);
      if (error.code === "UNAUTHENTICATED") throw error;
      places.forget(place.id); // expired, cancelled, finished or not this user's: start afresh
      return null;
    }
  }

  async create() {
    const headers = { "Upload-Length": String(this.file.size), "Upload-Metadata": metadata({ filename: this.file.name }) };
    let xhr;
    try {
      xhr = await request("POST", this.collection, { headers, track: (x) => (this.xhr = x) });
    } catch (error) {
      throw error instanceof Retry ? new ApiError("NETWORK", "the server cannot be reached") : error;
    }
    const location = xhr.status === 201 && xhr.getResponseHeader("Location");
    if (!location) throw refusal(xhr);
    return new URL(location, new URL(this.collection, window.location.href)).href;
  }

  async head(url) {
    const xhr = await request("HEAD", url, { track: (x) => (this.xhr = x) });
    if (RETRY_STATUSES.has(xhr.status)) throw new Retry(`the server answered ${xhr.status}`);
    const offset = Number(xhr.getResponseHeader("Upload-Offset"));
    if (xhr.status !== 200 || !Number.isSafeInteger(offset)) {
      const code = { 404: "NOT_FOUND", 410: "GONE", 401: "UNAUTHENTICATED" }[xhr.status] || `HTTP_${xhr.status}`;
      throw new ApiError(code, "the server no longer has this upload");
    }
    if (xhr.getResponseHeader("Upload-Length") !== String(this.file.size)) {
      throw new ApiError("NOT_FOUND", "the upload on the server is not this file's size");
    }
    return offset;
  }

  async patch(offset) {
    const end = Math.min(this.file.size, offset + CHUNK_BYTES);
    const headers = { "Content-Type": "application/offset+octet-stream", "Upload-Offset": String(offset) };
    const xhr = await request("PATCH", this.url, {
      headers,
      body: this.file.slice(offset, end),
      onSent: (loaded) => this.events.sent(offset + loaded),
      track: (x) => (this.xhr = x),
    });
    if (RETRY_STATUSES.has(xhr.status)) throw new Retry(`the server answered ${xhr.status}`);
    if (xhr.status !== 204) throw refusal(xhr);
    const reached = Number(xhr.getResponseHeader("Upload-Offset"));
    this.events.sent(reached);
    return reached;
  }

  /** Wait before another try: a backoff with jitter, then for the browser to be online again. */
  async backoff(error, failures) {
    const delay = Math.min(10000, 500 * 2 ** (failures - 1)) * (0.5 + Math.random() / 2);
    this.events.waiting(error, delay);
    await this.until((wake) => setTimeout(wake, delay));
    while (navigator.onLine === false && !this.stopped) {
      this.events.waiting(error, null);
      await this.until((wake) => window.addEventListener("online", wake, { once: true }));
    }
    this.check();
  }

  /** Resolves when `arm(wake)` calls wake, or when `pause()` does. */
  until(arm) {
    return new Promise((resolve) => {
      this.wake = resolve;
      arm(resolve);
    }).finally(() => (this.wake = null));
  }
}
