"""Bad input and security: messages LPUSHed straight into a namespace's queue list, past
`submit` and its checks, as anyone who can write to Redis could.

Each forged message starts from the envelope a real `bq.submit` writes (read back from
Redis before any worker took it), with the task name, body, content type or encoding
changed. For each, a real worker (one process) must log a refusal, run no handler, leave
the message neither in the queue nor among its unacknowledged messages (so it cannot come
back after the visibility timeout), and still run the normal task submitted after it.

The forged messages target `t.record_order`, which appends its label to the list its
payload names: any run of a forged message would leave its label there.
"""

from __future__ import annotations

import base64
import json
import pickle
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bo_queue import BOQueue
from bo_queue.states import Priority
from bo_queue.testing import WorkerProcess, wait_until
from tests.conftest import Cluster, make_cluster, new_namespace
from tests.reliability import report

SECTION = "Bad input and security"
HANDLER = "t.record_order"  # appends payload["label"] to the list payload["list"]

# Every task Celery registers on an app by itself; a bo_queue worker must serve none.
CELERY_BUILTINS = (
    "celery.map", "celery.starmap", "celery.chunks", "celery.chord_unlock",
    "celery.accumulate", "celery.group", "celery.chain", "celery.chord",
    "celery.backend_cleanup",
)


