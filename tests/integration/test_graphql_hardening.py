"""What a GraphQL document may do: limits, introspection and suggestions, masked errors.

Introspection and "Did you mean ...?" suggestions are for GraphiQL users: with `GRAPHIQL` off the
schema is not handed out, over HTTP or websockets.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets
from graphql import get_introspection_query

from tests.support.client import error_codes, graphql

INTROSPECTION = get_introspection_query(
    descriptions=True, specified_by_url=True, directive_is_repeatable=True, input_value_deprecation=True
)
TYPO_FIELD = "{ uploadz(first: 1) { totalCount } }"
TYPO_ENUM_VARIABLE = ("query($s: UploadStatus) { uploads(status: $s) { totalCount } }", {"s": "COMPLETE"})
TYPO_ENUM_LITERAL = "{ uploads(status: COMPLETE) { totalCount } }"
TYPO_ARGUMENT = "{ uploads(frist: 1) { totalCount } }"


def _messages(response: Any) -> list[str]:
    return [e["message"] for e in response.json().get("errors") or []]


def _ws_first_answer(ws_url: str, token: str, query: str) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        async with websockets.connect(ws_url, subprotocols=["graphql-transport-ws"]) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query}}))
            return json.loads(await asyncio.wait_for(ws.recv(), 10))

    return asyncio.run(run())


def test_with_graphiql_on_introspection_works_and_suggestions_help(stack, api_user) -> None:
    response = graphql(stack.url, INTROSPECTION, headers=api_user.headers)
    assert response.status_code == 200 and not response.json().get("errors"), response.json()
    assert response.json()["data"]["__schema"]["queryType"]["name"] == "Query"
    typo = graphql(stack.url, TYPO_FIELD, headers=api_user.headers)
    assert error_codes(typo) == ["GRAPHQL_VALIDATION_FAILED"]
    assert "Did you mean" in _messages(typo)[0]


def test_with_graphiql_off_introspection_is_refused_and_suggestions_are_hidden(make_stack, api_user) -> None:
    closed = make_stack(env={"GRAPHIQL": "false"}, workers=0)
    response = graphql(closed.url, INTROSPECTION, headers=api_user.headers)
    assert error_codes(response) and set(error_codes(response)) == {"GRAPHQL_VALIDATION_FAILED"}
    assert "introspection" in _messages(response)[0].lower()
    assert response.json().get("data") is None
    type_query = graphql(closed.url, '{ __type(name: "FileUpload") { fields { name } } }', headers=api_user.headers)
    assert set(error_codes(type_query)) == {"GRAPHQL_VALIDATION_FAILED"}
    # __typename is not introspection of the schema: clients rely on it.
    assert graphql(closed.url, "{ __typename }", headers=api_user.headers).json() == {"data": {"__typename": "Query"}}

    for query, variables, code in [
        (TYPO_FIELD, None, "GRAPHQL_VALIDATION_FAILED"),
        (TYPO_ARGUMENT, None, "GRAPHQL_VALIDATION_FAILED"),
        (TYPO_ENUM_LITERAL, None, "GRAPHQL_VALIDATION_FAILED"),
        (*TYPO_ENUM_VARIABLE, "BAD_USER_INPUT"),
    ]:
        answer = graphql(closed.url, query, variables, headers=api_user.headers)
        assert error_codes(answer) == [code], answer.json()
        assert not any("Did you mean" in m for m in _messages(answer)), answer.json()

    over_ws = _ws_first_answer(closed.ws_url, api_user.token, 'subscription { uploadProgres(id: "x") { status } }')
    assert over_ws["type"] == "error", over_ws
    assert [e["extensions"]["code"] for e in over_ws["payload"]] == ["GRAPHQL_VALIDATION_FAILED"]
    assert not any("Did you mean" in e["message"] for e in over_ws["payload"]), over_ws


@pytest.mark.parametrize(
    ("query", "limit"),
    [
        ("{ " + "a { " * 11 + "b" + " }" * 11 + " }", "depth"),
        ("{ " + " ".join(f"x{i}: __typename" for i in range(16)) + " }", "aliases"),
        ("{ " + "__typename " * 2001 + "}", "tokens"),
    ],
    ids=["depth-11", "aliases-16", "tokens-2001"],
)
def test_documents_over_a_limit_are_query_too_complex_over_http_and_websockets(stack, api_user, query, limit) -> None:
    assert error_codes(graphql(stack.url, query, headers=api_user.headers)) == ["QUERY_TOO_COMPLEX"]
    over_ws = _ws_first_answer(stack.ws_url, api_user.token, "subscription " + query)
    assert over_ws["type"] == "error", over_ws
    assert [e["extensions"]["code"] for e in over_ws["payload"]] == ["QUERY_TOO_COMPLEX"], over_ws


def test_documents_at_the_limits_are_accepted(stack, api_user) -> None:
    at_aliases = "{ " + " ".join(f"x{i}: __typename" for i in range(15)) + " }"
    assert graphql(stack.url, at_aliases, headers=api_user.headers).json()["data"]["x14"] == "Query"
    deepest = "{ uploads(first: 1) { edges { node { id } } pageInfo { hasNextPage } } }"
    assert not graphql(stack.url, deepest, headers=api_user.headers).json().get("errors")


def test_limits_are_settings(make_stack, api_user) -> None:
    strict = make_stack(
        env={"GRAPHQL_MAX_DEPTH": "2", "GRAPHQL_MAX_ALIASES": "1", "GRAPHQL_MAX_TOKENS": "30"}, workers=0
    )
    deep = "{ uploads(first: 1) { edges { node { id } } } }"
    assert error_codes(graphql(strict.url, deep, headers=api_user.headers)) == ["QUERY_TOO_COMPLEX"]
    assert error_codes(graphql(strict.url, "{ a: __typename b: __typename }", headers=api_user.headers)) == [
        "QUERY_TOO_COMPLEX"
    ]
    assert error_codes(graphql(strict.url, "{ " + "__typename " * 31 + "}", headers=api_user.headers)) == [
        "QUERY_TOO_COMPLEX"
    ]
    assert graphql(strict.url, "{ uploads(first: 1) { totalCount } }", headers=api_user.headers).json()["data"]
