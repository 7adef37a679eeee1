"""What the client shows: live bars (rich) on a terminal, plain lines elsewhere, JSON for scripts.

Progress displays share one small interface (`UploadDisplay`) so the upload logic does not care
which one is on screen. Human output goes to stdout, errors to stderr as `CODE: message`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
)
from rich.table import Table
from rich.text import Text

from backend.client.api import UPLOAD_FIELDS, ApiError

_STATUS_STYLES = {"COMPLETED": "green", "FAILED": "red", "CANCELLED": "yellow"}


def format_bytes(size: int | float) -> str:
    """`size` in binary units for people: 0 B, 1023 B, 1.0 KiB, 5.5 MiB, ..."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def progress_summary(state: dict[str, Any]) -> str:
    """`UPLOADING 2/6 parts 33% (2.0 MiB of 6.0 MiB)` for an upload or a progress event."""
    total = state.get("bytesTotal", state.get("size", 0))
    return (
        f"{state['status']} {state['partsUploaded']}/{state['partsTotal']} parts {state['progress']:.0%}"
        f" ({format_bytes(state['bytesUploaded'])} of {format_bytes(total)})"
    )


def print_error(code: str, message: str) -> None:
    print(f"{code}: {message}", file=sys.stderr, flush=True)


def print_api_error(error: ApiError) -> None:
    print_error(error.code, error.message)


def print_json(document: Any) -> None:
    print(json.dumps(document, indent=2), flush=True)


def print_upload(upload: dict[str, Any]) -> None:
    """Every field of one upload, one `name  value` line each, in schema order."""
    width = max(len(name) for name in UPLOAD_FIELDS)
    for name in UPLOAD_FIELDS:
        value = upload.get(name)
        shown = "" if value is None else str(value)
        if name in ("size", "bytesUploaded") and isinstance(value, int):
            shown = f"{value} ({format_bytes(value)})"
        elif name == "progress" and isinstance(value, int | float):
            shown = f"{value:.1%}"
        print(f"{name:<{width}}  {shown}")


def print_upload_line(upload: dict[str, Any]) -> None:
    print(f"{upload['id']}  {progress_summary(upload)}  {upload['filename']}", flush=True)


def print_upload_table(uploads: list[dict[str, Any]], *, console: Console | None = None) -> None:
    """A table on a terminal; tab-separated lines (id, status, progress, size, created, filename) elsewhere."""
    console = console or Console()
    if not console.is_terminal:
        for upload in uploads:
            row = (
                upload["id"],
                upload["status"],
                f"{upload['progress']:.0%}",
                str(upload["size"]),
                upload["createdAt"],
                upload["filename"],
            )
            print("\t".join(row))
        return
    # The creation time only where it fits: ids and statuses must never be cut short.
    with_created = console.width >= 110
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    table.add_column("id", no_wrap=True, min_width=36)
    table.add_column("status", no_wrap=True, min_width=9)
    table.add_column("progress", no_wrap=True, justify="right")
    table.add_column("size", no_wrap=True, justify="right", min_width=9)
    if with_created:
        table.add_column("created (UTC)", no_wrap=True)
    table.add_column("filename", overflow="fold")
    for upload in uploads:
        status = upload["status"]
        cells = [
            upload["id"],
            f"[{_STATUS_STYLES.get(status, 'cyan')}]{status}[/]",
            f"{upload['progress']:.0%}",
            format_bytes(upload["size"]),
        ]
        if with_created:
            cells.append(_utc_minute(upload["createdAt"]))
        table.add_row(*cells, upload["filename"])
    console.print(table)
    console.print(f"{len(uploads)} upload(s)")


def _utc_minute(timestamp: str) -> str:
    """`2026-11-28 05:39` from an ISO 8601 timestamp with offset."""
    moment = datetime.fromisoformat(timestamp).astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M")


class UploadDisplay(Protocol):
    """The progress of the files of one `upload` command, each known by its index."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def add(self, key: int, name: str, size: int) -> None: ...
    def hashing(self, key: int, done: int) -> None: ...
    def sending(self, key: int, done: int) -> None: ...
    def resuming(self, key: int, offset: int) -> None: ...
    def accepted(self, key: int, upload: dict[str, Any]) -> None: ...
    def progress(self, key: int, event: dict[str, Any]) -> None: ...
    def finished(self, key: int, upload: dict[str, Any] | None, error: ApiError | None) -> None: ...
    def suspended(self) -> Any: ...


class QuietDisplay:
    """Shows nothing (`--json` when no terminal is there to draw on)."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def add(self, key: int, name: str, size: int) -> None: ...
    def hashing(self, key: int, done: int) -> None: ...
    def sending(self, key: int, done: int) -> None: ...
    def resuming(self, key: int, offset: int) -> None: ...
    def accepted(self, key: int, upload: dict[str, Any]) -> None: ...
    def progress(self, key: int, event: dict[str, Any]) -> None: ...
    def finished(self, key: int, upload: dict[str, Any] | None, error: ApiError | None) -> None: ...

    @contextmanager
    def suspended(self) -> Iterator[None]:
        yield


