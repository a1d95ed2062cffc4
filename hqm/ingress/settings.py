"""What the proxy's ingress runs with. Built from the options tables (``hqm.config``),
which hold every default; nothing here repeats one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from hqm.ingress.passthrough import PassSettings
from hqm.ingress.routes import RouteTable
from hqm.io.address import Address
from hqm.ops.access_log import AccessLogSettings
from hqm.ops.queue_gauges import StatsSettings
from hqm.proto.fast_server import connection_factory
from hqm.proto.grammar import DEFAULT_PARSER
from hqm.proto.headers import ForwardingPolicy
from hqm.proto.limits import IDEMPOTENCY_TTL_S, MAX_DELAY_S, Limits
from hqm.proto.server import ServerConnection
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
    #: The embedded queue's bound in bytes held (503 beyond); 0 = none.
    max_queue_bytes: int
    #: --max-inflight-bytes: response bytes held at once (``hqm.io.budget``).
    max_inflight_bytes: int
    #: Client connections at once (503 and close past it); 0 = from the fd limit.
    max_connections: int
    result_ttl_s: float
    drain_timeout_s: float
    embedded_worker: WorkerSettings | None = None
    #: How long an Idempotency-Key is remembered; the furthest HQM-Delay/-Not-Before
    #: (set from the options table; these defaults only serve settings built by hand).
    idempotency_ttl_s: float = IDEMPOTENCY_TTL_S
    max_delay_s: float = MAX_DELAY_S
    #: The hqm_queue_* gauges, with Redis (None: none).
    stats: StatsSettings | None = None
    #: ``[upstreams]`` of the config file, by name, besides ``upstream`` ("default").
    upstreams: Mapping[str, Address] = field(default_factory=dict)
    #: The original OpenHQM's API on /api/v1/ (``hqm.ingress.openhqm_api``), and the
    #: request-target its submits go to on ``upstream`` (set from the options table;
    #: these defaults only serve settings built by hand).
    openhqm_api: bool = False
    #: --parser: auto (httptools for plain requests, h11 for the rest) or h11.
    parser: str = DEFAULT_PARSER
    #: Behind ``hqm iptables``: each connection goes to the app on the port it dialled.
    transparent: bool = False
    #: The key of HQM-Replay (None: no replay is recognised; the header is dropped).
    replay_key: bytes | None = None
    openhqm_target: bytes = b"/"
    #: ``[[routes]]``, then the default route (queue to ``queue`` in ``mode``).
    routes: RouteTable = field(default_factory=RouteTable)
    #: How pass-through routes reach the app.
    passthrough: PassSettings = field(default_factory=PassSettings)
    forwarding: ForwardingPolicy = field(
        default_factory=lambda: ForwardingPolicy(enabled=True, trusted_hops=0)
    )
    #: --access-log, --access-log-sample (``hqm.ops.access_log``).
    access_log: AccessLogSettings = field(default_factory=AccessLogSettings)

    @property
    def connection(self) -> type[ServerConnection]:
        """The server connection class ``--parser`` names (``hqm.proto.fast_server``)."""
        return connection_factory(self.parser)
