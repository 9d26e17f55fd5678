"""A study's evaluations carry the `bo_study` header (workers.study_step), on fakeredis with
what is sent recorded: the study step's durable submit, the held send, the
outbox's re-send and a held retry all keep it; an ordinary task never has it, and only a
marked task reports to a study."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest

import bo_queue
from bo_queue import BOQueue
from bo_queue.core.message import Message
from bo_queue.core.outbox import Outbox
from bo_queue.studies.manager import STEP
from bo_queue.studies.models import Objective, Range, Study, Trial
from workers import runner, study_step
from workers.study_step import Stepper, evaluation_marker, marked_trial

EVALUATOR = "unit.marker.eval"
Sent = list[dict[str, Any]]


@bo_queue.handler(EVALUATOR, queue="evaluate")
def _evaluate(payload: dict[str, Any], ctx: Any) -> dict[str, float]:
    return {"loss": 0.0}


@pytest.fixture
def sent(bq: BOQueue, monkeypatch: pytest.MonkeyPatch) -> Sent:
    """What Core.send pushes on a queue list (Message.envelope, read back as the task
    name, id, arguments, bo_queue's headers, retries and Celery's time limits)."""
    out: Sent = []
    send = bq.send

    def recording(task_id: str, message: Message, pipe: Any = None) -> None:
        envelope = json.loads(message.envelope(task_id))
        head = envelope["headers"]
        hard, soft = head["timelimit"]
        out.append({
            "name": head["task"], "task_id": head["id"], "retries": head["retries"],
            "args": json.loads(base64.b64decode(envelope["body"]))[0],
            "headers": {k: v for k, v in head.items() if k.startswith("bo_")},
            "soft_time_limit": soft, "time_limit": hard,
        })
        send(task_id, message, pipe)

    monkeypatch.setattr(bq, "send", recording)
    return out


@pytest.fixture
def study(bq: BOQueue, server: fakeredis.FakeServer) -> Study:
    bq.studies.store.raw = fakeredis.FakeRedis(server=server)
    return bq.studies.create("marked", [Range("x", 0.0, 1.0)], [Objective("loss")],
                             evaluator=EVALUATOR)


def trials(*indices: int) -> list[Trial]:
    now = datetime.now(UTC)
    return [Trial(index=i, params={"x": i / 10}, task_id=f"eval-{i}", created_at=now)
            for i in indices]


def headers(call: dict[str, Any]) -> dict[str, Any]:
    return call.get("headers") or {}


def test_the_study_step_marks_its_evaluations(
    bq: BOQueue, fake: fakeredis.FakeRedis, sent: Sent, study: Study
) -> None:
    Stepper(bq, bq.studies.store, study.id)._evaluate(study, trials(0, 1))
    # durable: held with the record, then released and sent at once
    assert [(c["task_id"], headers(c)) for c in sent] == [
        ("eval-0", {"bo_study": {"study_id": study.id, "trial_index": 0}}),
        ("eval-1", {"bo_study": {"study_id": study.id, "trial_index": 1}}),
    ]
    assert [c["args"][0]["trial_index"] for c in sent] == [0, 1]
    # the message kept for the outbox carries the marker too
    kept = json.loads(fake.hget(bq.keys.outbox, "eval-1"))
    assert kept["study"] == evaluation_marker(study.id, 1)


def test_the_outbox_sends_a_lost_evaluation_again_with_its_marker(
    bq: BOQueue, fake: fakeredis.FakeRedis, sent: Sent, study: Study
) -> None:
    Stepper(bq, bq.studies.store, study.id)._evaluate(study, trials(4))
    sent.clear()
    fake.hset(bq.keys.task("eval-4"), "state", "QUEUED")  # its message never arrived:
    fake.delete(*fake.keys(bq.keys.broker_prefix + "*"))  # lost with a Redis that died
    outbox = Outbox(fake, bq.keys)
    outbox.suspect("a worker died")
    assert outbox.reconcile(bq.send, lambda: bq.settings.queues, settle_s=0) == ["eval-4"]
    assert [headers(c) for c in sent] == [{"bo_study": evaluation_marker(study.id, 4)}]


def test_a_held_retry_keeps_the_marker(bq: BOQueue, fake: fakeredis.FakeRedis, sent: Sent) -> None:
    marker = evaluation_marker("s1", 3)
    request = SimpleNamespace(
        id="eval-3", delivery_info={"routing_key": "evaluate", "priority": 3}, expires=None,
        retries=0, parent_id=None, bo_resources={"cpu": 1.0}, bo_study=marker,
    )
    task = SimpleNamespace(bq=bq, spec=SimpleNamespace(name=EVALUATOR, queue="evaluate"),
                           request=request)
    runner._hold(task, {"study_id": "s1", "trial_index": 3}, 0.0, retries=1)  # type: ignore[arg-type]
    assert json.loads(fake.hget(bq.delays.specs, "eval-3"))["study"] == marker
    assert bq.delays.release_due(bq.send) == 1
    [call] = sent
    assert headers(call) == {"bo_resources": {"cpu": 1.0}, "bo_study": marker}
    assert call["retries"] == 1


def test_a_held_retry_drops_headers_it_cannot_read(
    bq: BOQueue, fake: fakeredis.FakeRedis, sent: Sent
) -> None:
    request = SimpleNamespace(
        id="eval-5", delivery_info={"routing_key": "evaluate", "priority": 3}, expires=None,
        retries=0, parent_id=None, bo_resources={"cpu": "lots"}, bo_study="s1:5",
    )
    task = SimpleNamespace(bq=bq, spec=SimpleNamespace(name=EVALUATOR, queue="evaluate"),
                           request=request)
    runner._hold(task, {"x": 1}, 0.0, retries=1)  # type: ignore[arg-type]
    held = json.loads(fake.hget(bq.delays.specs, "eval-5"))
    assert (held["resources"], held["study"], held["retries"]) == (None, None, 1)


def test_a_held_retry_keeps_the_submits_retry_policy_and_time_limit(
    bq: BOQueue, fake: fakeredis.FakeRedis, sent: Sent
) -> None:
    policy = {"max_retries": 4, "backoff": 2.0, "backoff_max": 8.0, "jitter": False,
              "on": ["builtins.KeyError"]}
    request = SimpleNamespace(
        id="t-6", delivery_info={"routing_key": "default"}, expires=None, retries=0,
        parent_id=None, bo_retry=policy, timelimit=[7.5, 2.5],
    )
    task = SimpleNamespace(bq=bq, spec=SimpleNamespace(name=EVALUATOR, queue="default"),
                           request=request)
    runner._hold(task, {"x": 1}, 0.0, retries=1)  # type: ignore[arg-type]
    assert bq.delays.release_due(bq.send) == 1
    [call] = sent
    assert headers(call) == {"bo_retry": policy}
    assert (call["soft_time_limit"], call["time_limit"]) == (2.5, 7.5)
    sent.clear()
    request.bo_retry, request.timelimit = {"max_retries": "many"}, [None, None]
    runner._hold(task, {"x": 1}, 0.0, retries=2)  # type: ignore[arg-type]
    held = json.loads(fake.hget(bq.delays.specs, "t-6"))
    assert (held["retry"], held["time_limit"]) == (None, None)  # unreadable: the handler's


def test_an_ordinary_task_is_not_marked_whatever_its_payload(
    bq: BOQueue, fake: fakeredis.FakeRedis, sent: Sent
) -> None:
    payload = {"study_id": "s1", "trial_index": 0, "params": {"x": 0.1}}
    direct = bq.submit(EVALUATOR, payload)
    held = bq.submit(EVALUATOR, payload, countdown=3600)
    [durable] = bq.submit_many([{"handler": EVALUATOR, "payload": payload}], durable=True)
    assert [c["task_id"] for c in sent] == [direct.id, durable.id]
    assert all("bo_study" not in headers(c) for c in sent)
    assert json.loads(fake.hget(bq.delays.specs, held.id))["study"] is None
    assert json.loads(fake.hget(bq.keys.outbox, direct.id))["study"] is None


def finished_task(bq: BOQueue, **request: Any) -> Any:
    return SimpleNamespace(name=EVALUATOR, bq=bq, request=SimpleNamespace(
        id="eval-0", hostname="w1@host", **request))


def test_only_a_marked_task_reports_to_its_study(
    bq: BOQueue, sent: Sent, study: Study
) -> None:
    payload = {"study_id": study.id, "trial_index": 0, "params": {"x": 0.0}}
    store = bq.studies.store
    study_step._evaluation_finished(finished_task(bq), payload, {"loss": 1.0}, None)
    study_step._evaluation_finished(
        finished_task(bq, bo_study={"study_id": study.id, "trial_index": True}),
        payload, {"loss": 1.0}, None)
    assert store.inbox(study.id) == [] and sent == []  # no header, or not a real one

    marked = finished_task(bq, bo_study=evaluation_marker(study.id, 2))
    study_step._evaluation_finished(marked, {"anything": 1}, {"loss": 0.5}, None)
    [entry] = store.inbox(study.id)
    assert (entry["index"], entry["values"], entry["task_id"]) == (2, {"loss": 0.5}, "eval-0")
    assert [c["name"] for c in sent] == [STEP]  # and the study takes a step


def test_marked_trial_reads_only_a_well_formed_marker() -> None:
    assert marked_trial(SimpleNamespace(bo_study=evaluation_marker("s", 1))) == ("s", 1)
    for bad in (None, "s:1", {"study_id": "s"}, {"study_id": 1, "trial_index": 1},
                {"study_id": "s", "trial_index": "1"}):
        assert marked_trial(SimpleNamespace(bo_study=bad)) is None, bad
    assert marked_trial(SimpleNamespace()) is None
