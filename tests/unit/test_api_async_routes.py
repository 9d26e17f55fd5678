"""The hot task routes are served on the loop: each endpoint, and every dependency FastAPI
solves for it, is a coroutine function, so none of them runs in the thread pool. The
async facades are made on the loop that serves and closed with it."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from bo_queue.api import tasks
from bo_queue.api.app import create_app
from bo_queue.api.deps import Namespaces
from bo_queue.config import Settings

from .fakes import UNREACHABLE_URL

with warnings.catch_warnings():  # Starlette >= 1.x asks for httpx2 over httpx; either works
    warnings.filterwarnings("ignore", message=".*httpx.*starlette.testclient")
    from fastapi.testclient import TestClient

ON_THE_LOOP = {("POST", "/tasks"), ("POST", "/tasks/batch"), ("GET", "/tasks/{task_id}"),
               ("GET", "/tasks/{task_id}/result")}


def _routes() -> dict[tuple[str, str], APIRoute]:
    """The tasks router's routes; the app includes it adding no dependencies of its own."""
    app = create_app(Settings.load(redis_url=UNREACHABLE_URL, namespace="unit"))
    assert app.router.dependencies == [] and tasks.router.dependencies == []
    return {(method, route.path): route for route in tasks.router.routes
            if isinstance(route, APIRoute) for method in route.methods}


def _is_coroutine(call: Any) -> bool:
    """A coroutine function, or an instance whose __call__ is one (APIKeyHeader)."""
    return inspect.iscoroutinefunction(call) or (
        not inspect.isroutine(call) and inspect.iscoroutinefunction(type(call).__call__))


def _sync_calls(dependant: Dependant) -> list[str]:
    """What of the endpoint and its dependencies, to any depth, FastAPI would run in its
    thread pool."""
    own = [] if dependant.call is None or _is_coroutine(dependant.call) else [
        getattr(dependant.call, "__qualname__", repr(dependant.call))]
    return own + [name for sub in dependant.dependencies for name in _sync_calls(sub)]


def test_the_hot_task_routes_and_their_dependencies_are_coroutines() -> None:
    routes = _routes()
    for key in ON_THE_LOOP:
        route = routes[key]
        assert inspect.iscoroutinefunction(route.endpoint), key
        assert route.dependant.dependencies, key  # the key lookup is among them
        assert _sync_calls(route.dependant) == [], key


def test_the_check_finds_a_sync_route() -> None:
    # Cancel stays on the sync facade: its endpoint and its caller are both found.
    found = _sync_calls(_routes()[("POST", "/tasks/{task_id}/cancel")].dependant)
    assert found == ["cancel", "caller"]


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    spaces = Namespaces(Settings.load(redis_url=UNREACHABLE_URL, namespace="unit"))
    yield spaces
    spaces.close()


def test_an_async_facade_per_namespace_per_loop_over_the_sync_one(
    namespaces: Namespaces,
) -> None:
    app = create_app(Settings.load(redis_url=UNREACHABLE_URL, namespace="unit"))

    async def facades() -> tuple[Any, ...]:
        one, again, other = namespaces.aget("a"), namespaces.aget("a"), namespaces.aget("b")
        return one, again, other, namespaces.async_keys().redis

    with TestClient(app) as client:
        one, again, other, keys_client = client.portal.call(facades)
        assert one is again and one is not other
        assert one.sync is namespaces.get("a") and other.sync is namespaces.get("b")
        assert keys_client is not one.redis
        client.portal.call(namespaces.aclose)
    with TestClient(app) as client:  # a new loop: new asyncio clients, the same BOQueue
        fresh, _, _, _ = client.portal.call(facades)
        assert fresh is not one and fresh.sync is one.sync
        client.portal.call(namespaces.aclose)
        assert client.portal.call(facades)[0] is not fresh
        client.portal.call(namespaces.aclose)
