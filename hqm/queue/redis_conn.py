"""Redis connections from a URL: redis://, rediss://, unix://, redis+sentinel://,
redis+cluster:// (and rediss+cluster://)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import redis
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

try:  # redis-py >= 7: identifies the client through CLIENT SETINFO
    from redis import DriverInfo
except ImportError:  # pragma: no cover - older redis-py
    DriverInfo = None

#: Built once. Left to redis-py, every new connection builds its own DriverInfo through
#: an uncached importlib.metadata lookup (~330 µs of CPU per connection).
_DRIVER_INFO: dict[str, Any] = (
    {"driver_info": DriverInfo(name="redis-py", lib_version=redis.__version__)}
    if DriverInfo is not None
    else {}
)


@dataclass(frozen=True, slots=True)
class Clients:
    main: Any  # short commands, bounded socket timeout
    # XREADGROUP BLOCK, pub/sub, and calls each bounded by an asyncio timeout of their
    # own (hqm.queue.redis_lua.Scripts): no socket timeout
    blocking: Any
    extra: tuple[Any, ...] = ()  # closed with the rest (sentinel connections)


def connect(url: str, connect_timeout_s: float, command_timeout_s: float) -> Clients:
    def opts(socket_timeout: float | None) -> dict[str, Any]:
        # RESP2 for stable reply shapes; one immediate retry on a broken connection
        # (a pooled socket Redis closed on restart), never a backoff loop.
        return {
            "socket_connect_timeout": connect_timeout_s,
            "socket_timeout": socket_timeout,
            "protocol": 2,
            "retry": Retry(NoBackoff(), 1, (RedisConnectionError,)),
            **_DRIVER_INFO,
        }

    scheme, _, rest = url.partition("://")
    if scheme in ("redis", "rediss", "unix"):
        main = Redis.from_url(url, **opts(command_timeout_s))
        return Clients(main, Redis.from_url(url, **opts(None)))
    if scheme in ("redis+cluster", "rediss+cluster"):
        base = f"{scheme.partition('+')[0]}://{rest}"
        main = RedisCluster.from_url(base, **opts(command_timeout_s))
        return Clients(main, RedisCluster.from_url(base, **opts(None)))
    if scheme == "redis+sentinel":
        hosts, master, master_opts = parse_sentinel_url(url)
        sentinel_opts = {
            "socket_connect_timeout": connect_timeout_s,
            "socket_timeout": command_timeout_s,
            **_DRIVER_INFO,
        }
        sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_opts)
        main = sentinel.master_for(master, **master_opts, **opts(command_timeout_s))
        blocking = sentinel.master_for(master, **master_opts, **opts(None))
        return Clients(main, blocking, tuple(sentinel.sentinels))
    raise ValueError(f"unsupported Redis URL scheme {scheme!r} in {url!r}")


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, dict[str, Any]]:
    """``redis+sentinel://[[user]:password@]host:port[,host:port]/master[/db]``.

    Returns the sentinel addresses, the master name and the master's connection
    options (the password authenticates to the master, not to the sentinels).
    """
    rest = url.partition("://")[2].split("?", 1)[0]
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    options: dict[str, Any] = {}
    if at:
        user, _, password = userinfo.partition(":")
        if user:
            options["username"] = unquote(user)
        if password:
            options["password"] = unquote(password)
    hosts = []
    for item in filter(None, hostlist.split(",")):
        host, colon, port = item.rpartition(":")
        hosts.append((host.strip("[]"), int(port)) if colon else (item, 26379))
    parts = [unquote(p) for p in path.split("/") if p]
    if not hosts or not parts:
        raise ValueError(f"redis+sentinel URL needs sentinel hosts and a master name: {url!r}")
    options["db"] = int(parts[1]) if len(parts) > 1 else 0
    return hosts, parts[0], options
