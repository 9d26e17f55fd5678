"""Durable webhooks on real workers, against a real HTTP receiver on loopback: each event
delivered once by whichever worker takes it, signed, retried with backoff, dead-lettered
after the last retry, delivered after a worker restart, and claimed from a worker killed
mid-delivery; the CLI, and the HTTP API through a real `bo-queue api`."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis

from bo_queue import BOQueue, ValidationError, WebhookNotFoundError
from bo_queue.api.keys import ApiKeys
from bo_queue.testing import free_port, wait_until
from tests.conftest import ROOT, Cluster, make_cluster
from tests.integration.api_server import ApiServer

SLOW_S = 1.0  # how long /slow takes to fail the first attempt at an event


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int

    @property
    def event(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


class Receiver:
    """A loopback HTTP server recording every POST. By path: /ok answers 200, /flaky 503
    to the first two attempts at each event, /down 500, /refuse 400, /hang holds the
    first request open until `release` (then 200 to every one), /slow answers the first
    attempt at each event 503 after SLOW_S and the later ones 200."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                path = self.path.split("?")[0]
                with receiver.lock:
                    seen = sum(1 for h in receiver.hits if h.path == path
                               and h.headers.get("X-BoQueue-Event")
                               == self.headers.get("X-BoQueue-Event"))
                    hung = path == "/hang" and not any(h.path == "/hang" for h in receiver.hits)
                status = {"/ok": 200, "/down": 500, "/refuse": 400, "/hang": 200,
                          "/flaky": 503 if seen < 2 else 200,
                          "/slow": 503 if seen < 1 else 200}[path]
                with receiver.lock:
                    receiver.hits.append(Hit(path, dict(self.headers), body, time.time(), status))
                if hung:
                    receiver.release.wait(30)
                if path == "/slow" and status == 503:
                    time.sleep(SLOW_S)
                try:
                    self.send_response(status)
                    self.end_headers()
                except OSError:  # the worker that asked is gone
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def at(self, path: str, task_id: str | None = None) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits
                    if h.path == path and (task_id is None or h.event["id"] == task_id)]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def hooked(redis_url: str) -> Iterator[Cluster]:
    c = make_cluster(redis_url, workers=2, concurrency=1)
    yield c
    c.close()


@pytest.fixture
def bq(hooked: Cluster) -> BOQueue:
    return hooked.producer()


def _pending(bq: BOQueue, webhook_id: str) -> int:
    return next(w.pending for w in bq.monitor.webhooks.list() if w.id == webhook_id)


def _ended(bq: BOQueue, task_id: str) -> bool:
    record = bq.records.get(task_id)
    return record is not None and record.state.terminal


@pytest.mark.parametrize(("fields", "complaint"), [
    ({"url": "ftp://example.org/x"}, "url"),
    ({"url": "not a url"}, "url"),
    ({"url": "http://127.0.0.1/", "events": ["task", "deploy"]}, "events"),
    ({"url": "http://127.0.0.1/", "events": []}, "events"),
    ({"url": "http://127.0.0.1/", "states": ["DONE"]}, "unknown state(s) 'DONE'"),
    ({"url": "http://127.0.0.1/", "retries": -1}, "retries"),
    ({"url": "http://127.0.0.1/", "backoff_s": 0}, "backoff_s"),
    ({"url": "http://127.0.0.1/", "secret": ""}, "secret"),
])
def test_a_bad_webhook_is_refused_and_nothing_is_written(
    bq: BOQueue, fields: dict[str, Any], complaint: str
) -> None:
    before = bq.redis.hgetall(bq.keys.webhooks)
    groups = len(bq.redis.xinfo_groups(bq.keys.events)) if bq.redis.exists(bq.keys.events) else 0
    with pytest.raises(ValidationError, match="invalid webhook") as raised:
        bq.monitor.webhooks.add(**fields)
    assert complaint in str(raised.value)
    assert bq.redis.hgetall(bq.keys.webhooks) == before
    after = len(bq.redis.xinfo_groups(bq.keys.events)) if bq.redis.exists(bq.keys.events) else 0
    assert after == groups


