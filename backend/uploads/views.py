from __future__ import annotations

from django.http import FileResponse, HttpRequest, HttpResponseBase

from backend.http_errors import error_response
from backend.uploads.storage import get_capabilities


def download(request: HttpRequest, token: str) -> HttpResponseBase:
    """Serve an object to whoever holds a valid, unexpired signed token (stores with the download capability)."""
    download = get_capabilities().download
    found = download.resolve_download(token) if download is not None else None
    if found is None:
        return error_response(404, "NOT_FOUND", "no such file, or the link has expired")
    path, filename = found
    return FileResponse(path.open("rb"), as_attachment=True, filename=filename, content_type="application/octet-stream")
