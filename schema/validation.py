"""Query limits and validation policy: what a document must pass before anything resolves.

Depth and alias limits are strawberry's own rules (`QueryDepthLimiter`, `MaxAliasesLimiter`), run
first and alone so that their errors, and only theirs, carry `QUERY_TOO_COMPLEX`. The token limit
is graphql-core's parser option (what strawberry's `MaxTokensLimiter` sets). Introspection is refused
and graphql-core's "Did you mean ...?" suggestions are hidden (its `hide_suggestions`, at validation
and at execution) unless GraphiQL is on: a public endpoint should not hand out its schema.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

from graphql import ASTValidationRule, DocumentNode, GraphQLError, NoSchemaIntrospectionCustomRule, parse, validate
from strawberry.extensions import MaxAliasesLimiter, QueryDepthLimiter, SchemaExtension
from strawberry.schema.validation_rules.maybe_null import MaybeNullValidationRule
from strawberry.schema.validation_rules.one_of import OneOfInputValidationRule

from schema.fanout import FanoutExecutor

QUERY_TOO_COMPLEX = "QUERY_TOO_COMPLEX"
# Documents kept parsed: thousands of subscribers sending one subscription share one tree (about
# 11 KiB each, held for the subscription's life) instead of parsing it again each.
PARSED_DOCUMENTS = 256
# Documents that passed validation, by everything validation depends on. Clients send the same few
# documents over and over (a direct upload confirms each part with one) and graphql-core's rules
# cost more than executing such a mutation: measured, a fifth of the server's CPU per request.
# Only passes are kept, so a refused document is validated (and refused) every time.
_validated: dict[tuple[Any, ...], None] = {}


@lru_cache(maxsize=PARSED_DOCUMENTS)
def _parsed(query: str, max_tokens: int) -> DocumentNode:
    # graphql-core never changes a document while it validates or executes it (strawberry's
    # ParserCache shares them the same way). A document that does not parse raises: not cached.
    return parse(query, max_tokens=max_tokens)


@lru_cache(maxsize=8)
def _limit_rules(max_depth: int, max_aliases: int) -> tuple[type[ASTValidationRule], ...]:
    # strawberry's limiters build their rule classes anew on each call: once per setting here.
    return (
        *QueryDepthLimiter(max_depth=max_depth).validation_rules,
        *MaxAliasesLimiter(max_alias_count=max_aliases).validation_rules,
    )


def _too_many_tokens_message(max_tokens: int) -> str:
    # graphql-core's wording (graphql/language/parser.py) for a document over `max_tokens`.
    return f"Syntax Error: Document contains more than {max_tokens} tokens. Parsing aborted."


class QueryLimits(SchemaExtension):
    """Parses with a token limit and validates with the limits first, then the spec's rules.

    A document over a limit answers `QUERY_TOO_COMPLEX` and is not validated further, so an
    oversized document costs no more than the limit checks. Runs the validation itself (strawberry
    skips its own when an extension has set `pre_execution_errors`, as its `ValidationCache` does).
    """

    def __init__(self, *, max_depth: int, max_aliases: int, max_tokens: int, public_schema: bool) -> None:
        self.max_tokens = max_tokens
        self.public_schema = public_schema
        self.limit_rules = _limit_rules(max_depth, max_aliases)

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        context.parse_options["max_tokens"] = self.max_tokens
        if context.query and context.graphql_document is None:
            # A document that does not parse (or nests too deeply to) is left to strawberry, which
            # parses it again and reports it as usual (marked below when over the token limit).
            with contextlib.suppress(Exception):
                context.graphql_document = _parsed(context.query, self.max_tokens)
        yield
        # The parse error is already in the result being built: mark it in place.
        for error in self.execution_context.pre_execution_errors or []:
            if error.message == _too_many_tokens_message(self.max_tokens):
                error.extensions = {**(error.extensions or {}), "code": QUERY_TOO_COMPLEX}

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        schema = context.schema._schema
        document = context.graphql_document
        assert document is not None
        key = (id(schema), context.query, self.public_schema, self.limit_rules, tuple(context.validation_rules))
        if context.query and key in _validated:
            context.pre_execution_errors = []
            yield
            return
        errors = validate(schema, document, self.limit_rules)
        if errors:
            context.pre_execution_errors = [_with_code(error, QUERY_TOO_COMPLEX) for error in errors]
        else:
            rules = (*context.validation_rules, MaybeNullValidationRule, OneOfInputValidationRule)
            if not self.public_schema:
                rules = (*rules, NoSchemaIntrospectionCustomRule)
            context.pre_execution_errors = validate(schema, document, rules, hide_suggestions=not self.public_schema)
            if not context.pre_execution_errors and context.query:
                _validated_add(key)
        yield


def _validated_add(key: tuple[Any, ...]) -> None:
    if len(_validated) >= PARSED_DOCUMENTS:
        # The oldest pass goes (dicts keep insertion order); a pop another thread won is fine.
        oldest = next(iter(_validated), None)
        if oldest is not None:
            _validated.pop(oldest, None)
    _validated[key] = None


class SuggestionFreeExecutor(FanoutExecutor):
    """The executor (schema/fanout.py) with suggestions hidden in request errors (e.g. an unknown enum value
    in the variables), for schemas that are not public."""

    @classmethod
    def build(cls, *args: Any, **kwargs: Any) -> Any:
        kwargs["hide_suggestions"] = True
        return super().build(*args, **kwargs)


def json_decode(data: str | bytes, *, object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None) -> Any:
    """`json.loads` for untrusted input: a document nested too deeply for the interpreter's stack,
    or bytes that are not UTF-8, are a JSON error (strawberry answers 400 over HTTP and closes a
    websocket with 4400), not a crash."""
    try:
        return json.loads(data, object_pairs_hook=object_pairs_hook)
    except RecursionError as exc:
        raise json.JSONDecodeError("JSON nested too deeply", _text(data), 0) from exc
    except UnicodeDecodeError as exc:
        raise json.JSONDecodeError("JSON is not UTF-8", _text(data), exc.start) from exc


def _text(data: str | bytes) -> str:
    return data.decode("utf-8", "replace")[:100] if isinstance(data, bytes) else data[:100]


def _with_code(error: GraphQLError, code: str) -> GraphQLError:
    error.extensions = {**(error.extensions or {}), "code": code}
    return error
