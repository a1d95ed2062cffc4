"""Network addresses as the command line writes them: ``:8000``, ``host:8000``,
``[::1]:8000``, ``http://host:8080``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

#: What ``:PORT`` listens on: every IPv4 interface.
ANY_HOST = "0.0.0.0"
#: A host name, an IPv4 address or (unbracketed) an IPv6 address.
_HOST = re.compile(r"[A-Za-z0-9._-]+|[0-9A-Fa-f:.]+(%[A-Za-z0-9_.-]+)?")


def _host(text: str, original: str) -> str:
    host = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if not _HOST.fullmatch(host) or (":" in host and not text.startswith("[")):
        raise ValueError(f"not a host name or address: {original!r}")
    return host


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _port(text: str, *, allow_zero: bool) -> int:
    low = 0 if allow_zero else 1
    if not text.isdigit() or not low <= int(text) < 65536:
        raise ValueError(f"port must be {low}-65535, got {text!r}")
    return int(text)


def parse_listen(text: str) -> Address:
    """``:8000`` (all interfaces), ``host:8000`` or ``[::1]:8000``; port 0 = any free one."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError(f"expected HOST:PORT or :PORT, got {text!r}")
    return Address(_host(host, text) if host else ANY_HOST, _port(port, allow_zero=True))


def parse_upstream(text: str) -> Address:
    """``host:port`` or ``http://host[:port]`` (https is not spoken to the app)."""
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme != "http":
            raise ValueError(f"only http:// upstreams are supported, got {text!r}")
        if parts.path not in ("", "/") or parts.query:
            raise ValueError(f"give only scheme, host and port, got {text!r}")
        if not parts.hostname:
            raise ValueError(f"no host in {text!r}")
        try:
            port = parts.port or 80
        except ValueError:
            raise ValueError(f"bad port in {text!r}") from None
        return Address(parts.hostname, port)
    host, sep, port = text.rpartition(":")
    if not sep or not host.strip("[]"):
        raise ValueError(f"expected HOST:PORT or http://HOST:PORT, got {text!r}")
    return Address(_host(host, text), _port(port, allow_zero=False))
