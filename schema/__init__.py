"""The GraphQL schema of CONTRACT section 2, with the query limits and error policy."""

from __future__ import annotations

from functools import partial

import strawberry
from django.conf import settings
from graphql import GraphQLError
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext

from schema.errors import ErrorCodes, errors_log
from schema.fanout import FanoutExecutor
from schema.mutations import Mutation
from schema.queries import Query
from schema.subscriptions import Subscription
from schema.types import SCALAR_MAP
from schema.validation import QueryLimits, SuggestionFreeExecutor


class UploadSchema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        """Strawberry's hook for logging a result's errors, before they are coded and masked."""
        errors_log(errors)


schema = UploadSchema(
    query=Query,
    mutation=Mutation,
    subscription=Subscription,
    extensions=[
        partial(
            QueryLimits,
            max_depth=settings.GRAPHQL_MAX_DEPTH,
            max_aliases=settings.GRAPHQL_MAX_ALIASES,
            max_tokens=settings.GRAPHQL_MAX_TOKENS,
            public_schema=settings.GRAPHIQL,
        ),
        ErrorCodes,
    ],
    execution_context_class=FanoutExecutor if settings.GRAPHIQL else SuggestionFreeExecutor,
    config=StrawberryConfig(scalar_map=SCALAR_MAP),
)
