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


# --- logging: an answer the contract names is not a traceback ---------------------------------


def test_expected_errors_are_logged_at_info_with_their_code_and_no_traceback(caplog) -> None:
    from backend.uploads.errors import BadUserInput
    from schema.errors import errors_log

    errors = [
        GraphQLError("x", path=["upload"], original_error=NotFound("no such upload")),
        GraphQLError("x", path=["cancelUpload"], original_error=BadUserInput("not an upload id")),
        GraphQLError("Syntax Error: Expected Name, found <EOF>."),
    ]
    with caplog.at_level("INFO", logger="schema.errors"):
        errors_log(errors)
    records = [r for r in caplog.records if r.name == "schema.errors"]
    assert [r.levelname for r in records] == ["INFO", "INFO", "INFO"]
    assert [r.exc_info for r in records] == [None, None, None]
    messages = [r.getMessage() for r in records]
    assert "NOT_FOUND at upload" in messages[0] and "BAD_USER_INPUT at cancelUpload" in messages[1]
    assert "GRAPHQL_PARSE_FAILED at request" in messages[2]


def test_an_unexpected_error_is_logged_at_error_with_its_traceback(caplog) -> None:
    from schema.errors import errors_log

    try:
        raise LEAKY
    except RuntimeError as raised:
        error = GraphQLError(str(raised), path=["upload"], original_error=raised)
    with caplog.at_level("INFO", logger="schema.errors"):
        errors_log([error])
    (record,) = [r for r in caplog.records if r.name == "schema.errors"]
    assert record.levelname == "ERROR" and record.exc_info is not None and record.exc_info[1] is LEAKY
