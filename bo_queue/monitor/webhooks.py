"""Durable webhooks: `bq.monitor.webhooks`, kept in Redis and delivered by the workers.

A webhook is a URL with filters (event kinds, states), an optional secret and a retry
budget (`WebhookSpec`), stored as JSON in the hash `Keys.webhooks`. Adding one also creates
a consumer group of its own on the event stream (`Keys.events`, bo_queue.core.events),
starting after the newest event, in the same MULTI: the webhook gets every event after it
was added, and its group remembers how far it got while no worker runs.

Every worker runs a `Deliverer` thread (started by workers/lifecycle.py), a consumer of
every webhook's group, so XREADGROUP hands each new event to one worker. It POSTs the
event as JSON (signed `X-BoQueue-Signature: sha256=<hex>`, the HMAC-SHA256 of the body
with the webhook's secret, when it has one) and XACKs it. A failed attempt leaves the
event pending in the group: its delivery count is the attempts made, and once it has been
idle for the backoff (RetryPolicy.delay_s) since the failure a worker XCLAIMs it and tries
again. A dead worker's events are claimed the same way, once idle for longer than the
webhook's timeout too (so an attempt still in flight is not doubled). After the last
retry, or at once when the receiver refuses the event (a 4xx other than 408 and 429), it
goes to the webhook's dead-letter list with the last error and is acknowledged, in one
MULTI.

Delivery is at least once (a worker killed between the POST and the XACK sends the event
again) and not in order (a retry comes after later events): receivers deduplicate by
`X-BoQueue-Event`, the event's stream id. Events the stream trimmed (`events_max_len`)
before any worker read them are not delivered.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import httpx
import pydantic
import redis
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, HttpUrl, TypeAdapter

from bo_queue.core.events import Event, parse_event, stream_entries
from bo_queue.errors import ValidationError, WebhookNotFoundError, shown
from bo_queue.retry import RetryPolicy
from bo_queue.states import TaskState
from bo_queue.studies.models import StudyStatus
from bo_queue.validation import encodable, problems, redact, utc

if TYPE_CHECKING:
    from bo_queue.core.kernel import Core

__all__ = ["DeadLetter", "Deliverer", "WebhookInfo", "WebhookSink", "WebhookSpec", "Webhooks"]

log = logging.getLogger(__name__)

STATES = frozenset(TaskState) | frozenset(StudyStatus)  # what `states` may name
DEAD_LETTERS_MAX = 1000  # kept per webhook, newest first
BATCH = 100  # events read (and pending ones looked at) per webhook per round
POLL_S = 0.25  # a deliverer's pause when a round found nothing to do
MASK = "********"
_URL = TypeAdapter(HttpUrl)


def _http_url(value: str) -> str:
    try:
        return str(_URL.validate_python(value))
    except pydantic.ValidationError:
        raise ValueError(f"{value[:200]!r} is not an http or https URL") from None


def _known_states(value: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    unknown = sorted(set(value) - STATES)
    if unknown or not value:
        raise ValueError(f"unknown state(s) {', '.join(map(repr, unknown))}; known: "
                         f"{', '.join(sorted(STATES))}" if unknown else "states is empty")
    return tuple(dict.fromkeys(value))


def _secret(value: str | None) -> str | None:
    if value is not None and not encodable(value):
        raise ValueError("the secret is not UTF-8 text")
    return value


class WebhookSpec(BaseModel):
    """A webhook, as added: where to POST, which events, how hard to try."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: Annotated[str, Field(max_length=2000, examples=["https://ops.example/hooks/boq"]),
                   AfterValidator(_http_url)]
    events: tuple[Literal["task", "study"], ...] = Field(default=("task", "study"),
                                                         min_length=1)
    # TaskState and StudyStatus names; None: every state
    states: Annotated[tuple[str, ...] | None, AfterValidator(_known_states)] = Field(
        default=None, examples=[["FAILED"]])
    # signs each body (HMAC-SHA256); never shown back
    secret: Annotated[str | None, AfterValidator(_secret)] = Field(
        default=None, min_length=1, max_length=500)
    retries: int = Field(default=5, ge=0, le=20)  # attempts after the first
    backoff_s: float = Field(default=1.0, gt=0, le=3600)  # doubling, capped at an hour
    timeout_s: float = Field(default=5.0, gt=0, le=60)  # per attempt

    def policy(self) -> RetryPolicy:
        return RetryPolicy(max_retries=self.retries, backoff=self.backoff_s,
                           backoff_max=max(3600.0, self.backoff_s), jitter=False)

    def wants(self, event: Event) -> bool:
        return event.kind in self.events and (self.states is None or event.state in self.states)


