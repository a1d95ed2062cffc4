"""Process assembly: queue, listeners, embedded worker, signals, graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from hqm.admin import AdminHandler
from hqm.clock import Clock
from hqm.config import Address, ConfigError, ProxySettings, WorkerSettings
from hqm.http_server import ConnectionTracker, serve
from hqm.metrics import ProxyMetrics, WorkerMetrics
from hqm.proto.limits import Limits
from hqm.proxy import ProxyHandler
from hqm.queue.base import Queue, QueueUnavailable
from hqm.queue.memory import MemoryQueue
from hqm.upstream import PoolSettings, UpstreamPool
from hqm.worker import Worker

log = logging.getLogger("hqm")


@dataclass(frozen=True, slots=True)
class Bound:
    """Where a started process listens (ports resolved when 0 was asked for)."""

    listen: Address | None
    admin: Address | None


@dataclass(frozen=True, slots=True)
class WorkerRun:
    upstream: Address
    redis_url: str
    worker: WorkerSettings
    queue: str = "default"
    admin: Address | None = None
    result_ttl_s: float = 86400.0


async def open_queue(
    redis_url: str | None, name: str, *, max_depth: int = 0, result_ttl_s: float = 86400.0
) -> Queue:
    if not redis_url:
        return MemoryQueue(name, max_depth=max_depth, result_ttl_s=result_ttl_s)
    from hqm.queue.redis_streams import RedisQueue

    try:
        queue = RedisQueue(redis_url, name, max_depth=max_depth, result_ttl_s=result_ttl_s)
    except ValueError as exc:  # a URL redis-py cannot use: a usage error, not a crash
        raise ConfigError(f"--redis: {exc}") from None
    try:
        await queue.start()
    except QueueUnavailable as exc:
        log.warning("redis not reachable yet (%s); will keep trying", exc)
    return queue


def _bound(server: asyncio.Server) -> Address:
    host, port = server.sockets[0].getsockname()[:2]
    return Address(host, port)


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


async def _serve_admin(
    address: Address | None, handler: AdminHandler
) -> tuple[asyncio.Server | None, ConnectionTracker]:
    tracker = ConnectionTracker()
    if address is None:
        return None, tracker
    server = await serve(handler, address.host, address.port, limits=Limits(), tracker=tracker)
    return server, tracker


async def run_proxy(
    settings: ProxySettings,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Bound], None] | None = None,
    clock: Clock | None = None,
) -> None:
    stop = stop or asyncio.Event()
    _stop_on_signals(stop)
    queue = await open_queue(
        settings.redis_url,
        settings.queue,
        max_depth=settings.max_depth,
        result_ttl_s=settings.result_ttl_s,
    )
    registry = CollectorRegistry()
    metrics = ProxyMetrics(registry)
    pool = UpstreamPool(settings.upstream)
    worker = worker_task = None
    if settings.redis_url is None:
        log.warning(
            "embedded queue: requests are held in this process only and are lost if it "
            "exits; pass --redis redis://HOST:6379/0 for a durable queue"
        )
        assert settings.embedded_worker is not None
        worker = Worker(
            queue=queue,
            pool=pool,
            settings=settings.embedded_worker,
            metrics=WorkerMetrics(registry),
        )
        worker_task = asyncio.get_running_loop().create_task(worker.run())
    tracker = ConnectionTracker()

    async def ready() -> bool:
        return not tracker.draining and await queue.ping()

    async def refresh() -> None:
        with contextlib.suppress(Exception):
            metrics.queue_depth.labels(settings.queue).set(await queue.depth())

    handler = ProxyHandler(queue=queue, settings=settings, metrics=metrics)
    server = await serve(
        handler,
        settings.listen.host,
        settings.listen.port,
        limits=settings.limits,
        tracker=tracker,
        clock=clock,
    )
    admin, admin_tracker = await _serve_admin(
        settings.admin, AdminHandler(registry=registry, ready=ready, refresh=refresh)
    )
    bound = Bound(_bound(server), _bound(admin) if admin else None)
    log.info(
        "listening",
        extra={
            "listen": str(bound.listen),
            "admin": str(bound.admin),
            "upstream": str(settings.upstream),
            "queue": "redis" if settings.redis_url else "embedded",
        },
    )
    if on_ready is not None:
        on_ready(bound)
    await stop.wait()
    log.info("draining", extra={"timeout_s": settings.drain_timeout_s})
    server.close()
    await tracker.drain(settings.drain_timeout_s)
    if worker is not None and worker_task is not None:
        worker.stop()
        await worker_task
    if admin is not None:
        admin.close()
        await admin_tracker.drain(0)
    await pool.close()
    await queue.close()
    log.info("stopped")


async def run_worker(
    run: WorkerRun,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Bound], None] | None = None,
) -> None:
    stop = stop or asyncio.Event()
    _stop_on_signals(stop)
    queue = await open_queue(run.redis_url, run.queue, result_ttl_s=run.result_ttl_s)
    registry = CollectorRegistry()
    pool = UpstreamPool(
        run.upstream,
        PoolSettings(
            connect_timeout_s=run.worker.connect_timeout_s,
            read_timeout_s=run.worker.read_timeout_s,
            pool_size=max(run.worker.concurrency, 1),
        ),
    )
    worker = Worker(queue=queue, pool=pool, settings=run.worker, metrics=WorkerMetrics(registry))

    async def ready() -> bool:
        return not stop.is_set() and await queue.ping()

    admin, admin_tracker = await _serve_admin(
        run.admin, AdminHandler(registry=registry, ready=ready)
    )
    bound = Bound(None, _bound(admin) if admin else None)
    log.info(
        "worker started",
        extra={
            "consumer": run.worker.consumer,
            "admin": str(bound.admin),
            "upstream": str(run.upstream),
            "concurrency": run.worker.concurrency,
            "burst": run.worker.burst,
        },
    )
    if on_ready is not None:
        on_ready(bound)
    task = asyncio.get_running_loop().create_task(worker.run())
    stopper = asyncio.get_running_loop().create_task(stop.wait())
    await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():
        log.info(
            "draining",
            extra={"in_flight": worker.in_flight, "timeout_s": run.worker.drain_timeout_s},
        )
    worker.stop()
    await task
    stopper.cancel()
    if admin is not None:
        admin.close()
        await admin_tracker.drain(0)
    await pool.close()
    await queue.close()
    log.info("worker stopped")
