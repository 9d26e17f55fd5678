"""The public surface: `bo_queue.__all__` is pinned, and the error tree is as drawn."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import bo_queue
from bo_queue import errors

EXPECTED_ALL = [
    "AgentError",
    "AsyncBOQueue",
    "AsyncTaskHandle",
    "BOQueue",
    "BOQueueError",
    "BrokerUnavailableError",
    "Choice",
    "ConfigurationError",
    "DependencyError",
    "EarlyStopping",
    "FileStorage",
    "Handler",
    "InvalidResultError",
    "InvalidTransitionError",
    "LinearConstraint",
    "MissingFieldError",
    "NotHeldError",
    "Objective",
    "OutcomeConstraint",
    "Priority",
    "Progress",
    "Range",
    "ReplicaAckError",
    "ReportConflictError",
    "ResultTimeoutError",
    "RetryPolicy",
    "SQLStorage",
    "Settings",
    "Step",
    "StorageError",
    "Strategy",
    "Study",
    "StudyError",
    "StudyNotFoundError",
    "StudyStatus",
    "StudyTimeoutError",
    "TERMINAL_STATES",
    "TaskCancelledError",
    "TaskContext",
    "TaskError",
    "TaskExpiredError",
    "TaskFailedError",
    "TaskHandle",
    "TaskInfo",
    "TaskLostError",
    "TaskRequest",
    "TaskRun",
    "TaskState",
    "TaskTimeoutError",
    "Trial",
    "TrialNotFoundError",
    "TrialStatus",
    "UnknownHandlerError",
    "UnknownTaskError",
    "ValidationError",
    "WebhookNotFoundError",
    "Workflow",
    "WorkflowError",
    "WorkflowNotFoundError",
    "WorkflowRun",
    "WorkflowStatus",
    "WorkflowTimeoutError",
    "__version__",
    "condition",
    "handler",
    "ref",
    "register",
]


def test_all_is_pinned() -> None:
    assert sorted(bo_queue.__all__) == EXPECTED_ALL
    assert len(set(bo_queue.__all__)) == len(bo_queue.__all__), "duplicates in __all__"


@pytest.mark.parametrize("name", EXPECTED_ALL)
def test_every_public_name_is_importable(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from bo_queue import {name}", namespace)
    assert namespace[name] is getattr(bo_queue, name)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from bo_queue import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == EXPECTED_ALL


def _exception_classes() -> list[type[BaseException]]:
    return [
        obj
        for _, obj in inspect.getmembers(errors, inspect.isclass)
        if issubclass(obj, BaseException) and obj.__module__ == errors.__name__
    ]


def test_errors_module_defines_the_drawn_tree() -> None:
    names = {cls.__name__ for cls in _exception_classes()}
    for drawn in (
        "BOQueueError", "ConfigurationError", "ValidationError", "UnknownHandlerError",
        "UnknownTaskError", "BrokerUnavailableError", "DependencyError", "TaskError",
        "TaskFailedError", "TaskCancelledError", "TaskExpiredError", "TaskTimeoutError",
        "InvalidResultError",
    ):
        assert drawn in names


def test_every_error_is_drawn_in_the_tree() -> None:
    doc = errors.__doc__ or ""
    tree = doc[doc.index("    BOQueueError"):].split("\n\n")[0]  # the drawing, to its blank line
    drawn = re.findall(r"^\s+(?:[│ ]*[├└]── )?([A-Za-z]+Error)\b", tree, re.MULTILINE)
    assert sorted(drawn) == sorted(cls.__name__ for cls in _exception_classes())


def test_no_module_defines_an_error_outside_errors_py() -> None:
    """Every BOQueueError subclass lives in bo_queue/errors.py: a static scan of every
    module of bo_queue, workers and scheduler (no imports: some need Ax)."""
    known = {cls.__name__ for cls in _exception_classes()}
    root = Path(errors.__file__).resolve().parent.parent
    elsewhere = []
    for package in ("bo_queue", "workers", "scheduler"):
        for path in sorted((root / package).rglob("*.py")):
            if path.name == "errors.py" and path.parent.name == "bo_queue":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef):
                    bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "")
                             for b in node.bases}
                    if bases & known:
                        elsewhere.append(f"{path.relative_to(root)}: {node.name}")
    assert elsewhere == []


@pytest.mark.parametrize("cls", _exception_classes(), ids=lambda c: c.__name__)
def test_every_error_has_one_root(cls: type[BaseException]) -> None:
    assert issubclass(cls, errors.BOQueueError)


def test_every_error_is_public() -> None:
    for cls in _exception_classes():
        assert cls.__name__ in bo_queue.__all__, f"{cls.__name__} is not exported"


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (errors.ValidationError, ValueError),
        (errors.UnknownHandlerError, ValueError),
        (errors.InvalidResultError, ValueError),
        (errors.UnknownTaskError, LookupError),
        (errors.TaskTimeoutError, TimeoutError),
        (errors.ResultTimeoutError, TimeoutError),
        (errors.BrokerUnavailableError, ConnectionError),
    ],
)
def test_errors_are_also_the_matching_builtin(
    cls: type[BaseException], builtin: type[BaseException]
) -> None:
    assert issubclass(cls, builtin)


@pytest.mark.parametrize(
    ("cls", "parent"),
    [
        (errors.UnknownHandlerError, errors.ValidationError),
        (errors.InvalidResultError, errors.ValidationError),
        (errors.TaskFailedError, errors.TaskError),
        (errors.TaskCancelledError, errors.TaskError),
        (errors.TaskExpiredError, errors.TaskError),
        (errors.TaskTimeoutError, errors.TaskFailedError),
    ],
)
def test_tree_shape(cls: type[BaseException], parent: type[BaseException]) -> None:
    assert issubclass(cls, parent)


def test_a_wait_that_gives_up_is_not_how_the_task_ended() -> None:
    # get(timeout=) giving up says nothing of the task; a task past its time limit failed
    assert not issubclass(errors.ResultTimeoutError, errors.TaskError)
    assert not issubclass(errors.TaskTimeoutError, errors.ResultTimeoutError)
    exc = errors.ResultTimeoutError("t3", 0.5)
    assert exc.task_id == "t3" and exc.timeout == 0.5 and "0.5 s" in str(exc)


def test_task_errors_are_not_validation_errors() -> None:
    assert not issubclass(errors.TaskError, ValueError)
    assert not issubclass(errors.ConfigurationError, errors.ValidationError)


def test_task_failed_error_carries_the_remote_failure() -> None:
    exc = errors.TaskFailedError("t1", "mymod.Boom", "it broke", "Traceback ...\nBoom")
    assert exc.task_id == "t1"
    assert exc.remote_type == "mymod.Boom"
    assert exc.remote_message == "it broke"
    assert exc.remote_traceback == "Traceback ...\nBoom"
    assert "mymod.Boom" in str(exc) and "it broke" in str(exc) and "t1" in str(exc)


def test_task_cancelled_error_has_a_reason() -> None:
    exc = errors.TaskCancelledError("t2", "tag 'nightly' cancelled")
    assert exc.task_id == "t2"
    assert exc.reason == "tag 'nightly' cancelled"
    assert "tag 'nightly' cancelled" in str(exc)


def test_unknown_handler_and_unknown_task_name_what_is_missing() -> None:
    handler_exc = errors.UnknownHandlerError("a.b", ["z.y", "c.d"])
    assert handler_exc.name == "a.b"
    assert "'a.b'" in str(handler_exc) and "c.d, z.y" in str(handler_exc)
    task_exc = errors.UnknownTaskError("abc")
    assert task_exc.task_id == "abc" and "'abc'" in str(task_exc)
