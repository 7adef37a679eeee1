/* One row of the upload page per upload: its bar, its words and its buttons, and the sender
 * (send-resumable.js, or send-direct.js when the server offers direct uploads) while it sends.
 *
 * The page hands the row what it shares with every other row through `configure`: the live region,
 * the GraphQL client, the progress socket and the list's count.
 */
import { Rate, formatBytes } from "./format.js";
import { DirectSend, directSupported } from "./send-direct.js";
import { ResumableSend, fingerprintOf, places } from "./send-resumable.js";

const app = document.getElementById("app");
const TUS_PATH = app.dataset.tusPath;
// The server offers direct-to-bucket uploads (S3 and DIRECT_UPLOADS): files go straight to the bucket.
const DIRECT = app.dataset.directUploads === "true" && directSupported();
const ACTIVE = new Set(["QUEUED", "UPLOADING"]);
const FINAL = new Set(["COMPLETED", "FAILED", "CANCELLED"]);

export const UPLOAD_FIELDS =
  "id filename size status bytesReceived bytesUploaded partsUploaded partsTotal progress error downloadUrl";
const UPLOAD_QUERY = `query ($id: ID!) { upload(id: $id) { ${UPLOAD_FIELDS} } }`;
const CANCEL_MUTATION = `mutation ($id: ID!) { cancelUpload(id: $id) { ${UPLOAD_FIELDS} } }`;
const RETRY_MUTATION = `mutation ($id: ID!) { retryUpload(id: $id) { ${UPLOAD_FIELDS} } }`;
const DELETE_MUTATION = "mutation ($id: ID!) { deleteUpload(id: $id) }";

// RECEIVING is the server's status while bytes arrive: SENDING when this page sends them,
// PAUSED when nobody here does (the page was reloaded, or the sender gave up waiting).
const STATUS_LABELS = {
  SENDING: "Sending",
  PAUSED: "Paused",
  NOT_SENT: "Not sent",
  QUEUED: "Queued",
  UPLOADING: "Copying",
  COMPLETED: "Completed",
  FAILED: "Failed",
  CANCELLED: "Cancelled",
};

/** What every row shares: announce(text), graphql(query, variables), checkSession(error), socket and
 * counted(delta), the list's count changing. */
const page = {};

export function configure(shared) {
  Object.assign(page, shared);
}

const rowTemplate = document.getElementById("upload-row");
export const rows = new Map(); // upload id (or a local key until the server answers) -> UploadRow
let localKeys = 0;

/**
 * One upload's row. Its status is the server's (QUEUED ... CANCELLED) once every byte is in, and
 * SENDING, PAUSED or NOT_SENT before that. The bar shows the sending phase (bytes the server has)
 * and then the copying phase (bytes the bucket confirmed); `data-phase` on the <progress> says which.
 */
export class UploadRow {
  constructor({ file = null, upload = null }) {
    this.file = file; // kept while the page holds it, to send again or resume
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
      resume: part("resume"),
      resumeFile: part("resume-file"),
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
    this.parts.resume.addEventListener("click", () => this.parts.resumeFile.click());
    this.parts.resumeFile.addEventListener("change", () => {
      const [chosen] = this.parts.resumeFile.files;
      this.parts.resumeFile.value = "";
      if (chosen) this.resumeWith(chosen);
    });
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
    for (const action of ["resume", "cancel", "retry", "delete", "dismiss", "download"]) {
      const verb = this.parts[action].textContent;
      this.parts[action].setAttribute("aria-label", `${verb} ${filename}`);
    }
  }

  /** The row now stands for upload `id` (the server made it, or an earlier one was found). */
  rekey(id) {
    if (this.key === id) return;
    const other = rows.get(id);
    if (other && other !== this) {
      // The same upload was already listed (paused): this row takes its place.
      other.element.replaceWith(this.element);
      other.drop();
    }
    rows.delete(this.key);
    this.key = id;
    rows.set(id, this);
    this.element.dataset.uploadId = id;
  }

