"""Checks every edge shares: task ids, JSON payloads, time horizons, UTF-8, redaction.

A leaf module (it imports only bo_queue.errors), so the kernel, the services and the HTTP
API all validate the same way, with the same messages.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pydantic

from bo_queue.errors import UnknownTaskError, ValidationError, shown

# How far ahead a task may be due or expire: record TTLs and timestamps stay in range
# (Redis EXPIRE, datetime), whatever a caller sends (1e308, inf).
MAX_HORIZON_S = 10 * 366 * 86400.0

# What a task id may be (a request's own `id`, `parent_id`, `depends_on`): no ':', which
# separates a task's own keys ({ns}:task:<id>:children, :checkpoint, ...), so an id can
# never name another task's key.
TASK_ID = r"^[A-Za-z0-9._@-]{1,128}$"
TASK_ID_PATTERN = re.compile(TASK_ID)

# How deeply JSON (a payload, evaluator options) may nest: json.dumps recurses, and Lua's
# cjson stops at 1000 levels; real payloads are nowhere near either.
MAX_JSON_DEPTH = 100


def known_id(task_id: object) -> str:
    """A task id that can name a record; anything else is no task (UnknownTaskError),
    before it is used in a key name (where "x:children" would name another key)."""
    if not isinstance(task_id, str) or not TASK_ID_PATTERN.fullmatch(task_id):
        raise UnknownTaskError(task_id if isinstance(task_id, str) else shown(task_id))
    return task_id


def encodable(text: str) -> bool:
    """Whether Redis can store `text` (UTF-8: no lone surrogates such as '\ud800')."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """How deeply `value` nests (lists and dicts), counted without recursion and up to
    `limit` + 1: a caller's 100,000-deep list is measured, not a RecursionError."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list | tuple):
            deepest = max(deepest, depth)
            if depth > limit:
                return depth
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def check_json(value: Any, what: str, limit: int | None = None) -> str:
    """`value` as compact JSON, or ValidationError saying why it cannot be: not
    JSON-serialisable (bytes, sets, objects, NaN, non-str keys), nesting deeper than
    MAX_JSON_DEPTH, or more than `limit` bytes."""
    if json_depth(value) > MAX_JSON_DEPTH:
        raise ValidationError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValidationError(f"{what} is not JSON-serialisable: {exc}") from None
    if limit is not None and len(text) > limit:
        raise ValidationError(f"{what} is {len(text)} bytes; the limit is {limit}")
    return text


def check_payload(payload: Mapping[str, Any], limit: int) -> None:
    """A task payload: JSON of at most `limit` bytes (ValidationError otherwise)."""
    check_json(payload, "payload", limit)


def problems(exc: pydantic.ValidationError, whole: str = "value") -> str:
    """pydantic's errors as one line, "field: message; ..." (`whole` names an error of
    the model itself, which has no field)."""
    return "; ".join(
        f"{'.'.join(str(part) for part in err['loc']) or whole}: {err['msg']}"
        for err in exc.errors()
    )


def redact(url: str) -> str:
    """The URL without its password (error messages end up in logs and HTTP replies)."""
    return re.sub(r"(?<=://)([^:/@]*):[^@/]*@", r"\1:***@", url)


def utc(ts: float) -> datetime:
    """A Unix timestamp as an aware UTC datetime."""
    return datetime.fromtimestamp(ts, UTC)


def timestamp(moment: datetime) -> float:
    """A datetime as a Unix timestamp; a naive one is taken to be UTC."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
