"""Fixtures the HTTP API tests share: a real `bo-queue api` process for the module's
cluster (the `cluster` fixture of tests/conftest.py, configured by the module's CLUSTER),
and a client holding an API key of the cluster's namespace. A module's API_ENV adds
settings of the API's own."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import redis

from bo_queue.api.keys import ApiKeys
from tests.conftest import Cluster
from tests.integration.api_server import ApiServer, running_api


@pytest.fixture(scope="module")
def api(request: pytest.FixtureRequest, redis_url: str, cluster: Cluster) -> Iterator[ApiServer]:
    with running_api(redis_url, cluster.namespace, **getattr(request.module, "API_ENV", {})) as s:
        yield s


@pytest.fixture(scope="module")
def keys(redis_url: str) -> Iterator[ApiKeys]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield ApiKeys(client)
    client.close()


@pytest.fixture(scope="module")
def client(api: ApiServer, cluster: Cluster, keys: ApiKeys) -> Iterator[httpx.Client]:
    """A producer of the cluster's namespace, through the API."""
    key = keys.create(cluster.namespace, name="producer")
    with httpx.Client(base_url=api.url, headers={"X-API-Key": key}, timeout=90) as c:
        yield c
