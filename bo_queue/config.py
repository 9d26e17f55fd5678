"""One validated settings object. Every option is a field with its unit in the name;
an unknown option (a typo in a keyword or in a BO_QUEUE_* variable) is an error, not ignored."""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

import pydantic
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bo_queue.errors import BOQueueError, ConfigurationError
from bo_queue.validation import redact

if TYPE_CHECKING:
    from bo_queue.registry import Resources

ENV_PREFIX = "BO_QUEUE_"
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


# TLS options a rediss:// URL may carry in its query string, under the names redis-py,
# kombu and Celery's result backend all read there (a typo would be ignored by one of
# them, or quietly turn certificate checks off in another: anything else is an error)
TLS_PARAMS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs",
              "ssl_check_hostname")
_CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
_BOOLS = {"true": True, "false": False}


def _tls_query(url: str) -> dict[str, str]:
    return {k: v for k, v in parse_qsl(urlsplit(url).query) if k.startswith("ssl_")}


def _check_tls(url: str) -> None:
    """Reject TLS options that one of the Redis clients would misread (see TLS_PARAMS)."""
    query = _tls_query(url)
    if query and not url.startswith("rediss://"):
        raise ValueError(f"{', '.join(query)}: TLS options need a rediss:// URL")
    unknown = sorted(set(query) - set(TLS_PARAMS))
    if unknown:
        raise ValueError(f"unknown TLS option(s) {', '.join(unknown)} in the Redis URL; "
                         f"known: {', '.join(TLS_PARAMS)}")
    reqs = query.get("ssl_cert_reqs")
    if reqs is not None and reqs not in _CERT_REQS:
        raise ValueError(f"ssl_cert_reqs={reqs}: expected one of {', '.join(_CERT_REQS)}")
    check = query.get("ssl_check_hostname")
    if check is not None and check not in _BOOLS:
        raise ValueError(f"ssl_check_hostname={check}: expected true or false")
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        path = query.get(name)
        if path is not None and not os.path.isfile(path):
            raise ValueError(f"{name}={path}: no such file")


def redis_tls_options(url: str) -> dict[str, Any] | None:
    """For a rediss:// URL, its TLS options as redis-py keyword arguments (what Celery's
    broker_use_ssl, redis_backend_use_ssl and redbeat_redis_use_ssl take); None otherwise.

    Certificates are verified (against ssl_ca_certs, else the system's CAs) and the host
    name checked unless the URL itself says otherwise: left to themselves, kombu would
    fall back to no verification at all and Celery's result backend would refuse the URL.
    """
    if not url.startswith("rediss://"):
        return None
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    for name, value in _tls_query(url).items():
        if name == "ssl_cert_reqs":
            options[name] = _CERT_REQS[value]
        elif name == "ssl_check_hostname":
            options[name] = _BOOLS[value]
        else:
            options[name] = value
    return options


class SentinelTarget(NamedTuple):
    """What a sentinel:// URL names: the sentinels to ask, and the master's database and
    credentials (the sentinels' own password is Settings.sentinel_password)."""

    sentinels: list[tuple[str, int]]
    db: int
    username: str | None
    password: str | None


SENTINEL_PORT = 26379


def parse_sentinel_url(url: str) -> SentinelTarget:
    """kombu's form, `sentinel://[:pw@]h1:26379;sentinel://h2:26379/0`: one address per
    `;`-separated part. The database and the master's password are the first part's:
    kombu and Celery's result backend read only that one, so a later part that names
    another database is refused rather than quietly ignored by them."""
    parts = [p.strip() for p in url.split(";") if p.strip()]
    sentinels: list[tuple[str, int]] = []
    dbs: list[int | None] = []  # as each part states it
    for part in parts:
        if not part.startswith("sentinel://"):
            raise ValueError(f"every part of a sentinel URL starts with sentinel://, "
                             f"got {redact(part)!r}")
        split = urlsplit(part)
        try:
            port = split.port or SENTINEL_PORT
        except ValueError:
            raise ValueError(f"bad port in {redact(part)!r}") from None
        if not split.hostname:
            raise ValueError(f"no host in {redact(part)!r}")
        sentinels.append((split.hostname, port))
        path = split.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"database must be a number, got {path!r} in {redact(part)!r}")
        dbs.append(int(path) if path else None)
    if not sentinels:
        raise ValueError("a sentinel URL names at least one sentinel")
    db = dbs[0] or 0
    other = next((d for d in dbs if d is not None and d != db), None)
    if other is not None:
        raise ValueError(f"kombu and Celery read the database from the first part of a "
                         f"sentinel URL only: write it there (sentinel://host:port/{other};"
                         f"...), got {redact(url)!r}")
    first = urlsplit(parts[0])
    return SentinelTarget(sentinels, db, first.username or None, first.password or None)


