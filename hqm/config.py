"""Addresses and the settings objects built from CLI flags / HQM_* environment."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from hqm.proto import limits as L
from hqm.proto.limits import Limits

REPLY_MODES = ("async", "wait", "fire")


class ConfigError(ValueError):
    """A flag or setting that cannot be used; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _port(text: str, what: str, *, allow_any: bool = False) -> int:
    low = 0 if allow_any else 1
    if not text.isdigit() or not low <= int(text) < 65536:
        raise ConfigError(f"{what}: port must be {low}-65535, got {text!r}")
    return int(text)


def parse_listen(text: str, *, what: str = "--listen", allow_any_port: bool = False) -> Address:
    """``:8000`` (all interfaces), ``host:8000`` or ``[::1]:8000``; port 0 = any free one."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ConfigError(f"{what}: expected HOST:PORT or :PORT, got {text!r}")
    host = host.strip("[]") or "0.0.0.0"
    return Address(host, _port(port, what, allow_any=allow_any_port))


def parse_upstream(text: str) -> Address:
    """``host:port`` or ``http://host:port`` (https is not spoken to the app)."""
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme != "http":
            raise ConfigError(f"--upstream: only http:// upstreams are supported, got {text!r}")
        if parts.path not in ("", "/") or parts.query:
            raise ConfigError(f"--upstream: give only scheme, host and port, got {text!r}")
        if not parts.hostname:
            raise ConfigError(f"--upstream: no host in {text!r}")
        try:
            port = parts.port or 80
        except ValueError:
            raise ConfigError(f"--upstream: bad port in {text!r}") from None
        return Address(parts.hostname, port)
    address = parse_listen(text, what="--upstream")
    if not text.rpartition(":")[0]:
        raise ConfigError(f"--upstream: a host is required, got {text!r}")
    return address


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    consumer: str
    concurrency: int = 16
    rate: float = 0.0  # requests/s; 0 means unlimited
    visibility_timeout_s: float = 30.0
    max_attempts: int = 5
    max_deliveries: int = 10
    retry_base_s: float = 0.5
    retry_max_s: float = 30.0
    drain_timeout_s: float = L.DRAIN_TIMEOUT_S
    connect_timeout_s: float = L.CONNECT_TIMEOUT_S
    read_timeout_s: float = L.READ_TIMEOUT_S
    forwarded_headers: bool = True
    burst: bool = False
    #: Longest a claim blocks; bounds how late SIGTERM and maintenance are noticed.
    claim_block_s: float = 1.0

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigError("--concurrency must be at least 1")
        if self.rate < 0:
            raise ConfigError("--rate must be >= 0 (0 = unlimited)")
        if self.max_attempts < 1:
            raise ConfigError("--max-attempts must be at least 1")
        if self.max_deliveries < 1:
            raise ConfigError("--max-deliveries must be at least 1")
        if self.visibility_timeout_s <= 0:
            raise ConfigError("--visibility-timeout must be > 0")


@dataclass(frozen=True, slots=True)
class ProxySettings:
    listen: Address
    upstream: Address
    admin: Address
    redis_url: str | None = None
    queue: str = "default"
    mode: str = "async"
    wait_s: float = L.WAIT_S
    max_wait_s: float = L.MAX_WAIT_S
    limits: Limits = field(default_factory=Limits)
    max_depth: int = 0
    result_ttl_s: float = L.RESULT_TTL_S
    drain_timeout_s: float = L.DRAIN_TIMEOUT_S
    forwarded_headers: bool = True
    #: Settings of the in-process worker that drains the embedded queue.
    embedded_worker: WorkerSettings | None = None

    def __post_init__(self) -> None:
        if self.mode not in REPLY_MODES:
            raise ConfigError(f"--mode must be one of {', '.join(REPLY_MODES)}")
        if self.wait_s < 0 or self.max_wait_s < 0:
            raise ConfigError("--wait and --max-wait must be >= 0")
        if self.max_depth < 0:
            raise ConfigError("--max-depth must be >= 0 (0 = unlimited)")
