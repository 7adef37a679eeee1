"""Validation of GraphQL documents (schema/validation.py): a document that passed is not validated again."""

from __future__ import annotations

import pytest

import schema.validation as validation
from schema import schema


@pytest.fixture
def validations(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every graphql-core `validate` call QueryLimits makes, recorded (the rules still run)."""
    calls: list[object] = []
    real = validation.validate

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(validation, "validate", counted)
    validation._validated.clear()
    return calls


def test_a_document_that_passed_is_not_validated_again(validations: list[object]) -> None:
    for _ in range(3):
        assert schema.execute_sync("query { __typename }").errors is None
    assert len(validations) == 2, "the limit rules and the spec's rules, once"


def test_a_refused_document_is_refused_every_time(validations: list[object]) -> None:
    for _ in range(2):
        (error,) = schema.execute_sync("query { noSuchField }").errors or []
        assert "noSuchField" in error.message
    nested = "query { " + "upload(id: 1) { " * 40 + "id" + " }" * 40 + " }"
    for _ in range(2):
        errors = schema.execute_sync(nested).errors or []
        assert errors and all(e.extensions == {"code": "QUERY_TOO_COMPLEX"} for e in errors)
    assert len(validations) == 6


def test_the_passes_kept_are_bounded(validations: list[object]) -> None:
    for n in range(validation.PARSED_DOCUMENTS + 10):
        assert schema.execute_sync(f"query Q{n} {{ __typename }}").errors is None
    assert len(validation._validated) == validation.PARSED_DOCUMENTS
