"""Settings objects from resolved options: the only place that reads option values."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

from hqm.assembly import WorkerRun
from hqm.config.options import ConfigError
from hqm.config.resolve import Effective, resolve
from hqm.config.routes_file import build_routes
from hqm.config.tables import PROXY, WORKER
from hqm.ingress.routes import DEFAULT_AMBIGUOUS, RouteTable
from hqm.ingress.settings import ProxySettings
from hqm.io.iptables_apply import IptablesRun
from hqm.io.iptables_rules import Family, InboundPlan
from hqm.ops.access_log import AccessLogSettings
from hqm.ops.queue_gauges import StatsSettings
from hqm.proto.headers import ForwardingPolicy
from hqm.proto.limits import MIN_REPLAY_KEY_BYTES, Limits
from hqm.worker.queues import QueueSet
from hqm.worker.settings import WorkerSettings
from hqm.worker.upstream import PoolSettings


def default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def worker_settings(values: Effective, *, consumer: str) -> WorkerSettings:
    burst = values.command.name == "worker" and values["burst"]
    return WorkerSettings(
        consumer=consumer,
        concurrency=values["concurrency"],
        rate=values["rate"],
        global_rate=values["global-rate"],
        global_burst=values["global-burst"],
        global_concurrency=values["global-concurrency"],
        visibility_timeout_s=values["visibility-timeout"],
        max_attempts=values["max-attempts"],
        max_deliveries=values["max-deliveries"],
        retry_base_s=values["retry-base"],
        retry_max_s=values["retry-max"],
        max_retry_duration_s=values["max-retry-duration"],
        drain_timeout_s=values["drain-timeout"],
        pool=PoolSettings(
            connect_timeout_s=values["connect-timeout"],
            read_timeout_s=values["read-timeout"],
            pool_size=values["concurrency"],
            idle_timeout_s=values["upstream-idle-timeout"],
            parser=values["parser"],
            max_response_bytes=values["max-response"],
        ),
        max_inflight_bytes=values["max-inflight-bytes"],
        forwarding=ForwardingPolicy(values["forwarded-headers"], values["trusted-hops"]),
        burst=burst,
        burst_queue_timeout_s=values["burst-timeout"] if burst else 0.0,
        **({"heartbeat_s": values["heartbeat"]} if values.command.name == "worker" else {}),
        route_headers={r.name: r.inject_headers for r in route_table(values).routes},
        replay_key=replay_key(values),
        access_log=access_log_settings(values),
    )


def access_log_settings(values: Effective) -> AccessLogSettings:
    return AccessLogSettings(mode=values["access-log"], sample=values["access-log-sample"])


#: How to make a key, in every refusal: 32 random bytes, base64 (44 characters).
MAKE_KEY = "make one with `head -c 32 /dev/urandom | base64`"
#: The key k8s/base/replay-key.yaml ships is public (it is in the repository): a key
#: starting so was never replaced.
EXAMPLE_KEY_PREFIX = b"REPLACE-ME"


def replay_key(values: Effective) -> bytes | None:
    """The HQM-Replay key: from --replay-key-file (its bytes, a final newline dropped)
    or --replay-key; both at once is an error, as is an empty or unreadable file, a key
    shorter than MIN_REPLAY_KEY_BYTES or the manifests' public example."""
    file, key = values["replay-key-file"], values["replay-key"]
    if file is not None and key is not None:
        raise ConfigError("--replay-key-file and --replay-key: give one of them")
    if key is not None:
        origin = next(s.origin for s in values if s.option.name == "replay-key")
        where = "--replay-key" if origin == "--replay-key" else f"{origin} (--replay-key)"
        return _strong(key.encode(), where)
    if file is None:
        return None
    try:
        with open(file, "rb") as fh:
            data = fh.read().rstrip(b"\r\n")
    except OSError as exc:
        raise ConfigError(f"--replay-key-file {file}: cannot read: {exc.strerror}") from None
    if not data:
        raise ConfigError(f"--replay-key-file {file}: the file is empty")
    return _strong(data, f"--replay-key-file {file}")


def _strong(key: bytes, where: str) -> bytes:
    """Whoever knows the key sends requests past the queue: refuse a guessable one."""
    if key.upper().startswith(EXAMPLE_KEY_PREFIX):
        raise ConfigError(
            f"{where}: the example key of k8s/base/replay-key.yaml is public; {MAKE_KEY}"
        )
    if len(key) < MIN_REPLAY_KEY_BYTES:
        raise ConfigError(
            f"{where}: the replay key is {len(key)} bytes, at least {MIN_REPLAY_KEY_BYTES} "
            f"are needed; {MAKE_KEY}"
        )
    return key


