"""Hostile and malformed input against a running server over TCP (CONTRACT section 4).

Every case gets its documented answer; after each one the server still answers `/healthz` and a
real query, and nothing is left in staging (`incoming/` included), held open by the server, or in
the database that the case did not legitimately create. Requests are written byte for byte on a
raw socket where an HTTP client would refuse to send them or would fix them up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.tokens.models import ApiToken
from backend.uploads.models import FileUpload
from tests.support.client import PROGRESS_SUBSCRIPTION, UPLOAD_MUTATION, data_of, graphql
from tests.support.processes import wait_until
from tests.support.uploads import open_staging_files, staging_entries, upload_wait_for_status

IDLE_TIMEOUT = 2.0
MAX_OPERATIONS = 65536
BOUNDARY = "hostile-boundary"
UPLOAD_OPERATIONS = json.dumps({"query": UPLOAD_MUTATION, "variables": {"file": None, "sha256": None}})
GOOD_MAP = json.dumps({"0": ["variables.file"]})
LIST = "{ uploads(first: 1) { totalCount } }"


# --- the stack under attack -------------------------------------------------------------------


@dataclass
class Target:
    stack: Any
    staging: Path

    @property
    def url(self) -> str:
        return self.stack.url

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.stack.server.port


@pytest.fixture(scope="module")
def target(session_root: Path) -> Iterator[Target]:
    """One private stack for the module: a short idle timeout and websocket credential re-check."""
    from tests.conftest import _new_stack

    staging = session_root / f"hostile-staging-{uuid.uuid4().hex[:6]}"
    env = {
        "UPLOAD_STAGING_DIR": str(staging),
        "REQUEST_IDLE_TIMEOUT_SECONDS": str(IDLE_TIMEOUT),
        "WS_AUTH_RECHECK_SECONDS": "1",
        "UPLOAD_MAX_BYTES": str(4 * 1024 * 1024),
    }
    stack = _new_stack(session_root, env=env, workers=1, faults=None, server="uvicorn")
    yield Target(stack=stack, staging=staging)
    stack.stop()


@pytest.fixture
def user(make_user: Callable[..., Any]) -> Any:
    return make_user()


ACTIVE = "ACTIVE-UPLOAD-ID"  # in a websocket script: the id of the user's upload that stays QUEUED


@pytest.fixture
def active_upload(user: Any) -> Iterator[str]:
    """An upload of `user` that stays QUEUED (no job is queued for it), so subscriptions to it stay
    open; removed after the test."""
    upload = FileUpload.objects.create(
        owner=user.user,
        filename="held.bin",
        content_type="application/octet-stream",
        size=1,
        sha256="0" * 64,
        storage_backend="local",
        storage_key=f"uploads/held/{uuid.uuid4()}",
    )
    yield str(upload.id)
    upload.delete()


def assert_unharmed(target: Target, user: Any, *, rows: int = 0) -> None:
    """The server still serves, and the case left nothing behind but `rows` uploads of its own."""
    assert httpx.get(f"{target.url}/healthz", timeout=10).json() == {"status": "ok"}
    assert data_of(graphql(target.url, LIST, headers=user.headers))["uploads"]["totalCount"] == rows
    assert FileUpload.objects.filter(owner=user.user).count() == rows
    wait_until(lambda: staging_entries(target.staging) == set(), timeout=30, what="staging to be empty")
    wait_until(lambda: open_staging_files(target.stack.server.process.pid, target.staging) == [], timeout=10)


# --- raw HTTP ---------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int | None  # None: the server closed the connection without an answer
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None

    @property
    def code(self) -> str | None:
        errors = (self.body or {}).get("errors") or []
        return errors[0].get("extensions", {}).get("code") if errors else None


def exchange(target: Target, head: bytes, body: bytes = b"", *, then: str = "read") -> Answer:
    """Write `head` and `body` on a fresh connection, then read the answer (`then="read"`), stall
    without sending more (`"stall"`, reading what the server says), or hang up (`"vanish"`)."""
    with socket.create_connection(target.address, timeout=20) as conn:
        # The server may answer before reading everything: then read that answer.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.sendall(head + body)
        if then == "vanish":
            conn.shutdown(socket.SHUT_RDWR)
            return Answer(status=None)
        received = b""
        while not _answer_complete(received):
            try:
                chunk = conn.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    if not received:
        return Answer(status=None)
    head_bytes, _, payload = received.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    # Only this answer: bytes after it answer whatever the server made of the rest of the stream.
    payload = payload[: int(headers.get("content-length", len(payload)))]
    is_json = headers.get("content-type", "").startswith("application/json")
    body = json.loads(payload) if is_json else {"not json": payload.decode("latin1")[:300]}
    return Answer(status=int(lines[0].split(" ", 2)[1]), headers=headers, body=body)


def _answer_complete(received: bytes) -> bool:
    head, sep, body = received.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def request_head(
    target: Target,
    *,
    content_type: str,
    length: int | None,
    token: str | None,
    method: str = "POST",
    extra: str = "",
) -> bytes:
    lines = [
        f"{method} /graphql HTTP/1.1",
        f"Host: 127.0.0.1:{target.stack.server.port}",
        f"Content-Type: {content_type}",
    ]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode("latin1")


Part = tuple[str, str | None, bytes]  # name, filename (None: a plain field), content


def multipart(*parts: Part, boundary: str = BOUNDARY) -> bytes:
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def chunked(body: bytes, size: int = 8192) -> bytes:
    out = b""
    for start in range(0, len(body), size):
        piece = body[start : start + size]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    return out + b"0\r\n\r\n"


def ops(text: str) -> Part:
    return ("operations", None, text.encode())


def fmap(text: str) -> Part:
    return ("map", None, text.encode())


def file(name: str = "0", content: bytes = b"hello", filename: str = "a.txt") -> Part:
    return (name, filename, content)


def gql(query: str, variables: dict[str, Any] | None = None) -> bytes:
    return json.dumps({"query": query, "variables": variables or {}}).encode()


# --- the case table ---------------------------------------------------------------------------

MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
JSON = "application/json"
DEEP_QUERY = "{ " + "a { " * 12 + "b" + " }" * 12 + " }"
ALIASED_QUERY = "{ " + " ".join(f"a{i}: uploads(first: 1) {{ totalCount }}" for i in range(20)) + " }"
MANY_TOKENS_QUERY = "{ uploads(first: 1) { " + "totalCount " * 2100 + "} }"
_valid_upload = multipart(ops(UPLOAD_OPERATIONS), fmap(GOOD_MAP), file())


@dataclass
class Case:
    """A request as bytes: `content_type` and `body`, with an exact Content-Length unless
    `length` says otherwise ("none": no header, "chunked": Transfer-Encoding: chunked)."""

    id: str
    content_type: str
    body: bytes
    status: int
    code: str | None  # None: served, no errors
    length: int | str = "exact"
    method: str = "POST"


CASES = [
    # The multipart request spec, violated.
    Case("operations-missing", MULTIPART, multipart(fmap(GOOD_MAP), file()), 400, "BAD_REQUEST"),
    Case("operations-not-json", MULTIPART, multipart(ops("{nope"), fmap(GOOD_MAP), file()), 400, "BAD_REQUEST"),
    Case("operations-a-string", MULTIPART, multipart(ops('"x"'), fmap(GOOD_MAP), file()), 400, "BAD_REQUEST"),
    Case(
        "operations-oversized",
        MULTIPART,
        multipart(
            ops(json.dumps({"query": "#" + "x" * MAX_OPERATIONS, "variables": {"file": None}})), fmap(GOOD_MAP), file()
        ),
        400,
        "BAD_REQUEST",
    ),
    Case(
        "operations-nested-too-deeply",
        MULTIPART,
        multipart(ops("[" * 60000), fmap(GOOD_MAP), file()),
        400,
        "BAD_REQUEST",
    ),
    Case("map-missing", MULTIPART, multipart(ops(UPLOAD_OPERATIONS), file()), 400, "BAD_REQUEST"),
    Case("map-not-json", MULTIPART, multipart(ops(UPLOAD_OPERATIONS), fmap("{nope"), file()), 400, "BAD_REQUEST"),
    Case(
        "map-a-list",
        MULTIPART,
        multipart(ops(UPLOAD_OPERATIONS), fmap('["variables.file"]'), file()),
        400,
        "BAD_REQUEST",
    ),
    Case(
        "map-oversized",
        MULTIPART,
        multipart(ops(UPLOAD_OPERATIONS), fmap(json.dumps({"0": ["variables.file"] * 8000})), file()),
        400,
        "BAD_REQUEST",
    ),
    Case(
        "map-entry-an-empty-list",
        MULTIPART,
        multipart(ops(UPLOAD_OPERATIONS), fmap('{"0": []}'), file()),
        400,
        "BAD_REQUEST",
    ),
    Case(
        "map-to-a-missing-file",
        MULTIPART,
        multipart(ops(UPLOAD_OPERATIONS), fmap('{"1": ["variables.file"]}'), file()),
        400,
        "BAD_REQUEST",
    ),
    Case(
        "file-not-in-map",
        MULTIPART,
        multipart(ops(UPLOAD_OPERATIONS), fmap(GOOD_MAP), file(), file("1")),
        400,
        "BAD_REQUEST",
    ),
    Case(
        "map-to-a-wrong-path",
        MULTIPART,
        multipart(ops(UPLOAD_OPERATIONS), fmap('{"0": ["variables.nothing.here"]}'), file()),
        400,
        "BAD_REQUEST",
    ),
    Case(
        "map-to-a-value-that-is-not-null",
        MULTIPART,
        multipart(ops(UPLOAD_OPERATIONS), fmap('{"0": ["query"]}'), file()),
        400,
        "BAD_REQUEST",
    ),
    Case(
        "map-duplicate-keys",
        MULTIPART,
        multipart(ops(UPLOAD_OPERATIONS), fmap('{"0": ["variables.file"], "0": ["variables.sha256"]}'), file()),
        400,
        "BAD_REQUEST",
    ),
    Case(
        "duplicate-operations-part",
        MULTIPART,
        multipart(ops(UPLOAD_OPERATIONS), ops(UPLOAD_OPERATIONS), fmap(GOOD_MAP), file()),
        400,
        "BAD_REQUEST",
    ),
    Case(
        "duplicate-file-part",
        MULTIPART,
        multipart(ops(UPLOAD_OPERATIONS), fmap(GOOD_MAP), file(), file(content=b"other")),
        400,
        "BAD_REQUEST",
    ),
    Case(
        "two-files-one-placeholder",
        MULTIPART,
        multipart(
            ops(UPLOAD_OPERATIONS), fmap('{"0": ["variables.file"], "1": ["variables.file"]}'), file(), file("1")
        ),
        400,
        "BAD_REQUEST",
    ),
    Case(
        "too-many-files",
        MULTIPART,
        multipart(ops(UPLOAD_OPERATIONS), fmap(GOOD_MAP), *(file(str(i)) for i in range(11))),
        400,
        "BAD_REQUEST",
    ),
    Case(
        "too-many-fields",
        MULTIPART,
        multipart(ops(UPLOAD_OPERATIONS), fmap(GOOD_MAP), file(), *((f"f{i}", None, b"x") for i in range(1001))),
        400,
        "BAD_REQUEST",
    ),
    Case(
        "part-without-a-name",
        MULTIPART,
        _valid_upload.replace(b'name="0"; ', b""),
        400,
        "BAD_REQUEST",
    ),
    Case(
        "part-headers-over-djangos-limit",
        MULTIPART,
        multipart(ops(UPLOAD_OPERATIONS), fmap(GOOD_MAP), file(filename="a" * 5000)),
        400,
        "BAD_REQUEST",
    ),
    Case(
        "filename-only-dots",
        MULTIPART,
        multipart(ops(UPLOAD_OPERATIONS), fmap(GOOD_MAP), file(filename="..")),
        400,
        "BAD_REQUEST",
    ),
    Case("no-boundary", "multipart/form-data", _valid_upload, 400, "BAD_REQUEST"),
    Case("wrong-boundary", "multipart/form-data; boundary=other", _valid_upload, 400, "BAD_REQUEST"),
    Case("zero-length-multipart", MULTIPART, b"", 400, "BAD_REQUEST"),
    Case("truncated-multipart", MULTIPART, _valid_upload[: len(_valid_upload) - 30], 400, "BAD_REQUEST"),
    Case("garbage-multipart", MULTIPART, b"\x00\xff" * 500, 400, "BAD_REQUEST"),
    Case("multipart-without-content-length", MULTIPART, _valid_upload, 411, "LENGTH_REQUIRED", length="chunked"),
    Case("multipart-content-length-over-the-limit", MULTIPART, b"", 413, "FILE_TOO_LARGE", length=6 * 1024 * 1024),
    # JSON bodies.
    Case("json-broken", JSON, b'{"query": ', 400, "BAD_REQUEST"),
    Case("json-zero-length", JSON, b"", 400, "BAD_REQUEST"),
    Case("json-chunked-within-the-limit-is-served", JSON, gql(LIST), 200, None, length="chunked"),
    Case("json-a-batch", JSON, b'[{"query": "{ __typename }"}, {"query": "{ __typename }"}]', 400, "BAD_REQUEST"),
    Case("json-query-not-a-string", JSON, b'{"query": 42}', 400, "BAD_REQUEST"),
    Case("json-no-query", JSON, b'{"variables": {}}', 400, "BAD_REQUEST"),
    Case(
        "json-nested-too-deeply", JSON, b'{"query": "{ __typename }", "variables": ' + b"[" * 60000, 400, "BAD_REQUEST"
    ),
    Case("json-not-utf8", JSON, b'{"query": "\xff\xfe"}', 400, "BAD_REQUEST"),
    Case("json-body-over-the-limit", JSON, gql("#" + "x" * MAX_OPERATIONS), 400, "BAD_REQUEST"),
    Case("json-chunked-over-the-limit", JSON, gql("#" + "x" * MAX_OPERATIONS), 400, "BAD_REQUEST", length="chunked"),
    Case("unsupported-content-type", "text/plain", b"{ __typename }", 400, "BAD_REQUEST"),
    # GraphQL documents and arguments.
    Case("graphql-syntax-error", JSON, gql("{ uploads(first: 1) { "), 200, "GRAPHQL_PARSE_FAILED"),
    Case("graphql-unknown-field", JSON, gql("{ nothing }"), 200, "GRAPHQL_VALIDATION_FAILED"),
    Case("graphql-too-deep", JSON, gql(DEEP_QUERY), 200, "QUERY_TOO_COMPLEX"),
    Case("graphql-too-many-aliases", JSON, gql(ALIASED_QUERY), 200, "QUERY_TOO_COMPLEX"),
    Case("graphql-too-many-tokens", JSON, gql(MANY_TOKENS_QUERY), 200, "QUERY_TOO_COMPLEX"),
    Case(
        "graphql-wrong-argument-type",
        JSON,
        gql('{ uploads(first: "ten") { totalCount } }'),
        200,
        "GRAPHQL_VALIDATION_FAILED",
    ),
    Case(
        "variable-of-the-wrong-type",
        JSON,
        gql("query($n: Int) { uploads(first: $n) { totalCount } }", {"n": "ten"}),
        200,
        "BAD_USER_INPUT",
    ),
    Case(
        "malformed-id",
        JSON,
        gql("query($id: ID!) { upload(id: $id) { id } }", {"id": "../../etc"}),
        200,
        "BAD_USER_INPUT",
    ),
    Case(
        "unknown-id",
        JSON,
        gql("query($id: ID!) { upload(id: $id) { id } }", {"id": str(uuid.uuid4())}),
        200,
        "NOT_FOUND",
    ),
    Case(
        "upload-variable-given-a-string",
        JSON,
        gql(UPLOAD_MUTATION, {"file": "/etc/passwd", "sha256": None}),
        200,
        "BAD_USER_INPUT",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_hostile_request_gets_its_documented_answer(target: Target, user: Any, case: Case) -> None:
    body = chunked(case.body) if case.length == "chunked" else case.body
    length = len(case.body) if case.length == "exact" else case.length
    head = request_head(
        target,
        content_type=case.content_type,
        length=length if isinstance(length, int) else None,
        token=user.token,
        method=case.method,
        extra="Transfer-Encoding: chunked\r\n" if case.length == "chunked" else "",
    )
    answer = exchange(target, head, body)
    assert (answer.status, answer.code) == (case.status, case.code), (answer.status, answer.body)
    assert answer.headers["content-type"].startswith("application/json")
    assert_unharmed(target, user)


# --- connections that misbehave ---------------------------------------------------------------


def test_client_vanishing_mid_upload_leaves_nothing(target: Target, user: Any) -> None:
    body = multipart(ops(UPLOAD_OPERATIONS), fmap(GOOD_MAP), file(content=b"x" * 1024 * 1024))
    head = request_head(target, content_type=MULTIPART, length=len(body), token=user.token)
    assert exchange(target, head, body[: len(body) // 2], then="vanish").status is None
    assert_unharmed(target, user)


@pytest.mark.parametrize("sent", ["head-only", "half-the-body"])
def test_a_stalled_body_is_cut_off_with_408(target: Target, user: Any, sent: str) -> None:
    """A client that stops sending (or whose Content-Length promised more than it sends)."""
    body = multipart(ops(UPLOAD_OPERATIONS), fmap(GOOD_MAP), file(content=b"x" * 256 * 1024))
    head = request_head(target, content_type=MULTIPART, length=len(body), token=user.token)
    answer = exchange(target, head, b"" if sent == "head-only" else body[: len(body) // 2], then="stall")
    assert (answer.status, answer.code) == (408, "REQUEST_TIMEOUT"), answer.body
    assert_unharmed(target, user)


def test_a_slow_but_steady_body_is_served(target: Target, user: Any) -> None:
    """The timeout is per gap: a body whose every gap is shorter is served, however long it takes."""
    body = gql(LIST)
    head = request_head(target, content_type=JSON, length=len(body), token=user.token)
    with socket.create_connection(target.address, timeout=20) as conn:
        conn.sendall(head)
        for start in range(0, len(body), len(body) // 3 + 1):
            # Each gap is 0.6 of the timeout; the three together are longer than it.
            time.sleep(IDLE_TIMEOUT * 0.6)  # sync-ok: the slow client's pace is the behaviour under test
            conn.sendall(body[start : start + len(body) // 3 + 1])
        received = b""
        while not _answer_complete(received):
            received += conn.recv(65536)
    assert received.startswith(b"HTTP/1.1 200 ")
    assert json.loads(received.partition(b"\r\n\r\n")[2])["data"]["uploads"]["totalCount"] == 0
    assert_unharmed(target, user)


def test_a_trickling_json_body_is_cut_off_with_408(target: Target, user: Any) -> None:
    body = gql(LIST)
    head = request_head(target, content_type=JSON, length=len(body) + 10, token=user.token)
    answer = exchange(target, head, body, then="stall")
    assert (answer.status, answer.code) == (408, "REQUEST_TIMEOUT"), answer.body
    assert_unharmed(target, user)


def test_a_content_length_shorter_than_the_body_truncates_it_to_a_400(target: Target, user: Any) -> None:
    head = request_head(target, content_type=MULTIPART, length=len(_valid_upload) - 40, token=user.token)
    answer = exchange(target, head, _valid_upload)
    assert (answer.status, answer.code) == (400, "BAD_REQUEST"), answer.body
    assert_unharmed(target, user)


def test_a_bad_token_is_401_before_the_body_is_parsed(target: Target, user: Any) -> None:
    head = request_head(target, content_type=MULTIPART, length=len(_valid_upload), token="not-a-token")
    answer = exchange(target, head, _valid_upload)
    assert (answer.status, answer.code) == (401, "UNAUTHENTICATED"), answer.body
    assert_unharmed(target, user)


@pytest.mark.parametrize("order", ["good-last", "good-first"])
def test_a_second_authorization_header_is_401_whichever_comes_last(target: Target, user: Any, order: str) -> None:
    """The view reads both headers joined (no token); the token looked up before the body must not stand in for them."""
    bogus = "Authorization: Bearer not-a-token\r\n"
    good = f"Authorization: Bearer {user.token}\r\n"
    extra = bogus + good if order == "good-last" else good + bogus
    head = request_head(target, content_type=MULTIPART, length=len(_valid_upload), token=None, extra=extra)
    answer = exchange(target, head, _valid_upload)
    assert (answer.status, answer.code) == (401, "UNAUTHENTICATED"), answer.body
    assert_unharmed(target, user)


# --- hostile filenames: accepted, under a safe name -------------------------------------------

FILENAMES = {
    "path-traversal": ("../../../etc/passwd", "passwd"),
    "windows-traversal": ("..\\..\\boot.ini", "boot.ini"),
    "control-characters": ("re\x07port\x1b[31m.txt", "report[31m.txt"),
    "rtl-override": ("invoice\u202egnp.exe", "invoicegnp.exe"),
    "very-long": ("a" * 700 + ".txt", "a" * 251 + ".txt"),
    "very-long-multibyte": ("é" * 300, "é" * 127),
    "leading-dots": ("..hidden", "hidden"),
}


@pytest.mark.parametrize("raw", FILENAMES, ids=list(FILENAMES))
def test_hostile_filename_is_stored_as_a_safe_base_name(target: Target, user: Any, raw: str) -> None:
    sent, expected = FILENAMES[raw]
    content = f"content of {raw}".encode()
    body = multipart(ops(UPLOAD_OPERATIONS), fmap(GOOD_MAP), file(filename=sent.replace('"', ""), content=content))
    head = request_head(target, content_type=MULTIPART, length=len(body), token=user.token)
    answer = exchange(target, head, body)
    assert answer.status == 200 and not answer.body.get("errors"), answer.body
    upload = answer.body["data"]["uploadFile"]
    assert upload["filename"] == expected
    assert upload["storageKey"].startswith("uploads/") and expected not in upload["storageKey"]
    done = upload_wait_for_status(target.url, user.headers, upload["id"], {"COMPLETED", "FAILED"})
    assert done["status"] == "COMPLETED" and done["sha256"] == hashlib.sha256(content).hexdigest()
    download = httpx.get(done["downloadUrl"], timeout=10)
    disposition = download.headers["content-disposition"]
    assert "/" not in disposition and "\\" not in disposition and all(ord(c) >= 32 for c in disposition)
    assert_unharmed(target, user, rows=1)


def test_a_nul_in_the_filename_is_removed(target: Target, user: Any) -> None:
    """The contract stores a safe base name: control characters go (naming.filename_sanitise), the upload stays."""
    body = multipart(ops(UPLOAD_OPERATIONS), fmap(GOOD_MAP), file(filename="evil\x00.txt"))
    head = request_head(target, content_type=MULTIPART, length=len(body), token=user.token)
    answer = exchange(target, head, body)
    assert answer.status == 200 and not answer.body.get("errors"), answer.body
    upload = answer.body["data"]["uploadFile"]
    assert upload["filename"] == "evil.txt"
    upload_wait_for_status(target.url, user.headers, upload["id"], {"COMPLETED"})
    assert_unharmed(target, user, rows=1)


# --- websocket abuse --------------------------------------------------------------------------

INIT = "init"  # placeholder in a script: the connection_init with the user's token


@dataclass
class WsCase:
    """Messages sent in order (after the handshake); the close code expected, or None if the
    socket stays open and the last answer is an error message carrying `code`."""

    id: str
    messages: list[Any]
    close_code: int | None
    code: str | None = None
    subprotocol: str = "graphql-transport-ws"


def _subscribe(sub_id: str, query: str = PROGRESS_SUBSCRIPTION, variables: dict[str, Any] | None = None) -> str:
    payload = {"query": query, "variables": variables if variables is not None else {"id": str(uuid.uuid4())}}
    return json.dumps({"id": sub_id, "type": "subscribe", "payload": payload})


WS_CASES = [
    WsCase("garbage-frame", ["this is not json"], 4400),
    WsCase("binary-frame", [b"\x00\x01\x02"], 4400),
    WsCase("json-not-an-object", ["[1, 2, 3]"], 4400),
    WsCase("json-nested-too-deeply", ["[" * 60000], 4400),
    WsCase(
        "subscribe-payload-not-an-object", [INIT, json.dumps({"id": "1", "type": "subscribe", "payload": "x"})], 4400
    ),
    WsCase("message-type-not-a-string", [INIT, json.dumps({"type": ["subscribe"]})], 4400),
    WsCase("unknown-message-type", [INIT, json.dumps({"type": "launch_missiles"})], 4400),
    WsCase("init-payload-not-an-object", [json.dumps({"type": "connection_init", "payload": "x"})], 4400),
    WsCase("subscribe-before-ack", [_subscribe("1")], 4401),
    WsCase("bad-token", [json.dumps({"type": "connection_init", "payload": {"authorization": "Bearer nope"}})], 4403),
    WsCase("second-init", [INIT, INIT], 4429),
    WsCase(
        "duplicate-ids",
        [INIT, _subscribe("1", variables={"id": ACTIVE}), _subscribe("1", variables={"id": ACTIVE})],
        4409,
    ),
    WsCase("unknown-subprotocol", [], 4406, subprotocol="graphql-wrong"),
    WsCase(
        "subscription-syntax-error",
        [INIT, _subscribe("1", "subscription { uploadProgress(")],
        None,
        "GRAPHQL_PARSE_FAILED",
    ),
    WsCase("subscription-too-deep", [INIT, _subscribe("1", "subscription " + DEEP_QUERY)], None, "QUERY_TOO_COMPLEX"),
    WsCase(
        "subscription-unknown-field",
        [INIT, _subscribe("1", "subscription { nothing }", {})],
        None,
        "GRAPHQL_VALIDATION_FAILED",
    ),
    WsCase("subscription-malformed-id", [INIT, _subscribe("1", variables={"id": "nope"})], None, "BAD_USER_INPUT"),
]


async def _ws_script(target: Target, token: str, case: WsCase, active: str) -> tuple[int | None, dict[str, Any] | None]:
    init = json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}})
    async with websockets.connect(target.stack.ws_url, subprotocols=[case.subprotocol]) as ws:
        last: dict[str, Any] | None = None
        try:
            for message in case.messages:
                if isinstance(message, str):
                    message = message.replace(ACTIVE, active)
                await ws.send(init if message == INIT else message)
                if message == INIT and last is None:
                    last = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    assert last["type"] == "connection_ack", last
            while True:
                last = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if case.close_code is None and last["type"] in ("error", "next"):
                    return None, last
        except websockets.ConnectionClosed as closed:
            return (closed.rcvd.code if closed.rcvd else None), last
    raise AssertionError("unreachable")


@pytest.mark.parametrize("case", WS_CASES, ids=[case.id for case in WS_CASES])
def test_websocket_abuse_gets_its_documented_answer(
    target: Target, user: Any, active_upload: str, case: WsCase
) -> None:
    close_code, last = asyncio.run(_ws_script(target, user.token, case, active_upload))
    assert close_code == case.close_code, last
    if case.code is not None:
        assert last is not None
        errors = last["payload"] if last["type"] == "error" else last["payload"].get("errors", [])
        assert [e.get("extensions", {}).get("code") for e in errors] == [case.code], last
    assert_unharmed(target, user, rows=1)


def test_websocket_over_the_subscription_limit_refuses_the_51st(target: Target, user: Any, active_upload: str) -> None:
    """The limit is 50 operations per connection: the 51st answers an error, the others carry on."""

    async def run() -> dict[str, Any]:
        async with websockets.connect(target.stack.ws_url, subprotocols=["graphql-transport-ws"]) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {user.token}"}}))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            for n in range(51):
                await ws.send(_subscribe(str(n), variables={"id": active_upload}))
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if message["id"] == "50":
                    return message

    message = asyncio.run(run())
    assert message["type"] == "error" and "limit" in message["payload"][0]["message"], message
    assert_unharmed(target, user, rows=1)


def test_a_reader_that_never_reads_does_not_stall_the_server(target: Target, user: Any, active_upload: str) -> None:
    async def run() -> None:
        async with websockets.connect(
            target.stack.ws_url, subprotocols=["graphql-transport-ws"], max_queue=1, close_timeout=1
        ) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {user.token}"}}))
            # Subscriptions whose snapshots it never reads, and pings whose pongs (about 1 MB, more than
            # the socket buffers hold) it never reads either: the server's writes to it block.
            for n in range(50):
                await ws.send(_subscribe(str(n), variables={"id": active_upload}))
            for _ in range(60_000):
                await ws.send('{"type":"ping"}')
            for _ in range(3):
                await asyncio.to_thread(assert_unharmed, target, user, rows=1)

    asyncio.run(run())
    assert_unharmed(target, user, rows=1)


def test_revoking_a_token_closes_its_open_websocket_with_4403(target: Target, user: Any) -> None:
    async def run() -> int | None:
        async with websockets.connect(target.stack.ws_url, subprotocols=["graphql-transport-ws"]) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {user.token}"}}))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            await asyncio.to_thread(ApiToken.objects.filter(user=user.user).update, revoked_at=timezone.now())
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            return closed.value.rcvd.code if closed.value.rcvd else None

    assert asyncio.run(run()) == 4403


def test_an_expiring_token_closes_its_open_websocket_with_4403(target: Target, user: Any) -> None:
    async def run() -> int | None:
        async with websockets.connect(target.stack.ws_url, subprotocols=["graphql-transport-ws"]) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {user.token}"}}))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            await asyncio.to_thread(ApiToken.objects.filter(user=user.user).update, expires_at=timezone.now())
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            return closed.value.rcvd.code if closed.value.rcvd else None

    assert asyncio.run(run()) == 4403


def test_ending_the_session_closes_its_open_websocket_with_4403(target: Target, user: Any) -> None:
    """A socket authenticated by the session cookie closes once the session is gone (a logout)."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    session = SessionStore()
    session[SESSION_KEY] = str(user.user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.user.get_session_auth_hash()
    session.create()

    async def run() -> int | None:
        async with websockets.connect(
            target.stack.ws_url,
            subprotocols=["graphql-transport-ws"],
            additional_headers={"Cookie": f"sessionid={session.session_key}"},
        ) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            await asyncio.to_thread(session.delete)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            return closed.value.rcvd.code if closed.value.rcvd else None

    assert asyncio.run(run()) == 4403


# --- generated multipart bodies ---------------------------------------------------------------

_names = st.sampled_from(["operations", "map", "0", "1", "file", "", "operations\r\nX: y"])
_json_texts = st.one_of(
    st.just(UPLOAD_OPERATIONS),
    st.just(GOOD_MAP),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
        max_leaves=12,
    ).map(json.dumps),
    st.text(max_size=60),
)
_parts = st.lists(
    st.tuples(
        _names,
        st.one_of(st.none(), st.text(max_size=30)),
        st.one_of(_json_texts.map(str.encode), st.binary(max_size=200)),
    ),
    max_size=6,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=_parts, cut=st.one_of(st.none(), st.integers(min_value=0, max_value=400)))
