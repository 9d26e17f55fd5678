"""Settings and the Celery, redbeat and client options for Redis Sentinel (no servers:
the behaviour is tested against a real Sentinel set in tests/integration/test_sentinel.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bo_queue import ConfigurationError, Settings
from bo_queue.config import SentinelTarget, parse_sentinel_url
from bo_queue.core.celery_app import SentinelResultBackend, make_celery
from bo_queue.core.connections import sentinel_kwargs

URL = "sentinel://:secret@h1:26379/2;sentinel://h2:26380;sentinel://h3/2"


def test_kombus_sentinel_form_is_read_part_by_part() -> None:
    assert parse_sentinel_url(URL) == SentinelTarget(
        [("h1", 26379), ("h2", 26380), ("h3", 26379)], 2, None, "secret")


@pytest.mark.parametrize(("url", "message"), [
    ("sentinel://h1:26379;redis://h2:6379/0", "every part of a sentinel URL"),
    ("sentinel://h1:port/0", "bad port"),
    ("sentinel://h1:26379/zero", "database must be a number"),
    ("sentinel:///0", "no host"),
    ("sentinel://h1:26379;sentinel://h2:26379/2", "database from the first part"),
])
def test_a_malformed_sentinel_url_is_a_configuration_error(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings.load(redis_url=url, sentinel_master="m")


def test_a_sentinel_url_needs_the_masters_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BO_QUEUE_RESULT_URL", URL)
    with pytest.raises(ConfigurationError, match=r"BO_QUEUE_RESULT_URL is a sentinel:// "
                       r"URL: set BO_QUEUE_SENTINEL_MASTER"):
        Settings.load()


def test_sentinel_options_without_a_sentinel_url_are_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"BO_QUEUE_SENTINEL_\* options need"):
        Settings.load(redis_url="redis://h:6379/0", sentinel_password="x")


def test_the_sentinels_password_stays_out_of_the_repr() -> None:
    settings = Settings.load(redis_url=URL, sentinel_master="m", sentinel_password="s3")
    assert "s3" not in repr(settings) and "secret" not in repr(settings)


def test_the_sentinels_own_password_and_tls(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    settings = Settings.load(redis_url=URL, sentinel_master="m", sentinel_password="s3",
                             sentinel_ssl_ca_certs=str(ca), connect_timeout_s=2)
    assert sentinel_kwargs(settings) == {
        "socket_connect_timeout": 2.0, "socket_timeout": 2.0, "password": "s3",
        "ssl": True, "ssl_ca_certs": str(ca), "ssl_cert_reqs": "required"}
    with pytest.raises(ConfigurationError, match=r"SENTINEL_SSL_CA_CERTS=/nope: no such file"):
        Settings.load(redis_url=URL, sentinel_master="m", sentinel_ssl_ca_certs="/nope")


def test_celery_redbeat_and_flower_get_the_master_name_and_every_sentinel() -> None:
    settings = Settings.load(redis_url=URL, sentinel_master="mymaster", sentinel_password="s3")
    app = make_celery(settings)
    broker = app.conf.broker_transport_options
    assert broker["master_name"] == "mymaster"  # kombu and Flower's broker view read it
    assert broker["sentinel_kwargs"]["password"] == "s3"
    assert app.conf.result_backend_transport_options["master_name"] == "mymaster"
    assert isinstance(app.backend, SentinelResultBackend)
    assert app.conf.redbeat_redis_url == "redis-sentinel://h1:26379/2"
    options = app.conf.redbeat_redis_options
    assert options["sentinels"] == [("h1", 26379), ("h2", 26380), ("h3", 26379)]
    assert (options["service_name"], options["db"], options["password"]) == (
        "mymaster", 2, "secret")


def test_a_plain_redis_url_keeps_its_options() -> None:
    app = make_celery(Settings.load(redis_url="redis://h:6379/0"))
    assert "master_name" not in app.conf.broker_transport_options
    assert app.conf.redbeat_redis_url == "redis://h:6379/0"
    assert app.conf.redbeat_redis_options == {}
