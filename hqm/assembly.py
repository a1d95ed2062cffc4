"""Process assembly: queue, listeners, embedded worker, signals, graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Gauge

from hqm.ingress.handler import ProxyHandler, new_request_id
from hqm.ingress.passthrough import PassThrough
from hqm.ingress.settings import ProxySettings
from hqm.io.address import Address
from hqm.io.budget import ByteBudget
from hqm.io.clock import Clock
from hqm.io.fdlimit import connection_limit, raise_nofile
from hqm.io.http_server import ConnectionTracker, Routing, serve
from hqm.ops.access_log import AccessLog
from hqm.ops.admin import AdminHandler
from hqm.ops.due_promoter import DuePromoter
from hqm.ops.metrics import ProxyMetrics, QueueMetrics, WorkerMetrics
from hqm.ops.queue_gauges import QueueGauges, StatsSettings
from hqm.ops.readiness import Readiness
from hqm.ops.signals import stop_on_signals
from hqm.proto.fast_server import engine_name
from hqm.proto.limits import Limits
from hqm.queue.base import FleetLimits, Queue, QueueUnavailable, distinct
from hqm.queue.memory import MemoryQueue
from hqm.queue.memory_limits import MemoryLimits
from hqm.worker.embedded_drain import drain_embedded
from hqm.worker.fleet import FleetGate
from hqm.worker.loop import Worker
from hqm.worker.queues import QueueSet
from hqm.worker.settings import WorkerSettings
from hqm.worker.upstream import UpstreamPool, upstream_pools

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
    #: ``--queue``: the queues consumed, in priority order or with weights.
    queues: QueueSet
    #: None: no admin listener.
    admin: Address | None
    result_ttl_s: float
    #: ``[upstreams]`` of the config file: the only apps besides ``upstream`` (named
    #: "default") an entry may name; any other name is never dialled.
    upstreams: Mapping[str, Address] = field(default_factory=dict)
    #: The hqm_queue_* gauges (None: none).
    stats: StatsSettings | None = None


class StartError(Exception):
    """The process cannot start as configured; the message names the option."""


class ListenError(StartError):
    """A listener could not bind (the port is taken, the address is not ours)."""


async def open_queue(
    redis_url: str | None, name: str, *, max_depth: int, result_ttl_s: float, max_bytes: int = 0
) -> Queue:
    if not redis_url:  # (max_bytes: --max-queue-bytes, the embedded queue's bound)
        return MemoryQueue(
            name, max_depth=max_depth, result_ttl_s=result_ttl_s, max_bytes=max_bytes
        )
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


def _queue_gauges(
    redis_url: str | None,
    queues: tuple[str, ...],
    registry: CollectorRegistry,
    stats: StatsSettings | None,
    depth: Gauge | None = None,
) -> QueueGauges | None:
    """The process's one background refresh of the hqm_queue_* gauges (Redis only)."""
    if not redis_url or stats is None or stats.interval_s <= 0:
        return None
    from hqm.queue.redis_stats import StatsReader

    gauges = QueueGauges(
        reader=StatsReader(redis_url),
        queues=queues,
        metrics=QueueMetrics(registry),
        settings=stats,
        depth=depth,
    )
    gauges.start()
    return gauges


async def _close(
    admin: asyncio.Server | None,
    admin_tracker: ConnectionTracker,
    pools: Iterable[UpstreamPool],
    queues: Iterable[Queue],
) -> None:
    if admin is not None:
        admin.close()
        await admin_tracker.drain(0)
    for pool in pools:
        await pool.close()
    for queue in queues:
        await queue.close()


def _decides(settings: ProxySettings) -> bool:
    return bool(settings.routes.routes) or settings.transparent or settings.replay_key is not None


