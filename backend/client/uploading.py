"""The `upload` command: send files one after another, follow each one's progress until it ends.

Sending is sequential and resumable (tus, `backend.client.resumable`: one file at a time, since
the network is the limit and the server's per-user active-upload cap is not raced); following is
concurrent (one `uploadProgress` subscription per accepted upload, all on one websocket). Ctrl-C
pauses the display and asks whether to cancel what is in flight (the file being sent is cancelled
with a tus DELETE); a second Ctrl-C at that question leaves at once, and the next run of the same
`upload FILE` resumes the file that was being sent from the server's offset.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from backend.client.api import TERMINAL_STATUSES, ApiError, Endpoint, ProgressFeed, UploadApi
from backend.client.direct import DirectSender
from backend.client.display import UploadDisplay
from backend.client.files import file_sha256
from backend.client.places import PlaceStore, places_path
from backend.client.resumable import ResumableSender

# Errors that every later file would meet too: stop sending after the first one.
_FATAL_CODES = frozenset({"UNAUTHENTICATED", "FORBIDDEN", "CONNECTION_FAILED", "BAD_RESPONSE"})


@dataclass
class FileOutcome:
    """What became of one FILE argument: the upload's final fields, and/or why it went wrong."""

    path: str
    upload: dict[str, Any] | None = None
    error: ApiError | None = None

    @property
    def completed(self) -> bool:
        return self.upload is not None and self.upload["status"] == "COMPLETED"


