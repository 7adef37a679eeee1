"""Uppy in a browser: @uppy/core and @uppy/tus from tests/js (npm), bundled for the page by esbuild.

Their ESM imports CommonJS modules (lodash, classnames, ...) that a browser cannot load natively, so
tests/js/uppy_entry.mjs is bundled into one ES module at test time, the way an application using Uppy
ships it. A small static server on a port of its own serves it with the test's page: another origin
than the upload service's, so every request the page makes to the service is cross-origin (CORS).
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.support.tusjs import JS_DIR


def uppy_ready() -> str | None:
    """Why Uppy cannot be bundled here, or None."""
    if (
        not (JS_DIR / "node_modules" / "@uppy" / "tus").is_dir()
        or not (JS_DIR / "node_modules" / ".bin" / "esbuild").exists()
    ):
        return "the npm packages are not installed: run `make js-deps`"
    return None


def uppy_bundle(directory: Path) -> Path:
    """`directory`/uppy.mjs: Uppy and its Tus plugin as one ES module for the browser."""
    out = directory / "uppy.mjs"
    subprocess.run(
        [
            str(JS_DIR / "node_modules" / ".bin" / "esbuild"),
            "uppy_entry.mjs",
            "--bundle",
            "--format=esm",
            "--platform=browser",
            f"--outfile={out}",
            "--log-level=warning",
        ],
        cwd=JS_DIR,
        check=True,
        timeout=120,
    )
    return out


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def static_site(directory: Path, port: int) -> Iterator[str]:
    """Serve `directory` on 127.0.0.1:`port` until the block ends; its origin."""
    server = ThreadingHTTPServer(("127.0.0.1", port), partial(_Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, name="static-site", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