async def run_proxy(
    settings: ProxySettings,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Bound], None] | None = None,
    clock: Clock | None = None,
    reuse_port: bool = False,
) -> int:
    """Serve until ``stop``; return the embedded queue's requests left undelivered."""
    stop = stop or asyncio.Event()
    stop_on_signals(stop)
    queue = await open_queue(
        settings.redis_url,
        settings.queue,
        max_depth=settings.max_depth,
        result_ttl_s=settings.result_ttl_s,
        max_bytes=settings.max_queue_bytes,
    )
    budget = ByteBudget(settings.max_inflight_bytes)  # (its readers' and embedded worker's)
    # Every queue a route names; embedded, all are the one in-process queue (Redis only).
    queues = {settings.queue: queue}
    for name in sorted({route.queue for route in settings.routes.routes} - set(queues)):
        queues[name] = queue
        if settings.redis_url:
            queues[name] = await open_queue(
                settings.redis_url,
                name,
                max_depth=settings.max_depth,
                result_ttl_s=settings.result_ttl_s,
            )
    passthrough = PassThrough(
        upstreams={"default": settings.upstream, **settings.upstreams},
        settings=settings.passthrough,
        forwarding=settings.forwarding,
        request_id=new_request_id,
    )
    registry = CollectorRegistry()
    metrics = ProxyMetrics(registry)
    access_log = AccessLog(settings=settings.access_log, on_drop=metrics.access_log_dropped.inc)
    embedded = settings.embedded_worker
    pools = upstream_pools(
        settings.upstream, settings.upstreams, embedded.pool if embedded else None
    )
    worker = worker_task = None
    if embedded is not None:
        log.warning(
            "embedded queue: requests are held in this process only and are lost if it "
            "exits; pass --redis redis://HOST:6379/0 for a durable queue"
        )
        worker_metrics = WorkerMetrics(registry)
        # Every distinct queue the proxy writes to (embedded: the one), in priority order.
        worker = Worker(
            queues=distinct(queues.values()),
            pools=pools,
            settings=embedded,
            fleet=_fleet(embedded, None, settings.queue, worker_metrics),
            metrics=worker_metrics,
            access_log=access_log,
            budget=budget,
        )
        worker_task = asyncio.get_running_loop().create_task(worker.run())
    max_connections = connection_limit(raise_nofile(), configured=settings.max_connections)
    tracker = ConnectionTracker(max_connections)
    ready = Readiness(queue, draining=lambda: tracker.draining)

    async def refresh() -> None:
        with contextlib.suppress(Exception):
            metrics.queue_depth.labels(settings.queue).set(await queue.depth())

    # The hqm_queue_* refresh (Redis) sets hqm_queue_depth too: no scrape waits on Redis.
    gauges = _queue_gauges(
        settings.redis_url, tuple(queues), registry, settings.stats, metrics.queue_depth
    )
    # Due delayed requests and retries into the stream: a scaler sees them (no worker may run).
    due = DuePromoter(queues.values()).start() if settings.redis_url else None

    handler = ProxyHandler(
        queue=queue,
        queues=queues,
        passthrough=passthrough,
        settings=settings,
        metrics=metrics,
        access_log=access_log,
        readiness=ready,
        budget=budget,
    )
    server = await _listen(
        "--listen",
        settings.listen,
        handler.logged if access_log.enabled else handler,
        limits=settings.limits,
        tracker=tracker,
        clock=clock,
        # no routes, transparent port or replay: every request is queued, nothing to decide
        routing=Routing(handler.classify, handler.stream) if _decides(settings) else None,
        transparent=settings.transparent,
        reuse_port=reuse_port,
        connection=settings.connection,
    )
    admin, admin_tracker = await _serve_admin(
        settings.admin,
        AdminHandler(registry=registry, ready=ready, refresh=None if gauges else refresh),
    )
    bound = Bound(_bound(server), _bound(admin) if admin else None)
    log.info(
        "listening",
        extra={
            "listen": str(bound.listen),
            "admin": str(bound.admin or "off"),
            "upstream": str(settings.upstream),
            "queue": "redis" if settings.redis_url else "embedded",
            "parser": engine_name(settings.parser),
            "max_connections": max_connections,
        },
    )
    if on_ready is not None:
        on_ready(bound)
    await stop.wait()
    log.info("draining", extra={"timeout_s": settings.drain_timeout_s})
    deadline = asyncio.get_running_loop().time() + settings.drain_timeout_s
    server.close()
    await tracker.drain(settings.drain_timeout_s, release=handler.waits.release)
    undelivered = await drain_embedded(queue, worker, worker_task, deadline)
    if due is not None:
        await due.close()
    await passthrough.close()
    for extra in {id(q): q for q in queues.values() if q is not queue}.values():
        await extra.close()
    if gauges is not None:
        await gauges.close()
    await _close(admin, admin_tracker, pools.values(), [queue])
    access_log.close()
    log.info("stopped")
    return undelivered


async def run_worker(
    run: WorkerRun,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Bound], None] | None = None,
) -> None:
    stop = stop or asyncio.Event()
    worker: Worker | None = None  # (a second Ctrl-C says what it leaves undone)
    stop_on_signals(stop, abandon=lambda: worker.abandoned() if worker else "nothing started")
    # One queue object each: its own keys, hash tag and Cluster slot, its own claims.
    queues = [
        await open_queue(run.redis_url, name, max_depth=0, result_ttl_s=run.result_ttl_s)
        for name in run.queues.names
    ]
    registry = CollectorRegistry()
    pools = upstream_pools(run.upstream, run.upstreams, run.worker.pool)
    metrics = WorkerMetrics(registry)
    access_log = AccessLog(settings=run.worker.access_log, on_drop=metrics.access_log_dropped.inc)
    # (fleet-wide limits: those of the first queue, whatever queue a request came from)
    fleet = _fleet(run.worker, run.redis_url, run.queues.names[0], metrics)
    worker = Worker(
        queues=queues,
        pools=pools,
        settings=run.worker,
        metrics=metrics,
        weights=run.queues.weights,
        fleet=fleet,
        access_log=access_log,
    )

    async def ready() -> bool:
        return not stop.is_set() and all([await queue.ping() for queue in queues])

    admin, admin_tracker = await _serve_admin(
        run.admin, AdminHandler(registry=registry, ready=ready)
    )
    # (started once the admin port is ours: a refused --admin leaves no task behind)
    gauges = _queue_gauges(run.redis_url, run.queues.names, registry, run.stats)
    bound = Bound(None, _bound(admin) if admin else None)
    log.info(
        "worker started",
        extra={
            "consumer": run.worker.consumer,
            "admin": str(bound.admin or "off"),
            "upstream": str(run.upstream),
            "upstreams": sorted(pools),
            "queues": str(run.queues),
            "concurrency": run.worker.concurrency,
            "burst": run.worker.burst,
            "parser": engine_name(run.worker.pool.parser),
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
        await _close(admin, admin_tracker, pools.values(), queues)
        await fleet.close()
        if gauges is not None:
            await gauges.close()
        access_log.close()
        log.info("worker stopped")
