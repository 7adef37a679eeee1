/* The upload page: one row with one <progress> per upload, in two phases.
 *
 * 1. Sending: the file goes to /graphql as a multipart request (the GraphQL multipart request spec)
 *    through XMLHttpRequest, which reports upload progress (fetch does not), with the session cookie
 *    and the X-CSRFToken header.
 * 2. Copying: once the server answers QUEUED, the uploadProgress subscription (graphql-transport-ws
 *    over one websocket, authenticated by the same cookie) reports each confirmed part until COMPLETED,
 *    FAILED or CANCELLED.
 *
 * Every subscription starts with a snapshot and every event carries absolute state, so when the socket
 * drops, reconnecting (with backoff) and subscribing again is all a bar needs to catch up.
 */
(() => {
  "use strict";

  const app = document.getElementById("app");
  const GRAPHQL_PATH = app.dataset.graphqlPath;
  const MAX_BYTES = Number(app.dataset.maxBytes);
  const PAGE_SIZE = Number(app.dataset.pageSize);
  const ACTIVE = new Set(["QUEUED", "UPLOADING"]);
  const FINAL = new Set(["COMPLETED", "FAILED", "CANCELLED"]);

  const UPLOAD_FIELDS = "id filename size status bytesUploaded partsUploaded partsTotal progress error downloadUrl";
  const UPLOAD_MUTATION = `mutation ($file: Upload!) { uploadFile(file: $file) { ${UPLOAD_FIELDS} } }`;
  const UPLOAD_QUERY = `query ($id: ID!) { upload(id: $id) { ${UPLOAD_FIELDS} } }`;
  const UPLOADS_QUERY = `query ($first: Int!, $after: String) { uploads(first: $first, after: $after) {
    totalCount pageInfo { hasNextPage endCursor } edges { node { ${UPLOAD_FIELDS} } } } }`;
  const CANCEL_MUTATION = `mutation ($id: ID!) { cancelUpload(id: $id) { ${UPLOAD_FIELDS} } }`;
  const RETRY_MUTATION = `mutation ($id: ID!) { retryUpload(id: $id) { ${UPLOAD_FIELDS} } }`;
  const DELETE_MUTATION = "mutation ($id: ID!) { deleteUpload(id: $id) }";
  const PROGRESS_SUBSCRIPTION = `subscription ($id: ID!) { uploadProgress(id: $id) {
    uploadId sequence status partsUploaded partsTotal bytesUploaded bytesTotal progress error } }`;

  const STATUS_LABELS = {
    SENDING: "Sending",
    NOT_SENT: "Not sent",
    QUEUED: "Queued",
    UPLOADING: "Copying",
    COMPLETED: "Completed",
    FAILED: "Failed",
    CANCELLED: "Cancelled",
  };

  // --- small pieces ------------------------------------------------------------------------------

  function formatBytes(bytes) {
    const units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let value = bytes;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return unit === 0 ? `${value} bytes` : `${value.toFixed(1)} ${units[unit]}`;
  }

  function formatSeconds(seconds) {
    if (seconds < 60) return `${Math.max(1, Math.round(seconds))} s`;
    if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
    return `${(seconds / 3600).toFixed(1)} h`;
  }

  /** Speed and time left from the byte counts seen over the last few seconds. */
  class Rate {
    constructor() {
      this.samples = [];
    }

    add(bytes) {
      const now = performance.now();
      const last = this.samples[this.samples.length - 1];
      if (last && bytes < last.bytes) this.samples = []; // a new transfer (retried after a cancel)
      this.samples.push({ at: now, bytes });
      while (this.samples.length > 2 && now - this.samples[0].at > 10000) this.samples.shift();
    }

    describe(done, total) {
      const first = this.samples[0];
      const last = this.samples[this.samples.length - 1];
      if (!first || last.at - first.at < 300 || last.bytes === first.bytes) return "";
      const perSecond = ((last.bytes - first.bytes) * 1000) / (last.at - first.at);
      return ` · ${formatBytes(perSecond)}/s · about ${formatSeconds((total - done) / perSecond)} left`;
    }
  }

  function csrfToken() {
    // Read at each request: logging in again (in another tab too) rotates the cookie.
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  class ApiError extends Error {
    constructor(code, message) {
      super(message);
      this.code = code;
    }
  }

  function errorOf(body, status) {
    const first = body && Array.isArray(body.errors) ? body.errors[0] : null;
    if (first) return new ApiError((first.extensions && first.extensions.code) || "ERROR", first.message);
    return new ApiError(`HTTP_${status}`, `the server answered HTTP ${status}`);
  }

  function checkSession(error) {
    if (error.code === "UNAUTHENTICATED") sessionEnded();
    return error;
  }

  async function graphql(query, variables) {
    let response;
    try {
      response = await fetch(GRAPHQL_PATH, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
        body: JSON.stringify({ query, variables }),
      });
    } catch {
      throw new ApiError("NETWORK", "the server cannot be reached");
    }
    const body = await response.json().catch(() => null);
    if (!response.ok || !body || body.errors) throw checkSession(errorOf(body, response.status));
    return body.data;
  }

  /** Send one file with the uploadFile mutation; `done` resolves to the new upload (QUEUED). */
  function sendFile(file, onProgress) {
    const xhr = new XMLHttpRequest();
    const done = new Promise((resolve, reject) => {
      const form = new FormData();
      form.append("operations", JSON.stringify({ query: UPLOAD_MUTATION, variables: { file: null } }));
      form.append("map", JSON.stringify({ 0: ["variables.file"] }));
      form.append("0", file, file.name);
      xhr.open("POST", GRAPHQL_PATH);
      xhr.setRequestHeader("X-CSRFToken", csrfToken());
      xhr.responseType = "json";
      xhr.upload.onprogress = (event) => {
        if (event.lengthComputable && event.total > 0) onProgress(event.loaded / event.total);
      };
      xhr.onload = () => {
        const body = xhr.response;
        if (xhr.status === 200 && body && !body.errors && body.data && body.data.uploadFile) {
          resolve(body.data.uploadFile);
        } else {
          reject(checkSession(errorOf(body, xhr.status)));
        }
      };
      xhr.onerror = () => reject(new ApiError("NETWORK", "the connection to the server was lost while sending"));
      xhr.onabort = () => reject(new ApiError("ABORTED", "cancelled before it reached the server"));
      xhr.send(form);
    });
    return { done, abort: () => xhr.abort() };
  }

  // --- announcements and page-level state ---------------------------------------------------------

  const announcer = document.getElementById("announcer");
  const connection = document.getElementById("connection");
  let ended = false;

  /** Say `message` through the polite live region; earlier messages stay a while so none is cut off. */
  function announce(message) {
    const line = document.createElement("p");
    line.textContent = message;
    announcer.append(line);
    while (announcer.childElementCount > 6) announcer.firstElementChild.remove();
  }

  function sessionEnded() {
    if (ended) return;
    ended = true;
    document.getElementById("session-ended").hidden = false;
    document.getElementById("file-input").disabled = true;
    connection.hidden = true;
  }

  /** Show (and announce) the socket's state when it matters: while it is reconnecting. */
  function showConnection(state) {
    const was = connection.dataset.state;
    connection.dataset.state = state;
    connection.hidden = state !== "reconnecting";
    if (state === "reconnecting") connection.textContent = "Live progress is reconnecting…";
    if (state === "reconnecting" && was !== "reconnecting") announce("Live progress interrupted, reconnecting");
    if (state === "live" && was === "reconnecting") announce("Live progress is back");
  }

  // --- graphql-transport-ws ------------------------------------------------------------------------

  /**
   * One websocket for every subscription on the page, opened when the first one starts.
   *
   * On a close that is not a refusal of the session (4403), it reconnects with exponential backoff
   * and jitter (0.5 s doubling to 5 s) and subscribes again to every subscription still open; each
   * answers first with a snapshot, which brings its bar up to date.
   */
  class ProgressSocket {
    constructor(url) {
      this.url = url;
      this.subscriptions = new Map();
      this.nextId = 1;
      this.ws = null;
      this.acked = false;
      this.failures = 0;
      this.timer = null;
    }

    subscribe(variables, handlers) {
      const id = String(this.nextId++);
      const subscription = { id, payload: { query: PROGRESS_SUBSCRIPTION, variables }, handlers };
      this.subscriptions.set(id, subscription);
      if (this.acked) this.send({ id, type: "subscribe", payload: subscription.payload });
      else this.connect();
      return () => {
        if (this.subscriptions.delete(id) && this.acked) this.send({ id, type: "complete" });
      };
    }

    connect() {
      if (this.ws || this.timer || ended) return;
      const ws = new WebSocket(this.url, "graphql-transport-ws");
      this.ws = ws;
      ws.onopen = () => ws.send(JSON.stringify({ type: "connection_init", payload: {} }));
      ws.onmessage = (event) => this.receive(JSON.parse(event.data));
      ws.onclose = (event) => this.closed(event.code);
    }

    /** Reconnect now rather than after the backoff (the browser says it is online again). */
    hurry() {
      if (this.timer) {
        clearTimeout(this.timer);
        this.timer = null;
        this.connect();
      }
    }

    send(message) {
      if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
    }

    receive(message) {
      const subscription = message.id === undefined ? null : this.subscriptions.get(message.id);
      switch (message.type) {
        case "connection_ack":
          this.acked = true;
          this.failures = 0;
          showConnection("live");
          for (const each of this.subscriptions.values()) {
            this.send({ id: each.id, type: "subscribe", payload: each.payload });
          }
          break;
        case "ping":
          this.send({ type: "pong" });
          break;
        case "next":
          if (!subscription) break;
          if (message.payload.errors) {
            this.subscriptions.delete(message.id);
            subscription.handlers.error(errorOf(message.payload));
          } else {
            subscription.handlers.next(message.payload.data.uploadProgress);
          }
          break;
        case "error":
          if (!subscription) break;
          this.subscriptions.delete(message.id);
          subscription.handlers.error(errorOf({ errors: message.payload }));
          break;
        case "complete":
          if (!subscription) break;
          this.subscriptions.delete(message.id);
          subscription.handlers.complete();
          break;
        default:
          break;
      }
    }

    closed(code) {
      this.ws = null;
      this.acked = false;
      if (code === 4403) {
        sessionEnded();
        return;
      }
      if (this.subscriptions.size === 0) {
        showConnection("idle");
        return;
      }
      const delay = Math.min(5000, 500 * 2 ** this.failures) * (0.5 + Math.random() / 2);
      this.failures += 1;
      showConnection("reconnecting");
      this.timer = setTimeout(() => {
        this.timer = null;
        this.connect();
      }, delay);
    }
  }

  const socket = new ProgressSocket(
    `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${GRAPHQL_PATH}`,
  );
  window.addEventListener("online", () => socket.hurry());

  // --- one row per upload ---------------------------------------------------------------------------

  const list = document.getElementById("uploads");
  const rowTemplate = document.getElementById("upload-row");
  const rows = new Map(); // upload id (or a local key until the server answers) -> UploadRow
  let localKeys = 0;

  /**
   * One upload's row. Its status is the server's (QUEUED ... CANCELLED) once the upload exists, and
   * SENDING or NOT_SENT before that. The bar shows the sending phase (the request body) and then the
   * copying phase (bytes the bucket confirmed); `data-phase` on the <progress> says which.
   */
  class UploadRow {
    constructor({ file = null, upload = null }) {
      this.file = file; // kept while the page holds it, to send again after a failed send
      this.upload = null;
      this.status = null;
      this.lastSequence = -1;
      this.unsubscribe = null;
      this.sending = null;
      this.rate = new Rate();
      this.key = upload ? upload.id : `local-${++localKeys}`;
      this.element = rowTemplate.content.firstElementChild.cloneNode(true);
      const part = (name) => this.element.querySelector(`.upload-${name}`);
      this.parts = {
        name: part("name"),
        size: part("size"),
        status: part("status"),
        bar: part("bar"),
        detail: part("detail"),
        download: part("download"),
        cancel: part("cancel"),
        retry: part("retry"),
        delete: part("delete"),
        dismiss: part("dismiss"),
      };
      const dom = `upload-${this.key}`;
      this.parts.name.id = `${dom}-name`;
      this.parts.detail.id = `${dom}-detail`;
      this.parts.bar.setAttribute("aria-labelledby", this.parts.name.id);
      this.parts.bar.setAttribute("aria-describedby", this.parts.detail.id);
      this.parts.cancel.addEventListener("click", () => this.cancel());
      this.parts.retry.addEventListener("click", () => this.retry());
      this.parts.delete.addEventListener("click", () => this.remove());
      this.parts.dismiss.addEventListener("click", () => this.dismiss());
      rows.set(this.key, this);
      if (upload) this.adopt(upload);
      else this.show({ filename: file.name, size: file.size });
    }

    get filename() {
      return this.upload ? this.upload.filename : this.file.name;
    }

    show({ filename, size }) {
      this.parts.name.textContent = filename;
      this.parts.size.textContent = formatBytes(size);
      for (const action of ["cancel", "retry", "delete", "dismiss", "download"]) {
        const verb = this.parts[action].textContent;
        this.parts[action].setAttribute("aria-label", `${verb} ${filename}`);
      }
    }

    /** Take the server's view of the upload (a query or mutation answer). */
    adopt(upload) {
      if (this.key !== upload.id) {
        rows.delete(this.key);
        this.key = upload.id;
        rows.set(this.key, this);
      }
      this.upload = { ...upload };
      this.element.dataset.uploadId = upload.id;
      this.show(upload);
      this.setStatus(upload.status);
      this.setBar("copying", upload.progress);
      this.describe();
      if (ACTIVE.has(upload.status)) this.follow();
    }

    setStatus(status) {
      const previous = this.status;
      this.status = status;
      this.element.dataset.status = status;
      this.parts.status.textContent = STATUS_LABELS[status];
      const active = status === "SENDING" || ACTIVE.has(status);
      this.parts.cancel.hidden = !active;
      this.parts.retry.hidden = !["NOT_SENT", "FAILED", "CANCELLED"].includes(status);
      this.parts.delete.hidden = !this.upload;
      this.parts.dismiss.hidden = status !== "NOT_SENT";
      this.parts.download.hidden = !(status === "COMPLETED" && this.upload && this.upload.downloadUrl);
      // Rows of a freshly loaded list are not announced, only changes the user is waiting for.
      if (previous !== status && (previous !== null || this.file)) {
        announce(`${this.filename}: ${STATUS_LABELS[status].toLowerCase()}`);
      }
    }

    setBar(phase, fraction) {
      const bar = this.parts.bar;
      bar.dataset.phase = phase;
      bar.value = fraction;
      const label = phase === "sending" ? "sending to the server" : "copying to the bucket";
      bar.setAttribute("aria-valuetext", `${Math.floor(fraction * 100)}%, ${label}`);
    }

    describe(text) {
      if (text !== undefined) {
        this.parts.detail.textContent = text;
        return;
      }
      const u = this.upload;
      const bytes = `${formatBytes(u.bytesUploaded)} of ${formatBytes(u.size)}`;
      const parts = `part ${u.partsUploaded} of ${u.partsTotal}`;
      const details = {
        QUEUED: `Queued: copying to the bucket starts when a worker is free · ${parts}`,
        UPLOADING: `Copying to the bucket: ${parts} · ${bytes}${this.rate.describe(u.bytesUploaded, u.size)}`,
        COMPLETED: `Stored: ${u.partsTotal} part${u.partsTotal === 1 ? "" : "s"} · ${formatBytes(u.size)}`,
        FAILED: `Failed: ${u.error || "unknown error"} · ${parts}`,
        CANCELLED: `Cancelled at ${parts} · ${bytes}`,
      };
      this.parts.detail.textContent = details[u.status];
      const link = this.parts.download;
      if (u.downloadUrl) {
        link.href = u.downloadUrl;
        link.setAttribute("download", u.filename);
      }
    }

    busy(on) {
      for (const action of ["cancel", "retry", "delete", "dismiss"]) this.parts[action].disabled = on;
    }

    /** Phase one: send the file. */
    send() {
      this.setStatus("SENDING");
      this.setBar("sending", 0);
      this.rate = new Rate();
      const size = this.file.size;
      this.describe("Sending to the server: 0%");
      this.sending = sendFile(this.file, (fraction) => {
        this.setBar("sending", fraction);
        this.rate.add(fraction * size);
        const done = `${formatBytes(fraction * size)} of ${formatBytes(size)}`;
        this.describe(
          `Sending to the server: ${Math.floor(fraction * 100)}% · ${done}${this.rate.describe(fraction * size, size)}`,
        );
      });
      this.sending.done.then(
        (upload) => {
          this.sending = null;
          this.rate = new Rate();
          this.adopt(upload);
          listState.total += 1;
          renderSummary();
        },
        (error) => {
          this.sending = null;
          this.setStatus("NOT_SENT");
          this.describe(`Not sent: ${error.message}${error.code.startsWith("HTTP") ? "" : ` (${error.code})`}`);
        },
      );
    }

    /** Phase two: follow the subscription until a terminal status. */
    follow() {
      if (this.unsubscribe) return;
      this.unsubscribe = socket.subscribe(
        { id: this.upload.id },
        {
          next: (event) => this.progress(event),
          error: (error) => {
            this.unsubscribe = null;
            this.describe(`Live progress stopped: ${error.message}`);
          },
          complete: () => {
            this.unsubscribe = null;
            // Read the upload once more for its downloadUrl, or if a stream ended before a terminal status.
            if (ACTIVE.has(this.status) || (this.status === "COMPLETED" && !this.upload.downloadUrl)) this.refresh();
          },
        },
      );
    }

    progress(event) {
      // A snapshot after a resubscribe may repeat the last sequence; anything older is stale.
      if (event.sequence < this.lastSequence) return;
      // The answer to cancelUpload overtakes the part events still on their way: once the row shows
      // a final status, only the stream's own final event may replace it (a retry is an answer too).
      if (FINAL.has(this.status) && !FINAL.has(event.status)) return;
      this.lastSequence = event.sequence;
      Object.assign(this.upload, {
        status: event.status,
        bytesUploaded: event.bytesUploaded,
        partsUploaded: event.partsUploaded,
        partsTotal: event.partsTotal,
        progress: event.progress,
        error: event.error,
      });
      this.rate.add(event.bytesUploaded);
      this.setStatus(event.status);
      this.setBar("copying", event.progress);
      this.describe();
    }

    /** Read the upload again (for its downloadUrl once COMPLETED). */
    async refresh() {
      try {
        const data = await graphql(UPLOAD_QUERY, { id: this.upload.id });
        this.adopt(data.upload);
      } catch (error) {
        this.describe(`Could not read the upload again: ${error.message}`);
      }
    }

    async act(mutation, verb) {
      this.busy(true);
      try {
        return await graphql(mutation, { id: this.upload.id });
      } catch (error) {
        this.describe(`Could not ${verb}: ${error.message} (${error.code})`);
        announce(`${this.filename}: could not ${verb}: ${error.message}`);
        return null;
      } finally {
        this.busy(false);
      }
    }

    async cancel() {
      if (this.sending) {
        this.sending.abort();
        return;
      }
      const data = await this.act(CANCEL_MUTATION, "cancel");
      if (data) this.applyAnswer(data.cancelUpload);
    }

    async retry() {
      if (!this.upload) {
        this.send();
        return;
      }
      const data = await this.act(RETRY_MUTATION, "retry");
      if (data) this.applyAnswer(data.retryUpload);
    }

    applyAnswer(upload) {
      // A retry answered before the old subscription's `complete` arrived needs a new subscription.
      if (ACTIVE.has(upload.status) && this.unsubscribe) {
        this.unsubscribe();
        this.unsubscribe = null;
      }
      this.rate = new Rate();
      this.adopt(upload);
    }

    async remove() {
      const data = await this.act(DELETE_MUTATION, "delete");
      if (!data) return;
      const name = this.filename;
      this.drop();
      listState.total -= 1;
      renderSummary();
      announce(`${name}: deleted`);
    }

    dismiss() {
      announce(`${this.filename}: removed from the list`);
      this.drop();
    }

    drop() {
      if (this.unsubscribe) this.unsubscribe();
      this.unsubscribe = null;
      rows.delete(this.key);
      const hadFocus = this.element.contains(document.activeElement);
      this.element.remove();
      if (hadFocus) document.getElementById("list-heading").focus();
    }
  }

  // --- the list, a page at a time --------------------------------------------------------------------

  const listState = { cursors: [null], page: 0, hasNext: false, total: 0, loaded: false };
  const newer = document.getElementById("newer");
  const older = document.getElementById("older");

  function renderSummary() {
    if (!listState.loaded) return;
    const pages = Math.max(1, Math.ceil(listState.total / PAGE_SIZE));
    const count = `${listState.total} upload${listState.total === 1 ? "" : "s"}`;
    document.getElementById("list-summary").textContent =
      listState.total === 0 && rows.size === 0 ? "No uploads yet." : count;
    document.getElementById("page-label").textContent = `Page ${listState.page + 1} of ${pages}`;
    newer.disabled = listState.page === 0;
    older.disabled = !listState.hasNext;
  }

  /** Show page `page` (0 is the newest); rows of files still being sent stay on top of page 0. */
  async function showPage(page) {
    let data;
    try {
      data = await graphql(UPLOADS_QUERY, { first: PAGE_SIZE, after: listState.cursors[page] });
    } catch (error) {
      document.getElementById("list-summary").textContent = `The list could not be loaded: ${error.message}`;
      return;
    }
    const connection = data.uploads;
    Object.assign(listState, { page, hasNext: connection.pageInfo.hasNextPage, total: connection.totalCount });
    listState.loaded = true;
    if (connection.pageInfo.hasNextPage) listState.cursors[page + 1] = connection.pageInfo.endCursor;
    const unsent = page === 0 ? [...rows.values()].filter((row) => !row.upload) : [];
    const shown = connection.edges.map(({ node }) => {
      const existing = rows.get(node.id);
      if (!existing) return new UploadRow({ upload: node });
      if (!existing.unsubscribe) existing.adopt(node); // a followed row is already current
      return existing;
    });
    list.replaceChildren(...unsent.reverse().map((row) => row.element), ...shown.map((row) => row.element));
    renderSummary();
  }

  newer.addEventListener("click", () => showPage(listState.page - 1));
  older.addEventListener("click", () => showPage(listState.page + 1));

  // --- choosing and dropping files ----------------------------------------------------------------

  function start(files) {
    if (ended || files.length === 0) return;
    if (listState.page !== 0) showPage(0);
    for (const file of files) {
      const row = new UploadRow({ file });
      list.prepend(row.element);
      if (file.size > MAX_BYTES) {
        row.setStatus("NOT_SENT");
        row.setBar("sending", 0);
        row.describe(`Not sent: larger than the limit of ${formatBytes(MAX_BYTES)}`);
        row.parts.retry.hidden = true;
      } else {
        row.send();
      }
    }
    renderSummary();
  }

  // The template can only say "MB" for what is MiB; say it the way the rows do.
  document.getElementById("max-size").textContent = formatBytes(MAX_BYTES);
  const input = document.getElementById("file-input");
  const dropzone = document.getElementById("dropzone");
  input.addEventListener("change", () => {
    start([...input.files]);
    input.value = ""; // so choosing the same file again is a change too
  });
  for (const type of ["dragenter", "dragover"]) {
    dropzone.addEventListener(type, (event) => {
      event.preventDefault();
      dropzone.classList.add("dragging");
    });
  }
  dropzone.addEventListener("dragleave", () => dropzone.classList.remove("dragging"));
  dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    dropzone.classList.remove("dragging");
    start([...event.dataTransfer.files]);
  });
  // A file dropped beside the zone would otherwise replace the page with the file.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  window.addEventListener("beforeunload", (event) => {
    if ([...rows.values()].some((row) => row.sending)) event.preventDefault();
  });

  showPage(0);
})();
