"""Error codes and masking (schema/errors.py): what a client may learn from an error."""

from __future__ import annotations

import pytest
from django.test import override_settings
from graphql import GraphQLError

from backend.uploads.errors import NotFound
from schema.errors import error_code_for

LEAKY = RuntimeError('near "SELEC": syntax error in /srv/app/backend/uploads/services.py')


@pytest.mark.parametrize("debug", [False, True])
def test_an_unexpected_error_is_masked_unless_debug(debug: bool) -> None:
    error = GraphQLError(str(LEAKY), path=["upload"], original_error=LEAKY)
    with override_settings(DEBUG=debug):
        coded = error_code_for(error)
    assert coded.extensions == {"code": "INTERNAL_SERVER_ERROR"}
    if debug:
        assert "SELEC" in coded.message
    else:
        assert coded.message == "Internal server error"
        assert coded.original_error is None
        assert "SELEC" not in str(coded.formatted) and "/srv" not in str(coded.formatted)


def test_a_graphql_error_raised_in_a_resolver_without_a_code_is_masked_too() -> None:
    error = GraphQLError("internal detail", path=["upload"], original_error=GraphQLError("internal detail"))
    with override_settings(DEBUG=False):
        assert error_code_for(error).formatted["message"] == "Internal server error"


def test_domain_errors_keep_their_code_and_message() -> None:
    original = NotFound("no such upload")
    coded = error_code_for(GraphQLError("x", path=["upload"], original_error=original))
    assert (coded.extensions, coded.message) == ({"code": "NOT_FOUND"}, original.message)


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("Syntax Error: Expected Name, found <EOF>.", "GRAPHQL_PARSE_FAILED"),
        ("Cannot query field 'x' on type 'Query'.", "GRAPHQL_VALIDATION_FAILED"),
        ("Variable '$n' has invalid value: Int cannot represent non-integer value: 'ten'", "BAD_USER_INPUT"),
    ],
)
def test_graphql_core_request_errors_get_their_contract_codes(message: str, code: str) -> None:
    assert error_code_for(GraphQLError(message)).extensions == {"code": code}