@dataclass
class PlainLines:
    """One line per change worth a line: a new status, or progress reaching the next tenth.

    For logs and pipes: no cursor movement, and no line per part of a 10,000-part file.
    """

    out: TextIO = field(default_factory=lambda: sys.stdout)
    names: dict[int, str] = field(default_factory=dict)
    sizes: dict[int, int] = field(default_factory=dict)
    last: dict[int, tuple[str, int]] = field(default_factory=dict)

    def _line(self, key: int, text: str) -> None:
        print(f"{self.names[key]}: {text}", file=self.out, flush=True)

    def start(self) -> None: ...
    def stop(self) -> None: ...

    def add(self, key: int, name: str, size: int) -> None:
        self.names[key] = name
        self.sizes[key] = size

    def hashing(self, key: int, done: int) -> None: ...

    def sending(self, key: int, done: int) -> None:
        if key not in self.last:
            self.last[key] = ("sending", 0)
            self._line(key, f"sending {format_bytes(self.sizes[key])}")

    def resuming(self, key: int, offset: int) -> None:
        self.last[key] = ("sending", 0)
        size = self.sizes[key]
        self._line(key, f"resuming at {format_bytes(offset)} of {format_bytes(size)} ({offset} bytes already there)")

    def accepted(self, key: int, upload: dict[str, Any]) -> None:
        self._line(key, f"{upload['status']} as {upload['id']}")
        self.last[key] = (upload["status"], 0)

    def progress(self, key: int, event: dict[str, Any]) -> None:
        mark = (event["status"], int(event["progress"] * 10))
        if mark != self.last.get(key):
            self.last[key] = mark
            self._line(key, progress_summary(event))

    def finished(self, key: int, upload: dict[str, Any] | None, error: ApiError | None) -> None:
        if upload is not None and upload["status"] == "FAILED":
            self._line(key, f"FAILED: {upload.get('error') or 'no reason given'}")
        elif error is not None and upload is None:
            self._line(key, f"not uploaded: {error.code}")

    @contextmanager
    def suspended(self) -> Iterator[None]:
        yield


class _BytesColumn(ProgressColumn):
    """`2.0 MiB / 5.0 MiB`, from the task's `size` field (a bar's total is at least 1)."""

    def render(self, task: Task) -> Text:
        size = int(task.fields.get("size", task.total or 0))
        return Text(f"{format_bytes(min(task.completed, size))} / {format_bytes(size)}", style="green")


class _SpeedColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{format_bytes(speed)}/s", style="red")


class RichBars:
    """A live bar per file: hashing, then sending, then the bucket transfer from the subscription."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bars = Progress(
            TextColumn("[bold]{task.description}", table_column=None),
            BarColumn(),
            TaskProgressColumn(),
            _BytesColumn(),
            _SpeedColumn(),
            TextColumn("{task.fields[state]}"),
            console=console,
            transient=False,
        )
        self.tasks: dict[int, TaskID] = {}
        self.phases: dict[int, str] = {}

    def start(self) -> None:
        self.bars.start()

    def stop(self) -> None:
        self.bars.stop()

    def add(self, key: int, name: str, size: int) -> None:
        self.tasks[key] = self.bars.add_task(name, total=max(size, 1), size=size, state="waiting")

    def hashing(self, key: int, done: int) -> None:
        self._phase(key, "hashing", done)

    def sending(self, key: int, done: int) -> None:
        self._phase(key, "sending", done)

    def resuming(self, key: int, offset: int) -> None:
        self._phase(key, "resuming", offset)

    def _phase(self, key: int, state: str, done: int) -> None:
        # A new phase restarts the bar, so the speed column measures this phase alone.
        if self.phases.get(key) != state:
            self.phases[key] = state
            self.bars.reset(self.tasks[key], completed=0, state=state)
        self.bars.update(self.tasks[key], completed=done)

    def accepted(self, key: int, upload: dict[str, Any]) -> None:
        self.phases[key] = "transfer"
        self.bars.reset(self.tasks[key], completed=upload["bytesUploaded"], state=self._state(upload))

    def progress(self, key: int, event: dict[str, Any]) -> None:
        done = event["bytesUploaded"]
        if event["status"] == "COMPLETED" and event["bytesTotal"] == 0:
            done = 1  # an empty file: show a full bar
        self.bars.update(self.tasks[key], completed=done, state=self._state(event))

    def finished(self, key: int, upload: dict[str, Any] | None, error: ApiError | None) -> None:
        if upload is None:
            self.bars.update(self.tasks[key], state=f"[red]not uploaded: {error.code if error else ''}")
        else:
            self.bars.update(self.tasks[key], state=self._state(upload))

    @staticmethod
    def _state(state: dict[str, Any]) -> str:
        status = state["status"]
        style = _STATUS_STYLES.get(status, "cyan")
        return f"[{style}]{status}[/] {state['partsUploaded']}/{state['partsTotal']} parts"

    @contextmanager
    def suspended(self) -> Iterator[None]:
        """Stop redrawing while a question is on screen."""
        self.bars.stop()
        try:
            yield
        finally:
            self.bars.start()


def upload_display(*, as_json: bool) -> UploadDisplay:
    """Bars on a terminal, plain lines on a pipe; with `--json` stdout is for the document only,
    so bars go to stderr when it is a terminal, and nothing is shown otherwise."""
    if as_json:
        errors = Console(file=sys.stderr)
        return RichBars(errors) if errors.is_terminal else QuietDisplay()
    console = Console()
    return RichBars(console) if console.is_terminal else PlainLines()


@contextmanager
def transfer_bar(*, name: str, total: int, visible: bool) -> Iterator[Any]:
    """A single bar for a download; yields the callback to report bytes received."""
    console = Console(file=sys.stderr)
    if not visible or not console.is_terminal:
        yield lambda done: None
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        _BytesColumn(),
        _SpeedColumn(),
        console=console,
    ) as bars:
        task = bars.add_task(name, total=max(total, 1), size=total)
        yield lambda done: bars.update(task, completed=done)
