"""Every Redis key name hqm uses, in one place (docs/architecture.md §4).

All keys of one queue carry the hash tag ``{<queue>}`` so that they live in one
Redis Cluster slot: the multi-key Lua scripts of ``hqm.queue.redis_lua`` are then
valid on a cluster too. Those scripts build no key name: every key they touch is built
here and passed in their KEYS.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: The consumer group every hqm worker of a queue reads with.
GROUP = "hqm"


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """Key names of one queue."""

    queue: str
    #: What every key of the queue starts with (built once: key names are built per
    #: message on the hot path).
    prefix: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", f"hqm:{{{self.queue}}}:")

    @property
    def stream(self) -> str:
        """The request stream (consumer group :data:`GROUP`)."""
        return f"{self.prefix}stream"

    @property
    def group(self) -> str:
        return GROUP

    @property
    def dlq(self) -> str:
        """The dead-letter stream."""
        return f"{self.prefix}dlq"

    @property
    def delayed(self) -> str:
        """Sorted set of scheduled retries, scored by due time (epoch seconds)."""
        return f"{self.prefix}delayed"

    def result(self, request_id: str) -> str:
        """The stored response of a request (expires after the result TTL)."""
        return f"{self.prefix}res:{request_id}"

    def state(self, request_id: str) -> str:
        """The status of a request (expires after the result TTL)."""
        return f"{self.prefix}st:{request_id}"

    def idem(self, key: str) -> str:
        """An Idempotency-Key's record: the request's fingerprint and the id of the first
        request sent with it (``key``: a hash of route and key, hqm.ingress.admission)."""
        return f"{self.prefix}idem:{key}"

    @property
    def probe(self) -> str:
        """A short-lived key the proxy's /readyz writes to learn that Redis takes writes."""
        return f"{self.prefix}probe"

    def spent(self, token: str) -> str:
        """A spent single-use token (an HQM-Replay's digest, never the token), kept
        until the token would have expired."""
        return f"{self.prefix}spent:{token}"

    def heartbeat(self, consumer: str) -> str:
        """A worker's liveness: written every --heartbeat seconds, expiring after 3 of
        them, deleted on clean exit (hqm.worker.heartbeat)."""
        return f"{self.prefix}alive:{consumer}"

    def reply_channel(self, instance: str) -> str:
        """Pub/sub channel on which workers notify one proxy instance."""
        return f"{self.prefix}reply:{instance}"

    @property
    def global_rate(self) -> str:
        """The fleet-wide rate limiter's state (GCRA: the theoretical arrival time)."""
        return f"{self.prefix}limit:rate"

    @property
    def leases(self) -> str:
        """Sorted set of fleet-wide concurrency leases, scored by expiry (ms)."""
        return f"{self.prefix}limit:leases"

    @property
    def pause(self) -> str:
        """Set while the app asked the whole queue to wait (429/503 Retry-After)."""
        return f"{self.prefix}limit:pause"