  /** Take the server's view of the upload (a query or mutation answer). */
  adopt(upload) {
    this.rekey(upload.id);
    this.upload = { ...upload };
    this.show(upload);
    if (upload.status === "RECEIVING") {
      if (!this.sending) this.paused();
      return;
    }
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
    const active = status === "SENDING" || status === "PAUSED" || ACTIVE.has(status);
    this.parts.resume.hidden = status !== "PAUSED";
    this.parts.cancel.hidden = !active;
    this.parts.retry.hidden = !["NOT_SENT", "FAILED", "CANCELLED"].includes(status);
    this.parts.delete.hidden = !this.upload;
    this.parts.dismiss.hidden = status !== "NOT_SENT";
    this.parts.download.hidden = !(status === "COMPLETED" && this.upload && this.upload.downloadUrl);
    // Rows of a freshly loaded list are not announced, only changes the user is waiting for.
    if (previous !== status && (previous !== null || this.file)) {
      page.announce(`${this.filename}: ${STATUS_LABELS[status].toLowerCase()}`);
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
    for (const action of ["resume", "cancel", "retry", "delete", "dismiss"]) this.parts[action].disabled = on;
  }

  /** RECEIVING with nobody here sending: paused at the server's offset until the file is chosen again. */
  paused(reason = "") {
    const u = this.upload;
    const fraction = u.size > 0 ? u.bytesReceived / u.size : 0;
    this.setStatus("PAUSED");
    this.setBar("sending", fraction);
    const how = this.file ? "Resume goes on from there" : "choose the same file to go on from there";
    this.describe(
      `Paused at ${Math.floor(fraction * 100)}%: ${formatBytes(u.bytesReceived)} of ${formatBytes(u.size)}` +
        ` on the server · ${reason}${how}`,
    );
  }

  /** Phase one: send the file (resuming an earlier upload of it, if the server still has one). */
  send() {
    this.setStatus("SENDING");
    this.setBar("sending", 0);
    this.rate = new Rate();
    const size = this.file.size;
    this.describe("Sending to the server: 0%");
    const Send = DIRECT ? DirectSend : ResumableSend;
    const sender = new Send(this.file, {
      collection: TUS_PATH,
      graphql: page.graphql,
      events: {
        created: (id, resumedAt) => {
          this.rekey(id);
          if (resumedAt === null) {
            page.counted(1);
          } else {
            this.element.dataset.resumedAt = String(resumedAt);
            page.announce(`${this.filename}: resuming at ${Math.floor((resumedAt / Math.max(size, 1)) * 100)}%`);
          }
        },
        sent: (bytes) => {
          this.element.dataset.sending = "sending";
          const fraction = size > 0 ? bytes / size : 1;
          this.setBar("sending", fraction);
          this.rate.add(bytes);
          const done = `${formatBytes(bytes)} of ${formatBytes(size)}`;
          this.describe(
            `Sending to the server: ${Math.floor(fraction * 100)}% · ${done}${this.rate.describe(bytes, size)}`,
          );
        },
        waiting: (error, ms) => {
          this.element.dataset.sending = "waiting";
          const when = ms === null ? "when the network is back" : `in ${Math.ceil(ms / 1000)} s`;
          this.describe(`Connection lost (${error.message}): sending again ${when}…`);
        },
      },
    });
    this.sending = sender;
    sender.start().then(
      async (id) => {
        this.sending = null;
        this.rate = new Rate();
        delete this.element.dataset.sending;
        try {
          this.adopt((await page.graphql(UPLOAD_QUERY, { id })).upload);
        } catch (error) {
          this.describe(`Sent, but the upload could not be read: ${error.message}`);
        }
      },
      (error) => this.sendFailed(sender, page.checkSession(error)),
    );
  }

  async sendFailed(sender, error) {
    this.sending = null;
    delete this.element.dataset.sending;
    const id = sender.uploadId;
    if (error.code === "NETWORK" && id) {
      // Gave up waiting, or the server could not be reached: the bytes sent so far are kept.
      const sent = Number(this.parts.bar.value) * this.file.size;
      this.upload = { id, filename: this.file.name, size: this.file.size, bytesReceived: Math.round(sent) };
      this.parts.delete.hidden = false;
      this.paused(`${error.message} · `);
      return;
    }
    if (error.code === "ABORTED") return; // paused or cancelled on purpose: whoever did it says so
    // The server refused the bytes for good (their type, a checksum): the upload is of no use, and a
    // refused upload leaves nothing behind (CONTRACT section 4).
    if (id) await this.unmake(id);
    this.upload = null;
    this.setStatus("NOT_SENT");
    this.describe(`Not sent: ${error.message}${error.code.startsWith("HTTP") ? "" : ` (${error.code})`}`);
  }

  /** A file chosen to resume this (paused) upload: the same size and fingerprint, or refused. */
  async resumeWith(file) {
    const u = this.upload;
    if (file.size !== u.size) {
      this.describe(`${file.name} is ${formatBytes(file.size)}, not ${formatBytes(u.size)}: not the file of this upload`);
      return;
    }
    const started = places.fingerprintOf(u.id);
    if (started === null) {
      this.describe("This upload was started in another browser: its file cannot be checked here · Cancel it and send the file again");
      return;
    }
    if ((await fingerprintOf(file)) !== started) {
      this.describe(`${file.name} is not the file this upload was started with (its name, date or content differ)`);
      return;
    }
    this.file = file;
    this.send();
  }

  /** Phase two: follow the subscription until a terminal status. */
  follow() {
    if (this.unsubscribe) return;
    this.unsubscribe = page.socket.subscribe(
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
      bytesReceived: event.bytesReceived,
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
      const data = await page.graphql(UPLOAD_QUERY, { id: this.upload.id });
      this.adopt(data.upload);
    } catch (error) {
      this.describe(`Could not read the upload again: ${error.message}`);
    }
  }

  async act(mutation, verb) {
    this.busy(true);
    try {
      return await page.graphql(mutation, { id: this.upload.id });
    } catch (error) {
      this.describe(`Could not ${verb}: ${error.message} (${error.code})`);
      page.announce(`${this.filename}: could not ${verb}: ${error.message}`);
      return null;
    } finally {
      this.busy(false);
    }
  }

  async cancel() {
    if (this.sending) {
      // Cancelled while sending: the upload is terminated (tus DELETE) and its record deleted, as if
      // never sent; the page still holds the file, so Retry sends it again.
      const sender = this.sending;
      this.sending = null;
      this.busy(true);
      await sender.cancel();
      if (sender.uploadId) await this.unmake(sender.uploadId);
      this.busy(false);
      this.setStatus("NOT_SENT");
      this.describe("Not sent: cancelled before it reached the server (ABORTED)");
      return;
    }
    if (this.status === "PAUSED") places.forget(this.upload.id);
    const data = await this.act(CANCEL_MUTATION, "cancel");
    if (data) this.applyAnswer(data.cancelUpload);
  }

  /** Delete upload `id`, which this row was sending, and stand for the file alone again. */
  async unmake(id) {
    await page.graphql(DELETE_MUTATION, { id }).catch(() => null);
    if (rows.get(this.key) === this) rows.delete(this.key);
    this.key = `local-${++localKeys}`;
    rows.set(this.key, this);
    delete this.element.dataset.uploadId;
    this.upload = null;
    page.counted(-1);
  }

  async retry() {
    if (!this.upload || (this.file && this.upload.bytesReceived < this.upload.size)) {
      this.send(); // never reached the server whole: send the file again
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
    if (this.sending) this.sending.pause();
    this.sending = null;
    const data = await this.act(DELETE_MUTATION, "delete");
    if (!data) return;
    places.forget(this.upload.id);
    const name = this.filename;
    this.drop();
    page.counted(-1);
    page.announce(`${name}: deleted`);
  }

  dismiss() {
    page.announce(`${this.filename}: removed from the list`);
    this.drop();
  }

  drop() {
    if (this.unsubscribe) this.unsubscribe();
    this.unsubscribe = null;
    if (rows.get(this.key) === this) rows.delete(this.key);
    const hadFocus = this.element.contains(document.activeElement);
    this.element.remove();
    if (hadFocus) document.getElementById("list-heading").focus();
  }
}
