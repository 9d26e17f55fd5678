"""A small app with only the study dashboard routes, for the browser test to serve with
`python -m uvicorn tests.integration.dashboard_app:create --factory --port P`
(settings from BO_QUEUE_* variables, as the full API takes them)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from bo_queue.api.dashboard import router
from bo_queue.api.deps import Namespaces
from bo_queue.config import Settings


def create() -> FastAPI:
    namespaces = Namespaces(Settings.load())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        namespaces.close()

    app = FastAPI(title="bo_queue dashboard (test)", lifespan=lifespan)
    app.state.namespaces = namespaces
    app.include_router(router)
    return app
