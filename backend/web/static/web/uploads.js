/* The upload page: one row with one <progress> per upload, in two phases.
 *
 * 1. Sending: the file goes to the server resumably (tus, send-resumable.js) with the session
 *    cookie. A dropped network is waited out and resumed; after a reload the upload is listed as
 *    paused at N%, and choosing the same file again (checked by size and fingerprint) continues
 *    from the server's offset.
 * 2. Copying: once every byte is in, the uploadProgress subscription (graphql-transport-ws over one
 *    websocket, authenticated by the same cookie) reports each confirmed part until COMPLETED,
 *    FAILED or CANCELLED.
 *
 * Every subscription starts with a snapshot and every event carries absolute state, so when the socket
 * drops, reconnecting (with backoff) and subscribing again is all a bar needs to catch up.
 */
import { ProgressSocket, graphqlClient } from "./api.js";
import { formatBytes } from "./format.js";
import { UPLOAD_FIELDS, UploadRow, configure, rows } from "./row.js";
import { fingerprintOf, places } from "./send-resumable.js";

const app = document.getElementById("app");
const GRAPHQL_PATH = app.dataset.graphqlPath;
const MAX_BYTES = Number(app.dataset.maxBytes);
const PAGE_SIZE = Number(app.dataset.pageSize);
const UPLOADS_QUERY = `query ($first: Int!, $after: String) { uploads(first: $first, after: $after) {
  totalCount pageInfo { hasNextPage endCursor } edges { node { ${UPLOAD_FIELDS} } } } }`;
const PROGRESS_SUBSCRIPTION = `subscription ($id: ID!) { uploadProgress(id: $id) {
  uploadId sequence status partsUploaded partsTotal bytesReceived bytesUploaded bytesTotal progress error } }`;

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
  socket.stopped = true;
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

const graphql = graphqlClient(GRAPHQL_PATH, sessionEnded);
const socket = new ProgressSocket(
  `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${GRAPHQL_PATH}`,
  PROGRESS_SUBSCRIPTION,
  { state: showConnection, refused: sessionEnded },
);
window.addEventListener("online", () => socket.hurry());

function checkSession(error) {
  if (error.code === "UNAUTHENTICATED") sessionEnded();
  return error;
}

const list = document.getElementById("uploads");

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
  const unsent = page === 0 ? [...rows.values()].filter((row) => !row.upload && !row.sending) : [];
  const sending = page === 0 ? [...rows.values()].filter((row) => row.sending) : [];
  const shown = connection.edges
    .map(({ node }) => {
      const existing = rows.get(node.id);
      if (!existing) return new UploadRow({ upload: node });
      if (existing.sending) return null; // on top already
      if (!existing.unsubscribe) existing.adopt(node); // a followed row is already current
      return existing;
    })
    .filter(Boolean);
  list.replaceChildren(
    ...unsent.reverse().map((row) => row.element),
    ...sending.reverse().map((row) => row.element),
    ...shown.map((row) => row.element),
  );
  renderSummary();
}

configure({
  announce,
  graphql,
  checkSession,
  socket,
  counted: (delta) => {
    listState.total += delta;
    renderSummary();
  },
});

newer.addEventListener("click", () => showPage(listState.page - 1));
older.addEventListener("click", () => showPage(listState.page + 1));

// --- choosing and dropping files ----------------------------------------------------------------

/** A paused row of this page for `file` (an earlier upload of it, by fingerprint), if any. */
async function pausedRowFor(file) {
  const place = places.get(await fingerprintOf(file));
  const row = place ? rows.get(place.id) : null;
  return row && row.status === "PAUSED" ? row : null;
}

async function start(files) {
  if (ended || files.length === 0) return;
  if (listState.page !== 0) showPage(0);
  for (const file of files) {
    const paused = file.size <= MAX_BYTES ? await pausedRowFor(file) : null;
    if (paused) {
      list.prepend(paused.element);
      paused.file = file;
      paused.send();
      continue;
    }
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

showPage(0);