def route_table(values: Effective, *, ambiguous: str = DEFAULT_AMBIGUOUS) -> RouteTable:
    """The ``[[routes]]`` of the config file (ConfigError when one is wrong)."""
    config = values.config
    return build_routes(
        config.path if config else "",
        config.routes if config else (),
        ambiguous=ambiguous,
        upstreams=values.upstreams,
        env=values.env,
        # (the worker's --queue may name several: routes only name queues the proxy
        # writes to, so its first stands in for the default route's here)
        default_queue=_queue_set(values["queue"]).names[0],
    )


def stats_settings(values: Effective) -> StatsSettings:
    """The hqm_queue_* gauges: consumers are alive within the visibility timeout (on
    ``hqm proxy`` with Redis, where the worker options are refused: its default)."""
    return StatsSettings(
        interval_s=values["stats-interval"], alive_within_s=values["visibility-timeout"]
    )


def proxy_settings(values: Effective) -> ProxySettings:
    redis_url = values["redis"]
    return ProxySettings(
        listen=values["listen"],
        upstream=values["upstream"],
        admin=values["admin"],
        redis_url=redis_url,
        queue=values["queue"],
        mode=values["mode"],
        wait_s=values["wait"],
        max_wait_s=values["max-wait"],
        limits=Limits(
            max_header_bytes=values["max-header-bytes"],
            max_body_bytes=values["max-body"],
            header_timeout_s=values["header-timeout"],
            body_timeout_s=values["body-timeout"],
            send_timeout_s=values["send-timeout"],
            idle_timeout_s=values["idle-timeout"],
        ),
        max_depth=values["max-depth"],
        max_queue_bytes=values["max-queue-bytes"],
        max_inflight_bytes=values["max-inflight-bytes"],
        max_connections=values["max-connections"],
        result_ttl_s=values["result-ttl"],
        drain_timeout_s=values["drain-timeout"],
        idempotency_ttl_s=values["idempotency-ttl"],
        max_delay_s=values["max-delay"],
        embedded_worker=None if redis_url else worker_settings(values, consumer="embedded"),
        stats=stats_settings(values),
        upstreams=values.upstreams,
        routes=route_table(values, ambiguous=values["ambiguous-path"]),
        openhqm_api=values["openhqm-api"],
        transparent=values["transparent"],
        parser=values["parser"],
        replay_key=replay_key(values),
        openhqm_target=values["openhqm-target"].encode(),
        access_log=access_log_settings(values),
    )


def process_count(values: Effective) -> int:
    """``--processes``: the children a supervisor starts (1: this process serves).
    The embedded queue lives in one process: a result would be found only by the
    child that took the request, so several need Redis."""
    count = values["processes"]
    if count > 1 and values.command.name == "proxy" and not values["redis"]:
        raise ConfigError(
            f"--processes {count}: needs --redis (each process's embedded queue is its own)"
        )
    return count


def _queue_set(value: QueueSet | str) -> QueueSet:
    """``hqm worker --queue``. A top-level ``queue`` key of the file is read once for
    every command, as the one name ``hqm proxy`` takes: a plain string here."""
    return value if isinstance(value, QueueSet) else QueueSet.single(value)


def worker_run(values: Effective) -> WorkerRun:
    return WorkerRun(
        upstream=values["upstream"],
        redis_url=values["redis"],
        queues=_queue_set(values["queue"]),
        admin=values["admin"],
        result_ttl_s=values["result-ttl"],
        worker=worker_settings(values, consumer=values["consumer"] or default_consumer()),
        upstreams=values.upstreams,
        stats=stats_settings(values),
    )


def iptables_run(values: Effective) -> IptablesRun:
    """``hqm iptables``: one plan for IPv4, and one for IPv6 with ``--ipv6``."""
    families = (Family.IPV4, Family.IPV6) if values["ipv6"] else (Family.IPV4,)
    plans = tuple(
        InboundPlan(
            proxy_port=values["proxy-port"],
            admin_port=values["admin-port"],
            redirect_ports=values["ports"],
            exclude_ports=values["exclude-ports"],
            family=family,
        )
        for family in families
    )
    return IptablesRun(
        plans=plans, mode=values["mode"], dry_run=values["dry-run"], cleanup=values["cleanup"]
    )


def proxy_from(flags: Mapping[str, Any], env: Mapping[str, str] | None = None) -> ProxySettings:
    """Proxy settings as ``hqm proxy`` would build them (tests and embedding callers):
    ``flags`` maps option names (``"max-body"``) to flag text."""
    return proxy_settings(resolve(PROXY, _dests(flags), env or {}))


def worker_from(flags: Mapping[str, Any], env: Mapping[str, str] | None = None) -> WorkerRun:
    return worker_run(resolve(WORKER, _dests(flags), env or {}))


def _dests(flags: Mapping[str, Any]) -> dict[str, Any]:
    return {name.replace("-", "_"): value for name, value in flags.items()}
