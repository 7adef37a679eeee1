"""The real tus clients from npm need node and `make js-deps`: without them this suite fails loudly."""

from __future__ import annotations

import pytest

from tests.support.tusjs import node_ready


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    problem = node_ready()
    if problem is not None:
        raise pytest.UsageError(f"tests/clients needs tus-js-client: {problem}")
