"""One validated settings object. Every option is a field with its unit in the name;
an unknown option (a typo in a keyword or in a BO_QUEUE_* variable) is an error, not ignored."""

from __future__ import annotations

import os
import re
from typing import Annotated, Any

import pydantic
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bo_queue.errors import ConfigurationError

ENV_PREFIX = "BO_QUEUE_"
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    # hide_input_in_errors: a model-level error would otherwise print every input,
    # flower_password included
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, hide_input_in_errors=True
    )

    redis_url: str = "redis://127.0.0.1:6379/0"
    result_url: str | None = None  # the result backend; defaults to redis_url
    namespace: str = "boq"  # prefixes every Redis key bo_queue and Celery write
    imports: Annotated[list[str], NoDecode] = Field(default_factory=list)  # handler modules
    queues: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["default", "bo", "evaluate"]
    )
    default_queue: str = "default"
    # longer than the longest task, or a running task is handed to a second worker
    visibility_timeout_s: int = Field(default=3600, ge=10)
    # countdowns, etas and backoffs longer than this wait in Redis, not in a worker
    hold_delays_over_s: float = Field(default=300.0, gt=0)
    # how often workers look for messages abandoned by dead workers
    restore_sweep_s: int = Field(default=10, ge=1)
    result_expires_s: int = Field(default=86_400, ge=60)  # results and task records
    max_payload_bytes: int = Field(default=1_048_576, gt=0)
    # an eta this far in the past is still accepted (clock skew)
    eta_tolerance_s: float = Field(default=5.0, ge=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    default_time_limit_s: float | None = Field(default=None, gt=0)
    # Threads each worker process gives torch (study steps). Pool processes already use
    # the cores; more threads oversubscribe them and OpenMP's spin-waits make a BoTorch
    # step 10-20x slower on a busy machine.
    torch_threads: int = Field(default=1, ge=1)
    # static schedules for beat: a TOML file of [schedules.NAME] tables (see the README)
    schedule_file: str | None = None
    # beat's maintenance: finished studies older than this move to FileStorage(archive_dir)
    archive_dir: str | None = None
    archive_after_days: float = Field(default=30.0, gt=0)
    # monitoring: state-change events kept in the {ns}:events stream (about this many), and
    # how long a worker may miss heartbeats (one a second) before it counts as gone
    events_max_len: int = Field(default=200_000, ge=1000)
    heartbeat_timeout_s: float = Field(default=10.0, gt=1)
    # `bo-queue flower`: where Flower listens, and its HTTP basic auth (both or neither;
    # without them Flower's web UI is open and its HTTP API refuses every request)
    flower_port: int = Field(default=5555, ge=1, le=65535)
    flower_address: str = "0.0.0.0"
    flower_user: str | None = None
    flower_password: str | None = Field(default=None, repr=False)
    # workers and beat log one JSON object per line (bo_queue.logs.JsonFormatter)
    log_json: bool = False

    _split = field_validator("imports", "queues", mode="before")(_split_csv)

    @field_validator("redis_url", "result_url")
    @classmethod
    def _redis_scheme(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"expected a redis://, rediss:// or unix:// URL, got {url!r}")
        return url

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", value):
            raise ValueError("namespace: lowercase letters, digits, '_' or '-', at most 32")
        return value

    @field_validator("queues")
    @classmethod
    def _queue_names(cls, value: list[str]) -> list[str]:
        bad = [q for q in value if not _NAME.fullmatch(q)]
        if bad or not value:
            raise ValueError(f"queue names must be simple identifiers, got {bad or value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.default_queue not in self.queues:
            raise ValueError(f"default_queue {self.default_queue!r} is not in queues")
        if self.hold_delays_over_s >= self.visibility_timeout_s:
            raise ValueError("hold_delays_over_s must be below visibility_timeout_s")
        limit = self.default_time_limit_s
        if limit is not None and limit >= self.visibility_timeout_s:
            raise ValueError("default_time_limit_s must be below visibility_timeout_s")
        self._flower_auth()
        return self

    def _flower_auth(self) -> None:
        user, password = self.flower_user, self.flower_password
        if (user is None) != (password is None):
            raise ValueError(
                f"set both {ENV_PREFIX}FLOWER_USER and {ENV_PREFIX}FLOWER_PASSWORD, or neither"
            )
        if user is None or password is None:
            return
        for name, value in (("user", user), ("password", password)):
            if not value:
                raise ValueError(f"flower_{name} is empty: set {ENV_PREFIX}FLOWER_{name.upper()}")
        # Flower compares "user:password" with the Authorization header, and splits its
        # basic-auth option on commas (several users): neither may be ambiguous.
        if ":" in user or "," in user or "," in password:
            raise ValueError("flower_user may not contain ':' or ',', flower_password not ','")

    @property
    def results_url(self) -> str:
        return self.result_url or self.redis_url

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Settings from BO_QUEUE_* variables and keyword overrides; errors are ours."""
        known = {ENV_PREFIX + name.upper() for name in cls.model_fields}
        unknown = sorted(k for k in os.environ if k.startswith(ENV_PREFIX) and k not in known)
        if unknown:
            raise ConfigurationError(
                f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        try:
            return cls(**overrides)
        except pydantic.ValidationError as exc:
            raise ConfigurationError(str(exc)) from None
