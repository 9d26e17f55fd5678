"""Settings: defaults, BO_QUEUE_* variables, and every contradiction rejected loudly."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from bo_queue import (
    BOQueue,
    BrokerUnavailableError,
    ConfigurationError,
    ReplicaAckError,
    Settings,
    ValidationError,
)

# The autouse fixture in conftest.py removes every BO_QUEUE_* variable first.


def test_defaults() -> None:
    s = Settings.load()
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.result_url is None
    assert s.results_url == s.redis_url
    assert s.namespace == "boq"
    assert s.imports == []
    assert s.queues == ["default", "bo", "evaluate"]
    assert s.default_queue == "default"
    assert s.visibility_timeout_s == 3600
    assert s.hold_delays_over_s == 300.0
    assert s.result_expires_s == 86_400
    assert s.max_payload_bytes == 1_048_576
    assert s.eta_tolerance_s == 5.0
    assert s.connect_timeout_s == 5.0
    assert s.default_time_limit_s is None


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BO_QUEUE_REDIS_URL", "redis://cache.example:6380/2")
    monkeypatch.setenv("BO_QUEUE_RESULT_URL", "rediss://results.example:6390/0")
    monkeypatch.setenv("BO_QUEUE_NAMESPACE", "tenant-a")
    monkeypatch.setenv("BO_QUEUE_VISIBILITY_TIMEOUT_S", "7200")
    monkeypatch.setenv("BO_QUEUE_HOLD_DELAYS_OVER_S", "60.5")
    monkeypatch.setenv("BO_QUEUE_DEFAULT_TIME_LIMIT_S", "30")
    s = Settings.load()
    assert s.redis_url == "redis://cache.example:6380/2"
    assert s.results_url == "rediss://results.example:6390/0"
    assert s.namespace == "tenant-a"
    assert s.visibility_timeout_s == 7200
    assert s.hold_delays_over_s == 60.5
    assert s.default_time_limit_s == 30.0


def test_comma_separated_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BO_QUEUE_QUEUES", "default, fast ,slow,,")
    monkeypatch.setenv("BO_QUEUE_IMPORTS", "myapp.tasks, other.handlers")
    s = Settings.load()
    assert s.queues == ["default", "fast", "slow"]
    assert s.imports == ["myapp.tasks", "other.handlers"]


def test_keyword_overrides_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BO_QUEUE_NAMESPACE", "from-env")
    assert Settings.load().namespace == "from-env"
    assert Settings.load(namespace="from-kw").namespace == "from-kw"


def test_unknown_environment_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BO_QUEUE_REDIS_ULR", "redis://typo:6379/0")
    with pytest.raises(ConfigurationError, match="BO_QUEUE_REDIS_ULR"):
        Settings.load()


def test_unknown_environment_variable_also_stops_boqueue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BO_QUEUE_NAMESPACEE", "x")
    with pytest.raises(ConfigurationError, match="BO_QUEUE_NAMESPACEE"):
        BOQueue.from_env()


def test_unknown_keyword_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="visibility_timeout"):
        Settings.load(visibility_timeout=100)


def test_bad_value_from_environment_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BO_QUEUE_VISIBILITY_TIMEOUT_S", "soon")
    with pytest.raises(ConfigurationError, match="visibility_timeout_s"):
        Settings.load()


@pytest.mark.parametrize(
    "overrides",
    [
        {"redis_url": "http://127.0.0.1:6379/0"},
        {"redis_url": "127.0.0.1:6379"},
        {"result_url": "amqp://guest@localhost//"},
        {"namespace": "Upper"},
        {"namespace": "has space"},
        {"namespace": "9starts-with-digit"},
        {"namespace": "x" * 33},
        {"namespace": ""},
        {"queues": []},
        {"queues": ["default", "no spaces"]},
        {"default_queue": "missing"},
        {"queues": ["bo", "evaluate"]},  # default_queue "default" is no longer listed
        {"hold_delays_over_s": 3600},  # == visibility_timeout_s
        {"hold_delays_over_s": 100, "visibility_timeout_s": 50},
        {"default_time_limit_s": 3600},
        {"visibility_timeout_s": 5},
        {"max_payload_bytes": 0},
        {"result_expires_s": 4},
        {"eta_tolerance_s": -1},
    ],
    ids=repr,
)
def test_settings_that_cannot_work_are_rejected(overrides: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Settings.load(**overrides)


@pytest.mark.parametrize(
    "url", ["redis://h:1/0", "rediss://h:1/0", "unix:///tmp/redis.sock"]
)
def test_accepted_url_schemes(url: str) -> None:
    assert Settings.load(redis_url=url).redis_url == url


def test_contradiction_between_env_and_keywords_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BO_QUEUE_VISIBILITY_TIMEOUT_S", "200")
    with pytest.raises(ConfigurationError, match="hold_delays_over_s"):
        Settings.load()  # the default hold_delays_over_s (300) is above 200
    assert Settings.load(hold_delays_over_s=100).visibility_timeout_s == 200


def test_settings_are_frozen() -> None:
    s = Settings.load()
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        s.namespace = "other"  # type: ignore[misc]


def test_boqueue_rejects_settings_together_with_options() -> None:
    with pytest.raises(ValidationError, match="not both"):
        BOQueue(redis_url="redis://127.0.0.1:1/0", settings=Settings.load())


def test_boqueue_from_env_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BO_QUEUE_REDIS_URL", "redis://127.0.0.1:1/3")
    monkeypatch.setenv("BO_QUEUE_NAMESPACE", "fromenv")
    with BOQueue.from_env() as bq:
        assert bq.settings.redis_url == "redis://127.0.0.1:1/3"
        assert bq.keys.task("x") == "fromenv:task:x"


def test_queue_names_with_a_trailing_newline_are_rejected() -> None:
    # config.py's _NAME uses re.match with `$`, which also matches before a final "\n".
    with pytest.raises(ConfigurationError):
        Settings.load(queues=["default", "bo\n"])


def test_flower_and_log_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings.load()
    assert (s.flower_port, s.flower_address) == (5555, "0.0.0.0")
    assert s.flower_user is None and s.flower_password is None
    assert s.log_json is False
    monkeypatch.setenv("BO_QUEUE_FLOWER_PORT", "6555")
    monkeypatch.setenv("BO_QUEUE_FLOWER_ADDRESS", "127.0.0.1")
    monkeypatch.setenv("BO_QUEUE_FLOWER_USER", "ops")
    monkeypatch.setenv("BO_QUEUE_FLOWER_PASSWORD", "pa:ss word")
    monkeypatch.setenv("BO_QUEUE_LOG_JSON", "true")
    s = Settings.load()
    assert (s.flower_port, s.flower_address) == (6555, "127.0.0.1")
    assert (s.flower_user, s.flower_password) == ("ops", "pa:ss word")
    assert s.log_json is True
    assert "pa:ss word" not in repr(s)


@pytest.mark.parametrize(
    "overrides",
    [
        {"flower_user": "ops"},
        {"flower_password": "secret"},
        {"flower_user": "", "flower_password": "secret"},
        {"flower_user": "ops", "flower_password": ""},
        {"flower_user": "o:ps", "flower_password": "secret"},
        {"flower_user": "ops", "flower_password": "se,cret"},
        {"flower_port": 0},
        {"flower_port": 70000},
    ],
    ids=repr,
)
def test_flower_settings_that_cannot_work_are_rejected(overrides: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match=r"(?i)flower_"):
        Settings.load(**overrides)


def test_errors_do_not_print_the_flower_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BO_QUEUE_FLOWER_USER", "ops")
    monkeypatch.setenv("BO_QUEUE_FLOWER_PASSWORD", "hunter2")
    with pytest.raises(ConfigurationError) as err:
        Settings.load(default_queue="missing")  # a model-level error sees every input
    assert "hunter2" not in str(err.value)
    with pytest.raises(ConfigurationError) as err:
        Settings.load(flower_password="se,cret")
    assert "se,cret" not in str(err.value)


def test_the_archive_goes_to_files_or_a_database_not_both() -> None:
    url = "postgresql+psycopg://ops:hunter2@db/studies"
    assert Settings.load(archive_url=url).archive_url == url
    with pytest.raises(ConfigurationError, match="ARCHIVE_DIR or BO_QUEUE_ARCHIVE_URL") as err:
        Settings.load(archive_dir="/srv/archive", archive_url=url)
    assert "hunter2" not in str(err.value)
    assert "hunter2" not in repr(Settings.load(archive_url=url))


def test_replica_acks_default_to_none_and_are_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defaults = Settings.load()
    assert (defaults.replica_acks, defaults.replica_ack_timeout_s) == (0, 1.0)
    monkeypatch.setenv("BO_QUEUE_REPLICA_ACKS", "2")
    monkeypatch.setenv("BO_QUEUE_REPLICA_ACK_TIMEOUT_S", "0.25")
    s = Settings.load()
    assert (s.replica_acks, s.replica_ack_timeout_s) == (2, 0.25)
    assert BOQueue(settings=s).acks.wait_args() == ("WAIT", 2, 250)


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"replica_acks": -1}, "replica_acks"),
        ({"replica_acks": "one"}, "replica_acks"),
        ({"replica_ack_timeout_s": 0}, "replica_ack_timeout_s"),
        ({"replica_ack_timeout_s": -0.5}, "replica_ack_timeout_s"),
        # its WAIT would outlast the client's socket timeout (connect_timeout_s, >= 10 s)
        ({"replica_ack_timeout_s": 10}, "below the Redis socket timeout"),
        ({"replica_ack_timeout_s": 20, "connect_timeout_s": 15}, "socket timeout"),
    ],
    ids=repr,
)
def test_replica_ack_settings_that_cannot_work_are_rejected(
    overrides: dict[str, Any], says: str
) -> None:
    with pytest.raises(ConfigurationError, match=says):
        Settings.load(**overrides)


def test_the_replica_ack_error_says_how_many_of_how_many() -> None:
    error = ReplicaAckError(1, 2, 0.5)
    assert isinstance(error, BrokerUnavailableError)  # a 503, retried like an outage
    assert (error.acked, error.required, error.timeout_s) == (1, 2, 0.5)
    assert str(error) == ("only 1 of the 2 required replica(s) acknowledged the write within "
                          "0.5 s: it is on the primary but may not survive a failover")
    assert "only an unknown number of the 1" in str(ReplicaAckError(None, 1, 1.0))
