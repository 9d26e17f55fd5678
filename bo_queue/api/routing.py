"""What the routers share: the caller's BOQueue as a dependency (documented in OpenAPI as
an API-key scheme), its AsyncBOQueue for the routes served on the loop, and the error
responses each operation declares."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from bo_queue.aio import AsyncBOQueue
from bo_queue.api.deps import current_aq, current_bq, key_name
from bo_queue.api.models import ErrorBody
from bo_queue.client import BOQueue

_TEXTS = {
    400: "a request the facade refuses (BOQueueError)",
    401: "no API key, or one that is not valid",
    404: "no such task, study, trial, schedule or workflow run in the caller's namespace",
    409: "a conflict: a study's or workflow run's status, a different result, a "
         "dependency, an agent that does not hold the task",
    410: "the task was cancelled or expired: it has no result",
    413: "the request body is over the limit",
    422: "invalid input (ValidationError, UnknownHandlerError, request validation)",
    503: "Redis cannot be reached",
    504: "the wait timed out (the work may still finish)",
}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text} for code, text in _TEXTS.items()
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: ERROR_RESPONSES[code] for code in codes}


_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False,
    description="An API key (`bo-queue api-key create NAMESPACE`); `Authorization: Bearer` "
                "works too.",
)


def caller(request: Request, _key: Annotated[str | None, Security(_key_header)]) -> BOQueue:
    """The BOQueue of the namespace the request's API key maps to (401 without one)."""
    return current_bq(request)


Caller = Annotated[BOQueue, Depends(caller)]


# The same, for `async def` routes: every dependency here is a coroutine function, so
# FastAPI runs none of them in its thread pool and the request never leaves the loop.
async def async_caller(request: Request, _key: Annotated[str | None, Security(_key_header)]
                       ) -> AsyncBOQueue:
    """The AsyncBOQueue of the namespace the request's API key maps to (401 without one)."""
    return await current_aq(request)


AsyncCaller = Annotated[AsyncBOQueue, Depends(async_caller)]


async def async_creator(request: Request, _aq: AsyncCaller) -> str | None:
    """The name of the caller's API key, recorded as a task's `created_by`. It depends on
    `async_caller` (run once per request), whose key lookup found the name."""
    return key_name(request)


AsyncCreator = Annotated[str | None, Depends(async_creator)]

# Every router that needs a key: 400/401/422/503 can come from any of its operations.
COMMON = responses(400, 401, 422, 503)
