"""The web page at `/` (CONTRACT section 1): pick or drop files and watch one bar per upload.

The page is a template and a few static ES modules; everything it does goes through the public API
(`/uploads/` for the bytes, tus; `/graphql` over HTTP and graphql-transport-ws for the rest) with the
session cookie, like any other client.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie

from backend.tus.protocol import PATH_PREFIX as TUS_PATH_PREFIX
from backend.uploads.services.direct import direct_offered

# Uploads per page of the list; the API allows up to 100.
PAGE_SIZE = 10


@login_required
@ensure_csrf_cookie
def upload_page(request: HttpRequest) -> HttpResponse:
    """The upload page for a logged-in user; anyone else is sent to the login form.

    `ensure_csrf_cookie` guarantees the `csrftoken` cookie the script copies into `X-CSRFToken`.
    The size limit is given to the page so it refuses an oversized file before sending it.
    """
    context = {
        "max_bytes": settings.UPLOAD_MAX_BYTES,
        "page_size": PAGE_SIZE,
        "graphiql": settings.GRAPHIQL,
        "tus_path": f"{TUS_PATH_PREFIX}/",
        # The page sends straight to the bucket when the server offers it (README, Direct-to-bucket uploads).
        "direct_uploads": "true" if direct_offered() else "false",
    }
    return render(request, "web/uploads.html", context)
