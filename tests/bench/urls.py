"""The service's URLs plus `bench/bare`: a plain Django view storing one uploaded file, the baseline."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.files.storage import FileSystemStorage
from django.core.files.uploadhandler import MemoryFileUploadHandler, TemporaryFileUploadHandler
from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt


@csrf_exempt
def bare_upload(request: HttpRequest) -> JsonResponse:
    """What a bare Django app does: default upload handlers, then storage.save (a rename for big files)."""
    # The project swaps in its staging handler globally; the baseline must use Django's defaults.
    request.upload_handlers = [MemoryFileUploadHandler(request), TemporaryFileUploadHandler(request)]
    uploaded = request.FILES["0"]
    storage = FileSystemStorage(location=Path(settings.BENCH_BARE_DIR) / "stored")
    name = storage.save(uploaded.name or "file.bin", uploaded)
    return JsonResponse({"name": name, "size": uploaded.size})


urlpatterns = [
    path("bench/bare", bare_upload),
    path("", include("backend.urls")),
]
