"""Process assembly: queue, listeners, embedded worker, signals, graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from hqm.ingress.handler import ProxyHandler
from hqm.ingress.settings import ProxySettings
from hqm.io.address import Address
from hqm.io.clock import Clock
from hqm.io.fdlimit import connection_limit, raise_nofile
from hqm.io.http_server import ConnectionTracker, serve
from hqm.ops.admin import AdminHandler
from hqm.ops.metrics import ProxyMetrics, WorkerMetrics
from hqm.proto.limits import Limits
from hqm.queue.base import FleetLimits, Queue, QueueUnavailable
from hqm.queue.memory import MemoryQueue
from hqm.queue.memory_limits import MemoryLimits
from hqm.worker.fleet import FleetGate
from hqm.worker.loop import Worker
from hqm.worker.settings import WorkerSettings
from hqm.worker.upstream import UpstreamPool

log = logging.getLogger("hqm")


@dataclass(frozen=True, slots=True)
class Bound:
    """Where a started process listens (ports resolved when 0 was asked for)."""

    listen: Address | None
    admin: Address | None


@dataclass(frozen=True, slots=True)
class WorkerRun:
    """What ``hqm worker`` runs with."""

    upstream: Address
    redis_url: str
    worker: WorkerSettings
    queue: str
    #: None: no admin listener.
    admin: Address | None
    result_ttl_s: float
    #: ``[upstreams]`` of the config file: the only apps besides ``upstream`` (named
    #: "default") an entry may name; any other name is never dialled.
    upstreams: Mapping[str, Address] = field(default_factory=dict)


class StartError(Exception):
    """The process cannot start as configured; the message names the option."""


class ListenError(StartError):
    """A listener could not bind (the port is taken, the address is not ours)."""


async def open_queue(
    redis_url: str | None, name: str, *, max_depth: int, result_ttl_s: float
) -> Queue:
    if not redis_url:
        return MemoryQueue(name, max_depth=max_depth, result_ttl_s=result_ttl_s)
    from hqm.queue.redis_streams import RedisQueue

    try:
        queue = RedisQueue(redis_url, name, max_depth=max_depth, result_ttl_s=result_ttl_s)
    except ValueError as exc:  # a URL redis-py cannot use: a usage error, not a crash
        raise StartError(f"--redis: {exc}") from None
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


async def _listen(flag: str, address: Address, handler, **kwargs) -> asyncio.Server:
    try:
        return await serve(handler, address.host, address.port, **kwargs)
    except OSError as exc:
        hint = " (another hqm on this host? give each its own --admin, or --admin off)"
        raise ListenError(
            f"{flag} {address}: cannot listen: {exc.strerror or exc}"
            + (hint if flag == "--admin" else "")
        ) from None


async def _serve_admin(
    address: Address | None, handler: AdminHandler
) -> tuple[asyncio.Server | None, ConnectionTracker]:
    tracker = ConnectionTracker()
    if address is None:
        return None, tracker
    server = await _listen("--admin", address, handler, limits=Limits(), tracker=tracker)
    return server, tracker


def _fleet(
    settings: WorkerSettings, redis_url: str | None, queue: str, metrics: WorkerMetrics
) -> FleetGate:
    """What the fleet shares: through Redis, or (embedded: one worker) in process."""
    if redis_url:
        from hqm.queue.redis_limits import RedisLimits

        limits: FleetLimits = RedisLimits(redis_url, queue)
    else:
        limits = MemoryLimits()
    return FleetGate(
        limits,
        holder=settings.consumer,
        rate=settings.global_rate,
        burst=settings.global_burst,
        concurrency=settings.global_concurrency,
        on_rate=metrics.effective_rate.set,
    )


async def _close(
    admin: asyncio.Server | None, admin_tracker: ConnectionTracker, pool: UpstreamPool, queue: Queue
) -> None:
    if admin is not None:
        admin.close()
        await admin_tracker.drain(0)
    await pool.close()
    await queue.close()


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
    embedded = settings.embedded_worker
    pool = UpstreamPool(settings.upstream, embedded.pool if embedded else None)
    worker = worker_task = None
    if embedded is not None:
        log.warning(
            "embedded queue: requests are held in this process only and are lost if it "
            "exits; pass --redis redis://HOST:6379/0 for a durable queue"
        )
        worker_metrics = WorkerMetrics(registry)
        worker = Worker(
            queue=queue,
            pool=pool,
            settings=embedded,
            fleet=_fleet(embedded, None, settings.queue, worker_metrics),
            metrics=worker_metrics,
        )
        worker_task = asyncio.get_running_loop().create_task(worker.run())
    max_connections = connection_limit(raise_nofile(), configured=settings.max_connections)
    tracker = ConnectionTracker(max_connections)

    async def ready() -> bool:
        return not tracker.draining and await queue.ping()

    async def refresh() -> None:
        with contextlib.suppress(Exception):
            metrics.queue_depth.labels(settings.queue).set(await queue.depth())

    handler = ProxyHandler(queue=queue, settings=settings, metrics=metrics)
    server = await _listen(
        "--listen",
        settings.listen,
        handler,
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
            "max_connections": max_connections,
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
    await _close(admin, admin_tracker, pool, queue)
    log.info("stopped")


async def run_worker(
    run: WorkerRun,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Bound], None] | None = None,
) -> None:
    stop = stop or asyncio.Event()
    _stop_on_signals(stop)
    queue = await open_queue(run.redis_url, run.queue, max_depth=0, result_ttl_s=run.result_ttl_s)
    registry = CollectorRegistry()
    pool = UpstreamPool(run.upstream, run.worker.pool)
    metrics = WorkerMetrics(registry)
    fleet = _fleet(run.worker, run.redis_url, run.queue, metrics)
    worker = Worker(queue=queue, pool=pool, settings=run.worker, metrics=metrics, fleet=fleet)

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
    stopper.cancel()
    try:
        await task  # QueueUnreachable in burst mode: the caller exits non-zero
    finally:
        await _close(admin, admin_tracker, pool, queue)
        await fleet.close()
        log.info("worker stopped")
