"""The options tables: one per command, the single source of every option's name,
type, default, range and help. Each default is written here once (protocol limits
once in ``hqm.proto.limits``, with their reasons, and referenced here).

An option of command ``proxy`` named ``max-body`` is the flag ``--max-body``, the
environment variable ``HQM_PROXY_MAX_BODY`` and the key ``max_body`` in the ``[proxy]``
section of the ``--config`` file. Shared options are also ``HQM_<FLAG>`` and a
top-level key, so one environment block or file serves proxy and worker.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hqm.config.options import MAX_SECONDS as MAX_SECONDS  # (re-exported, as seconds)
from hqm.config.options import (
    Option,
    boolean,
    choice,
    integer,
    listen_address,
    number,
    path,
    redact_url,
    redis_url,
    seconds,
    text,
    upstream_address,
)
from hqm.config.tables_admission import ADMISSION
from hqm.config.tables_logs import ACCESS_LOG
from hqm.config.tables_memory import MAX_INFLIGHT, MAX_RESPONSE, PROXY_MEMORY, QUEUE_BOUNDS
from hqm.config.tables_openhqm import OPENHQM_API
from hqm.config.tables_parser import PARSER
from hqm.config.tables_processes import PROCESSES
from hqm.config.tables_queue import QUEUE, WORKER_QUEUE
from hqm.config.tables_transparent import REPLAY, TRANSPARENT
from hqm.config.tables_worker import WORKER_RUN
from hqm.proto import limits as L

REPLY_MODES = ("async", "wait", "fire")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    options: tuple[Option, ...]

    def option(self, name: str) -> Option:
        for option in self.options:
            if option.name == name:
                return option
        raise KeyError(name)

    def env_names(self, option: Option) -> tuple[str, ...]:
        """Environment variables of ``option``, the first one winning."""
        own = f"HQM_{self.name.upper()}_{option.key.upper()}"
        return (own, f"HQM_{option.key.upper()}") if option.shared else (own,)


# --- shared by proxy and worker ----------------------------------------------------
CONFIG = Option(
    "config",
    "path",
    None,
    "TOML file with [proxy] / [worker] sections; flags and environment win over it.",
    path,
    shared=True,
    in_file=False,
)
UPSTREAM = Option(
    "upstream",
    "address",
    None,
    "The app: HOST:PORT or http://HOST:PORT.",
    upstream_address,
    required=True,
    shared=True,
)
RESULT_TTL = Option(
    "result-ttl",
    "seconds",
    float(L.RESULT_TTL_S),
    "Seconds a finished result stays collectable.",
    seconds(zero_ok=False),
    shared=True,
)
DRAIN_TIMEOUT = Option(
    "drain-timeout",
    "seconds",
    L.DRAIN_TIMEOUT_S,
    "On SIGTERM/SIGINT, seconds in-flight requests get to finish.",
    seconds(zero_ok=True),
    shared=True,
)
LOG_LEVEL = Option(
    "log-level",
    "choice",
    "info",
    f"JSON logs on stderr: {', '.join(LOG_LEVELS)}.",
    choice(*LOG_LEVELS),
    shared=True,
)
STATS_INTERVAL = Option(
    "stats-interval",
    "seconds",
    5.0,  # below common scrape intervals (15 s+); a read costs a few commands per queue
    "Seconds between reads of the queue figures (hqm_queue_*) from Redis; 0 = none.",
    seconds(zero_ok=True),
    shared=True,
)

# --- the worker loop (hqm worker; on hqm proxy: its in-process worker) ---------------
_WORKER_LOOP = (
    Option(
        "concurrency",
        "int",
        16,
        "Hard cap on requests in flight to the app.",
        integer(low=1, high=10_000),
    ),
    Option("rate", "req/s", 0.0, "Requests/s to the app; 0 = no limit.", number(low=0.0)),
    Option(
        "global-rate",
        "req/s",
        0.0,
        "Requests/s to the app from all workers of the queue together; 0 = no limit.",
        number(low=0.0),
    ),
    Option(
        "global-burst",
        "int",
        1,
        "Requests the fleet may send at once above --global-rate.",
        integer(low=1, high=100_000),
    ),
    Option(
        "global-concurrency",
        "int",
        0,
        "Requests in flight to the app from all workers together; 0 = no limit.",
        integer(low=0, high=100_000),
    ),
    Option("max-attempts", "int", 5, "Attempts before dead-lettering.", integer(low=1, high=1000)),
    Option(
        "max-deliveries",
        "int",
        10,
        "Deliveries before an entry that keeps killing workers is dead-lettered.",
        integer(low=1, high=1000),
    ),
    Option(
        "retry-base",
        "seconds",
        0.5,
        "Backoff base, seconds (exponential, full jitter).",
        seconds(zero_ok=False),
    ),
    Option("retry-max", "seconds", 30.0, "Backoff cap, seconds.", seconds(zero_ok=False)),
    Option(
        "max-retry-duration",
        "seconds",
        3600.0,
        "How long a request waits for an app that cannot be reached; such tries spend no attempt.",
        seconds(zero_ok=False),
    ),
    Option(
        "visibility-timeout",
        "seconds",
        30.0,
        "Seconds before another worker takes over an unfinished entry.",
        seconds(zero_ok=False),
    ),
    MAX_RESPONSE,
)
#: How hqm talks to the app: the worker at replay, the proxy for pass-through routes.
_APP_LINK = (
    Option(
        "connect-timeout",
        "seconds",
        L.CONNECT_TIMEOUT_S,
        "Connecting to the app, seconds.",
        seconds(zero_ok=False),
    ),
    Option(
        "read-timeout",
        "seconds",
        L.READ_TIMEOUT_S,
        "The app's complete answer, seconds.",
        seconds(zero_ok=False),
    ),
    Option(
        "upstream-idle-timeout",
        "seconds",
        L.UPSTREAM_IDLE_TIMEOUT_S,
        "Close pooled connections to the app idle this long (keep below the app's keep-alive).",
        seconds(zero_ok=True),
    ),
    Option(
        "forwarded-headers",
        "bool",
        True,
        "Write X-Forwarded-For/-Proto/-Host at replay and pass-through.",
        boolean,
        switch=True,
        negatable=True,
    ),
    Option(
        "trusted-hops",
        "int",
        0,
        "Proxies in front of hqm whose X-Forwarded-Proto/-Host are believed; "
        "0 = a client's are replaced.",
        integer(low=0, high=10),
    ),
)


def _embedded(option: Option) -> Option:
    """The same option on ``hqm proxy``, where it configures the in-process worker."""
    return replace(option, embedded_worker=True, help=option.help + " (embedded queue only)")


PROXY = Command(
    "proxy",
    (
        Option(
            "listen",
            "address",
            ":8000",
            ":PORT or HOST:PORT clients connect to.",
            listen_address(),
        ),
        UPSTREAM,
        PROCESSES,
        Option(
            "admin",
            "address",
            "127.0.0.1:9090",
            "/metrics, /healthz, /readyz listener; 'off' for none.",
            listen_address(off=True),
        ),
        STATS_INTERVAL,
        Option(
            "redis",
            "url",
            None,
            "redis:// URL of the queue (rediss:// for TLS); none = embedded, not durable.",
            redis_url(none_ok=True),
            shared=True,
            display=redact_url,
        ),
        QUEUE,
        Option("mode", "choice", "async", "Reply mode: async, wait or fire.", choice(*REPLY_MODES)),
        Option("wait", "seconds", L.WAIT_S, "Wait-mode hold, seconds.", seconds(zero_ok=True)),
        Option(
            "max-wait", "seconds", L.MAX_WAIT_S, "Cap on Prefer: wait=N.", seconds(zero_ok=True)
        ),
        Option(
            "max-body",
            "bytes",
            L.MAX_BODY_BYTES,
            "Request body limit (413).",
            integer(low=0, high=1 << 40),
        ),
        Option(
            "max-header-bytes",
            "bytes",
            L.MAX_HEADER_BYTES,
            "Request line + headers limit (431).",
            integer(low=1024, high=1 << 24),
        ),
        *QUEUE_BOUNDS,
        *PROXY_MEMORY,
        Option(
            "header-timeout",
            "seconds",
            L.HEADER_TIMEOUT_S,
            "A request head must arrive within this (408).",
            seconds(zero_ok=False),
        ),
        Option(
            "body-timeout",
            "seconds",
            L.BODY_TIMEOUT_S,
            "The rest of a body must arrive within this (408).",
            seconds(zero_ok=False),
        ),
        Option(
            "max-connections",
            "int",
            0,
            "Client connections at once; more get 503 and close. 0 = the descriptor "
            "limit (raised to its hard value) less a reserve.",
            integer(low=0, high=10_000_000),
            default_text="0 (derived)",
        ),
        Option(
            "idle-timeout",
            "seconds",
            L.IDLE_TIMEOUT_S,
            "Idle keep-alive connections are closed after this.",
            seconds(zero_ok=False),
        ),
        PARSER,
        *ADMISSION,
        *OPENHQM_API,
        TRANSPARENT,
        *REPLAY,
        RESULT_TTL,
        DRAIN_TIMEOUT,
        LOG_LEVEL,
        *ACCESS_LOG,
        CONFIG,
        *(_embedded(option) for option in _WORKER_LOOP),
        *_APP_LINK,
    ),
)

WORKER = Command(
    "worker",
    (
        Option(
            "redis",
            "url",
            None,
            "redis:// URL of the queue (rediss:// for TLS).",
            redis_url(none_ok=False),
            required=True,
            shared=True,
            display=redact_url,
        ),
        UPSTREAM,
        PROCESSES,
        PARSER,
        WORKER_QUEUE,
        Option(
            "consumer",
            "name",
            None,
            "Stable consumer name in the group.",
            text(max_len=200),
            default_text="HOST-PID",
        ),
        Option(
            "admin",
            "address",
            "127.0.0.1:9091",
            "/metrics, /healthz, /readyz listener; 'off' for none.",
            listen_address(off=True),
        ),
        STATS_INTERVAL,
        *WORKER_RUN,
        *_WORKER_LOOP,
        MAX_INFLIGHT,
        *_APP_LINK,
        *REPLAY,
        RESULT_TTL,
        DRAIN_TIMEOUT,
        LOG_LEVEL,
        *ACCESS_LOG,
        CONFIG,
    ),
)

DLQ = Command(
    "dlq",
    (
        WORKER.option("redis"),
        QUEUE,
        Option(
            "count",
            "int",
            100,
            "Dead letters `dlq list` shows.",
            integer(low=1, high=1_000_000),
        ),
        CONFIG,
    ),
)
