from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from django.views.decorators.csrf import csrf_exempt

from backend import health
from backend.companion import views as companion
from backend.metrics_view import metrics
from backend.uploads.views import download
from backend.web.views import upload_page
from schema import schema
from schema.views import UploadGraphQLView

# The GraphQL view runs Django's CSRF check itself, for session requests only (CONTRACT section 5).
graphql_view = csrf_exempt(
    UploadGraphQLView.as_view(
        schema=schema,
        graphql_ide="graphiql" if settings.GRAPHIQL else None,
        multipart_uploads_enabled=True,
    )
)

urlpatterns = [
    path("", upload_page, name="upload-page"),
    re_path(r"^graphql/?$", graphql_view, name="graphql"),
    path("files/<str:token>", download),
    # Uppy's @uppy/aws-s3 in Companion mode (CONTRACT section 9).
    path("s3/multipart", companion.multipart_create),
    path("s3/multipart/<str:upload_id>", companion.multipart_upload),
    path("s3/multipart/<str:upload_id>/complete", companion.multipart_complete),
    path("s3/multipart/<str:upload_id>/<str:part_number>", companion.multipart_sign),
    path("s3/params", companion.single_request_params),
    path("healthz", health.healthz),
    path("readyz", health.readyz),
    path("metrics", metrics),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/rq/", include("django_rq.urls")),
    path("admin/", admin.site.urls),
]
