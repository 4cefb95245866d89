"""Fixtures of the reliability tests: the in-process read API of the integration tests, and a Redis
of the module's own for tests that leave state behind (the suite's shared Redis stays clean)."""

from collections.abc import Iterator

import pytest

from service.embedded import start_redis
from tests.integration.conftest import api

__all__ = ["api", "own_redis_url"]


@pytest.fixture(scope="module")
def own_redis_url() -> Iterator[str]:
    with start_redis() as server:
        yield server.url
