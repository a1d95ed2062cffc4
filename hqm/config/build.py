"""Settings objects from resolved options: the only place that reads option values."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

from hqm.assembly import WorkerRun
from hqm.config.resolve import Effective, resolve
from hqm.config.tables import PROXY, WORKER
from hqm.ingress.settings import ProxySettings
from hqm.proto.headers import ForwardingPolicy
from hqm.proto.limits import Limits
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
        ),
        forwarding=ForwardingPolicy(values["forwarded-headers"], values["trusted-hops"]),
        burst=burst,
        burst_queue_timeout_s=values["burst-timeout"] if burst else 0.0,
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
            idle_timeout_s=values["idle-timeout"],
        ),
        max_depth=values["max-depth"],
        max_connections=values["max-connections"],
        result_ttl_s=values["result-ttl"],
        drain_timeout_s=values["drain-timeout"],
        embedded_worker=None if redis_url else worker_settings(values, consumer="embedded"),
        upstreams=values.upstreams,
    )


def worker_run(values: Effective) -> WorkerRun:
    return WorkerRun(
        upstream=values["upstream"],
        redis_url=values["redis"],
        queue=values["queue"],
        admin=values["admin"],
        result_ttl_s=values["result-ttl"],
        worker=worker_settings(values, consumer=values["consumer"] or default_consumer()),
        upstreams=values.upstreams,
    )


def proxy_from(flags: Mapping[str, Any], env: Mapping[str, str] | None = None) -> ProxySettings:
    """Proxy settings as ``hqm proxy`` would build them (tests and embedding callers):
    ``flags`` maps option names (``"max-body"``) to flag text."""
    return proxy_settings(resolve(PROXY, _dests(flags), env or {}))


def worker_from(flags: Mapping[str, Any], env: Mapping[str, str] | None = None) -> WorkerRun:
    return worker_run(resolve(WORKER, _dests(flags), env or {}))


def _dests(flags: Mapping[str, Any]) -> dict[str, Any]:
    return {name.replace("-", "_"): value for name, value in flags.items()}
