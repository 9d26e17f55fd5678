"""Redis with a password and TLS (redis-server's own TLS, certificates made here): the
producer facade, a worker, beat and Flower all connect with a rediss:// URL that trusts
the test's CA, with certificate and host name checks on. Connections that get the scheme,
the password or the trust wrong fail at once, with bo_queue's errors."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import kombu.exceptions
import pytest
import redis

from bo_queue import BOQueue, BrokerUnavailableError, ConfigurationError, TaskState
from bo_queue.config import Settings, redis_tls_options
from bo_queue.core.celery_app import tls_conf
from bo_queue.testing import BeatProcess, free_port, wait_until
from tests.conftest import Cluster, new_namespace
from tests.integration.test_flower import Flower
from tests.reliability import report
from tests.reliability.tls import TlsRedisServer

TASKS = 20


@pytest.fixture(scope="module")
def server() -> Iterator[TlsRedisServer]:
    with TlsRedisServer() as tls:
        yield tls


def test_tls_options_come_from_the_url_and_verify_by_default(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read here")
    assert redis_tls_options("redis://h:1/0") is None
    assert redis_tls_options("unix:///run/redis.sock") is None
    assert redis_tls_options("rediss://h:1/0") == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert redis_tls_options(f"rediss://h:1/0?ssl_ca_certs={ca}&ssl_check_hostname=false") == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(ca), "ssl_check_hostname": False,
    }
    # turning verification off takes saying so in the URL
    assert redis_tls_options("rediss://h:1/0?ssl_cert_reqs=none") == {
        "ssl_cert_reqs": ssl.CERT_NONE}
    # the broker's options go to kombu, Flower and redbeat; the result backend has its own
    settings = Settings.load(redis_url=f"rediss://:pw@h:1/0?ssl_ca_certs={ca}",
                             result_url="redis://r:2/0")
    assert tls_conf(settings) == {
        "broker_use_ssl": {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(ca)},
        "redbeat_redis_use_ssl": {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(ca)},
    }
    assert tls_conf(Settings.load(redis_url="redis://h:1/0")) == {}
    both = tls_conf(Settings.load(redis_url="rediss://h:1/0"))
    assert both["redis_backend_use_ssl"] == both["broker_use_ssl"]


def _shows(text: str, password: str) -> bool:
    """Whether `text` shows the password, as it is or as the URL spells it."""
    return password in text or quote(password, safe="") in text


def _fails_fast(url: str, error: type[Exception], password: str) -> float:
    """Seconds until a producer on `url` gives up, with `error`, not naming the password."""
    started = time.monotonic()
    # the facade connects lazily: its first command meets the bad connection
    with pytest.raises(error) as caught, BOQueue(
        redis_url=url, namespace=new_namespace(), connect_timeout_s=2
    ) as bq:
        bq.submit("t.echo", {})
    elapsed = time.monotonic() - started
    assert not _shows(str(caught.value), password)
    assert elapsed < 5, elapsed
    return elapsed


def test_wrong_scheme_password_or_trust_fail_clearly(server: TlsRedisServer) -> None:
    password = server.password
    worst = max(
        # plain text to the TLS port: redis-server drops the connection
        _fails_fast(server.url_with("redis", ca=False), BrokerUnavailableError, password),
        # the right certificate, the wrong password
        _fails_fast(server.url_with(password="not-the-password"), BrokerUnavailableError,
                    password),
        # rediss:// without the test's CA: the system's CAs do not vouch for this server,
        # so verification (on by default) refuses it rather than trusting anyone
        _fails_fast(server.url_with(ca=False), BrokerUnavailableError, password),
    )
    with pytest.raises(BrokerUnavailableError, match="invalid username-password"), BOQueue(
        redis_url=server.url_with(password="x"), namespace="n"
    ) as bq:
        bq.monitor.workers()
    # Celery's own clients verify too: kombu alone would fall back to CERT_NONE for a
    # rediss:// URL without TLS options, and Celery's result backend refuse the URL
    with BOQueue(redis_url=server.url_with(ca=False), namespace="n") as bq:
        refused = (kombu.exceptions.OperationalError, redis.ConnectionError)
        with pytest.raises(refused, match="certificate verify"), \
                bq.app.connection_for_write() as connection:
            connection.connect()
        backend: Any = bq.app.backend  # bo_queue.core.celery_app.ResultBackend, a RedisBackend
        with pytest.raises(redis.ConnectionError, match="certificate verify"):
            backend.client.ping()
    # TLS options a client would misread are configuration errors, before any connection
    ca = str(server.certs.ca)
    bad = {
        f"{server.url_with('redis', ca=False)}?ssl_ca_certs={ca}": "need a rediss:// URL",
        f"{server.url}&ssl_cert_reqs=CERT_REQUIRED": "expected one of required, optional",
        f"{server.url}&ssl_check_hostname=no": "expected true or false",
        f"{server.url}&ssl_ca_cert={ca}": "unknown TLS option",
        server.url.replace("ca.pem", "missing.pem"): "no such file",
    }
    for url, message in bad.items():
        with pytest.raises(ConfigurationError, match=message) as caught:
            BOQueue(redis_url=url, namespace="n")
        assert not _shows(str(caught.value), password)
    with pytest.raises(ConfigurationError) as caught:  # the scheme check redacts too
        BOQueue(redis_url=f"http://:{quote(password, safe='')}@127.0.0.1:1/0", namespace="n")
    assert not _shows(str(caught.value), password)
    settings = Settings.load(redis_url=server.url)  # its repr may end up in a log line
    assert not _shows(repr(settings) + str(settings), password)
    cases = 3 + 1 + 2 + len(bad) + 2
    report.record(
        "Bad input and security", "TLS Redis: wrong scheme, password or CA",
        "plain redis://, a wrong password, an untrusted certificate: BrokerUnavailableError "
        "at once (Celery's broker and backend refuse the certificate too); bad TLS options: "
        "ConfigurationError; no message shows the password",
        slowest_s=round(worst, 2), cases=cases,
    )


@pytest.mark.timeout(90)
def test_producer_worker_beat_and_flower_over_tls(server: TlsRedisServer) -> None:
    started = time.monotonic()
    cluster = Cluster(server.url, new_namespace())
    worker = cluster.add_worker(concurrency=2, start=False)
    bq = cluster.producer()
    beat = BeatProcess(server.url, cluster.namespace)
    flowers: list[Flower] = []  # started, to stop
    flower_log = ""
    try:
        # side by side: each spends a couple of seconds importing Celery
        worker.start(wait=0)
        beat.start()
        flower = Flower(cluster, free_port())
        flowers.append(flower)
        worker.wait_ready()
        # a one-second schedule, written through redbeat's client; the running beat finds it
        bq.schedules.add("tls-tick", "t.echo", {"tick": True}, every=1)

        handles = [bq.submit("t.echo", {"n": n}) for n in range(TASKS)]
        assert [h.get(timeout=30) for h in handles] == [{"n": n} for n in range(TASKS)]

        def fired() -> list[str]:
            return [i for i in bq.records.tagged("schedule:tls-tick")
                    if bq.info(i).state == TaskState.SUCCEEDED]

        wait_until(lambda: len(fired()) >= 2, 30, 0.2, what="beat to fire the schedule twice")
        assert bq.schedules.get("tls-tick").total_runs >= 2

        flower.wait_up()
        hostname = worker.hostname
        wait_until(lambda: hostname in flower.api("/api/workers?refresh=true"), 30, 0.5,
                   what="flower to list the worker")
        wait_until(lambda: flower.api("/api/workers?status=true").get(hostname) is True, 30,
                   0.5, what="flower to receive the worker's events")
        late = bq.submit("t.echo", {"late": True})
        assert late.get(timeout=30) == {"late": True}

        def flower_saw_it() -> bool:
            task = flower.api("/api/tasks?taskname=t.echo").get(late.id)
            return task is not None and task["state"] == "SUCCESS"

        wait_until(flower_saw_it, 30, 0.3, what="flower to show the task succeeded")
        # queue lengths come from Flower's own Redis client (broker_use_ssl), not Celery's
        lengths = flower.api("/api/queues/length")["active_queues"]
        assert {"name": "default", "messages": 0} in lengths
        runs = len(fired())
    finally:
        beat.stop()
        bq.schedules.remove("tls-tick")
        for started_flower in flowers:
            flower_log = started_flower.log()
            started_flower.stop()
        cluster.close()
    elapsed = time.monotonic() - started
    # nobody prints the Redis password (the banners and logs show rediss://:**@...)
    for name, log in (("worker", worker.log()), ("beat", beat.log()), ("flower", flower_log)):
        assert "rediss://" in log, f"{name} log does not name the broker:\n{log[-2000:]}"
        assert not _shows(log, server.password), f"the {name} log shows the Redis password"
    assert "Acquired lock" in beat.log()
    report.record(
        "Bad input and security", "TLS Redis with a password (rediss://)",
        "producer, worker, beat (redbeat) and Flower (API and queue lengths) all work over "
        "TLS with the certificate verified; no log shows the password",
        tasks=TASKS + 1, schedule_runs=runs, wall_s=round(elapsed, 1),
    )