class WebhookInfo(BaseModel):
    """A webhook as listed: its spec (the secret masked, a password in the URL too), and
    where its deliveries stand."""

    id: str
    url: str
    events: tuple[str, ...]
    states: tuple[str, ...] | None
    secret: str | None  # MASK when it has one
    retries: int
    backoff_s: float
    timeout_s: float
    created_at: datetime
    pending: int = 0  # events handed to a worker and not yet delivered or given up on
    dead_letters: int = 0


class DeadLetter(BaseModel):
    """An event a webhook gave up on, with the last attempt's error."""

    webhook_id: str
    event: Event
    attempts: int
    error: str
    at: datetime


@dataclass(frozen=True)
class Outcome:
    """One POST: delivered, or why not and whether trying again may help."""

    delivered: bool
    retry: bool = True
    error: str = ""


def post(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> Outcome:
    """POST `body`: a 2xx is delivered; a 4xx other than 408 and 429 is a refusal that
    asking again will not change; anything else (a redirect, 5xx, unreachable, timed
    out) may pass on another try."""
    try:
        reply = httpx.post(url, content=body, timeout=timeout_s,
                           headers={"Content-Type": "application/json", **headers})
    except Exception as exc:  # unreachable, timed out, a broken reply
        return Outcome(False, error=f"{type(exc).__name__}: {exc}")
    code = reply.status_code
    if 200 <= code < 300:
        return Outcome(True)
    return Outcome(False, retry=not (400 <= code < 500 and code not in (408, 429)),
                   error=f"HTTP {code}")


def signature(secret: str, body: bytes) -> str:
    """The `X-BoQueue-Signature` header of `body`: "sha256=" and the hex HMAC-SHA256."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookSink:
    """A subscriber callback (`bq.monitor.subscribe(WebhookSink(url))`) that POSTs each
    event as JSON to `url` from the subscribing process, retrying with exponential
    backoff; an event still undelivered after `retries` is logged and dropped. For
    deliveries that outlive the process, use `bq.monitor.webhooks.add`."""

    def __init__(self, url: str, *, retries: int = 3, backoff_s: float = 0.5,
                 timeout_s: float = 5.0, headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.headers = dict(headers or {})
        self.failed = 0  # events given up on

    def __call__(self, event: Event) -> None:
        body = event.model_dump_json().encode()
        for attempt in range(self.retries + 1):
            outcome = post(self.url, body, self.headers, self.timeout_s)
            if outcome.delivered:
                return
            log.info("webhook %s attempt %d: %s", self.url, attempt + 1, outcome.error)
            if not outcome.retry:
                break
            if attempt < self.retries:
                time.sleep(self.backoff_s * 2**attempt)
        self.failed += 1
        log.warning("webhook %s: gave up on event %s", self.url, event.stream_id)


def _group(webhook_id: str) -> str:
    return f"webhook:{webhook_id}"


class Webhooks:
    """`bq.monitor.webhooks`: add, list and remove the namespace's webhooks, and read
    what they gave up on (see the module docstring)."""

    def __init__(self, bq: Core) -> None:
        self.bq = bq

    def add(self, url: str, *, events: tuple[str, ...] | list[str] = ("task", "study"),
            states: tuple[str, ...] | list[str] | None = None, secret: str | None = None,
            retries: int = 5, backoff_s: float = 1.0, timeout_s: float = 5.0) -> WebhookInfo:
        """A new webhook, delivered every event (of those kinds and states) from now on.
        A URL that is not http(s), an unknown kind or state, or a bound out of range is a
        ValidationError, and nothing is written."""
        try:
            spec = WebhookSpec.model_validate(dict(
                url=url, events=events, states=states, secret=secret, retries=retries,
                backoff_s=backoff_s, timeout_s=timeout_s))
        except pydantic.ValidationError as exc:
            raise ValidationError(f"invalid webhook: {problems(exc)}") from None
        return self.add_spec(spec)

    def add_spec(self, spec: WebhookSpec) -> WebhookInfo:
        """`add`, from a spec validated already (the HTTP API's body)."""
        bq, webhook_id = self.bq, uuid.uuid4().hex[:16]
        stored = {**spec.model_dump(mode="json"), "created_at": time.time()}
        with bq.broker_errors(), bq.redis.pipeline(transaction=True) as pipe:
            pipe.xgroup_create(bq.keys.events, _group(webhook_id), id="$", mkstream=True)
            pipe.hset(bq.keys.webhooks, webhook_id, json.dumps(stored))
            pipe.execute()
        return _info(webhook_id, stored)

    def remove(self, webhook_id: str) -> None:
        """Remove a webhook, its group (what it had pending) and its dead letters;
        WebhookNotFoundError if there is none of that id."""
        bq = self.bq
        with bq.broker_errors(), bq.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(bq.keys.webhooks, webhook_id)
            pipe.xgroup_destroy(bq.keys.events, _group(webhook_id))
            pipe.delete(bq.keys.webhook_dead(webhook_id))
            removed = pipe.execute(raise_on_error=False)[0]
        if removed != 1:
            raise WebhookNotFoundError(webhook_id)

    def dead_letters(self, webhook_id: str, limit: int = 100) -> list[DeadLetter]:
        """The events the webhook gave up on, newest first (the latest DEAD_LETTERS_MAX
        are kept)."""
        if not isinstance(limit, int) or limit < 1:
            raise ValidationError(f"limit must be a positive integer, not {shown(limit)}")
        bq = self.bq
        with bq.broker_errors():
            if not bq.redis.hexists(bq.keys.webhooks, webhook_id):
                raise WebhookNotFoundError(webhook_id)
            raw: Any = bq.redis.lrange(bq.keys.webhook_dead(webhook_id), 0, limit - 1)
        return [DeadLetter.model_validate_json(item) for item in raw]

    def specs(self) -> dict[str, WebhookSpec]:
        """Every webhook's spec, secret included (for the deliverers)."""
        out = {}
        for webhook_id, raw in self._stored().items():
            try:
                data = json.loads(raw)
                data.pop("created_at", None)
                out[webhook_id] = WebhookSpec.model_validate(data)
            except (ValueError, AttributeError):  # not written by add: skip it, not all
                log.error("webhook %s: unreadable spec %.200r", webhook_id, raw)
        return out

    def _stored(self) -> dict[str, str]:
        stored: dict[str, str] = self.bq.redis.hgetall(self.bq.keys.webhooks)  # type: ignore[assignment]
        return stored

    def list(self) -> list[WebhookInfo]:
        """Every webhook, oldest first, with its pending and dead-letter counts."""
        bq = self.bq
        with bq.broker_errors():
            stored = {i: json.loads(raw) for i, raw in self._stored().items()}
            try:
                groups = {g["name"]: g for g in bq.redis.xinfo_groups(bq.keys.events)}
            except redis.ResponseError:  # no stream yet
                groups = {}
            with bq.redis.pipeline(transaction=False) as pipe:
                for webhook_id in stored:
                    pipe.llen(bq.keys.webhook_dead(webhook_id))
                dead = pipe.execute()
        out = [_info(i, data, pending=int(groups.get(_group(i), {}).get("pending", 0)),
                     dead_letters=int(n))
               for (i, data), n in zip(stored.items(), dead, strict=True)]
        return sorted(out, key=lambda w: (w.created_at, w.id))


def _info(webhook_id: str, stored: dict[str, Any], **counts: int) -> WebhookInfo:
    return WebhookInfo(
        id=webhook_id, url=redact(stored["url"]), events=stored["events"],
        states=stored["states"], secret=MASK if stored.get("secret") else None,
        retries=stored["retries"], backoff_s=stored["backoff_s"],
        timeout_s=stored["timeout_s"], created_at=utc(stored["created_at"]), **counts)


class Deliverer:
    """One worker's share of the deliveries: a thread that, round after round, reads each
    webhook's new events and the pending ones that are due again, and POSTs them."""

    def __init__(self, webhooks: Webhooks, consumer: str) -> None:
        self.webhooks = webhooks
        self.consumer = consumer  # the worker's hostname, the same across its restarts
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bo_queue-webhooks", daemon=True)

    def start(self) -> Deliverer:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the attempt in flight (an event it leaves pending is tried again)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.round()
            except Exception:  # Redis away: a round a second until it is back
                log.exception("webhook delivery round failed")
                self._stop.wait(1.0)
                continue
            if not busy:
                self._stop.wait(POLL_S)

    def round(self) -> bool:
        """One round over every webhook; True if it attempted a delivery."""
        busy = False
        for webhook_id, spec in self.webhooks.specs().items():
            if self._stop.is_set():
                break
            busy |= self._deliver(webhook_id, spec)
        return busy

    def _deliver(self, webhook_id: str, spec: WebhookSpec) -> bool:
        bq = self.webhooks.bq
        client, stream, group = bq.redis, bq.keys.events, _group(webhook_id)
        try:
            fresh: Any = client.xreadgroup(group, self.consumer, {stream: ">"}, count=BATCH)
            pending: Any = client.xpending_range(stream, group, "-", "+", BATCH)
        except redis.ResponseError:  # NOGROUP: removed meanwhile
            return False
        attempts: list[tuple[str, dict[str, str], int]] = []
        skipped = []
        for _, entries in fresh or []:
            for stream_id, fields in stream_entries(entries):
                if spec.wants(parse_event(stream_id, fields)):
                    attempts.append((stream_id, fields, 1))
                else:
                    skipped.append(stream_id)
        if skipped:
            client.xack(stream, group, *skipped)
        fresh_ids = {stream_id for stream_id, _, _ in attempts}
        policy = spec.policy()
        for entry in pending:
            stream_id, times = str(entry["message_id"]), int(entry["times_delivered"])
            if stream_id in fresh_ids:
                continue
            due_s = policy.delay_s(times - 1)
            if entry["consumer"] != self.consumer:  # a dead worker's, or one in flight
                due_s = max(due_s, spec.timeout_s + 1.0)
            if entry["time_since_delivered"] < due_s * 1000:
                continue
            # XCLAIM only if still that idle: of two workers, one claims it
            claimed: Any = client.xclaim(stream, group, self.consumer, int(due_s * 1000),
                                         [stream_id])
            attempts += [(i, f, times + 1) for i, f in stream_entries(claimed)]
        for stream_id, fields, attempt in attempts:
            if self._stop.is_set():
                break  # left pending: tried again after the restart
            self._attempt(webhook_id, spec, stream_id, fields, attempt)
        return bool(attempts)

    def _attempt(self, webhook_id: str, spec: WebhookSpec, stream_id: str,
                 fields: dict[str, str], attempt: int) -> None:
        bq = self.webhooks.bq
        event = parse_event(stream_id, fields)
        body = event.model_dump_json().encode()
        headers = {"X-BoQueue-Webhook": webhook_id, "X-BoQueue-Event": stream_id,
                   "X-BoQueue-Attempt": str(attempt)}
        if spec.secret:
            headers["X-BoQueue-Signature"] = signature(spec.secret, body)
        outcome = post(spec.url, body, headers, spec.timeout_s)
        if outcome.delivered:
            bq.redis.xack(bq.keys.events, _group(webhook_id), stream_id)
            return
        log.info("webhook %s, event %s, attempt %d: %s", webhook_id, stream_id, attempt,
                 outcome.error)
        if outcome.retry and attempt <= spec.retries:
            # Stays pending, idle from now (JUSTID: not counted as a delivery), so the
            # backoff runs from the failure, however long the attempt took.
            bq.redis.xclaim(bq.keys.events, _group(webhook_id), self.consumer, 0, [stream_id],
                            justid=True)
            return
        letter = DeadLetter(webhook_id=webhook_id, event=event, attempts=attempt,
                            error=outcome.error, at=utc(time.time())).model_dump_json()
        dead = bq.keys.webhook_dead(webhook_id)

        def bury(pipe: redis.client.Pipeline) -> None:
            if not pipe.hexists(bq.keys.webhooks, webhook_id):
                return  # removed meanwhile, with its group and dead letters
            pipe.multi()
            pipe.lpush(dead, letter)
            pipe.ltrim(dead, 0, DEAD_LETTERS_MAX - 1)
            pipe.xack(bq.keys.events, _group(webhook_id), stream_id)

        bq.redis.transaction(bury, bq.keys.webhooks)
        log.warning("webhook %s gave up on event %s after %d attempt(s): %s", webhook_id,
                    stream_id, attempt, outcome.error)
