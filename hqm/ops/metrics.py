"""Prometheus metrics. One registry per process part, so tests can run several."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "hqm_proxy_requests",
            "Requests answered by the proxy, by reply mode and outcome.",
            ["mode", "outcome"],
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


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.in_flight = Gauge(
            "hqm_worker_in_flight", "Requests in flight to the app.", registry=registry
        )
        self.app_seconds = Histogram(
            "hqm_worker_app_seconds",
            "App response time, by status class (2xx..5xx, or error).",
            ["status_class"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_wait_seconds = Histogram(
            "hqm_worker_queue_wait_seconds",
            "Time from acceptance by the proxy to the first attempt.",
            buckets=(*_LATENCY_BUCKETS, 30, 60, 300, 900, 3600),
            registry=registry,
        )
        self.processed = Counter(
            "hqm_worker_processed", "Entries finished, by outcome.", ["outcome"], registry=registry
        )
        self.retries = Counter("hqm_worker_retries", "Retries scheduled.", registry=registry)
        self.effective_rate = Gauge(
            "hqm_worker_effective_rate",
            "Fleet-wide requests/s enforced now: --global-rate, lowered while the app "
            "answers 429/503.",
            registry=registry,
        )
        self.breaker_state = Gauge(
            "hqm_worker_breaker_state",
            "Circuit breaker in front of the app: 0 closed, 1 open, 2 half-open.",
            registry=registry,
        )
        self.dead_letters = Counter(
            "hqm_worker_dead_letters", "Entries moved to the dead-letter stream.", registry=registry
        )


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
