"""How the HTTP API answers errors (bo_queue.api.app), in process with httpx's ASGI
transport: bo_queue's errors map to their status codes, request validation is 422, the
body limit is 413, and anything unexpected is a generic 500 whose traceback goes only to
the server log. (tests/integration/test_api.py covers the same against a real server.)"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from bo_queue import BOQueue
from bo_queue.api.app import BODY_MARGIN, create_app, status_of
from bo_queue.config import Settings
from bo_queue.errors import (
    BOQueueError,
    BrokerUnavailableError,
    ConfigurationError,
    DependencyError,
    InvalidResultError,
    InvalidTransitionError,
    ReplicaAckError,
    ReportConflictError,
    ResultTimeoutError,
    StudyError,
    StudyNotFoundError,
    TaskCancelledError,
    TaskExpiredError,
    TaskFailedError,
    TaskTimeoutError,
    TrialNotFoundError,
    UnknownHandlerError,
    UnknownTaskError,
    ValidationError,
    WorkflowError,
    WorkflowNotFoundError,
    WorkflowTimeoutError,
)

from .fakes import UNREACHABLE_URL

ERRORS: list[tuple[BaseException, int]] = [
    (ValidationError("bad input"), 422),
    (UnknownHandlerError("x.y", ["a.b"]), 422),
    (InvalidResultError("not JSON"), 422),
    (UnknownTaskError("t1"), 404),
    (StudyNotFoundError("s1"), 404),
    (TrialNotFoundError("s1", 3), 404),
    (WorkflowNotFoundError("w1"), 404),
    (InvalidTransitionError("CREATED to PAUSED"), 409),
    (ReportConflictError("different values"), 409),
    (DependencyError("a -> b -> a"), 409),
    (BrokerUnavailableError("Redis is down"), 503),
    (ReplicaAckError(0, 1, 1.0), 503),  # says how many replicas, never where Redis is
    (TaskFailedError("t1", "ValueError", "boom", 'Traceback ...\n  File "h.py"'), 409),
    (TaskCancelledError("t1"), 410),
    (TaskExpiredError("t1", "expired"), 410),
    (TaskTimeoutError("t1", "task t1 ran past its time limit of 1 s"), 409),
    (ResultTimeoutError("t1", 2.0), 504),
    (StudyError("paused"), 400),
    (WorkflowError("has ended; cannot pause it"), 409),
    (WorkflowTimeoutError("still RUNNING after 1 s"), 504),
    (ConfigurationError("nope"), 400),
    (BOQueueError("other"), 400),
    (RuntimeError("a bug"), 500),
]


class Body(BaseModel):
    size: int


@pytest.fixture
def app() -> FastAPI:
    app = create_app(Settings.load(redis_url=UNREACHABLE_URL, namespace="unit",
                                   max_payload_bytes=1000))

    @app.get("/raise/{index}")
    def raiser(index: int) -> None:
        raise ERRORS[index][0]

    @app.post("/echo")
    def echo(body: Body) -> Body:
        return body

    return app


def call(app: FastAPI, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


@pytest.mark.parametrize(("index", "expected"), [(i, code) for i, (_, code) in enumerate(ERRORS)])
def test_errors_map_to_statuses_and_json_bodies(
    app: FastAPI, index: int, expected: int, caplog: pytest.LogCaptureFixture
) -> None:
    exc = ERRORS[index][0]
    assert status_of(exc) == expected
    with caplog.at_level(logging.ERROR, logger="bo_queue.api.app"):
        response = call(app, "GET", f"/raise/{index}")
    assert response.status_code == expected
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert "Traceback" not in response.text and 'File "' not in response.text
    if expected == 500:  # generic: the message could say anything about the server
        assert body["error"] == "InternalError" and "a bug" not in body["detail"]
        incident = body["detail"].split("incident ")[1].split(")")[0]
        assert any(incident in r.getMessage() and r.exc_info for r in caplog.records)
    elif isinstance(exc, TaskTimeoutError):  # a failure that says why
        assert body == {"error": "TaskTimeoutError", "detail": "bo_queue.errors."
                        "TaskTimeoutError: task t1 ran past its time limit of 1 s"}
    elif isinstance(exc, TaskFailedError):
        assert body == {"error": "TaskFailedError", "detail": "ValueError: boom"}
    elif isinstance(exc, ReplicaAckError):
        assert body == {"error": "ReplicaAckError", "detail": str(exc)}
        assert "0 of the 1 required replica(s)" in body["detail"]
    elif isinstance(exc, BrokerUnavailableError):  # where Redis is (its URL) stays private
        assert body == {"error": "BrokerUnavailableError",
                        "detail": "Redis is unavailable; try again shortly"}
    else:
        assert body == {"error": type(exc).__name__, "detail": str(exc)}


def test_request_validation_is_422_json(app: FastAPI) -> None:
    response = call(app, "POST", "/echo", json={"size": "big"})
    assert response.status_code == 422
    assert response.json()["error"] == "ValidationError"
    assert response.json()["detail"].startswith("body.size: ")
    response = call(app, "GET", "/raise/not-a-number")
    assert response.status_code == 422 and "path.index" in response.json()["detail"]


def test_bodies_over_the_limit_are_413(app: FastAPI) -> None:
    limit = 1000 + BODY_MARGIN
    ok = call(app, "POST", "/echo", content=b'{"size": 1}' + b" " * (limit - 20),
              headers={"Content-Type": "application/json"})
    assert ok.status_code == 200
    response = call(app, "POST", "/echo", content=b" " * (limit + 1))
    assert response.status_code == 413
    assert response.json() == {"error": "PayloadTooLarge",
                               "detail": f"the request body is over the limit of {limit} bytes"}


def test_unknown_routes_and_methods(app: FastAPI) -> None:
    assert call(app, "GET", "/nowhere").json() == {"error": "NotFound", "detail": "Not Found"}
    assert call(app, "PUT", "/echo").json()["error"] == "MethodNotAllowed"


def test_routes_need_a_key_but_health_does_not(app: FastAPI) -> None:
    schema = app.openapi()
    assert {"/tasks", "/studies", "/schedules", "/monitor/metrics", "/health"} <= set(
        schema["paths"])
    assert schema["paths"]["/tasks"]["post"]["security"] == [{"APIKeyHeader": []}]
    assert "security" not in schema["paths"]["/health"]["get"]
    assert "422" in schema["paths"]["/tasks"]["post"]["responses"]
    ref = schema["paths"]["/tasks"]["post"]["responses"]["422"]["content"]["application/json"]
    assert ref["schema"]["$ref"].endswith("/ErrorBody")  # not FastAPI's own 422 model


def test_a_redis_password_never_reaches_a_reply_or_a_message() -> None:
    from bo_queue.validation import redact

    assert redact("redis://:hunter2@db:6379/0") == "redis://:***@db:6379/0"
    assert redact("rediss://app:s3cret@db:6380/1") == "rediss://app:***@db:6380/1"
    assert redact("redis://db:6379/0") == "redis://db:6379/0"
    bq = BOQueue(redis_url="redis://:hunter2@127.0.0.1:1/0", connect_timeout_s=0.2)
    try:
        with pytest.raises(BrokerUnavailableError) as caught:
            bq.info("x")
        assert "hunter2" not in str(caught.value) and ":***@" in str(caught.value)
    finally:
        bq.close()