def test_each_event_is_delivered_once_signed_by_one_of_two_workers(
    bq: BOQueue, receiver: Receiver
) -> None:
    hook = bq.monitor.webhooks.add(receiver.url("/ok"), events=["task"], states=["SUCCEEDED"],
                                   secret="s3cret-key")
    listed = [w.model_dump_json() for w in bq.monitor.webhooks.list()]
    assert hook.secret == "********" and not any("s3cret" in w for w in listed)
    handles = bq.submit_many([{"handler": "t.echo", "payload": {"i": i}} for i in range(20)])
    ids = {h.id for h in handles}
    wait_until(lambda: ids <= {h.event["id"] for h in receiver.at("/ok")}, 60,
               what="every task's SUCCEEDED event")
    wait_until(lambda: _pending(bq, hook.id) == 0, 15, what="every delivery acknowledged")
    # (which worker took how many depends on timing: one may take all 20 in one read)
    mine = [h for h in receiver.at("/ok") if h.event["id"] in ids]
    assert Counter(h.event["id"] for h in mine) == dict.fromkeys(ids, 1)
    for hit in mine:
        assert hit.event["state"] == "SUCCEEDED" and hit.event["handler"] == "t.echo"
        expected = hmac.new(b"s3cret-key", hit.body, hashlib.sha256).hexdigest()
        assert hit.headers["X-BoQueue-Signature"] == f"sha256={expected}"
        assert hit.headers["X-BoQueue-Webhook"] == hook.id
        assert hit.headers["X-BoQueue-Event"] == hit.event["stream_id"]
        assert hit.headers["X-BoQueue-Attempt"] == "1"
    bq.monitor.webhooks.remove(hook.id)
    with pytest.raises(WebhookNotFoundError):
        bq.monitor.webhooks.remove(hook.id)


def test_a_failing_receiver_is_retried_with_backoff_until_it_takes_the_event(
    bq: BOQueue, receiver: Receiver
) -> None:
    hook = bq.monitor.webhooks.add(receiver.url("/flaky"), events=["task"],
                                   states=["SUCCEEDED"], retries=3, backoff_s=0.3)
    handle = bq.submit("t.echo", {"flaky": True})
    wait_until(lambda: any(h.status == 200 for h in receiver.at("/flaky", handle.id)), 30,
               what="the third attempt to land")
    wait_until(lambda: _pending(bq, hook.id) == 0, 15, what="the delivery acknowledged")
    hits = receiver.at("/flaky", handle.id)
    assert [(h.status, h.headers["X-BoQueue-Attempt"]) for h in hits] == [
        (503, "1"), (503, "2"), (200, "3")]
    # backoff_s, doubling (no jitter), counted from the end of the attempt before, which
    # the receiver saw begin
    gaps = [b.at - a.at for a, b in itertools.pairwise(hits)]
    assert gaps[0] >= 0.3 and gaps[1] >= 0.6, gaps
    assert bq.monitor.webhooks.dead_letters(hook.id) == []
    bq.monitor.webhooks.remove(hook.id)


def test_the_backoff_runs_from_the_end_of_a_slow_failed_attempt(
    bq: BOQueue, receiver: Receiver
) -> None:
    hook = bq.monitor.webhooks.add(receiver.url("/slow"), events=["task"],
                                   states=["SUCCEEDED"], retries=1, backoff_s=0.5)
    handle = bq.submit("t.echo", {"slow": True})
    wait_until(lambda: len(receiver.at("/slow", handle.id)) == 2, 30, what="the retry")
    first, second = receiver.at("/slow", handle.id)
    # the first attempt took SLOW_S to fail: counted from its claim, the backoff would
    # have passed by then and the retry gone out at once
    assert second.at - first.at >= SLOW_S + 0.5, second.at - first.at
    bq.monitor.webhooks.remove(hook.id)


