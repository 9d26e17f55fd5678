"""The Celery app a worker runs: `celery -A workers.app worker` (what `bo-queue worker` runs).

Settings come from BO_QUEUE_* variables; every module in BO_QUEUE_IMPORTS is imported and
each handler it declares becomes a task this worker runs.
"""

from __future__ import annotations

import importlib
import math
import os

from celery import Celery

from bo_queue.client import BOQueue
from bo_queue.config import Settings
from bo_queue.errors import ConfigurationError
from bo_queue.monitor.logs import install_json_logging
from workers import lifecycle, security
from workers.runner import bind_handlers

BUILTIN_MODULES = (
    "workers.builtin",
    "workers.study_step",
    "workers.objectives",
    "workers.maintenance",
    "workers.workflows",
)


def create_worker_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.load()
    bq = BOQueue(settings=settings, ride_out_outages_s=settings.worker_outage_s)
    # Celery's result writes wait out an outage too, rather than fail the task they report
    bq.app.conf.update(
        result_backend_always_retry=True,
        result_backend_max_retries=math.ceil(settings.worker_outage_s) + 5,
        result_backend_max_sleep_between_retries_ms=1000,
    )
    if bq.settings.log_json:  # before Celery sets up logging (a worker, when it starts)
        install_json_logging()
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # before torch is imported
        os.environ.setdefault(variable, str(bq.settings.torch_threads))
    for module in [*BUILTIN_MODULES, *bq.settings.imports]:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigurationError(f"cannot import handler module {module!r}: {exc}") from exc
    bind_handlers(bq.app, bq)
    security.harden(bq.app)  # no Celery built-ins; unreadable messages dropped
    lifecycle.install(bq.app, bq)
    return bq.app


app = create_worker_app()