@dataclass
class UploadRun:
    """One `upload` command's state: what is in flight, and whether the user asked to cancel."""

    endpoint: Endpoint
    paths: list[str]
    display: UploadDisplay
    direct: bool = False  # `upload --direct`: parts straight to the bucket (backend.client.direct)
    outcomes: list[FileOutcome] = field(init=False)
    in_flight: dict[str, int] = field(default_factory=dict)
    cancelling: bool = False
    _asking: bool = False
    _api: UploadApi | None = None
    _sender: ResumableSender | None = None
    _receiving: str | None = None  # the upload being sent, once the server has made it
    _sending: asyncio.Task[dict[str, Any]] | None = None
    _question: asyncio.Task[None] | None = None
    _main: asyncio.Task[Any] | None = None

    def __post_init__(self) -> None:
        self.outcomes = [FileOutcome(path=path) for path in self.paths]

    async def run(self) -> list[FileOutcome]:
        """Send and follow every file; the outcomes in FILE order. Cancelled by a double Ctrl-C."""
        loop = asyncio.get_running_loop()
        self._main = asyncio.current_task()
        loop.add_signal_handler(signal.SIGINT, self._interrupted)
        self.display.start()
        try:
            async with (
                UploadApi(self.endpoint) as api,
                ProgressFeed(self.endpoint) as feed,
                ResumableSender(self.endpoint, PlaceStore(places_path())) as sender,
            ):
                self._api, self._sender = api, sender
                followers: list[asyncio.Task[None]] = []
                for key, path in enumerate(self.paths):
                    self.display.add(key, os.path.basename(path), os.path.getsize(path))
                for key, path in enumerate(self.paths):
                    upload = await self._send(key, path)
                    if upload is not None:
                        followers.append(asyncio.create_task(self._follow(feed, key, upload)))
                await asyncio.gather(*followers)
                await self._question_settle()
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            await self._question_settle()
            self.display.stop()
        return self.outcomes

    async def _send(self, key: int, path: str) -> dict[str, Any] | None:
        outcome = self.outcomes[key]
        if self.cancelling:
            outcome.error = ApiError("NOT_SENT", f"{path}: not sent, the uploads were cancelled")
            self.display.finished(key, None, outcome.error)
            return None
        if any(o.error and o.error.code in _FATAL_CODES for o in self.outcomes):
            outcome.error = ApiError("NOT_SENT", f"{path}: not sent after the error above")
            self.display.finished(key, None, outcome.error)
            return None
        try:
            sha256 = await asyncio.to_thread(
                file_sha256, path=path, on_read=lambda done: self.display.hashing(key, done)
            )
        except OSError as error:
            outcome.error = ApiError("FILE_ERROR", f"{path}: {error.strerror or error}")
            self.display.finished(key, None, outcome.error)
            return None
        if self.cancelling:
            outcome.error = ApiError("NOT_SENT", f"{path}: not sent, the uploads were cancelled")
            self.display.finished(key, None, outcome.error)
            return None
        assert self._api is not None and self._sender is not None
        send = self._send_directly if self.direct else self._send_resumably
        self._sending = asyncio.create_task(send(key, path, sha256))
        await asyncio.wait([self._sending])
        sending, self._sending = self._sending, None
        self._receiving = None
        if sending.cancelled():
            outcome.error = ApiError("NOT_SENT", f"{path}: sending was cancelled")
        elif isinstance(failure := sending.exception(), ApiError):
            outcome.error = ApiError(failure.code, f"{path}: {failure.message}")
        elif isinstance(failure, OSError):
            outcome.error = ApiError("FILE_ERROR", f"{path}: {failure.strerror or failure}")
        else:
            upload = sending.result()
            outcome.upload = upload
            self.display.accepted(key, upload)
            self.in_flight[upload["id"]] = key
            if self.cancelling:
                await self._cancel(upload["id"])
            return upload
        self.display.finished(key, None, outcome.error)
        return None

    async def _send_resumably(self, key: int, path: str, sha256: str) -> dict[str, Any]:
        """Every byte of the file to the server (resuming an earlier run's upload); the upload."""
        assert self._api is not None and self._sender is not None

        def created(upload_id: str) -> None:
            self._receiving = upload_id

        upload_id = await self._sender.send(
            path=path,
            filename=os.path.basename(path),
            sha256=sha256,
            on_sent=lambda done: self.display.sending(key, done),
            on_resumed=lambda offset: self.display.resuming(key, offset),
            on_created=created,
        )
        return await self._api.upload_get(upload_id=upload_id)

    async def _send_directly(self, key: int, path: str, sha256: str) -> dict[str, Any]:
        """Every part of the file straight into the bucket, completed; the upload (QUEUED)."""
        assert self._api is not None

        def created(upload_id: str) -> None:
            self._receiving = upload_id

        upload_id = await DirectSender(self._api).send(
            path=path,
            filename=os.path.basename(path),
            sha256=sha256,
            on_sent=lambda done: self.display.sending(key, done),
            on_created=created,
        )
        return await self._api.upload_get(upload_id=upload_id)

    async def _follow(self, feed: ProgressFeed, key: int, upload: dict[str, Any]) -> None:
        """Relay the upload's events to the display until it ends, then read its final fields."""
        outcome = self.outcomes[key]
        latest: dict[str, Any] = upload
        try:
            async for event in feed.follow(upload_id=upload["id"]):
                self.display.progress(key, event)
                latest = {**latest, **{k: v for k, v in event.items() if k in latest}}
        except ApiError as error:
            outcome.error = ApiError(error.code, f"{outcome.path}: following upload {upload['id']}: {error.message}")
        finally:
            self.in_flight.pop(upload["id"], None)
        assert self._api is not None
        try:
            latest = await self._api.upload_get(upload_id=upload["id"])
        except ApiError as error:
            outcome.error = outcome.error or ApiError(error.code, f"{outcome.path}: {error.message}")
        if latest["status"] in TERMINAL_STATUSES:
            outcome.error = None  # the stream broke, but the upload's end is known all the same
        outcome.upload = latest
        self.display.finished(key, latest, outcome.error)

    # --- Ctrl-C ---------------------------------------------------------------------------------

    def _interrupted(self) -> None:
        if self._question is not None and not self._question.done():
            # Ctrl-C again at the question: leave now; what was accepted carries on on the server.
            assert self._main is not None
            self._main.cancel()
            return
        if self.cancelling:
            return
        self._question = asyncio.create_task(self._ask_and_cancel())

    async def _question_settle(self) -> None:
        """Let a cancellation the user asked for finish; drop a question nobody answered in time."""
        question = self._question
        if question is None or question.done():
            return
        if self._asking:
            question.cancel()  # everything ended (or we are leaving) while the question was open
            print(file=sys.stderr, flush=True)
        await asyncio.wait([question])

    async def _ask_and_cancel(self) -> None:
        count = len(self.in_flight) + (1 if self._sending is not None else 0)
        self._asking = True
        try:
            with self.display.suspended():
                answer = await _ask(f"\nCancel {count} upload(s) in flight? [y/N] ")
        finally:
            self._asking = False
        if answer.strip().lower() not in ("y", "yes"):
            print("continuing", file=sys.stderr, flush=True)
            return
        self.cancelling = True
        receiving = self._receiving
        if self._sending is not None:
            self._sending.cancel()
        if receiving is not None:
            await self._terminate(receiving)
        await asyncio.gather(*(self._cancel(upload_id) for upload_id in list(self.in_flight)))

    async def _cancel(self, upload_id: str) -> None:
        assert self._api is not None
        try:
            await self._api.upload_cancel(upload_id=upload_id)
        except ApiError as error:
            if error.code != "INVALID_STATE":  # INVALID_STATE: it ended meanwhile; its stream says how
                print(f"{error.code}: cancelling {upload_id}: {error.message}", file=sys.stderr, flush=True)

    async def _terminate(self, upload_id: str) -> None:
        assert self._sender is not None
        if self.direct:
            await self._cancel(upload_id)  # cancelUpload aborts the bucket's multipart upload
            return
        try:
            await self._sender.terminate(upload_id=upload_id)
        except ApiError as error:
            print(f"{error.code}: cancelling {upload_id}: {error.message}", file=sys.stderr, flush=True)


async def _ask(prompt: str) -> str:
    """A line from stdin, read on a daemon thread so the event loop (and the bars' data) go on.

    End of input counts as no answer. The thread is a daemon: if the user leaves with a second
    Ctrl-C, a thread still blocked on stdin does not keep the process alive.
    """
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str] = loop.create_future()
    print(prompt, end="", file=sys.stderr, flush=True)

    def read() -> None:
        try:
            line = sys.stdin.readline()
        except (OSError, ValueError):
            line = ""
        loop.call_soon_threadsafe(_settle, answer, line)

    threading.Thread(target=read, name="answer", daemon=True).start()
    return await answer


def _settle(answer: asyncio.Future[str], line: str) -> None:
    if not answer.done():  # cancelled when the question was dropped
        answer.set_result(line)