def test_after_the_last_retry_an_event_is_a_dead_letter_and_a_refusal_at_once(
    bq: BOQueue, receiver: Receiver
) -> None:
    hooks = bq.monitor.webhooks
    down = hooks.add(receiver.url("/down"), events=["task"], states=["SUCCEEDED"],
                     retries=2, backoff_s=0.1)
    refuse = hooks.add(receiver.url("/refuse"), events=["task"], states=["SUCCEEDED"],
                       retries=2, backoff_s=0.1)
    handle = bq.submit("t.echo", {"dead": True})
    wait_until(lambda: hooks.dead_letters(down.id) and hooks.dead_letters(refuse.id), 30,
               what="both webhooks to give up")
    [letter] = hooks.dead_letters(down.id)
    assert (letter.event.id, letter.event.state) == (handle.id, "SUCCEEDED")
    assert (letter.attempts, letter.error, letter.webhook_id) == (3, "HTTP 500", down.id)
    assert len(receiver.at("/down", handle.id)) == 3
    [refused] = hooks.dead_letters(refuse.id)
    assert (refused.event.id, refused.attempts, refused.error) == (handle.id, 1, "HTTP 400")
    assert len(receiver.at("/refuse", handle.id)) == 1
    listed = {w.id: w for w in hooks.list()}
    assert (listed[down.id].dead_letters, listed[down.id].pending) == (1, 0)
    with pytest.raises(ValidationError, match="limit must be a positive integer"):
        hooks.dead_letters(down.id, limit=0)
    for hook in (down, refuse):
        hooks.remove(hook.id)
        assert not bq.redis.exists(bq.keys.webhook_dead(hook.id))
        with pytest.raises(WebhookNotFoundError):
            hooks.dead_letters(hook.id)


def test_study_events_reach_a_webhook_of_study_states(bq: BOQueue, receiver: Receiver) -> None:
    from bo_queue import Objective, Range

    hook = bq.monitor.webhooks.add(receiver.url("/ok"), events=["study"],
                                   states=["CREATED", "FAILED"])
    study = bq.studies.create(name="hooked", parameters=[Range("x", 0.0, 1.0)],
                              objectives=[Objective("loss")])
    bq.studies.fail(study.id, "stopped by the test")
    wait_until(lambda: len(receiver.at("/ok", study.id)) == 2, 15, what="two study events")
    hits = receiver.at("/ok", study.id)
    assert sorted((h.event["kind"], h.event["state"]) for h in hits) == [
        ("study", "CREATED"), ("study", "FAILED")]
    bq.monitor.webhooks.remove(hook.id)


def test_events_while_the_only_worker_is_down_are_delivered_after_its_restart(
    redis_url: str, receiver: Receiver
) -> None:
    cluster = make_cluster(redis_url, workers=1, concurrency=1)
    try:
        bq = cluster.producer()
        # QUEUED events are written by the producer's submit: they happen with no worker up
        hook = bq.monitor.webhooks.add(receiver.url("/ok"), events=["task"], states=["QUEUED"])
        first = bq.submit("t.echo", {"before": True})
        wait_until(lambda: receiver.at("/ok", first.id), 15, what="the first delivery")
        worker = cluster.workers[0]
        worker.stop()
        during = [bq.submit("t.echo", {"during": i}) for i in range(5)]
        assert all(not receiver.at("/ok", h.id) for h in during)  # nobody to deliver them
        worker.start()
        wait_until(lambda: all(receiver.at("/ok", h.id) for h in during), 30,
                   what="the events of the downtime")
        wait_until(lambda: _pending(bq, hook.id) == 0, 15, what="every delivery acknowledged")
        assert [len(receiver.at("/ok", h.id)) for h in [first, *during]] == [1] * 6
    finally:
        cluster.close()


def test_an_event_of_a_worker_killed_mid_delivery_is_claimed_by_another(
    redis_url: str, receiver: Receiver
) -> None:
    cluster = make_cluster(redis_url, workers=2, concurrency=1)
    try:
        bq = cluster.producer()
        hook = bq.monitor.webhooks.add(receiver.url("/hang"), events=["task"],
                                       states=["QUEUED"], timeout_s=3, backoff_s=0.1)
        handle = bq.submit("t.echo", {"hang": True})
        wait_until(lambda: receiver.at("/hang", handle.id), 15, what="the first attempt")
        [entry] = bq.redis.xpending_range(bq.keys.events, f"webhook:{hook.id}", "-", "+", 10)
        by_host = {w.hostname: w for w in cluster.workers}
        by_host[entry["consumer"]].kill()  # mid-POST: the receiver holds the request open
        wait_until(lambda: len(receiver.at("/hang", handle.id)) == 2, 30,
                   what="another worker to claim and deliver the event")
        second = receiver.at("/hang", handle.id)[1]
        assert second.headers["X-BoQueue-Attempt"] == "2"
        assert second.at - receiver.at("/hang", handle.id)[0].at >= 3  # after the timeout
        wait_until(lambda: _pending(bq, hook.id) == 0, 15, what="the delivery acknowledged")
        receiver.release.set()
    finally:
        cluster.close()


