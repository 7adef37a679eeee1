/* Sending one file straight to the bucket (CONTRACT section 9), when the server offers it.
 *
 * createUpload(mode: DIRECT) gives the part size; each part's SHA-256 is computed in the browser
 * (crypto.subtle, over a Blob slice), signUploadParts answers its presigned URL and the headers to
 * send (the checksum, which the bucket verifies), the part is PUT there with XMLHttpRequest (for
 * its upload progress), then confirmUploadPart with the ETag the bucket answered, so the server
 * checks it and every subscriber sees it land; completeUpload once every part is in. PARALLEL
 * parts are in flight at once; a part that fails on the way is tried again (signed afresh, so an
 * expired URL is no obstacle) up to ATTEMPTS times.
 *
 * The same shape as ResumableSend (send-resumable.js): `start()` resolves to the upload's id once
 * the server has every part (it is then QUEUED), `pause()` stops, `cancel()` stops and cancels.
 * A paused direct upload is not resumed after a reload: its next start is a new upload.
 */

import { ApiError } from "./api.js";

const PARALLEL = 3;
const ATTEMPTS = 4;
const FIELDS = "id partSize partsTotal status";
const CREATE = `mutation($input: CreateUploadInput!) { createUpload(input: $input) { ${FIELDS} } }`;
const SIGN = `mutation($id: ID!, $parts: [PartToSign!]!) {
  signUploadParts(id: $id, parts: $parts) { partNumber url headers { name value } } }`;
const CONFIRM = `mutation($id: ID!, $n: Int!, $etag: String!) {
  confirmUploadPart(id: $id, partNumber: $n, etag: $etag) { id partsUploaded } }`;
const COMPLETE = `mutation($id: ID!) { completeUpload(id: $id) { ${FIELDS} } }`;
const CANCEL = "mutation($id: ID!) { cancelUpload(id: $id) { id } }";

/** Whether this browser can send directly: part checksums need crypto.subtle (a secure context). */
export function directSupported() {
  return Boolean(window.crypto && window.crypto.subtle);
}

async function sha256Base64(blob) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", await blob.arrayBuffer()));
  let text = "";
  for (const byte of digest) text += String.fromCharCode(byte);
  return btoa(text);
}

export class DirectSend {
  /** `events`: created(id, null) once the upload exists, sent(bytes) as bytes reach the bucket. */
  constructor(file, { graphql, events }) {
    this.file = file;
    this.graphql = graphql;
    this.events = events;
    this.uploadId = null;
    this.stopped = false;
    this.requests = new Set();
    this.sent = new Map(); // part number -> bytes of it the bucket has received so far
  }

  async start() {
    this.stopped = false;
    const input = { filename: this.file.name, size: this.file.size, mode: "DIRECT" };
    const upload = (await this.graphql(CREATE, { input })).createUpload;
    this.uploadId = upload.id;
    this.events.created(upload.id, null);
    const numbers = Array.from({ length: upload.partsTotal }, (_, i) => i + 1);
    const next = () => numbers.shift();
    const lane = async () => {
      for (let n = next(); n !== undefined; n = next()) await this.part(n, upload.partSize);
    };
    await Promise.all(Array.from({ length: Math.min(PARALLEL, numbers.length) }, lane));
    this.check();
    await this.graphql(COMPLETE, { id: upload.id });
    return upload.id;
  }

  pause() {
    this.stopped = true;
    for (const xhr of this.requests) xhr.abort();
  }

  async cancel() {
    this.pause();
    if (this.uploadId) await this.graphql(CANCEL, { id: this.uploadId }).catch(() => null);
  }

  check() {
    if (this.stopped) throw new ApiError("ABORTED", "stopped");
  }

  async part(number, partSize) {
    const blob = this.file.slice((number - 1) * partSize, number * partSize);
    const sha256 = await sha256Base64(blob);
    for (let attempt = 1; ; attempt++) {
      this.check();
      const [signed] = (await this.graphql(SIGN, { id: this.uploadId, parts: [{ partNumber: number, sha256 }] }))
        .signUploadParts;
      try {
        const etag = await this.put(signed, blob, number);
        await this.graphql(CONFIRM, { id: this.uploadId, n: number, etag });
        return;
      } catch (error) {
        if (this.stopped || !(error instanceof ApiError) || error.code !== "NETWORK" || attempt >= ATTEMPTS) throw error;
        await new Promise((resolve) => setTimeout(resolve, 500 * 2 ** attempt * Math.random()));
      }
    }
  }

  put(signed, blob, number) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      this.requests.add(xhr);
      xhr.open("PUT", signed.url);
      for (const header of signed.headers) xhr.setRequestHeader(header.name, header.value);
      xhr.upload.onprogress = (event) => {
        this.sent.set(number, event.loaded);
        let total = 0;
        for (const bytes of this.sent.values()) total += bytes;
        this.events.sent(Math.min(total, this.file.size));
      };
      xhr.onload = () => {
        this.requests.delete(xhr);
        const etag = xhr.getResponseHeader("ETag");
        if (xhr.status === 200 && etag) return resolve(etag);
        if (xhr.status === 200) return reject(new ApiError("BUCKET_CORS", "the bucket's CORS rule does not expose ETag"));
        const code = xhr.status >= 500 ? "NETWORK" : `HTTP_${xhr.status}`;
        reject(new ApiError(code, `the bucket answered HTTP ${xhr.status}`));
      };
      xhr.onerror = () => {
        this.requests.delete(xhr);
        reject(new ApiError("NETWORK", "the bucket cannot be reached"));
      };
      xhr.onabort = () => {
        this.requests.delete(xhr);
        reject(new ApiError("ABORTED", "stopped"));
      };
      xhr.send(blob);
    });
  }
}
