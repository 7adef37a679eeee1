"""Where `upload` keeps its place: which upload on which server holds which local file's bytes.

One small JSON file, `upload-service/resumable.json` under the user's cache directory
(`$XDG_CACHE_HOME`, else `~/.cache`), mapping a file's key (server, size, sha256: see
`resumable.place_key`) to its upload's tus URL. An entry is written as soon as the server has
made the upload and removed once every byte is in (or the server refused it for good), so a run
stopped any way at all leaves exactly what the next run needs to resume. The URL alone grants
nothing: every request to it needs the same credentials, and the server answers 404 to anyone else.

Each change is a read-modify-write under an exclusive `flock` and an atomic rename, so two `upload`
commands running at once never lose each other's entries.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

FILE_NAME = "resumable.json"


def places_path(environ: dict[str, str] | None = None) -> Path:
    """The store's file: under $XDG_CACHE_HOME (or ~/.cache) in `upload-service/`."""
    env = os.environ if environ is None else environ
    cache = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "upload-service" / FILE_NAME


class PlaceStore:
    """key -> tus URL, kept in one JSON file; a missing or unreadable file is an empty store."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def get(self, key: str) -> str | None:
        value = self._read().get(key)
        return value if isinstance(value, str) else None

    def put(self, key: str, url: str) -> None:
        with self._changing() as places:
            places[key] = url

    def drop(self, key: str) -> None:
        with self._changing() as places:
            places.pop(key, None)

    def forget_url(self, url: str) -> None:
        """Drop every entry pointing at `url` (an upload cancelled on purpose)."""
        with self._changing() as places:
            for key in [k for k, v in places.items() if v == url]:
                del places[key]

    def _read(self) -> dict[str, object]:
        try:
            places = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return places if isinstance(places, dict) else {}

    @contextlib.contextmanager
    def _changing(self) -> Iterator[dict[str, object]]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            places = self._read()
            yield places
            partial = self.path.with_suffix(".tmp")
            partial.write_text(json.dumps(places, indent=1, sort_keys=True))
            os.chmod(partial, 0o600)
            os.replace(partial, self.path)
