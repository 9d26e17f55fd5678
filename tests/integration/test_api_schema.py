"""Schemathesis against a running `bo-queue api`: requests generated from its own
/openapi.json, with a valid API key, never get a 5xx, and every error is the documented
{"error", "detail"} body without a traceback.

The schema is built when the module is collected, from `create_app()` in this process
(schemathesis's lazy `from_fixture` loader does not work on pytest 9: it sets a node
attribute pytest no longer has), and `test_served_schema_is_the_one_tested` checks that the
running server serves exactly that document. The cases are sent to the running server.

Every operation is exercised (at most MAX_EXAMPLES generated cases each, plus the
schema's examples). None blocks for long here: the generated study ids and task ids do
not exist in the test's namespace, so suggest (which waits for a worker) and run are 404
at once, and unknown handlers are 422 before anything is queued. The one 5xx that is
correct is GET /health's 503, with a HealthReport body, when a check fails (this
namespace runs no workers and no beat, so it always does); it is checked as such.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import hypothesis
import pytest
import redis
import schemathesis
from schemathesis.checks import not_a_server_error

from bo_queue.api.app import create_app
from bo_queue.api.keys import ApiKeys
from bo_queue.config import Settings
from bo_queue.monitor.health import HealthReport
from tests.conftest import new_namespace
from tests.integration.api_server import ApiServer, running_api

MAX_EXAMPLES = 15


@pytest.fixture(scope="module")
def api_server(redis_url: str) -> Iterator[ApiServer]:
    with running_api(redis_url, new_namespace()) as server:
        yield server


@pytest.fixture(scope="module")
def api_key(redis_url: str, api_server: ApiServer) -> str:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return ApiKeys(client).create(api_server.namespace, name="schemathesis")
    finally:
        client.close()


def _openapi() -> dict[str, Any]:
    settings = Settings.load(redis_url="redis://127.0.0.1:1/0", namespace="schema")
    document: dict[str, Any] = create_app(settings).openapi()  # connects to nothing
    return document


OPENAPI = _openapi()
schema = schemathesis.openapi.from_dict(OPENAPI)


def test_served_schema_is_the_one_tested(api_server: ApiServer) -> None:
    assert httpx.get(api_server.url + "/openapi.json").json() == OPENAPI


@pytest.mark.timeout(300)
@schema.parametrize()
@hypothesis.settings(
    max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_no_server_errors(case: schemathesis.Case, api_server: ApiServer, api_key: str
                          ) -> None:
    response = case.call(base_url=api_server.url, headers={"X-API-Key": api_key}, timeout=30)
    if case.operation.path == "/health" and response.status_code == 503:
        assert not HealthReport.model_validate(response.json()).ok
        return
    case.validate_response(response, checks=[not_a_server_error])
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error", "detail"}, body
        assert "Traceback" not in response.text and 'File "' not in response.text
