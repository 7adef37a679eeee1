"""The GraphQL schema of CONTRACT section 2."""

from __future__ import annotations

import strawberry

from schema.errors import ErrorCodes
from schema.mutations import Mutation
from schema.queries import Query
from schema.subscriptions import Subscription

schema = strawberry.Schema(query=Query, mutation=Mutation, subscription=Subscription, extensions=[ErrorCodes])
