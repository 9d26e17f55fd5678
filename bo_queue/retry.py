"""RetryPolicy: which errors retry, how often, and how long to wait between attempts."""

from __future__ import annotations

import builtins
import random
import re
from typing import Annotated, Any

import pydantic
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from bo_queue.errors import ValidationError

_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def type_name(kind: type[BaseException] | str) -> str:
    """An exception type as `on` names it: module.qualname (a name stays as it is)."""
    return kind if isinstance(kind, str) else f"{kind.__module__}.{kind.__qualname__}"


def _names(on: tuple[type[BaseException] | str, ...]) -> list[str]:
    return [type_name(kind) for kind in on]


# Exception types, or their dotted names (how a policy travels in a message or over HTTP)
ExceptionTypes = Annotated[
    tuple[type[BaseException] | str, ...],
    PlainSerializer(_names, return_type=list[str]),
    WithJsonSchema({"type": "array", "items": {"type": "string"},
                    "examples": [["ConnectionError", "mypkg.errors.Transient"]]}),
]


class RetryPolicy(BaseModel):
    """Exponential backoff with a cap and optional full jitter.

    The delay before retry n (0-based) is min(backoff_max, backoff * 2**n); with jitter
    it is drawn uniformly from [0, that]. `on` lists the exception types that retry;
    anything else fails the task at once. A type may be given by its dotted name
    (`"mypkg.errors.Transient"`, or a builtin's bare name, `"ConnectionError"`), as a
    policy sent with a task or over HTTP names them: a name matches an exception whose
    class, or a base of it, has that module and qualified name.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    max_retries: int = Field(default=3, ge=0, le=10_000)
    backoff: float = Field(default=1.0, ge=0, le=10 * 366 * 86400)
    backoff_max: float = Field(default=600.0, ge=0, le=10 * 366 * 86400)
    jitter: bool = True
    on: ExceptionTypes = Field(default=("Exception",), validate_default=True)  # by name:
    # JSON for the schema; the validator makes it the class

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except pydantic.ValidationError as exc:  # one line, as validation.problems says it
            said = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'policy'}: {e['msg']}"
                             for e in exc.errors())
            raise ValidationError(f"invalid RetryPolicy: {said}") from None

    @field_validator("on", mode="before")
    @classmethod
    def _types(cls, value: Any) -> Any:
        if isinstance(value, str | type):
            value = (value,)
        if not isinstance(value, list | tuple) or len(value) > 100:
            raise ValueError("`on` takes at most 100 exception classes or their names")
        out: list[type[BaseException] | str] = []
        for kind in value:
            if isinstance(kind, str):
                if not (len(kind) <= 300 and _DOTTED.fullmatch(kind)):
                    raise ValueError(f"{kind[:100]!r} is not an exception type's dotted name")
                plain = kind.removeprefix("builtins.")
                if "." not in plain:  # a builtin: it must be one, and is the class itself
                    found = getattr(builtins, plain, None)
                    if not (isinstance(found, type) and issubclass(found, BaseException)):
                        raise ValueError(f"no builtin exception is named {plain!r}")
                    kind = found
            out.append(kind)
        return tuple(out)

    @model_validator(mode="after")
    def _check(self) -> RetryPolicy:
        if self.backoff_max < self.backoff:
            raise ValueError("backoff_max must be at least backoff")
        if not all(isinstance(t, str) or (isinstance(t, type) and issubclass(t, BaseException))
                   for t in self.on):
            raise ValueError("`on` takes exception classes")
        return self

    def retries(self, exc: BaseException) -> bool:
        types = tuple(t for t in self.on if isinstance(t, type))
        if isinstance(exc, types):
            return True
        names = {t for t in self.on if isinstance(t, str)}
        return bool(names) and any(type_name(k) in names for k in type(exc).__mro__)

    def delay_s(self, retry: int) -> float:
        ceiling = min(self.backoff_max, self.backoff * (2**retry))
        return random.uniform(0, ceiling) if self.jitter else ceiling

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary (for the handler directory and monitoring); also what
        a per-submit policy travels as: `RetryPolicy(**policy.describe())` is the same
        policy, with its types by name."""
        return self.model_dump(mode="json")


NO_RETRY = RetryPolicy(max_retries=0)
