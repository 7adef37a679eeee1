"""Error codes: domain errors and GraphQL failures mapped to CONTRACT section 4, in one place."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from graphql import GraphQLError
from strawberry.extensions import SchemaExtension
from strawberry.types.execution import ExecutionResult

from backend.uploads.errors import UploadError

logger = logging.getLogger(__name__)


def expected_code(error: GraphQLError) -> tuple[str, str] | None:
    """(code, message) for an error the contract names, None for one it does not (a bug)."""
    original = error.original_error
    if isinstance(original, UploadError):
        return original.code, original.message
    if isinstance(original, GraphQLError) and original.extensions and "code" in original.extensions:
        return str(original.extensions["code"]), original.message
    if error.extensions and "code" in error.extensions:
        # A copy all the same: over graphql-transport-ws, strawberry closes the socket on a
        # GraphQLSyntaxError; a document over the token limit answers an error message like any other.
        return str(error.extensions["code"]), error.message
    if original is None or isinstance(original, GraphQLError):
        # graphql-core's own request errors: the document, or the variables against it.
        if error.message.startswith("Syntax Error"):
            return "GRAPHQL_PARSE_FAILED", error.message
        if error.message.startswith("Variable '$"):
            return "BAD_USER_INPUT", error.message
        if error.path is None:
            return "GRAPHQL_VALIDATION_FAILED", error.message
    return None


def error_code_for(error: GraphQLError) -> GraphQLError:
    """The same error with `extensions.code` set, and its message masked if it is unexpected.

    Outside DEBUG, an error the contract has no code for answers INTERNAL_SERVER_ERROR with a fixed
    message: no exception text, stack, file path or SQL reaches the client (the log has them, written
    by `errors_log`).
    """
    expected = expected_code(error)
    original = error.original_error
    if expected is not None:
        # Further extensions a domain error carries (OFFSET_MISMATCH's `offset`).
        extra = original.extensions if isinstance(original, UploadError) else None
        return _with_code(error, *expected, extra)
    message = (f"{type(original).__name__}: {original}" if original else error.message) if settings.DEBUG else ""
    return _with_code(error, "INTERNAL_SERVER_ERROR", message or "Internal server error")


def errors_log(errors: list[GraphQLError]) -> None:
    """Log each error of a result once: what the contract names (bad input, not found, ...) is an
    answer, one INFO line with its code and no traceback; anything else is a bug, at ERROR with
    the traceback. Replaces strawberry's default, which logs every error at ERROR with a traceback.
    """
    for error in errors:
        expected = expected_code(error)
        where = ".".join(str(p) for p in error.path) if error.path else "request"
        if expected is not None:
            logger.info("GraphQL error %s at %s: %s", expected[0], where, expected[1])
        else:
            logger.error("unexpected error at %s: %s", where, error.message, exc_info=error.original_error)


def _with_code(error: GraphQLError, code: str, message: str, extra: dict[str, object] | None = None) -> GraphQLError:
    return GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=None,
        extensions={**(error.extensions or {}), **(extra or {}), "code": code},
    )


class ErrorCodes(SchemaExtension):
    """Gives every error in a result the contract's code."""

    def on_operation(self) -> Iterator[None]:
        yield
        result = self.execution_context.result
        if (isinstance(result, ExecutionResult) or hasattr(result, "errors")) and result is not None and result.errors:
            result.errors = [error_code_for(e) for e in result.errors]
        if self.execution_context.pre_execution_errors:
            self.execution_context.pre_execution_errors = [
                error_code_for(e) for e in self.execution_context.pre_execution_errors
            ]

    def on_stream_result(self, result: Any) -> Iterator[None]:
        # A subscription's results go out one by one over the websocket before on_operation ends,
        # so each needs its codes here (on_operation sees only the last one, too late).
        if getattr(result, "errors", None):
            result.errors = [error_code_for(e) for e in result.errors]
        yield
