"""tus-js-client, the real npm package, driven in Node by tests/js/tus_upload.mjs (`make js-deps`)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

JS_DIR = Path(__file__).resolve().parents[1] / "js"


def node_ready() -> str | None:
    """Why the JS clients cannot run here (no node, packages not installed), or None."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (JS_DIR / "node_modules" / "tus-js-client").is_dir():
        return "the npm packages are not installed: run `make js-deps`"
    return None


def tus_js(options: dict[str, Any], *, timeout: float = 300) -> list[dict[str, Any]]:
    """Run one tus-js-client upload with `options`; the events it printed, in order."""
    done = subprocess.run(
        ["node", str(JS_DIR / "tus_upload.mjs"), json.dumps(options)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 and not any(e["event"] == "error" for e in events):
        raise AssertionError(f"tus-js-client exited {done.returncode}: {done.stderr[-2000:]}")
    return events


def last_event(events: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [e for e in events if e["event"] == kind]
    assert found, f"no {kind} event in {events[-5:]}"
    return found[-1]
