"""Durable webhooks over HTTP: add, list and remove them, and read their dead letters
(bq.monitor.webhooks; the body is its WebhookSpec)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from bo_queue.api.routing import COMMON, Caller, responses
from bo_queue.monitor.webhooks import DeadLetter, WebhookInfo, WebhookSpec

router = APIRouter(prefix="/webhooks", tags=["monitor"], responses=COMMON)

WebhookId = Annotated[str, Path(description="a webhook's id", pattern=r"^[0-9a-f]{16}$")]


@router.get("", response_model=list[WebhookInfo], summary="List webhooks")
def list_webhooks(bq: Caller) -> list[WebhookInfo]:
    """Every webhook of the namespace, oldest first, secrets masked, with how many events
    are pending and how many it gave up on."""
    return bq.monitor.webhooks.list()


@router.post("", status_code=201, response_model=WebhookInfo, responses=responses(413),
             summary="Add a webhook")
def add_webhook(bq: Caller, body: WebhookSpec) -> WebhookInfo:
    """The workers POST every event after this one (of the kinds and states given) to
    `url`, signed with `secret` when given (`X-BoQueue-Signature: sha256=<hex>`), retrying
    `retries` times with a doubling backoff, then into the dead letters. A URL that is not
    http(s), an unknown kind or state, or a bound out of range is 422, and nothing is
    written."""
    return bq.monitor.webhooks.add_spec(body)


@router.delete("/{webhook_id}", status_code=204, response_class=Response,
               responses=responses(404), summary="Remove a webhook")
def remove_webhook(bq: Caller, webhook_id: WebhookId) -> Response:
    """With what it had pending and its dead letters."""
    bq.monitor.webhooks.remove(webhook_id)
    return Response(status_code=204)


@router.get("/{webhook_id}/dead-letters", response_model=list[DeadLetter],
            responses=responses(404), summary="The events a webhook gave up on")
def dead_letters(
    bq: Caller, webhook_id: WebhookId,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DeadLetter]:
    """Newest first, each with its attempts and the last error."""
    return bq.monitor.webhooks.dead_letters(webhook_id, limit=limit)
