"""Every Redis client bo_queue opens, made here from Settings: `from_url` for a plain
URL; on Sentinel (a sentinel:// URL) a client on the master the sentinels name, through
redis-py's `Sentinel.master_for`, whose pool asks them again on each new connection and
drops its connections when the master changes: after a failover the next command reaches
the new master, nothing restarted. Celery, kombu, redbeat and Flower get the same
sentinels and master name through their own options (bo_queue.core.celery_app).

`replication()` says who serves: the master's address and its replicas, as the
sentinels (or a plain Redis's INFO) report them, for `bo-queue health` and `status`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

from bo_queue.config import Settings, is_sentinel, parse_sentinel_url


def sentinel_kwargs(settings: Settings) -> dict[str, Any]:
    """How to talk to the sentinels themselves: their password and TLS (which may differ
    from the master's), and the connect timeout, so a dead sentinel costs no more."""
    options: dict[str, Any] = {
        "socket_connect_timeout": settings.connect_timeout_s,
        "socket_timeout": settings.connect_timeout_s,
    }
    if settings.sentinel_password is not None:
        options["password"] = settings.sentinel_password
    if settings.sentinel_ssl_ca_certs is not None:
        options.update(ssl=True, ssl_ca_certs=settings.sentinel_ssl_ca_certs,
                       ssl_cert_reqs="required")
    return options


def master_name(settings: Settings) -> str:
    if settings.sentinel_master is None:  # Settings rejects a sentinel URL without it
        raise ValueError("no sentinel_master")
    return settings.sentinel_master


def _master_options(url: str) -> dict[str, Any]:
    target = parse_sentinel_url(url)
    options: dict[str, Any] = {"db": target.db}
    if target.username is not None:
        options["username"] = target.username
    if target.password is not None:
        options["password"] = target.password
    return options


class _Master(redis.Redis):
    """A client on a Sentinel master that also closes its clients of the sentinels."""

    def close(self) -> None:
        super().close()
        for each in self.connection_pool.sentinel_manager.sentinels:  # type: ignore[attr-defined]
            each.close()


class _AsyncMaster(aioredis.Redis):
    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        for each in self.connection_pool.sentinel_manager.sentinels:  # type: ignore[attr-defined]
            await each.aclose()


def sentinel(settings: Settings, url: str | None = None) -> Sentinel:
    """A client of the sentinels that `url` (default: redis_url) names."""
    target = parse_sentinel_url(url or settings.redis_url)
    return Sentinel(  # type: ignore[no-untyped-call]
        target.sentinels, sentinel_kwargs=sentinel_kwargs(settings))


def redis_client(settings: Settings, url: str | None = None, /, **options: Any) -> redis.Redis:
    """A client on `url` (default: redis_url); on Sentinel, on its current master.
    `options` are redis-py's connection options (decode_responses, timeouts, retry)."""
    url = url or settings.redis_url
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **options)
    client: redis.Redis = sentinel(settings, url).master_for(  # type: ignore[no-untyped-call]
        master_name(settings), redis_class=_Master, **_master_options(url), **options)
    return client


def async_redis_client(settings: Settings, url: str | None = None, *, max_connections: int,
                       pool_wait_s: float, **options: Any) -> aioredis.Redis:
    """redis_client for asyncio. A plain URL's pool makes coroutines wait (pool_wait_s)
    for one of max_connections; redis-py's Sentinel pool cannot wait, so on Sentinel
    the connections are not capped."""
    url = url or settings.redis_url
    if not is_sentinel(url):
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=pool_wait_s, **options)
        return aioredis.Redis.from_pool(pool)  # closed with the client
    target = parse_sentinel_url(url)
    sentinels = AsyncSentinel(  # type: ignore[no-untyped-call]
        target.sentinels, sentinel_kwargs=sentinel_kwargs(settings))
    client: aioredis.Redis = sentinels.master_for(
        master_name(settings), redis_class=_AsyncMaster, **_master_options(url), **options)
    return client


class Replication(NamedTuple):
    """Who serves bo_queue's keys: the master's address, its replicas' addresses, and
    how that was learnt ("sentinel NAME" or "INFO replication")."""

    master: str
    replicas: list[str]
    source: str

    def describe(self) -> str:
        replicas = ", ".join(self.replicas) if self.replicas else "none"
        return f"master {self.master}, replicas: {replicas} ({self.source})"


def replication(settings: Settings, client: redis.Redis) -> Replication:
    """The master and its live replicas: from the sentinels on Sentinel (redis-py's
    MasterNotFoundError, a ConnectionError, if none names one), else from INFO."""
    if settings.on_sentinel:
        sentinels = sentinel(settings)
        try:
            name = master_name(settings)
            host, port = sentinels.discover_master(name)  # type: ignore[no-untyped-call]
            found = sentinels.discover_slaves(name)  # type: ignore[no-untyped-call]
            replicas = [f"{h}:{p}" for h, p in found]
        finally:
            for each in sentinels.sentinels:
                each.close()
        return Replication(f"{host}:{port}", sorted(replicas), f"sentinel {name}")
    info = client.info("replication")
    kwargs = client.connection_pool.connection_kwargs
    here = kwargs.get("path") or f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
    if info.get("role") != "master":
        master = f"{info.get('master_host')}:{info.get('master_port')}"
        return Replication(master, [], f"INFO replication: {here} is a replica")
    replicas = [f"{v['ip']}:{v['port']}" for k, v in sorted(info.items())
                if k.startswith("slave") and isinstance(v, dict)]
    return Replication(here, replicas, "INFO replication")
