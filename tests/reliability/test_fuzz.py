"""Hypothesis fuzzing of everything a producer hands the facade: task payloads and submit
options, batches, study specs and parameter spaces, trial reports, and schedule specs,
each generated both plausible and hostile (deep nesting, huge ints, NaN and infinity,
non-str keys, bytes, sets, objects, strings at the payload limit, lone surrogates, ids
that name other keys, wrong types).

Against a real redis-server (the session's, a fresh namespace per test) and no workers:
the facade validates and writes to Redis by itself. The property, for every call:

- it returns, or raises a `BOQueueError` (anything else, a TypeError, pydantic's own
  ValidationError, OverflowError, a redis error, RecursionError, fails the test);
- a call that raised wrote nothing: Redis announced no write to any key of the namespace
  while it ran (keyspace notifications, switched on for the test; reads announce none);
- what a call accepted reads back: `bq.info(id)` and the queued message for a task,
  `bq.studies.get(id)` for a study, `bq.schedules.get(name)` and the listing for a
  schedule, as sent where that is the contract (JSON round trip for payloads).

Trials to report on are brought in with `bq.studies.load` from a backend (what importing
a study does), so no Ax runs here; the study steps that reports ask for wait in the `bo`
queue, which no worker serves. The handler directory is published as a worker would.

Each strategy draws keyword arguments three ways: all plausible (mostly accepted), plausible
but for one hostile field (which the edge must catch), or anything goes.

Quick size (`make test`): 100-300 examples a test, about 1,300 calls, derandomized so CI
sees the same inputs every run (about 10 s). Full size (`make test-reliability`): ten
times as many, random (a failure prints the blob that reproduces it; about 100 s).
"""

from __future__ import annotations

import base64
import functools
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bo_queue import (
    BOQueue,
    BOQueueError,
    Objective,
    OutcomeConstraint,
    Priority,
    Range,
    ReportConflictError,
    Strategy,
    StudyNotFoundError,
    StudyStatus,
    TaskHandle,
    TaskState,
    Trial,
    TrialStatus,
    UnknownTaskError,
)
from bo_queue.studies.manager import STEP
from bo_queue.studies.models import Study, StudySpec
from bo_queue.studies.storage import StorageBackend, StudyState
from bo_queue.validation import TASK_ID
from tests.conftest import new_namespace
from tests.reliability import report

SECTION = "Bad input and security"
LIMIT = 4096  # max_payload_bytes of the fuzzed facade: strings near it stay cheap
QUEUES = ("default", "bo", "evaluate")
HANDLERS = {"fuzz.echo": None, "fuzz.special": "special", STEP: "bo"}  # name -> its queue
T = TypeVar("T")


def fuzz(quick: int, full: int) -> settings:
    """quick examples in `make test` (derandomized: CI sees the same inputs every run),
    full in `make test-reliability` (random; a failure prints how to reproduce it)."""
    return settings(
        max_examples=report.scale(quick, full),
        derandomize=not report.FULL,
        database=None,
        deadline=None,
        print_blob=True,
        suppress_health_check=[
            HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
    )


# -- the harness ----------------------------------------------------------------------------


class Writes:
    """Every write to the namespace, as Redis announces it (keyspace notifications: one
    per command that changes a key, none for reads). `collect()` returns what was written
    since it was last called: it publishes a marker and reads up to it, and Redis runs
    commands in order, so everything a finished call wrote comes before the marker."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        db = client.connection_pool.connection_kwargs.get("db", 0)
        self.client = client
        self.marker = f"fuzz-marker:{namespace}"
        self.pubsub = client.pubsub()
        self.pubsub.psubscribe(f"__keyspace@{db}__:{namespace}:*")
        self.pubsub.subscribe(self.marker)
        self.collect()

    def collect(self) -> list[tuple[str, str]]:
        self.client.publish(self.marker, "")
        writes, deadline = [], time.monotonic() + 10
        while time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=1)
            if message is None or message["type"] not in ("message", "pmessage"):
                continue
            channel = message["channel"].decode()
            if channel == self.marker:
                return writes
            writes.append((channel.split(":", 1)[1], message["data"].decode()))
        raise AssertionError("the keyspace notifications fell behind")

    def close(self) -> None:
        self.pubsub.close()


@dataclass
class Facade:
    """A facade on a fresh namespace, and a record of every write to it."""

    bq: BOQueue
    raw: redis.Redis
    writes: Writes
    tally: Counter[str] = field(default_factory=Counter)

    @property
    def ns(self) -> str:
        return self.bq.settings.namespace

    def call(self, fn: Callable[[], T]) -> tuple[T | None, BOQueueError | None]:
        """Run one fuzzed call: its result, or the BOQueueError it raised, in which case
        nothing in the namespace may have been written. Any other exception propagates
        (and fails the test, with the input that caused it)."""
        self.writes.collect()
        try:
            result = fn()
        except BOQueueError as exc:
            written = self.writes.collect()
            assert not written, f"{exc!r} was raised, but the call wrote {written[:5]}"
            self.tally["rejected"] += 1
            self.tally[type(exc).__name__] += 1
            return None, exc
        self.tally["accepted"] += 1
        return result, None

    def unchanged(self, fn: Callable[[], T]) -> T:
        """A call that must succeed and write nothing (a repeated report)."""
        self.writes.collect()
        result = fn()
        written = self.writes.collect()
        assert not written, f"a call that should change nothing wrote {written[:5]}"
        return result

    def sent_payload(self, task_id: str, queue: str) -> Any:
        """The payload a worker will get: from the held or parked message, or the newest
        message of the queue's broker lists (kombu pushes new messages on the left)."""
        for key in (f"{self.ns}:delayed:specs", f"{self.ns}:deps:parked"):
            spec = self.raw.hget(key, task_id)
            if spec is not None:
                return json.loads(spec)["payload"]
        for key in self.raw.scan_iter(match=f"{self.ns}:broker:{queue}*", _type="list"):
            newest = self.raw.lindex(key, 0)
            if newest is None:
                continue
            message = json.loads(newest)
            if message["headers"]["id"] == task_id:
                args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
                return args[0]
        raise AssertionError(f"no message for task {task_id}")


@pytest.fixture
def facade(redis_url: str) -> Iterator[Facade]:
    namespace = new_namespace()
    bq = BOQueue(redis_url=redis_url, namespace=namespace, max_payload_bytes=LIMIT,
                 queues=",".join(QUEUES))
    raw = redis.Redis.from_url(redis_url)
    raw.hset(bq.keys.handlers, mapping={  # what the workers of this namespace published
        name: json.dumps({"queue": queue}) for name, queue in HANDLERS.items()})
    # the session's own redis-server: announce every write (K: keyspace, A: every event)
    # while this test runs, then put the setting back
    previous = raw.config_get("notify-keyspace-events")["notify-keyspace-events"]
    raw.config_set("notify-keyspace-events", "KA")
    writes = Writes(raw, namespace)
    try:
        yield Facade(bq, raw, writes)
    finally:
        writes.close()
        raw.config_set("notify-keyspace-events", previous)
        bq.close()
        raw.close()


def roundtrip(value: Any) -> Any:
    return json.loads(json.dumps(value))


def record(facade: Facade, scenario: str, outcome: str) -> None:
    accepted, rejected = facade.tally["accepted"], facade.tally["rejected"]
    # the strategies must reach both sides of the edge, or the test proves little
    assert accepted >= 5 and rejected >= 5, dict(facade.tally)
    report.record(SECTION, scenario, outcome, examples=accepted + rejected, rejected=rejected)


# -- strategies: values -----------------------------------------------------------------------

surrogates = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2)
texts = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", " ", "é", "日本語", "\x00", "a:b", "../x", "x" * 300]),
    st.tuples(st.text(max_size=3), surrogates).map("".join),
)
huge_ints = st.integers(min_value=1, max_value=5000).map(lambda k: 10**k)
bad_floats = st.sampled_from([math.nan, math.inf, -math.inf])
numbers = st.one_of(
    st.integers(-10, 10), st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -0.0, 1e-7, 5e-324, 1e308, -1e308, 2**63, -(2**63)]),
    huge_ints, huge_ints.map(lambda n: -n), bad_floats,
)
json_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
plausible_json = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=15,
)
hostile_leaves = st.one_of(
    json_leaves, bad_floats, huge_ints, st.binary(max_size=4), st.sets(st.integers(), max_size=2),
    st.builds(object), st.complex_numbers(max_magnitude=2), surrogates,
    st.tuples(st.integers(), st.text(max_size=2)),
    st.just(datetime(2026, 1, 1, tzinfo=UTC)),
)
hostile_keys = st.one_of(st.text(max_size=6), st.integers(), st.none(), st.booleans(), huge_ints,
                         st.tuples(st.integers()), surrogates, st.just("__type__"))