def _cli(cluster: Cluster, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "BO_QUEUE_REDIS_URL": cluster.redis_url,
               "BO_QUEUE_NAMESPACE": cluster.namespace, **env}
    return subprocess.run([sys.executable, "-m", "bo_queue.cli", "webhook", *args],
                          capture_output=True, text=True, timeout=60, env=environ)


def test_the_cli_adds_lists_and_removes_webhooks(
    bq: BOQueue, hooked: Cluster, receiver: Receiver
) -> None:
    before = bq.redis.hgetall(bq.keys.webhooks)
    refused = _cli(hooked, "add", "gopher://example.org/")
    assert refused.returncode == 2 and "is not an http or https URL" in refused.stderr
    assert bq.redis.hgetall(bq.keys.webhooks) == before
    added = _cli(hooked, "add", receiver.url("/down"), "--event", "task", "--state",
                 "SUCCEEDED", "--retries", "0", "--secret-env", "HOOK_SECRET",
                 HOOK_SECRET="from-the-env")
    assert added.returncode == 0, added.stderr
    webhook_id = added.stdout.strip()
    handle = bq.submit("t.echo", {"cli": True})
    wait_until(lambda: bq.monitor.webhooks.dead_letters(webhook_id), 30, what="a dead letter")
    listed = _cli(hooked, "list")
    [shown] = [json.loads(line) for line in listed.stdout.splitlines()
               if json.loads(line)["id"] == webhook_id]
    assert (shown["id"], shown["secret"], shown["states"]) == (webhook_id, "********",
                                                               ["SUCCEEDED"])
    assert "from-the-env" not in listed.stdout
    dead = _cli(hooked, "dead", webhook_id)
    assert json.loads(dead.stdout.splitlines()[0])["event"]["id"] == handle.id
    hit = receiver.at("/down", handle.id)[0]
    expected = hmac.new(b"from-the-env", hit.body, hashlib.sha256).hexdigest()
    assert hit.headers["X-BoQueue-Signature"] == f"sha256={expected}"
    assert _cli(hooked, "remove", webhook_id).returncode == 0
    again = _cli(hooked, "remove", webhook_id)
    assert again.returncode == 2 and f"no webhook with id '{webhook_id}'" in again.stderr
    assert webhook_id not in _cli(hooked, "list").stdout


def test_webhooks_over_http(redis_url: str, bq: BOQueue, hooked: Cluster,
                            receiver: Receiver) -> None:
    server = ApiServer(redis_url, hooked.namespace)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        server.wait_ready()
        key = ApiKeys(client).create(hooked.namespace, name="hooks")
        http = httpx.Client(base_url=server.url, headers={"X-API-Key": key}, timeout=10)
        before = http.get("/webhooks").json()
        bad = http.post("/webhooks", json={"url": receiver.url("/down"), "states": ["DONE"]})
        assert bad.status_code == 422 and "unknown state(s) 'DONE'" in bad.json()["detail"]
        assert http.post("/webhooks", json={"url": "x", "extra": 1}).status_code == 422
        assert http.get("/webhooks").json() == before  # nothing written
        made = http.post("/webhooks", json={
            "url": receiver.url("/down"), "events": ["task"], "states": ["SUCCEEDED"],
            "secret": "over-http", "retries": 0})
        assert made.status_code == 201, made.text
        hook = made.json()
        assert hook["secret"] == "********" and "over-http" not in made.text
        assert [w["id"] for w in http.get("/webhooks").json()] == [
            *(w["id"] for w in before), hook["id"]]
        handle = bq.submit("t.echo", {"http": True})
        dead = f"/webhooks/{hook['id']}/dead-letters"
        wait_until(lambda: http.get(dead).json(), 30, what="a dead letter over HTTP")
        [letter] = http.get(dead).json()
        assert (letter["event"]["id"], letter["attempts"], letter["error"]) == (
            handle.id, 1, "HTTP 500")
        assert http.delete(f"/webhooks/{hook['id']}").status_code == 204
        gone = http.delete(f"/webhooks/{hook['id']}")
        assert gone.status_code == 404 and gone.json()["error"] == "WebhookNotFoundError"
        assert http.get(dead).status_code == 404
        assert http.get("/webhooks/not-an-id/dead-letters").status_code == 422
        http.close()
    finally:
        server.stop()
        client.close()
