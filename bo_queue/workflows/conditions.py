"""The small, safe expression form workflow conditions and payload references use.

A condition is (field, operator, value): `Condition("check.status", "==", "passed")`, or
the same written as text, "check.status == passed", parsed by a regular expression and
JSON, never `eval`. A field is a dotted path into the workflow's context:

    input.<key>      what `bq.workflows.run(..., inputs=...)` was given
    vars.<key>       what `bq.workflows.set_vars(...)` set while it runs
    <step>[.<key>]   the result of an earlier step (a parallel step: the list of results)
    <loop>.iterations  how many times a loop's body has run
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, model_validator

from bo_queue.errors import MissingFieldError, ValidationError, WorkflowError
from bo_queue.validation import problems

Op = Literal["==", "!=", "<", "<=", ">", ">=", "in", "not in", "contains", "exists"]
FIELD = r"[A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*"
_TEXT = re.compile(  # symbols may touch the field ("a.b==1"); words need a space
    rf"^\s*({FIELD})(?:\s*(==|!=|<=|>=|<|>)|\s+(not in|in|contains|exists)\b)\s*(.*?)\s*$"
)
REF = "$ctx"  # {"$ctx": "step.field"}: not "$ref", which JSON Schema payloads use
_BARE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
    ">": operator.gt, ">=": operator.ge,
    "in": lambda a, b: a in b, "not in": lambda a, b: a not in b,
    "contains": lambda a, b: b in a,
}


class Checked(BaseModel):
    """A model whose constructor raises bo_queue's ValidationError, not pydantic's."""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except pydantic.ValidationError as exc:
            name = type(self).__name__
            raise ValidationError(f"{name}: {problems(exc, name)}") from None


class Condition(Checked):
    model_config = ConfigDict(frozen=True, extra="forbid")

    field: str = Field(pattern=rf"^{FIELD}$")
    op: Op = "=="
    value: Any = None

    @model_validator(mode="after")
    def _value_fits(self) -> Condition:
        if self.op in ("in", "not in") and not isinstance(self.value, list | str):
            raise ValueError(f"{self.op!r} needs a list (or text) to look in")
        return self

    @property
    def root(self) -> str:
        return self.field.split(".", 1)[0]

    def __str__(self) -> str:
        return self.field + " exists" if self.op == "exists" else (
            f"{self.field} {self.op} {json.dumps(self.value)}"
        )

    def holds(self, context: Mapping[str, Any], missing: bool | None = None) -> bool:
        """Evaluate against the context. A missing field raises MissingFieldError, or, if
        `missing` is given, counts as that (a wait treats it as not yet)."""
        try:
            found = lookup(context, self.field)
        except MissingFieldError:
            if self.op == "exists":
                return False
            if missing is None:
                raise
            return missing
        if self.op == "exists":
            return True
        try:
            return bool(_COMPARE[self.op](found, self.value))
        except TypeError as exc:
            raise WorkflowError(f"condition {self}: cannot compare {found!r}: {exc}") from None


def condition(spec: Condition | str | tuple[Any, ...] | Mapping[str, Any]) -> Condition:
    """A Condition from itself, "field op value" text, a (field, op, value) tuple or a dict."""
    try:
        if isinstance(spec, Condition):
            return spec
        if isinstance(spec, str):
            return _parse(spec)
        if isinstance(spec, tuple):
            return Condition(field=spec[0], op=spec[1], value=spec[2] if len(spec) > 2 else None)
        return Condition.model_validate(spec)
    except (ValueError, IndexError) as exc:  # our ValidationError is a ValueError too
        raise ValidationError(f"bad condition {spec!r}: {exc}") from None


def _parse(text: str) -> Condition:
    match = _TEXT.match(text)
    if not match:
        raise ValueError("write it as 'field op value', e.g. 'check.score >= 0.9'")
    field, symbol, word, raw = match.groups()
    op = symbol or word
    if op == "exists":
        if raw:
            raise ValueError("'exists' takes no value")
        return Condition(field=field, op="exists")
    if not raw:
        raise ValueError(f"{op!r} needs a value")
    return Condition.model_validate({"field": field, "op": op, "value": _literal(raw)})


def _literal(raw: str) -> Any:
    """A JSON value, a 'single-quoted' string, or a bare word taken as a string."""
    try:
        return json.loads(raw)
    except ValueError:
        pass
    if len(raw) >= 2 and raw[0] == raw[-1] == "'":
        return raw[1:-1]
    if _BARE.match(raw):
        return raw
    raise ValueError(f"cannot read the value {raw!r}: use JSON, e.g. \"text\", 3, [1, 2]")


def lookup(context: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path; list items by index. MissingFieldError if absent."""
    value: Any = context
    walked = []
    for part in path.split("."):
        walked.append(part)
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            where = ".".join(walked)
            raise MissingFieldError(
                f"the workflow context has no field {where!r} (reading {path!r})"
            )
    return value


def ref(path: str) -> dict[str, str]:
    """A payload value filled in from the context when the step is submitted:
    `{"rows": ref("extract.rows")}` (stored as {"$ctx": "extract.rows"})."""
    if not re.fullmatch(FIELD, path):
        raise ValidationError(f"bad reference {path!r}: a dotted field path like 'step.key'")
    return {REF: path}


def refs_in(payload: Any) -> list[str]:
    """Every reference path inside a payload."""
    if isinstance(payload, Mapping):
        if set(payload) == {REF}:
            return [str(payload[REF])]
        return [p for value in payload.values() for p in refs_in(value)]
    if isinstance(payload, list):
        return [p for value in payload for p in refs_in(value)]
    return []


def resolve(payload: Any, context: Mapping[str, Any]) -> Any:
    """The payload with every reference replaced by its value (MissingFieldError if absent)."""
    if isinstance(payload, Mapping):
        if set(payload) == {REF}:
            return lookup(context, str(payload[REF]))
        return {key: resolve(value, context) for key, value in payload.items()}
    if isinstance(payload, list):
        return [resolve(value, context) for value in payload]
    return payload
