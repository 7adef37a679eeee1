"""Validation is remembered for documents that passed it, never for ones that did not (schema/validation.py)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

import schema.validation as validation
from schema import schema


@pytest.fixture
def validations(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The documents graphql-core's `validate` is called on, in order (it still runs: a spy)."""
    seen: list[Any] = []
    real = validation.validate

    def spy(schema: Any, document: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(document)
        return real(schema, document, *args, **kwargs)

    monkeypatch.setattr(validation, "validate", spy)
    return seen


def _unique(query: str) -> str:
    # A text no other test has sent, so the process-wide caches start empty for it.
    return f"{query} # {uuid.uuid4().hex}"


def _codes(result: Any) -> list[str | None]:
    return [(error.extensions or {}).get("code") for error in result.errors or []]


def test_a_valid_document_is_validated_once(validations: list[Any]) -> None:
    query = _unique("query { __typename }")
    first = schema.execute_sync(query)
    assert first.errors is None and first.data == {"__typename": "Query"}
    assert len(validations) == 2  # the limits, then the spec's rules
    second = schema.execute_sync(query)
    assert second.errors is None and second.data == {"__typename": "Query"}
    assert len(validations) == 2


def test_an_invalid_document_is_validated_and_refused_every_time(validations: list[Any]) -> None:
    query = _unique("query { noSuchField }")
    for attempt in (1, 2):
        result = schema.execute_sync(query)
        assert result.errors and "noSuchField" in result.errors[0].message
        assert len(validations) == 2 * attempt


def test_a_document_over_a_limit_is_refused_every_time(validations: list[Any]) -> None:
    query = _unique("query { " + " ".join(f"a{n}: __typename" for n in range(100)) + " }")
    for _ in (1, 2):
        assert _codes(schema.execute_sync(query)) == ["QUERY_TOO_COMPLEX"]
