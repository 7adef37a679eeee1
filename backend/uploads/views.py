from __future__ import annotations

from django.http import FileResponse, HttpRequest, HttpResponseBase

from backend.http_errors import error_response
from backend.uploads.storage import get_storage
from backend.uploads.storage.local import LocalStorage


def download(request: HttpRequest, token: str) -> HttpResponseBase:
    """Serve a local-backend object to whoever holds a valid, unexpired signed token."""
    storage = get_storage()
    found = storage.resolve_download(token) if isinstance(storage, LocalStorage) else None
    if found is None:
        return error_response(404, "NOT_FOUND", "no such file, or the link has expired")
    path, filename = found
    return FileResponse(path.open("rb"), as_attachment=True, filename=filename, content_type="application/octet-stream")
