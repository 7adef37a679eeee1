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


def error_code_for(error: GraphQLError) -> GraphQLError:
    """The same error with `extensions.code` set, and its message masked if it is unexpected."""
    original = error.original_error
    if isinstance(original, UploadError):
        return _with_code(error, original.code, original.message)
    if isinstance(original, GraphQLError) and original.extensions and "code" in original.extensions:
        return _with_code(error, str(original.extensions["code"]), original.message)
    if error.extensions and "code" in error.extensions:
        return error
    if original is None:
        if error.message.startswith("Syntax Error"):
            return _with_code(error, "GRAPHQL_PARSE_FAILED", error.message)
        if error.message.startswith("Variable '$"):
            return _with_code(error, "BAD_USER_INPUT", error.message)
        if error.path is None:
            return _with_code(error, "GRAPHQL_VALIDATION_FAILED", error.message)
        return _with_code(error, "INTERNAL_SERVER_ERROR", error.message)
    logger.error("unexpected error in a resolver", exc_info=original)
    message = f"{type(original).__name__}: {original}" if settings.DEBUG else "Internal server error"
    return _with_code(error, "INTERNAL_SERVER_ERROR", message)


def _with_code(error: GraphQLError, code: str, message: str) -> GraphQLError:
    return GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=None,
        extensions={**(error.extensions or {}), "code": code},
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