def test_generated_multipart_bodies_never_break_the_parser(
    target: Target, user: Any, parts: list[Any], cut: int | None
) -> None:
    """Whatever the parts, the answer is a JSON body with a contract code, never a 5xx, and a
    refused request leaves nothing staged."""
    body = multipart(
        *((name, None if filename is None else filename.replace('"', ""), content) for name, filename, content in parts)
    )
    if cut is not None:
        body = body[:cut]
    head = request_head(target, content_type=MULTIPART, length=len(body), token=user.token)
    answer = exchange(target, head, body)
    assert answer.status is not None and answer.status < 500, answer.body
    assert answer.headers["content-type"].startswith("application/json")
    if answer.status != 200 or answer.body.get("errors"):
        assert answer.code in CONTRACT_CODES, answer.body
    wait_until(lambda: staging_entries(target.staging) <= _staged_by_accepted(user), timeout=30)


CONTRACT_CODES = {
    "UNAUTHENTICATED",
    "FORBIDDEN",
    "NOT_FOUND",
    "BAD_USER_INPUT",
    "BAD_REQUEST",
    "LENGTH_REQUIRED",
    "FILE_TOO_LARGE",
    "UNSUPPORTED_MEDIA_TYPE",
    "CHECKSUM_MISMATCH",
    "TOO_MANY_ACTIVE_UPLOADS",
    "INSUFFICIENT_STORAGE",
    "INVALID_STATE",
    "GRAPHQL_PARSE_FAILED",
    "GRAPHQL_VALIDATION_FAILED",
    "QUERY_TOO_COMPLEX",
}


def _staged_by_accepted(user: Any) -> set[str]:
    """Staged files an accepted upload may legitimately hold until its transfer ends."""
    return {str(upload_id) for upload_id in FileUpload.objects.filter(owner=user.user).values_list("id", flat=True)}
