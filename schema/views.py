"""The HTTP side of /graphql: authentication, CSRF for sessions, multipart parsing off the loop."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from asgiref.sync import sync_to_async
from cross_web import HTTPException
from django.conf import settings
from django.core.exceptions import SuspiciousOperation
from django.http import HttpRequest, HttpResponse
from django.http.multipartparser import MultiPartParserError
from django.http.response import HttpResponseBase
from django.middleware.csrf import CsrfViewMiddleware
from strawberry.django.views import AsyncGraphQLView

from backend.http_errors import error_response
from backend.tokens.bearer import BEARER_USER_SCOPE_KEY, bearer_token
from backend.tokens.services import token_user
from backend.uploads.staging import FileTooLarge, StagingFull, staging_discard_incoming
from schema.context import Context
from schema.validation import json_decode

logger = logging.getLogger(__name__)


class InvalidToken(Exception):
    pass


class UploadGraphQLView(AsyncGraphQLView[Context, None]):
    """strawberry's async Django view, with the request handling the contract asks for."""

    # django-stubs declares View.dispatch synchronous only, but Django runs an async one for an
    # async view (View.view_is_async); strawberry's own AsyncGraphQLView.dispatch is async too.
    async def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:  # type: ignore[override]
        try:
            return await self._dispatch(request)
        except HTTPException as exc:
            # strawberry answers 404 for a browser GET while GraphiQL is off.
            code = "NOT_FOUND" if exc.status_code == 404 else "BAD_REQUEST"
            return error_response(exc.status_code, code, exc.reason)
        except Exception:
            # The last resort the contract asks for: a JSON answer with a code, never Django's HTML
            # 500 page; the details go to the log only.
            logger.exception("unexpected error handling a /graphql request")
            return error_response(200, "INTERNAL_SERVER_ERROR", "Internal server error")
        finally:
            staging_discard_incoming(getattr(request, "staged_paths", []))

    async def _dispatch(self, request: HttpRequest) -> HttpResponseBase:
        try:
            user, by_session = await _authenticate(request)
        except InvalidToken:
            return error_response(401, "UNAUTHENTICATED", "the bearer token is invalid, expired or revoked")
        request.api_user = user  # type: ignore[attr-defined]
        if request.method == "POST":
            if by_session and not request.headers.get("X-CSRFToken"):
                return error_response(403, "FORBIDDEN", "a session request must carry X-CSRFToken")
            try:
                refused = await sync_to_async(_read_body, thread_sensitive=False)(request, by_session)
            except FileTooLarge as exc:
                return error_response(413, "FILE_TOO_LARGE", str(exc))
            except StagingFull as exc:
                # Its bytes are freed at once: the handler closed the file and `dispatch` unlinks it.
                logger.warning("upload refused: %s", exc)
                return error_response(507, "INSUFFICIENT_STORAGE", str(exc))
            except (MultiPartParserError, SuspiciousOperation, UnicodeDecodeError) as exc:
                # SuspiciousOperation covers Django's own limits: too many files (TooManyFilesSent) or
                # fields, and `operations` plus `map` over DATA_UPLOAD_MAX_MEMORY_SIZE (RequestDataTooBig).
                return error_response(400, "BAD_REQUEST", f"malformed multipart request: {exc}")
            if refused is not None:
                return refused
        try:
            return await self.run(request=request)
        except SuspiciousOperation as exc:
            # A JSON body over DATA_UPLOAD_MAX_MEMORY_SIZE, read by strawberry (RequestDataTooBig).
            return error_response(400, "BAD_REQUEST", f"malformed request: {exc}")

    async def get_context(self, request: HttpRequest, response: HttpResponse) -> Context:  # type: ignore[override]
        return Context(
            request=request,
            response=response,
            user=getattr(request, "api_user", None),
            base_url=settings.PUBLIC_BASE_URL or request.build_absolute_uri("/").rstrip("/"),
        )

    def decode_json(self, data: str | bytes) -> object:
        return json_decode(data)

    async def parse_multipart(self, request: Any) -> dict[str, Any]:
        form_data = await request.get_form_data()
        for fields in (form_data.form, form_data.files):
            repeated = sorted(name for name in fields if len(fields.getlist(name)) > 1)
            if repeated:
                raise HTTPException(400, f"part(s) {repeated} appear more than once")
        operations = self.parse_json(form_data.form.get("operations", ""))
        files_map = _parse_map(form_data.form.get("map", "{}"))
        return _replace_file_placeholders(operations, files_map, form_data.files)


async def _authenticate(request: HttpRequest) -> tuple[Any, bool]:
    """(user or None, whether the user came from the session cookie). A bearer token decides."""
    header = request.headers.get("Authorization", "")
    if header:
        looked_up, user = getattr(request, "scope", {}).get(BEARER_USER_SCOPE_KEY, (None, None))
        if looked_up != header:  # not looked up before the body (only multipart requests are)
            token = bearer_token(header)
            if token is None:
                raise InvalidToken
            user = await sync_to_async(token_user)(token=token)
        if user is None:
            raise InvalidToken
        return user, False
    session_user = await request.auser()
    if session_user.is_authenticated:
        return session_user, True
    return None, False


def _read_body(request: HttpRequest, by_session: bool) -> HttpResponseBase | None:
    """Run in a worker thread: the CSRF check for sessions, then multipart parsing into staging."""
    if by_session:
        refused = CsrfViewMiddleware(lambda r: HttpResponse()).process_view(request, None, (), {})  # type: ignore[arg-type]
        if refused is not None:
            return error_response(403, "FORBIDDEN", "CSRF check failed")
    if request.content_type == "multipart/form-data":
        request.POST  # noqa: B018 - parses the body; files land in staging through the upload handler
    return None


def _parse_map(text: str) -> Any:
    """The `map` field, refusing a key given twice (JSON would silently keep the last one)."""

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        if len(keys) != len(set(keys)):
            raise HTTPException(400, "map names a file more than once")
        return dict(pairs)

    try:
        return json_decode(text, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as exc:
        raise HTTPException(400, "map is not valid JSON") from exc


def _replace_file_placeholders(operations: Any, files_map: Any, files: Mapping[str, Any]) -> Any:
    """Put each file where the multipart `map` says, refusing anything the spec does not allow."""
    if not isinstance(operations, (dict, list)):
        raise HTTPException(400, "operations must be a JSON object or array")
    if not isinstance(files_map, dict):
        raise HTTPException(400, "map must be a JSON object")
    for field_name, paths in files_map.items():
        if field_name not in files:
            raise HTTPException(400, f"map names file {field_name!r}, which the request does not carry")
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
            raise HTTPException(400, f"map entry {field_name!r} must be a non-empty list of paths")
        for path in paths:
            _place(operations, path, files[field_name])
    unmapped = set(files) - set(files_map)
    if unmapped:
        raise HTTPException(400, f"file part(s) {sorted(unmapped)} are not in the map")
    return operations


def _place(operations: Any, path: str, value: Any) -> None:
    keys = path.split(".")
    target = operations
    try:
        for key in keys[:-1]:
            target = target[int(key)] if isinstance(target, list) else target[key]
        last = keys[-1]
        if isinstance(target, list):
            if target[int(last)] is not None:
                raise HTTPException(400, f"map path {path!r} must point at a null placeholder")
            target[int(last)] = value
        elif isinstance(target, dict):
            if last not in target or target[last] is not None:
                raise HTTPException(400, f"map path {path!r} must point at a null placeholder")
            target[last] = value
        else:
            raise HTTPException(400, f"map path {path!r} does not lead into the operations")
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise HTTPException(400, f"map path {path!r} does not exist in the operations") from exc
