"""Prometheus metrics. One registry per process part, so tests can run several."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# No ``*_created`` series: one per labelled child, of no use to a rate() or a dashboard.
disable_created_metrics()

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "hqm_proxy_requests",
            "Requests answered by the proxy, by reply mode and outcome.",
            ["mode", "outcome"],
            registry=registry,
        )
        self.routed = Counter(
            "hqm_proxy_routed",
            'Requests by route (its name; "default" when none matched) and what became of '
            'them: queue, pass or reject; hqm\'s own API (/_hqm/, /api/v1/) is route "api", '
            'action "api".',
            ["route", "action"],
            registry=registry,
        )
        self.enqueue_seconds = Histogram(
            "hqm_proxy_enqueue_seconds",
            "Time from a complete request to the queue confirming the write.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "hqm_queue_depth",
            "Entries not yet finished (waiting, in flight, scheduled for retry).",
            ["queue"],
            registry=registry,
        )
        self.access_log_dropped = Counter(
            "hqm_proxy_access_log_dropped",
            "Access-log lines dropped because the buffer was full (stderr not keeping up).",
            registry=registry,
        )


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.in_flight = Gauge(
            "hqm_worker_in_flight", "Requests in flight to the app.", registry=registry
        )
        self.app_seconds = Histogram(
            "hqm_worker_app_seconds",
            "App response time, by status class (2xx..5xx, or error) and queue.",
            ["status_class", "queue"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_wait_seconds = Histogram(
            "hqm_worker_queue_wait_seconds",
            "Time from acceptance by the proxy to the first attempt, by queue.",
            ["queue"],
            buckets=(*_LATENCY_BUCKETS, 30, 60, 300, 900, 3600),
            registry=registry,
        )
        self.processed = Counter(
            "hqm_worker_processed",
            "Entries finished, by outcome and queue.",
            ["outcome", "queue"],
            registry=registry,
        )
        self.retries = Counter(
            "hqm_worker_retries", "Retries scheduled, by queue.", ["queue"], registry=registry
        )
        self.effective_rate = Gauge(
            "hqm_worker_effective_rate",
            "Fleet-wide requests/s enforced now: --global-rate, lowered while the app "
            "answers 429/503.",
            registry=registry,
        )
        self.breaker_state = Gauge(
            "hqm_worker_breaker_state",
            "Circuit breaker in front of each app (upstream name): 0 closed, 1 open, 2 half-open.",
            ["upstream"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "hqm_worker_dead_letters",
            "Entries moved to the dead-letter stream, by queue.",
            ["queue"],
            registry=registry,
        )
        self.attempts = Counter(
            "hqm_worker_attempts",
            "Requests sent to the app, by the app's status code (error: no answer).",
            ["queue", "code"],
            registry=registry,
        )
        self.access_log_dropped = Counter(
            "hqm_worker_access_log_dropped",
            "Worker access-log lines dropped because the buffer was full.",
            registry=registry,
        )


def attempt_code(status: int | None) -> str:
    """The ``code`` label of an attempt: the status, or "error" (none, or not HTTP's)."""
    return str(status) if status is not None and 100 <= status <= 599 else "error"


class QueueMetrics:
    """Figures of the queues a process serves, read from Redis in the background
    (hqm.ops.queue_gauges), never while a scrape waits."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def gauge(name: str, help_: str) -> Gauge:
            return Gauge(name, help_, ["queue"], registry=registry)

        self.backlog = gauge("hqm_queue_backlog", "Requests waiting, not claimed by a worker yet.")
        self.pending = gauge(
            "hqm_queue_pending",
            "Requests claimed by a worker and not finished (held by a dead one until reclaimed).",
        )
        self.scheduled = gauge(
            "hqm_queue_scheduled",
            "Retries and delayed requests waiting for their time (one figure: the set does "
            "not tell them apart cheaply).",
        )
        self.dead_letters = gauge("hqm_queue_dead_letters", "Entries in the dead-letter stream.")
        self.oldest_age = gauge(
            "hqm_queue_oldest_age_seconds",
            "Age of the oldest request no worker claimed yet; 0 when none waits.",
        )
        self.consumers = gauge(
            "hqm_queue_consumers",
            "Consumers alive: their heartbeat key exists (written every --heartbeat seconds).",
        )
        self.results = gauge(
            "hqm_queue_results", "Results held for collection (estimated from a key sample)."
        )
        self.results_bytes = gauge(
            "hqm_queue_results_bytes", "Redis memory the held results take (estimated)."
        )


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
