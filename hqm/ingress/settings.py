"""What the proxy's ingress runs with. Built from the options tables (``hqm.config``),
which hold every default; nothing here repeats one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from hqm.io.address import Address
from hqm.proto.limits import Limits
from hqm.worker.settings import WorkerSettings

REPLY_MODES = ("async", "wait", "fire")


@dataclass(frozen=True, slots=True)
class ProxySettings:
    listen: Address
    upstream: Address
    #: None: no admin listener (``--admin off``).
    admin: Address | None
    #: None: the embedded queue, drained by ``embedded_worker`` in this process.
    redis_url: str | None
    queue: str
    mode: str
    wait_s: float
    max_wait_s: float
    limits: Limits
    #: Backlog limit (503); 0 = none.
    max_depth: int
    #: Client connections at once (503 and close past it); 0 = from the fd limit.
    max_connections: int
    result_ttl_s: float
    drain_timeout_s: float
    embedded_worker: WorkerSettings | None = None
    #: ``[upstreams]`` of the config file, by name, besides ``upstream`` ("default").
    upstreams: Mapping[str, Address] = field(default_factory=dict)