class Marker:
    """Unpickling this creates `path`: a pickle that runs code as it loads."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


class Forged:
    """One forged message: its raw envelope, its task id and kombu delivery tag."""

    def __init__(self, raw: str, task_id: str | None = None, tag: str | None = None) -> None:
        self.raw, self.task_id, self.tag = raw, task_id, tag


class Injector:
    """The namespace under attack: its worker, its queue list and a producer."""

    def __init__(self, cluster: Cluster, envelope: dict[str, Any], client: redis.Redis) -> None:
        self.cluster = cluster
        self.bq: BOQueue = cluster.producer()
        self.worker: WorkerProcess = cluster.workers[0]
        self.envelope = envelope
        self.redis = client
        prefix = self.bq.keys.broker_prefix
        # kombu's Redis transport with priority steps: queue "default" at bo_queue's
        # NORMAL level is the list "{ns}:broker:default:6" (step 0 has no suffix), as
        # Monitor.queues() reads it.
        step = Priority.NORMAL.broker_priority
        self.queue_key = f"{prefix}default" + (f":{step}" if step else "")
        self.unacked_key = f"{prefix}unacked"
        self.evidence = ""

    def begin(self) -> int:
        """A fresh evidence list for this test; returns where the worker's log is now."""
        self.evidence = f"evidence:injection:{uuid.uuid4().hex[:8]}"
        return len(self.worker.log())

    def forge(
        self, task: Any = HANDLER, *, args: Any = None, kwargs: Any = None,
        body: bytes | None = None, content_type: str | None = None,
        encoding: str | None = None, edit: Callable[[dict[str, Any]], None] | None = None,
    ) -> Forged:
        """The submitted envelope with a fresh id and tag, and what the caller changes."""
        message = json.loads(json.dumps(self.envelope))
        task_id, tag = str(uuid.uuid4()), str(uuid.uuid4())
        message["headers"].update(task=task, id=task_id, root_id=task_id)
        message["properties"].update(correlation_id=task_id, delivery_tag=tag)
        if body is None:
            payload = {"list": self.evidence, "label": task_id}
            triple = [[payload] if args is None else args, kwargs or {},
                      {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
            body = json.dumps(triple).encode()
        message["body"] = base64.b64encode(body).decode()
        if content_type is not None:
            message["content-type"] = content_type
        if encoding is not None:
            message["content-encoding"] = encoding
        if edit is not None:
            edit(message)
        return Forged(json.dumps(message), task_id, tag)

    def push(self, *messages: Forged) -> None:
        self.redis.lpush(self.queue_key, *[m.raw for m in messages])

    def control(self, label: str) -> None:
        """A normal task, sent after the forged ones: the worker still runs tasks, and
        (one process, one list, oldest first) it has taken every forged message."""
        handle = self.bq.submit(HANDLER, {"list": self.evidence, "label": label})
        assert handle.get(timeout=20) == label

    def runs(self) -> list[str]:
        return [str(v) for v in self.redis.lrange(self.evidence, 0, -1)]

    def log_since(self, mark: int) -> str:
        return self.worker.log()[mark:]

    def check_gone(self, messages: list[Forged], label: str) -> None:
        """No forged message ran, is still queued, or waits to be restored."""
        assert self.runs() == [label], "a forged message ran a handler"
        wait_until(lambda: self.redis.llen(self.queue_key) == 0, 5, what="an empty queue")
        tags = [m.tag for m in messages if m.tag]
        if tags:
            pending = self.redis.hmget(self.unacked_key, tags)
            assert pending == [None] * len(tags), "a forged message waits among the unacked"
        assert self.worker.process is not None and self.worker.process.poll() is None, (
            f"the worker exited:\n{self.worker.log()[-3000:]}")

    def wait_logged(self, mark: int, pattern: str, count: int = 1) -> str:
        """The worker's log since `mark`, once `pattern` occurs there `count` times."""
        wait_until(lambda: len(re.findall(pattern, self.log_since(mark))) >= count, 5,
                   what=f"{count} x {pattern!r} in the worker's log")
        return self.log_since(mark)


def refused(message: Forged, reason: str = "") -> str:
    """The worker's line for a message bo_queue's guard refused (workers/security.py)."""
    return rf"refused a task message \(task .*, id '{message.task_id}', queue .*\): {reason}"


@pytest.fixture(scope="module")
def injector(redis_url: str) -> Iterator[Injector]:
    cluster = make_cluster(redis_url, workers=1, concurrency=1)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    scratch = BOQueue(redis_url=redis_url, namespace=new_namespace())
    try:
        # What a real submit writes, read back with no worker to take it: a namespace
        # of its own, whose handler directory says what the cluster's worker published.
        spec = client.hget(cluster.producer().keys.handlers, HANDLER)
        assert spec is not None
        client.hset(scratch.keys.handlers, HANDLER, spec)
        scratch.submit(HANDLER, {"list": "unused", "label": "template"})
        step = Priority.NORMAL.broker_priority
        raw = client.rpop(f"{scratch.keys.broker_prefix}default" + (f":{step}" if step else ""))
        assert isinstance(raw, str)
        envelope = json.loads(raw)
        assert envelope["content-type"] == "application/json"
        assert envelope["headers"]["task"] == HANDLER
        yield Injector(cluster, envelope, client)
    finally:
        scratch.close()
        cluster.close()
        client.close()


def test_pickle_body_is_never_unpickled(injector: Injector, tmp_path: Path) -> None:
    mark = injector.begin()
    marker = tmp_path / "unpickled"
    evil = pickle.dumps(((Marker(marker),), {}, {}))
    messages = [
        injector.forge(HANDLER, body=evil, content_type="application/x-python-serialize",
                       encoding="binary"),
        injector.forge("os.system", body=evil, content_type="application/x-python-serialize",
                       encoding="binary"),
    ]
    injector.push(*messages)
    injector.control("after pickle")
    log = injector.wait_logged(mark, "refused a task message", len(messages))
    for message in messages:
        assert re.search(refused(message, "content type 'application/x-python-serialize'"), log)
    injector.check_gone(messages, "after pickle")
    assert not marker.exists(), "the worker unpickled the body"
    report.record(SECTION, "Pickle body injected into the queue (unpickling creates a file)",
                  "refused and logged, never unpickled, nothing ran; worker runs the next task",
                  messages=len(messages))


def test_unregistered_task_names_never_run(injector: Injector, tmp_path: Path) -> None:
    mark = injector.begin()
    marker = tmp_path / "ran"
    shell = injector.forge("os.system", args=[f"touch {marker}"])
    python = injector.forge(
        "builtins.eval", args=[f"__import__('pathlib').Path({str(marker)!r}).touch()"])
    unknown = injector.forge("t.nonexistent")  # a well-formed message, a name nobody serves
    messages = [shell, python, unknown]
    injector.push(*messages)
    injector.control("after unregistered")
    log = injector.wait_logged(mark, r"Received unregistered task of type 't\.nonexistent'")
    for message in (shell, python):  # their arguments are not a payload: refused first
        assert re.search(refused(message, "arguments are not one payload object"), log)
    assert unknown.task_id is not None and unknown.task_id in log
    injector.check_gone(messages, "after unregistered")
    assert not marker.exists()
    report.record(SECTION, "Unregistered task names (os.system, builtins.eval, t.nonexistent)",
                  "refused and logged, nothing ran; worker runs the next task",
                  messages=len(messages))


def test_celery_builtin_tasks_are_not_served(injector: Injector) -> None:
    """Celery registers its canvas tasks on every app; `celery.map` would call any task
    with any arguments, and no bo_queue code needs them on a worker: it serves none."""
    mark = injector.begin()
    signature: dict[str, Any] = {"task": HANDLER, "args": [], "kwargs": {}, "options": {},
                                 "subtask_type": None, "immutable": False}
    # each name with a body shaped like a bo_queue payload, so only the name decides
    plain = [injector.forge(name) for name in CELERY_BUILTINS]
    # and celery.map as an attacker would send it: run t.record_order over our items
    mapped = injector.forge(
        "celery.map", args=[signature, [{"list": injector.evidence, "label": "via map"}]])
    messages = [*plain, mapped]
    before = injector.redis.hget("evidence:runs", "None")  # a run with no task id
    injector.push(*messages)
    injector.control("after builtins")
    log = injector.wait_logged(mark, "Received unregistered task of type 'celery\\.",
                               len(CELERY_BUILTINS))
    for name in CELERY_BUILTINS:
        assert f"Received unregistered task of type '{name}'" in log
    assert re.search(refused(mapped), log)
    injector.check_gone(messages, "after builtins")
    assert injector.redis.hget("evidence:runs", "None") == before
    report.record(SECTION, "Celery's built-in canvas tasks (celery.map, celery.chord, ... 9)",
                  "not served by workers (unregistered), refused and logged, nothing ran",
                  messages=len(messages))


def _set(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(message: dict[str, Any]) -> None:
        target = message
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


def test_malformed_messages_are_dropped(injector: Injector) -> None:
    """Before workers/security.py, most of these raised out of Celery's consumer
    ("Unrecoverable error") and the worker process exited."""
    mark = injector.begin()
    forge = injector.forge
    body = base64.b64encode(b'[[{}], {}, {"chain": "t.record_order"}]').decode()
    refusals = {  # reach the guard as kombu messages: refused, with the reason
        "task a list": (forge(["t.record_order"]), "header 'task' is not a non-empty string"),
        "time limit": (forge(edit=_set(("headers", "timelimit"), "soon")),
                       "header 'timelimit' is not"),
        "priority": (forge(edit=_set(("properties", "priority"), "high")),
                     "priority is not an integer"),
        "not json": (forge(body=b"\x00\xff{not json"), "body does not decode"),
        "object": (forge(body=b'{"args": [{}], "kwargs": {}}'), r"body is not \[args, "),
        "pair": (forge(body=b"[[{}], {}]"), r"body is not \[args, "),
        "kwargs": (forge(kwargs={"payload": {}}), "keyword arguments are not empty"),
        "chain": (forge(edit=_set(("body",), body)), "option 'chain' is not a list"),
    }
    odd_id = forge(edit=_set(("headers", "id"), ["x"]))  # refused, but has no id to show
    unreadable = {  # kombu cannot even build a message: dropped by the transport
        "envelope not json": Forged("}{ not an envelope"),
        "envelope list": Forged("[1, 2, 3]"),
        "no properties": Forged(json.dumps({"body": "", "headers": {}})),
        "headers not a mapping": forge(edit=_set(("headers",), "t.record_order")),
        "no delivery tag": forge(edit=lambda m: m["properties"].pop("delivery_tag")),
        "body a number": forge(edit=_set(("body",), 12345)),
    }
    messages = [*(m for m, _ in refusals.values()), odd_id, *unreadable.values()]
    injector.push(*messages)
    injector.control("after malformed")
    log = injector.wait_logged(mark, "dropped a message", len(unreadable))
    for name, (message, reason) in refusals.items():
        assert re.search(refused(message, reason), log), name
    assert re.search(r"refused a task message \(.*id \['x'\].*\): header 'id' is not", log)
    assert "Unrecoverable error" not in log
    injector.check_gone(messages, "after malformed")
    report.record(SECTION, "Malformed messages (envelope, headers, body shape)",
                  "dropped and logged, nothing ran, worker kept running and runs the next task",
                  messages=len(messages))


def test_wrong_content_type_or_encoding_is_refused(injector: Injector) -> None:
    """kombu's JSON decoder ignores the declared encoding, and kombu trusts
    application/data and application/text whatever accept_content says."""
    mark = injector.begin()
    valid = json.dumps([[{"list": injector.evidence, "label": "x"}], {}, {}])
    messages = {
        "utf-16 declared": injector.forge(encoding="utf-16"),
        "binary declared": injector.forge(encoding="binary"),
        "really utf-16": injector.forge(body=valid.encode("utf-16"), encoding="utf-16"),
        "unknown codec": injector.forge(encoding="rot-42"),
        "application/data": injector.forge(content_type="application/data"),
        "application/text": injector.forge(content_type="application/text"),
        "yaml": injector.forge(content_type="application/x-yaml"),
    }
    injector.push(*messages.values())
    injector.control("after encodings")
    log = injector.wait_logged(mark, "refused a task message", len(messages))
    for name, message in messages.items():
        assert re.search(refused(message, "content (type|encoding)"), log), name
    injector.check_gone(list(messages.values()), "after encodings")
    report.record(SECTION, "Wrong content encoding or a non-JSON content type",
                  "refused and logged, nothing ran; worker runs the next task",
                  messages=len(messages))
