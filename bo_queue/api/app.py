"""The FastAPI app: `create_app(settings)`, run by `bo-queue api` (uvicorn, as a factory).

Every error comes back as JSON `{"error": type, "detail": message}`, never with a
traceback: bo_queue's errors map to 4xx/503 (see STATUS), request validation to 422, a
body over `max_payload_bytes` + BODY_MARGIN to 413, and anything unexpected to a generic
500 whose traceback is logged here, on the server, under an incident id.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bo_queue.api import agents, dashboard, graphs, ops, studies, tasks, webhooks, workflows
from bo_queue.api.deps import Namespaces
from bo_queue.config import Settings
from bo_queue.errors import (
    AgentError,
    BOQueueError,
    BrokerUnavailableError,
    DependencyError,
    InvalidTransitionError,
    ReplicaAckError,
    ReportConflictError,
    ResultTimeoutError,
    StudyNotFoundError,
    TaskCancelledError,
    TaskExpiredError,
    TaskFailedError,
    TrialNotFoundError,
    UnknownTaskError,
    ValidationError,
    WebhookNotFoundError,
    WorkflowError,
    WorkflowNotFoundError,
    WorkflowTimeoutError,
)

log = logging.getLogger(__name__)

# Room for the rest of a request around a payload of max_payload_bytes (the handler name,
# tags, options, JSON punctuation).
BODY_MARGIN = 64 * 1024

# The first matching class wins (so subclasses come before their bases).
STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (ValidationError, 422),  # UnknownHandlerError, InvalidResultError too
    (UnknownTaskError, 404),
    (StudyNotFoundError, 404),
    (TrialNotFoundError, 404),
    (WorkflowNotFoundError, 404),
    (WebhookNotFoundError, 404),
    (WorkflowTimeoutError, 504),
    (WorkflowError, 409),  # a run's status does not allow it (pause an ended run)
    (InvalidTransitionError, 409),
    (ReportConflictError, 409),
    (DependencyError, 409),
    (AgentError, 409),  # NotHeldError: the agent does not hold the task
    (BrokerUnavailableError, 503),
    # How a task ended, from GET /tasks/{id}/result (TaskTimeoutError, past its time
    # limit, is a TaskFailedError), and a suggest whose wait gave up:
    (TaskFailedError, 409),
    (TaskCancelledError, 410),
    (TaskExpiredError, 410),
    (ResultTimeoutError, 504),
    (BOQueueError, 400),
)


def status_of(exc: BaseException) -> int:
    for kind, code in STATUS:
        if isinstance(exc, kind):
            return code
    return 500


def error(status: int, kind: str, detail: str, headers: dict[str, str] | None = None
          ) -> JSONResponse:
    return JSONResponse({"error": kind, "detail": detail}, status_code=status, headers=headers)


def _status_name(code: int) -> str:
    if code == 413:
        return "PayloadTooLarge"
    try:
        return HTTPStatus(code).phrase.replace(" ", "").replace("-", "")
    except ValueError:
        return "HTTPError"


async def _bo_queue_error(request: Request, exc: Exception) -> JSONResponse:
    status = status_of(exc)
    if isinstance(exc, TaskFailedError):  # the remote type and message, not its traceback
        return error(status, type(exc).__name__, f"{exc.remote_type}: {exc.remote_message}")
    if isinstance(exc, BrokerUnavailableError) and not isinstance(exc, ReplicaAckError):
        return await _redis_error(request, exc)  # where Redis is stays in the server's log
    return error(status, type(exc).__name__, str(exc))


def _redact_keys(record: logging.LogRecord) -> bool:
    """Keep dashboard keys (`?key=`) out of uvicorn's access log."""
    if isinstance(record.args, tuple):
        record.args = tuple(
            re.sub(r"([?&]key=)[^&\s]*", r"\1***", a) if isinstance(a, str) else a
            for a in record.args
        )
    return True


async def _redis_error(request: Request, exc: Exception) -> JSONResponse:
    log.warning("%s %s: Redis error: %s", request.method, request.url.path, exc)
    return error(503, "BrokerUnavailableError", "Redis is unavailable; try again shortly")


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    return error(exc.status_code, _status_name(exc.status_code), detail,
                 dict(exc.headers) if exc.headers else None)


async def _request_invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err.get("loc", ()))
        # pydantic says "Value error, <message>" for a validator's ValueError (bo_queue's
        # ValidationError): the message alone is what the caller needs
        message = str(err.get("msg", "invalid")).replace("Value error, ", "")
        problems.append(f"{where}: {message}" if where else message)
    return error(422, "ValidationError", "; ".join(problems) or "invalid request")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    incident = uuid.uuid4().hex[:12]
    log.error("%s %s failed (incident %s)", request.method, request.url.path, incident,
              exc_info=exc)
    return error(500, "InternalError",
                 f"an internal error occurred (incident {incident}); the server log has it")


class BodyLimit:
    """Reject request bodies over `limit` bytes with 413: at once from Content-Length, or
    while reading, for a body sent without one (chunked) or longer than it said."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"the request body is over the limit of {self.limit} bytes"
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.limit:
                    await error(413, "PayloadTooLarge", too_large,
                                {"Connection": "close"})(scope, receive, send)
                    return
        read = 0

        async def limited() -> Message:
            nonlocal read
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > self.limit:
                    # raised into the endpoint's body read; the HTTPException handler answers
                    raise StarletteHTTPException(413, too_large, {"Connection": "close"})
            return message

        await self.app(scope, limited, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API for `settings` (default: from BO_QUEUE_* variables). Each request acts in
    the namespace its API key maps to."""
    settings = settings or Settings.load()
    namespaces = Namespaces(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await namespaces.aclose()  # on the loop whose connections they are
        namespaces.close()

    app = FastAPI(
        title="bo_queue",
        version="0.1.0",
        summary="Tasks, Bayesian-optimization studies, schedules and monitoring over HTTP.",
        description=(
            "Send an API key in `X-API-Key` (or `Authorization: Bearer <key>`); it maps "
            "to one namespace, and every call sees only that namespace's tasks, studies "
            "and schedules (another namespace's ids are 404). Create keys with "
            "`bo-queue api-key create NAMESPACE`. Errors are JSON "
            '`{"error": type, "detail": message}`.'
        ),
        lifespan=lifespan,
    )
    logging.getLogger("uvicorn.access").addFilter(_redact_keys)
    app.state.namespaces = namespaces
    app.state.settings = settings
    app.add_middleware(BodyLimit, limit=settings.max_payload_bytes + BODY_MARGIN)
    app.add_exception_handler(BOQueueError, _bo_queue_error)
    app.add_exception_handler(redis.RedisError, _redis_error)  # also READONLY, OOM, LOADING
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _request_invalid)
    app.add_exception_handler(Exception, _unexpected)
    for router in (tasks.router, studies.router, agents.router, ops.schedules, ops.monitor,
                   ops.namespace, ops.health, dashboard.router, webhooks.router,
                   workflows.router, graphs.router):
        app.include_router(router)
    return app