hostile_json = st.recursive(
    hostile_leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile_keys, inner, max_size=3),
    max_leaves=10,
)


def _nest(depth: int, kind: str) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value] if kind == "list" else {"k": value}
    return value


deep = st.builds(_nest, st.integers(1, 5000), st.sampled_from(["list", "dict"]))
# values whose repr() itself fails (a 5,000-digit int, a list nested 5,000 deep) or means
# nothing: any message that shows a caller's value must survive these
weird = st.one_of(deep, huge_ints, st.builds(object))
# {"s": "..."} is 8 characters of JSON around the string: these straddle the limit, in
# ASCII and in characters JSON escapes to six ("\u00e9")
near_limit = st.one_of(
    st.integers(LIMIT - 24, LIMIT + 8).map(lambda n: {"s": "x" * (n - 8)}),
    st.integers((LIMIT - 24) // 6, (LIMIT + 8) // 6).map(lambda n: {"s": "é" * n}),
    st.integers(1, 3).map(lambda n: {"s": "x" * (LIMIT * n)}),
)
payloads = st.one_of(
    st.dictionaries(st.text(max_size=8), plausible_json, max_size=5),
    st.dictionaries(hostile_keys, hostile_json, max_size=4),
    deep.map(lambda d: {"d": d}),
    near_limit,
    st.none(),
    st.one_of(st.lists(st.integers(), max_size=2), st.integers(), st.text(max_size=4),
              st.binary(max_size=4), deep),
)

# -- strategies: submit options ---------------------------------------------------------------


def mixed(plausible: dict[str, st.SearchStrategy[Any]],
          hostile: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Keyword arguments, drawn three ways: all plausible (most are accepted), plausible
    but for one hostile field (the edge must catch that one), or anything goes. Fields
    named "*name" are always given, the others may be left out."""

    def build(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
        return st.fixed_dictionaries(
            {k[1:]: v for k, v in fields.items() if k.startswith("*")},
            optional={k: v for k, v in fields.items() if not k.startswith("*")})

    def one_bad(key: str) -> st.SearchStrategy[dict[str, Any]]:
        rest = build({k: v for k, v in plausible.items() if k != key})
        return st.tuples(rest, hostile[key]).map(lambda p: {**p[0], key.lstrip("*"): p[1]})

    anything = {k: st.one_of(plausible[k], hostile[k]) if k in hostile else plausible[k]
                for k in plausible}
    anything.update({k: v for k, v in hostile.items() if k not in plausible})
    return st.one_of(build(plausible), st.sampled_from(sorted(hostile)).flatmap(one_bad),
                     build(anything))


valid_ids = st.from_regex(TASK_ID, fullmatch=True)
zones = st.sampled_from([UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-12)),
                         ZoneInfo("Europe/Berlin"), ZoneInfo("Pacific/Chatham"), None])


def _moment(seconds: float, zone: Any) -> datetime:
    """A moment `seconds` from now (when the example is drawn), naive UTC or in `zone`."""
    moment = datetime.now(UTC) + timedelta(seconds=seconds)
    return moment.replace(tzinfo=None) if zone is None else moment.astimezone(zone)


soon = st.builds(_moment, st.sampled_from([30.0, 299.0, 301.0, 86400.0, 3.1e8]), zones)
moments = st.one_of(
    st.builds(_moment, st.floats(-1e5, 1e9, allow_nan=False), zones),
    st.builds(_moment, st.sampled_from([-10.0, -4.0, 0.0, 1.0, 3.2e8, 3.3e8]), zones),
    st.datetimes(), st.datetimes(timezones=zones.filter(lambda z: z is not None)),
    st.sampled_from([datetime.min, datetime.max]),
)
good_payloads = st.one_of(st.none(), st.dictionaries(st.text(max_size=8), plausible_json,
                                                     max_size=5))
SUBMIT_PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "*handler": st.sampled_from(["fuzz.echo", "fuzz.special"]),
    "*payload": good_payloads,
    "queue": st.sampled_from([None, *QUEUES]),
    "priority": st.one_of(st.sampled_from(list(Priority)),
                          st.sampled_from(["low", "HIGH", "Critical", "urgent", 0, 4])),
    "countdown": st.sampled_from([None, 0, 0.5, 10, 299, 301, 3600, 3.1e8]),
    "eta": st.one_of(st.none(), soon),
    "expires": st.one_of(st.sampled_from([None, 4e8, 3.2e8]),
                         st.builds(_moment, st.just(3.2e8), zones)),
    "tags": st.lists(st.one_of(st.sampled_from(["nightly", "a:b", "é", "schedule:x"]),
                               st.text(min_size=1, max_size=10)), max_size=3),
    "parent": st.sampled_from(["none", "base", "fresh"]),
    "depends": st.lists(st.sampled_from(["base", "child", "handle"]), max_size=2),
    "on_dependency_failure": st.sampled_from(["cancel", "run"]),
}
SUBMIT_HOSTILE: dict[str, st.SearchStrategy[Any]] = {
    "*handler": st.one_of(st.sampled_from(["", "nope", "fuzz.echo ", "x" * 201]), texts,
                          st.integers()),
    "*payload": st.one_of(
        st.dictionaries(hostile_keys, hostile_json, min_size=1, max_size=4),
        deep.map(lambda d: {"d": d}), near_limit,
        st.lists(st.integers(), max_size=2), st.integers(), st.text(max_size=4),
        st.binary(max_size=4), deep,
    ),
    "queue": st.one_of(st.sampled_from(["special", "missing", ""]), texts, st.integers(), weird),
    "priority": st.one_of(st.sampled_from(["nope", "", "1"]), st.integers(-2, 6), huge_ints,
                          st.floats(0, 5), st.booleans(), st.none()),
    "countdown": st.one_of(numbers, texts, st.sampled_from([-1, 3.3e8])),
    "eta": st.one_of(moments, st.integers(), texts),
    "expires": st.one_of(numbers, moments, st.sampled_from([1, 60, 3.3e8]), texts),
    "tags": st.one_of(st.lists(texts, min_size=1, max_size=3),
                      st.sampled_from(["nightly", ("a", "a"), "x" * 129]), st.none(),
                      st.integers(), st.lists(st.one_of(st.integers(), huge_ints), min_size=1,
                                              max_size=2)),
    "parent": st.sampled_from(["unknown", "colon", "surrogate", "int", "empty"]),
    "depends": st.lists(st.sampled_from(["unknown", "children-key", "colon", "empty", "int",
                                         "surrogate"]), min_size=1, max_size=3),
    "on_dependency_failure": st.sampled_from(["never", "", 1, None]),
}
submissions = mixed(SUBMIT_PLAUSIBLE, SUBMIT_HOSTILE)


@dataclass
class Known:
    """Tasks that exist in the namespace before the fuzzing starts."""

    base: TaskHandle
    child: TaskHandle


def _ids(known: Known, names: list[str]) -> list[Any]:
    table: dict[str, Any] = {
        "base": known.base.id, "child": known.child.id, "unknown": "no-such-task-0",
        "children-key": f"{known.base.id}:children",  # a real key, but not a task's record
        "colon": "a:b", "empty": "", "int": 7, "handle": known.base,
        "none": None, "surrogate": "\udc80", "fresh": "parent-that-never-ran",
    }
    return [table[name] for name in names]


def _submit_kwargs(known: Known, fields: dict[str, Any]) -> dict[str, Any]:
    """submit()'s keyword arguments from the drawn fields (ids named, then looked up)."""
    kwargs = {k: v for k, v in fields.items() if k not in ("handler", "payload", "parent",
                                                            "depends")}
    if "parent" in fields:
        kwargs["parent_id"] = _ids(known, [fields["parent"]])[0]
    if "depends" in fields:
        kwargs["depends_on"] = _ids(known, fields["depends"])
    return kwargs


def _check_task(facade: Facade, handle: TaskHandle, handler: str, payload: Any,
                kwargs: dict[str, Any]) -> None:
    """An accepted submission reads back as it was sent."""
    info = facade.bq.info(handle.id)
    declared = HANDLERS[handler]
    queue = kwargs.get("queue") or declared or "default"
    assert (info.handler, info.queue) == (handler, queue)
    assert info.priority is Priority.parse(kwargs.get("priority", Priority.NORMAL))
    tags = kwargs.get("tags", ())
    tags = (tags,) if isinstance(tags, str) else tuple(tags)
    assert info.tags == tuple(dict.fromkeys(tags))
    assert info.parent_id == kwargs.get("parent_id")
    depends = [d.id if isinstance(d, TaskHandle) else d for d in kwargs.get("depends_on", ())]
    assert info.depends_on == tuple(dict.fromkeys(depends))
    assert info.state in (TaskState.PENDING, TaskState.QUEUED)
    if depends:
        assert info.state is TaskState.PENDING  # no dependency has ended
    assert facade.sent_payload(handle.id, queue) == roundtrip({} if payload is None else payload)


# -- tasks ------------------------------------------------------------------------------------


def test_fuzzed_submissions_are_accepted_and_read_back_or_rejected_cleanly(
    facade: Facade,
) -> None:
    bq = facade.bq
    base = bq.submit("fuzz.echo", {"base": True})
    known = Known(base, bq.submit("fuzz.echo", {}, parent_id=base.id))

    @fuzz(300, 3000)
    @given(fields=submissions)
    def submit(fields: dict[str, Any]) -> None:
        handler, payload = fields["handler"], fields["payload"]
        kwargs = _submit_kwargs(known, fields)
        handle, _ = facade.call(lambda: bq.submit(handler, payload, **kwargs))
        if handle is not None:
            _check_task(facade, handle, handler, payload, kwargs)

    submit()
    # hostile ids for the read side: never another key's contents, never a redis error
    for task_id in (f"{base.id}:children", "", "\udc80", 5, "a" * 129, base.id + "\n"):
        for look in (bq.info, bq.cancel, bq.handle, bq.children):
            _, error = facade.call(functools.partial(look, task_id))
            assert isinstance(error, UnknownTaskError), (look, task_id, error)
    record(facade, "Fuzzed task submissions (payloads and every submit option)",
           "each call accepted and read back (record, queued payload) or a BOQueueError "
           "that wrote nothing")


batch_items = st.lists(
    st.fixed_dictionaries({"handler": st.sampled_from(["fuzz.echo", "fuzz.special"])},
                          optional={"payload": st.dictionaries(st.text(max_size=8),
                                                               plausible_json, max_size=3),
                                    "priority": st.sampled_from(["high", 0, Priority.LOW]),
                                    "tags": st.lists(st.sampled_from(["t", "é"]), max_size=2),
                                    "countdown": st.sampled_from([0, 1, 400]),
                                    "on_dependency_failure": st.just("run")}),
    min_size=1, max_size=5,
)
BREAKS = ["cycle", "self", "unknown", "duplicate", "taken", "colon", "item", "payload",
          "priority", "not-a-list"]


def _batch(items: list[dict[str, Any]], deps: list[list[int]], suffix: str,
           breaks: str | None, hostile: Any) -> Any:
    """A DAG: item i is "n<i><suffix>" and depends on earlier items only; then, maybe,
    one thing broken."""
    ids = [f"n{i}{suffix}" for i in range(len(items))]
    batch: list[Any] = [
        {**item, "id": ids[i], "depends_on": [ids[j] for j in deps[i] if j < i]}
        for i, item in enumerate(items)
    ]
    last = batch[-1]
    if breaks == "cycle":
        batch[0]["depends_on"] = [*batch[0]["depends_on"], last["id"]]
        last["depends_on"] = [*last["depends_on"], batch[0]["id"]]
    elif breaks == "self":
        last["depends_on"] = [last["id"]]
    elif breaks == "unknown":
        last["depends_on"] = ["no-such-task"]
    elif breaks == "duplicate":
        batch.append(dict(last))
    elif breaks == "taken":
        last["id"] = "taken"
    elif breaks == "colon":
        last["depends_on"] = [f"{batch[0]['id']}:children"]
    elif breaks == "item":
        batch.append(hostile)
    elif breaks == "payload":
        last["payload"] = hostile
    elif breaks == "priority":
        last["priority"] = hostile
    elif breaks == "not-a-list":
        return hostile
    return batch


def test_fuzzed_batches_are_all_or_nothing(facade: Facade) -> None:
    bq = facade.bq
    bq.submit_many([{"handler": "fuzz.echo", "id": "taken"}])

    @fuzz(100, 1000)
    @given(batch=st.builds(
        _batch, batch_items, st.lists(st.lists(st.integers(0, 4), max_size=2), min_size=5,
                                      max_size=5),
        st.integers(0, 10**9).map(lambda n: f"-{n}"),
        st.one_of(st.none(), st.sampled_from(BREAKS)),
        st.one_of(hostile_json, st.dictionaries(hostile_keys, hostile_leaves, max_size=2),
                  deep, st.none(), st.integers(), texts)))
    def submit_many(batch: Any) -> None:
        handles, _ = facade.call(lambda: bq.submit_many(batch))
        if handles is None:
            return
        assert [h.id for h in handles] == [item["id"] for item in batch]
        for item in batch:
            info = bq.info(item["id"])
            assert info.handler == item["handler"]
            assert info.depends_on == tuple(dict.fromkeys(item["depends_on"]))
            assert info.state is (TaskState.PENDING if item["depends_on"] or
                                  item.get("countdown") == 400 else TaskState.QUEUED)

    submit_many()
    record(facade, "Fuzzed batches (submit_many: DAGs, cycles, bad items)",
           "a batch is written whole and reads back, or rejected with nothing written")


# -- study specs ------------------------------------------------------------------------------

valid_names = st.sampled_from(["y", "lr", "depth", "booster", "x1", "_w", "layers"])
names = st.one_of(
    st.sampled_from(["gamma", "lambda", "E", "None", "id", "a__dot__b", "1x", "x-y", "", "é",
                     "x" * 65, "loss"]),
    texts, st.integers(),
)
# as a value (not a dict key): also ones whose repr() fails
name_values = st.one_of(names, weird)


def _range(name: str, low: float, width: float, log: bool, integer: bool) -> dict[str, Any]:
    if integer:
        low, width = round(low), max(1, round(width))
    if log:
        low = max(low, 1e-3)
    return {"kind": "range", "name": name, "low": low, "high": low + width, "log": log,
            "integer": integer}


good_ranges = st.builds(_range, valid_names, st.floats(-100, 100),
                        st.floats(1e-4, 1e3), st.booleans(), st.booleans())
good_choices = st.builds(
    lambda name, values, ordered: {"kind": "choice", "name": name, "values": values,
                                   "ordered": ordered},
    valid_names,
    st.one_of(st.lists(st.text(max_size=6), min_size=2, max_size=4, unique=True),
              st.lists(st.integers(-50, 50), min_size=2, max_size=4, unique=True),
              st.just([True, False]),
              st.lists(st.floats(-5, 5).filter(bool), min_size=2, max_size=3, unique=True)),
    st.one_of(st.none(), st.booleans()),
)
X = {"kind": "range", "name": "x", "low": 0.0, "high": 1.0}  # what constraints are on
good_parameters = st.lists(st.one_of(good_ranges, good_choices), max_size=3,
                           unique_by=lambda p: p["name"]).map(lambda ps: [X, *ps])
bad_parameter = st.one_of(
    st.fixed_dictionaries(
        {"kind": st.just("range"), "name": st.one_of(name_values, valid_names),
         "low": st.one_of(st.sampled_from([0, 1, 2, 1e-9]), numbers),
         "high": st.one_of(st.sampled_from([1, 10, 1e-9 + 1e-6, 1e308]), numbers)},
        optional={"log": st.one_of(st.booleans(), st.text(max_size=2)),
                  "integer": st.booleans(), "step": st.integers()}),
    st.fixed_dictionaries(
        {"kind": st.just("choice"), "name": st.one_of(name_values, valid_names),
         "values": st.one_of(st.lists(st.one_of(numbers, st.text(max_size=2), surrogates,
                                                st.none(), st.booleans()), max_size=4),
                             st.just([]), st.just(["a", "a"]), st.text(max_size=3))},
        optional={"ordered": st.one_of(st.none(), st.text(max_size=2))}),
    st.fixed_dictionaries({"kind": st.just("fixed"), "name": valid_names, "value": numbers}),
    st.dictionaries(hostile_keys, hostile_leaves, max_size=2), texts,
)
counts = st.one_of(st.integers(-2, 0), st.text(max_size=2), huge_ints, st.floats(0.5, 1.5))
SPEC_PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "*name": st.one_of(st.just("tune"), st.text(min_size=1, max_size=30)),
    "*parameters": good_parameters,
    "*objectives": st.lists(
        st.fixed_dictionaries({"name": st.sampled_from(["loss", "acc", "score"])},
                              optional={"minimize": st.booleans()}),
        min_size=1, max_size=2, unique_by=lambda o: o["name"]),
    "parameter_constraints": st.lists(st.builds(
        lambda c, op, b: {"coefficients": {"x": c}, "op": op, "bound": b},
        st.floats(-2, 2), st.sampled_from(["<=", ">="]), st.floats(-2, 2)), max_size=2),
    "outcome_constraints": st.lists(st.builds(
        lambda m, op, b: {"metric": m, "op": op, "bound": b},
        st.sampled_from(["cost", "latency"]), st.sampled_from(["<=", ">="]),
        st.floats(-1e6, 1e6)), max_size=2, unique_by=lambda c: c["metric"]),
    "strategy": st.fixed_dictionaries({}, optional={
        "initial_trials": st.integers(1, 5), "max_trials": st.integers(5, 50),
        "batch_size": st.one_of(st.none(), st.integers(1, 4)),
        "parallelism": st.integers(1, 4), "seed": st.one_of(st.none(), st.integers(0, 2**32 - 1)),
        "method": st.sampled_from(["fast", "quality", "random_search"]),
        "generation_time_limit_s": st.floats(0.1, 600), "trial_lease_s": st.floats(1, 1e5),
        "max_failed_trials": st.one_of(st.none(), st.integers(0, 10))}),
    "evaluator": st.sampled_from([None, "fuzz.echo"]),
    "evaluator_options": st.dictionaries(st.text(max_size=8), plausible_json, max_size=4),
}
SPEC_HOSTILE: dict[str, st.SearchStrategy[Any]] = {
    "*name": st.one_of(st.just(""), st.just("x" * 201), surrogates, st.integers(), st.none()),
    "*parameters": st.one_of(
        st.lists(bad_parameter, min_size=1, max_size=3).map(lambda ps: [X, *ps]),
        st.just([]), st.just([X, X]), texts, st.none()),
    "*objectives": st.one_of(
        st.lists(st.one_of(st.fixed_dictionaries({"name": name_values}, optional={
            "minimize": st.one_of(st.text(max_size=2), st.none())}), texts, st.none()),
            min_size=1, max_size=2),
        st.just([]), st.just([{"name": "x"}]), st.just([{"name": "loss"}, {"name": "loss"}]),
        texts),
    "parameter_constraints": st.one_of(
        st.lists(st.one_of(
            st.fixed_dictionaries(
                {"coefficients": st.dictionaries(st.one_of(names, st.just("x")), numbers,
                                                 max_size=3),
                 "bound": numbers},
                optional={"op": st.sampled_from(["<=", ">=", "==", "<"])}),
            st.sampled_from(["x + y <= 1", "2*x >= y"])),  # Ax's string form: not ours
            min_size=1, max_size=2),
        texts),
    "outcome_constraints": st.one_of(
        st.lists(st.one_of(
            st.fixed_dictionaries({"metric": st.one_of(name_values, st.just("loss")),
                                   "op": st.sampled_from(["<=", ">=", "="]), "bound": numbers}),
            texts), min_size=1, max_size=2),
        st.just([{"metric": "cost", "op": "<=", "bound": 1}] * 2)),
    "strategy": st.one_of(
        st.fixed_dictionaries({}, optional={
            "initial_trials": counts, "max_trials": counts, "batch_size": counts,
            "parallelism": counts, "max_failed_trials": counts,
            "seed": st.one_of(st.integers(-5, -1), st.integers(2**32, 2**64), huge_ints),
            "method": st.sampled_from(["slow", ""]),
            "generation_time_limit_s": numbers, "trial_lease_s": numbers,
            "colour": st.integers()}).filter(bool),
        st.none(), texts),
    "evaluator": st.one_of(st.sampled_from(["nope", "", "x" * 201]), texts, st.integers(), weird),
    "evaluator_options": st.one_of(
        st.dictionaries(hostile_keys, hostile_json, min_size=1, max_size=3),
        deep.map(lambda d: {"d": d}), st.none(), st.lists(st.integers(), max_size=2)),
    "bogus": st.integers(),
}
specs = st.one_of(
    mixed(SPEC_PLAUSIBLE, SPEC_HOSTILE), mixed(SPEC_PLAUSIBLE, SPEC_HOSTILE),
    st.dictionaries(hostile_keys, hostile_leaves, max_size=3),
    st.lists(st.integers(), max_size=2), st.none(), texts,
)
points = st.one_of(
    st.fixed_dictionaries({"x": st.floats(0, 1)}, optional={
        "y": numbers, "lr": numbers, "depth": numbers, "booster": texts, "z": numbers}),
    st.fixed_dictionaries({}, optional={"x": numbers, "y": numbers}),
    st.dictionaries(hostile_keys, hostile_leaves, max_size=3), st.lists(st.integers()),
    st.none(),
)


def _without_seed(spec: StudySpec) -> dict[str, Any]:
    data = spec.model_dump(mode="json")
    data["strategy"].pop("seed")
    return data


KEYWORDS = {"name", "parameters", "objectives", "strategy", "evaluator",
            "parameter_constraints", "outcome_constraints", "evaluator_options"}


def test_fuzzed_study_specs_are_stored_whole_or_rejected_cleanly(facade: Facade) -> None:
    bq = facade.bq

    @fuzz(300, 3000)
    @given(spec=specs, keywords=st.booleans(), point=points, strategy=st.one_of(
        SPEC_PLAUSIBLE["strategy"], SPEC_HOSTILE["strategy"]))
    def create(spec: Any, keywords: bool, point: Any, strategy: Any) -> None:
        if keywords and isinstance(spec, dict) and set(spec) <= KEYWORDS:
            # bq.studies.create(name, parameters, objectives, strategy, ...) as a caller
            # passes them; None is the keyword's default for the strategy and options
            kwargs = {"name": "tune", "parameters": [], "objectives": [], **spec}
            study, _ = facade.call(lambda: bq.studies.create(**kwargs))
            sent = {k: v for k, v in kwargs.items()
                    if v is not None or k not in ("strategy", "evaluator_options")}
        else:
            study, _ = facade.call(lambda: bq.studies.create_from_spec(spec))
            sent = spec
        if study is None:
            return
        stored = bq.studies.get(study.id)
        assert stored.status is StudyStatus.CREATED
        assert stored.spec.model_dump(mode="json") == study.spec.model_dump(mode="json")
        expected = StudySpec(**{**sent, "evaluator_options": roundtrip(
            sent.get("evaluator_options", {}))})
        assert _without_seed(stored.spec) == _without_seed(expected)
        seed = stored.spec.strategy.seed
        assert seed is not None and 0 <= seed < 2**32
        if expected.strategy.seed is not None:
            assert seed == expected.strategy.seed
        # a point in (or out of) the space: checked, or a bo_queue error; never a crash
        try:
            checked = stored.spec.check_params(point)
        except BOQueueError:
            facade.tally["points rejected"] += 1
        else:
            facade.tally["points accepted"] += 1
            assert set(checked) == {p.name for p in stored.spec.parameters}
        # and a new strategy for it, while it is CREATED
        changed, _ = facade.call(lambda: bq.studies.set_strategy(study.id, strategy))
        if changed is not None:
            now = bq.studies.get(study.id).spec.strategy
            assert now == changed.spec.strategy
            sent = {**Strategy().model_dump(), **strategy}
            assert now.model_dump(exclude={"seed"}) == Strategy(**sent).model_dump(
                exclude={"seed"})
            assert now.seed == (sent["seed"] if sent["seed"] is not None else now.seed)
            assert now.seed is not None

    create()
    for study in bq.studies.list():  # nothing stored is unreadable
        assert bq.studies.get(study.id) == study
    for study_id in ("", "\ud800", 5, "x" * 200, "no-such-study", "a:trials"):
        for look in (bq.studies.get, bq.studies.trials, bq.studies.export):
            _, error = facade.call(functools.partial(look, study_id))
            assert isinstance(error, StudyNotFoundError), (look, study_id, error)
    record(facade, "Fuzzed study specs and parameter spaces (JSON dicts and keywords)",
           "each spec stored and read back as sent, or a BOQueueError that wrote nothing")


# -- reports ----------------------------------------------------------------------------------

TRIALS = 600  # RUNNING trials to report on (more than the full size can use up)


class Memory(StorageBackend):
    """A backend to load prepared study states from (what importing a study does)."""

    def __init__(self, *states: StudyState) -> None:
        self.states = {state.study.id: state for state in states}

    def save(self, state: StudyState) -> None:
        self.states[state.study.id] = state

    def load(self, study_id: str) -> StudyState:
        return self.states[study_id]

    def list(self) -> list[str]:
        return sorted(self.states)

    def delete(self, study_id: str) -> bool:
        return self.states.pop(study_id, None) is not None


def _prepared(study_id: str, status: StudyStatus) -> StudyState:
    """A study with TRIALS trials: 0 completed, 1 failed, 2 abandoned, the rest running."""
    now = datetime.now(UTC)
    spec = StudySpec(name=study_id, parameters=[Range("x", 0.0, 1.0)],
                     objectives=[Objective("loss")],
                     outcome_constraints=[OutcomeConstraint(metric="cost", op="<=", bound=1)],
                     strategy=Strategy(seed=1, max_trials=10_000, initial_trials=1))
    closed = {0: TrialStatus.COMPLETED, 1: TrialStatus.FAILED, 2: TrialStatus.ABANDONED}
    trials = [
        Trial(index=i, params={"x": i / TRIALS}, status=closed.get(i, TrialStatus.RUNNING),
              values={"loss": 1.0, "cost": 0.5} if i == 0 else None,
              error="broke" if i == 1 else None, created_at=now)
        for i in range(TRIALS)
    ]
    study = Study(id=study_id, spec=spec, status=status, created_at=now, updated_at=now,
                  running_trials=TRIALS - 3, completed_trials=1, failed_trials=1, iteration=1)
    return StudyState(study, trials)


good_outcomes = st.one_of(st.floats(-1e6, 1e6), st.integers(-5, 5),
                          st.tuples(st.floats(-10, 10), st.floats(0, 1)).map(list))
bad_outcomes = st.one_of(
    bad_floats, huge_ints, st.booleans(), st.none(), texts,
    st.lists(st.one_of(st.floats(-1, 1), st.sampled_from([-1.0, math.nan, 10**400])),
             min_size=1, max_size=3),
)
REPORT_PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "*kind": st.sampled_from(["report", "report", "failure"]),
    "*study": st.just("active"),
    "*index": st.integers(3, TRIALS - 1),
    "*values": st.fixed_dictionaries({"loss": good_outcomes, "cost": good_outcomes}),
    "*reason": st.one_of(st.just(""), st.text(max_size=40)),
}
REPORT_HOSTILE: dict[str, st.SearchStrategy[Any]] = {
    "*study": st.sampled_from(["ended", "unknown", "aliased", "surrogate", "number"]),
    "*index": st.one_of(st.integers(0, 2), st.integers(-3, -1),
                        st.integers(TRIALS, TRIALS + 5), huge_ints, st.booleans(),
                        st.floats(0, 5), st.sampled_from(["3", "x", None]), weird),
    "*values": st.one_of(
        st.fixed_dictionaries({"loss": bad_outcomes, "cost": good_outcomes}),
        st.fixed_dictionaries({"loss": good_outcomes, "cost": bad_outcomes}),
        st.dictionaries(st.one_of(st.sampled_from(["loss", "cost", "acc"]), hostile_keys),
                        good_outcomes, max_size=3),
        st.lists(st.sampled_from(["loss", "cost"])), st.none(), texts, st.integers(), weird),
    "*reason": st.one_of(st.just("x" * 2001), st.integers(), st.none(), st.binary(max_size=3)),
}


