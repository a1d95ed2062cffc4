"""What one worker loop runs with. Built from the options tables (``hqm.config``),
which hold every default; nothing here repeats one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from hqm.ops.access_log import AccessLogSettings
from hqm.proto.headers import ForwardingPolicy
from hqm.worker.heartbeat import HEARTBEAT_S
from hqm.worker.upstream import PoolSettings

#: Longest a claim blocks in Redis: bounds how late SIGTERM and maintenance are noticed.
CLAIM_BLOCK_S = 1.0


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    consumer: str
    #: Hard cap on requests in flight to the app.
    concurrency: int
    #: Requests/s to the app; 0 means unlimited.
    rate: float
    #: Fleet-wide (all workers of the queue): requests/s, burst, requests in flight.
    global_rate: float
    global_burst: int
    global_concurrency: int
    visibility_timeout_s: float
    max_attempts: int
    max_deliveries: int
    retry_base_s: float
    retry_max_s: float
    #: How long a request may wait for an app that cannot be reached (no attempt spent).
    max_retry_duration_s: float
    drain_timeout_s: float
    #: --max-inflight-bytes: the answers this process holds at once (``hqm.io.budget``).
    max_inflight_bytes: int
    #: Connections to the app: timeouts, pool size.
    pool: PoolSettings
    #: X-Forwarded-* at replay.
    forwarding: ForwardingPolicy
    #: Exit once the queue is empty; give up on an unreachable queue after this long.
    burst: bool = False
    burst_queue_timeout_s: float = 0.0
    #: --heartbeat: seconds between liveness writes (hqm.worker.heartbeat).
    heartbeat_s: float = HEARTBEAT_S
    claim_block_s: float = CLAIM_BLOCK_S
    #: Per route name: the headers its ``inject_headers`` adds at replay (secrets: kept
    #: in the worker's own configuration, never in the queue).
    route_headers: Mapping[str, tuple[tuple[bytes, bytes], ...]] = field(default_factory=dict)
    #: Signs each replay with HQM-Replay, so a transparent proxy passes it straight on.
    replay_key: bytes | None = None
    #: --access-log, --access-log-sample: a line per finished request (``hqm.ops.access_log``).
    access_log: AccessLogSettings = field(default_factory=AccessLogSettings)
