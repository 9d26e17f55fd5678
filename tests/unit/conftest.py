"""Shared fixtures for the unit tests: no Redis server, no workers, no Celery eager mode.

Every BOQueue built here points at a closed port and has its Redis client replaced by
fakeredis before anything is read or written.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import fakeredis
import pytest

from bo_queue import BOQueue

from .fakes import fake_bq


@pytest.fixture(autouse=True)
def _clean_bo_queue_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The session may export BO_QUEUE_* for the integration tests; unit tests start clean."""
    for name in list(os.environ):
        if name.startswith("BO_QUEUE_"):
            monkeypatch.delenv(name)


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def fake(server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    """A text client, as BOQueue's own (decode_responses=True)."""
    return fakeredis.FakeRedis(server=server, decode_responses=True)


@pytest.fixture
def bq(server: fakeredis.FakeServer) -> Iterator[BOQueue]:
    queue = fake_bq(server)
    yield queue
    queue.close()