def is_sentinel(url: str) -> bool:
    return url.startswith("sentinel://")


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every option of a deployment, from BO_QUEUE_* variables (or keyword arguments):
    Redis URLs, namespace, queues, retention, timeouts, worker and API options. Unknown
    options are a ConfigurationError; units are in the names (`_s`, `_bytes`)."""

    # hide_input_in_errors: a model-level error would otherwise print every input,
    # flower_password included
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, hide_input_in_errors=True
    )

    # redis://, rediss://, unix://, or kombu's sentinel form
    # sentinel://h1:26379;sentinel://h2:26379/0 (then sentinel_master names the master)
    redis_url: str = "redis://127.0.0.1:6379/0"
    result_url: str | None = None  # the result backend; defaults to redis_url
    # Redis Sentinel: the master's name (required with a sentinel:// URL), and the
    # sentinels' own password and TLS where they differ from the master's (the URL's
    # password is the master's); sentinel_ssl_ca_certs turns TLS to the sentinels on
    sentinel_master: str | None = None
    sentinel_password: str | None = Field(default=None, repr=False)
    sentinel_ssl_ca_certs: str | None = None
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
    result_expires_s: int = Field(default=86_400, ge=5)  # results and task records
    max_payload_bytes: int = Field(default=1_048_576, gt=0)
    # an eta this far in the past is still accepted (clock skew)
    eta_tolerance_s: float = Field(default=5.0, ge=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    # a run that dies with its worker process is run again; a task whose runs died more
    # often than this (or than its handler's max_retries, if more) fails: a poison task
    max_lost_runs: int = Field(default=3, ge=0)
    # how long a worker's own Redis calls (task records, results) wait for a Redis that
    # went away before they fail; producers fail at once with BrokerUnavailableError
    worker_outage_s: float = Field(default=60.0, ge=0)
    default_time_limit_s: float | None = Field(default=None, gt=0)
    # Threads each worker process gives torch (study steps). Pool processes already use
    # the cores; more threads oversubscribe them and OpenMP's spin-waits make a BoTorch
    # step 10-20x slower on a busy machine.
    torch_threads: int = Field(default=1, ge=1)
    # static schedules for beat: a TOML file of [schedules.NAME] tables (see docs/schedules.md)
    schedule_file: str | None = None
    # beat's maintenance: finished studies older than this move to FileStorage(archive_dir),
    # or to SQLStorage(archive_url), a SQLAlchemy URL (one of the two)
    archive_dir: str | None = None
    archive_url: str | None = None
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
    # a worker's capabilities (handlers that require one run only where it is declared)
    # and what it offers to tasks that state resources: "cpu=4,memory_mb=8192,gpu=1"
    # (default: its cores and memory, no GPU)
    capabilities: Annotated[list[str], NoDecode] = Field(default_factory=list)
    offers: str | None = None
    # cluster-wide limits and resources are held under a lease the running worker renews;
    # a dead worker's come back after it
    limit_lease_s: float = Field(default=30.0, ge=1)
    # how long an external agent may hold a pull task without a heartbeat before it goes
    # back for another agent (bo_queue.agents; a type or a claim may say otherwise)
    agent_lease_s: float = Field(default=86_400.0, gt=0)
    # workers and beat log one JSON object per line (bo_queue.monitor.logs.JsonFormatter)
    log_json: bool = False
    # writes that must not be lost (a submit, a study report or saved state, a task's
    # result and final record) wait until this many replicas have them (Redis WAIT), at
    # most replica_ack_timeout_s; fewer in time is a ReplicaAckError (docs/replica-acks.md)
    replica_acks: int = Field(default=0, ge=0)
    replica_ack_timeout_s: float = Field(default=1.0, gt=0)

    _split = field_validator("imports", "queues", "capabilities", mode="before")(_split_csv)

    @field_validator("redis_url", "result_url")
    @classmethod
    def _redis_scheme(cls, url: str | None) -> str | None:
        if url is None:
            return url
        if is_sentinel(url):
            parse_sentinel_url(url)
            return url
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"expected a redis://, rediss://, unix:// or sentinel:// URL, "
                             f"got {redact(url)!r}")
        _check_tls(url)
        return url

    @field_validator("sentinel_master")
    @classmethod
    def _master_name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.fullmatch(value):
            raise ValueError(f"{ENV_PREFIX}SENTINEL_MASTER: a simple name, got {value!r}")
        return value

    @field_validator("sentinel_ssl_ca_certs")
    @classmethod
    def _sentinel_ca(cls, value: str | None) -> str | None:
        if value is not None and not os.path.isfile(value):
            raise ValueError(f"{ENV_PREFIX}SENTINEL_SSL_CA_CERTS={value}: no such file")
        return value

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
        if self.archive_dir and self.archive_url:
            raise ValueError(
                f"set {ENV_PREFIX}ARCHIVE_DIR or {ENV_PREFIX}ARCHIVE_URL, not both"
            )
        # the WAIT's reply must come before the client's socket timeout (Core's clients)
        if self.replica_ack_timeout_s >= max(self.connect_timeout_s, 10.0):
            raise ValueError("replica_ack_timeout_s must be below the Redis socket timeout "
                             "(connect_timeout_s, at least 10 s)")
        self._flower_auth()
        self._sentinel()
        return self

    def _sentinel(self) -> None:
        on_sentinel = [n for n in ("redis_url", "result_url")
                       if is_sentinel(getattr(self, n) or "")]
        if on_sentinel and self.sentinel_master is None:
            raise ValueError(
                f"{ENV_PREFIX}{on_sentinel[0].upper()} is a sentinel:// URL: set "
                f"{ENV_PREFIX}SENTINEL_MASTER to the name of the master the sentinels watch"
            )
        if not on_sentinel and (self.sentinel_master or self.sentinel_password
                                or self.sentinel_ssl_ca_certs):
            raise ValueError(
                f"{ENV_PREFIX}SENTINEL_* options need a sentinel:// "
                f"{ENV_PREFIX}REDIS_URL or {ENV_PREFIX}RESULT_URL"
            )

    @property
    def on_sentinel(self) -> bool:
        """True when the broker (and bo_queue's keys) are reached through Sentinel."""
        return is_sentinel(self.redis_url)

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

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # the URLs may carry the Redis password: a repr (a log line, a traceback) hides it
        for name, value in super().__repr_args__():
            if name in ("redis_url", "result_url", "archive_url") and isinstance(value, str):
                value = redact(value)
            yield name, value

    @field_validator("capabilities")
    @classmethod
    def _capabilities(cls, value: list[str]) -> list[str]:
        from bo_queue.registry import capability_names

        try:
            return list(capability_names(value))
        except BOQueueError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("offers")
    @classmethod
    def _offers(cls, value: str | None) -> str | None:
        if value is not None:
            parse_offers(value)
        return value

    @property
    def worker_offers(self) -> Resources:
        """What this worker offers: `offers`, else its cores and memory and no GPU."""
        return parse_offers(self.offers) if self.offers else detected_offers()

    def queue_for(self, declared: str | None, chosen: str | None = None) -> str:
        """The queue a task goes to: the one chosen (a submit's `queue`, the queue its
        message came from), else the one its handler declared, else the default queue."""
        return chosen or declared or self.default_queue

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


def parse_offers(text: str) -> Resources:
    """"cpu=4,memory_mb=8192,gpu=1" -> Resources (unnamed ones are 0)."""
    from bo_queue.registry import Resources

    values: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, amount = part.partition("=")
        try:
            values[name.strip()] = float(amount)
        except ValueError:
            raise ValueError(f"offers: expected name=number, got {part!r}") from None
    try:
        return Resources.model_validate(values)
    except pydantic.ValidationError as exc:
        raise ValueError(f"offers {text!r}: {exc}") from None


def detected_offers() -> Resources:
    from bo_queue.registry import Resources

    pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return Resources(cpu=float(os.cpu_count() or 1), memory_mb=pages * page_size / 2**20)