def test_fuzzed_reports_are_recorded_once_or_rejected_cleanly(facade: Facade) -> None:
    bq = facade.bq
    bq.studies.load("fuzzactive", Memory(_prepared("fuzzactive", StudyStatus.ACTIVE)))
    bq.studies.load("fuzzended", Memory(_prepared("fuzzended", StudyStatus.COMPLETED)))
    ids: dict[str, Any] = {"active": "fuzzactive", "ended": "fuzzended",
                           "unknown": "no-such-study", "aliased": "fuzzactive:trials",
                           "surrogate": "\udc80", "number": 42}

    @fuzz(300, 3000)
    @given(fields=mixed(REPORT_PLAUSIBLE, REPORT_HOSTILE))
    def tell(fields: dict[str, Any]) -> None:
        study_id, index = ids[fields["study"]], fields["index"]
        values, reason = fields["values"], fields["reason"]
        if fields["kind"] == "report":
            def call() -> bool:
                return bq.studies.report(study_id, index, values)

            def other() -> bool:
                return bq.studies.report_failure(study_id, index, "something else")
        else:
            def call() -> bool:
                return bq.studies.report_failure(study_id, index, reason)

            def other() -> bool:
                return bq.studies.report(study_id, index, {"loss": 0, "cost": 0})
        recorded, error = facade.call(call)
        if error is not None:
            return
        assert isinstance(recorded, bool)
        assert facade.unchanged(call) is False  # idempotent: a repeat writes nothing
        if recorded:
            facade.tally["recorded"] += 1
            _, error = facade.call(other)  # a different result for it: a conflict
            assert isinstance(error, ReportConflictError), error
            facade.tally["rejected"] -= 1  # a check, not a fuzzed call
        assert bq.studies.trial(study_id, index).index == index

    tell()
    assert bq.studies.get("fuzzactive").status is StudyStatus.ACTIVE
    assert len(bq.studies.trials("fuzzactive")) == TRIALS
    record(facade, "Fuzzed trial reports (metrics, NaN, indexes, studies)",
           "each report recorded once (a repeat is a no-op, a different one a conflict), "
           "or a BOQueueError that wrote nothing")


