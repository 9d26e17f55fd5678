"""RetryPolicy: which errors retry, how often, and how long to wait between attempts."""

from __future__ import annotations

import random
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field, model_validator

from bo_queue.errors import ValidationError


class RetryPolicy(BaseModel):
    """Exponential backoff with a cap and optional full jitter.

    The delay before retry n (0-based) is min(backoff_max, backoff * 2**n); with jitter
    it is drawn uniformly from [0, that]. `on` lists the exception types that retry;
    anything else fails the task at once.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    max_retries: int = Field(default=3, ge=0, le=10_000)
    backoff: float = Field(default=1.0, ge=0)
    backoff_max: float = Field(default=600.0, ge=0)
    jitter: bool = True
    on: tuple[type[BaseException], ...] = (Exception,)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except pydantic.ValidationError as exc:
            raise ValidationError(f"invalid RetryPolicy: {exc}") from None

    @model_validator(mode="after")
    def _check(self) -> RetryPolicy:
        if self.backoff_max < self.backoff:
            raise ValueError("backoff_max must be at least backoff")
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in self.on):
            raise ValueError("`on` takes exception classes")
        return self

    def retries(self, exc: BaseException) -> bool:
        return isinstance(exc, self.on)

    def delay_s(self, retry: int) -> float:
        ceiling = min(self.backoff_max, self.backoff * (2**retry))
        return random.uniform(0, ceiling) if self.jitter else ceiling

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary (for the handler directory and monitoring)."""
        data = self.model_dump(exclude={"on"})
        data["on"] = [f"{t.__module__}.{t.__qualname__}" for t in self.on]
        return data


NO_RETRY = RetryPolicy(max_retries=0)