# -- schedules --------------------------------------------------------------------------------

cron_numbers = st.one_of(st.integers(-2, 70), st.sampled_from([99999999999999999999]))
cron_atoms = st.one_of(
    st.just("*"), cron_numbers.map(str), cron_numbers.map(lambda n: f"*/{n}"),
    st.tuples(cron_numbers, cron_numbers).map(lambda ab: f"{ab[0]}-{ab[1]}"),
    st.tuples(cron_numbers, cron_numbers).map(lambda ab: f"{ab[0]},{ab[1]}"),
    st.sampled_from(["mon", "sun-sat", "jan", "dec", "L", "?", "5/0", "1-2-3", "", "٣"]),
)
good_crons = st.one_of(
    st.sampled_from(["0 3 * * *", "*/5 * * * *", "30 2 * * *", "0 0 29 2 *", "0 0 * * mon",
                     "0 12 1 jan *", "15,45 */2 * * 1-5"]),
    st.tuples(st.integers(0, 59), st.integers(0, 23), st.integers(1, 28), st.integers(1, 12),
              st.integers(0, 6)).map(lambda f: " ".join(map(str, f))),
)
good_zones = st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kathmandu",
                              "Australia/Lord_Howe", "Pacific/Chatham"])
schedule_names = st.sampled_from(["nightly", "tick", "a.b-c_d", "x:y", "report-7"])
SCHEDULE_PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "*name": st.one_of(schedule_names,  # few: names collide, and replace= decides
                       st.from_regex(r"[A-Za-z0-9_.-][A-Za-z0-9_.:-]{0,30}", fullmatch=True)),
    "*kind": st.sampled_from(["handler", "handler", "study"]),
    "*handler": st.just("fuzz.echo"),
    "*payload": good_payloads,
    "*when": st.one_of(st.tuples(st.just("every"), st.one_of(
                           st.sampled_from([1, 30, 0.5, 3600, 86400 * 365]),
                           st.floats(1e-3, 1e6), st.integers(1, 10**6),
                           st.sampled_from([timedelta(seconds=30), timedelta(hours=6)]))),
                       st.tuples(st.just("cron"), good_crons)),
    "timezone": good_zones,
    "queue": st.sampled_from([None, *QUEUES]),
    "priority": st.sampled_from([Priority.HIGH, "low", 4]),
    "tags": st.lists(st.sampled_from(["nightly", "a:b", "é"]), max_size=2),
    "*replace": st.sampled_from([True, True, False]),
}
SCHEDULE_HOSTILE: dict[str, st.SearchStrategy[Any]] = {
    "*name": st.one_of(
        st.sampled_from([":schedule", ":lock", ":statics", "", "a" * 201, "é", "a b", "x\n"]),
        texts, st.integers(), weird, st.none()),
    "*handler": st.one_of(st.sampled_from(["", "nope", STEP + "x"]), texts, st.integers(), weird),
    "*payload": st.one_of(
        st.dictionaries(hostile_keys, hostile_json, min_size=1, max_size=3),
        st.just({"at": {"__type__": "datetime", "year": 2026}}),
        st.just({"__type__": "interval", "every": 1, "relative": False}),
        deep.map(lambda d: {"d": d}), near_limit, st.lists(st.integers(), max_size=2)),
    "*when": st.one_of(
        st.tuples(st.just("every"), st.one_of(
            numbers, texts, st.booleans(), st.floats(0, 1e-6), st.none(), weird,
            st.sampled_from([timedelta(0), timedelta(microseconds=1) / 2, timedelta(days=-1),
                             timedelta.max, timedelta.min, 10 * 366 * 86400 + 1]))),
        st.tuples(st.just("cron"), st.one_of(
            st.sampled_from(["0 0 31 2 *", "0 0 30 2 *", "61 * * * *", "* * * *", "@daily"]),
            st.lists(cron_atoms, min_size=4, max_size=6).map(" ".join),
            texts, st.integers(), weird, st.lists(st.text(max_size=2), max_size=2), st.none())),
        st.tuples(st.just("both"), st.just((30, "0 3 * * *"))),
        st.tuples(st.just("neither"), st.none()),
    ),
    "timezone": st.one_of(
        st.sampled_from(["Nowhere/Else", "../etc/passwd", "/etc/localtime", "", "UTC\x00",
                         "Europe/", "Europe", "zone.tab", "utc", "x" * 300]),
        texts, st.integers(), weird, st.none()),
    "queue": st.one_of(st.sampled_from(["missing", ""]), texts, st.integers(), weird),
    "priority": st.one_of(st.sampled_from(["nope", 9, None]), texts),
    "tags": st.one_of(st.lists(texts, min_size=1, max_size=2), st.integers(), st.none()),
}
TEMPLATE = {"name": "nightly", "parameters": [X], "objectives": [{"name": "loss"}]}


def _schedule_call(bq: BOQueue, fields: dict[str, Any]) -> tuple[Callable[[], Any],
                                                                dict[str, Any]]:
    """The add (or add_study) call the fields describe, and its timing keywords."""
    mode, value = fields["when"]
    timing: dict[str, Any] = {}
    if mode in ("every", "both"):
        timing["every"] = value[0] if mode == "both" else value
    if mode in ("cron", "both"):
        timing["cron"] = value[1] if mode == "both" else value
    if "timezone" in fields:
        timing["timezone"] = fields["timezone"]
    name, replace = fields["name"], fields.get("replace", False)
    if fields["kind"] == "study":
        options = fields["payload"]
        spec = TEMPLATE if options is None else {**TEMPLATE, "evaluator_options": options}
        return lambda: bq.schedules.add_study(name, spec, replace=replace, **timing), timing
    extra = {k: fields[k] for k in ("queue", "priority", "tags") if k in fields}
    return lambda: bq.schedules.add(name, fields["handler"], fields["payload"],
                                    replace=replace, **timing, **extra), timing


def test_fuzzed_schedules_are_listed_as_sent_or_rejected_cleanly(facade: Facade) -> None:
    bq = facade.bq

    @fuzz(300, 3000)
    @given(fields=mixed(SCHEDULE_PLAUSIBLE, SCHEDULE_HOSTILE))
    def add(fields: dict[str, Any]) -> None:
        call, timing = _schedule_call(bq, fields)
        info, _ = facade.call(call)
        if info is None:
            return
        name, payload = fields["name"], fields["payload"]
        stored = bq.schedules.get(name)
        assert stored.model_dump(exclude={"next_run_at"}) == info.model_dump(
            exclude={"next_run_at"})
        assert stored.name == name and stored.enabled and stored.next_run_at is not None
        assert stored.timezone == timing.get("timezone", "UTC")
        assert stored.cron == timing.get("cron")
        every = timing.get("every")
        assert stored.every_s == (every.total_seconds() if isinstance(every, timedelta)
                                  else every)
        if fields["kind"] == "study":
            assert stored.payload["evaluator_options"] == roundtrip(payload or {})
        else:
            assert stored.handler == fields["handler"]
            assert stored.payload == roundtrip({} if payload is None else payload)
            assert stored.queue == fields.get("queue")
            assert stored.priority is Priority.parse(fields.get("priority", Priority.NORMAL))
            assert stored.tags == tuple(dict.fromkeys(fields.get("tags", ())))
        listed = facade.raw.zscore(f"{facade.ns}:redbeat::schedule", f"{facade.ns}:redbeat:{name}")
        assert listed is not None  # in the index beat and list() read

    add()
    # every schedule stored reads back, and redbeat's own keys are what redbeat made them
    entries = facade.raw.zrange(f"{facade.ns}:redbeat::schedule", 0, -1)
    assert len(bq.schedules.list()) == len(entries)
    assert facade.raw.type(f"{facade.ns}:redbeat::schedule") == b"zset"
    assert not facade.raw.exists(f"{facade.ns}:redbeat::lock")
    record(facade, "Fuzzed schedule specs (names, every, cron, time zones, payloads)",
           "each schedule listed and read back as sent, or a BOQueueError that wrote "
           "nothing; redbeat's own keys untouched")
