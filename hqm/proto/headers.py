"""Header rewriting between client, queue and app: the one place that filters headers.

Hop-by-hop headers (RFC 9110 section 7.6.1) are dropped in both directions: Connection
and every header it names, Keep-Alive, Proxy-Connection, TE, Trailer,
Transfer-Encoding, Upgrade. Framing is recomputed by whoever sends the message.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

Header = tuple[bytes, bytes]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
REQUEST_ID = b"HQM-Request-Id"
_REQUEST_ID_LOWER = REQUEST_ID.lower()


def strip_hop_by_hop(headers: Iterable[Header]) -> list[Header]:
    """Return ``headers`` without hop-by-hop fields, order and case kept.

    Also drops any ``HQM-Request-Id`` a peer sent: the proxy owns that header.
    """
    headers = list(headers)
    named: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
    named.discard(b"host")  # "Connection: host" must not make a request unroutable
    drop = HOP_BY_HOP | named | {_REQUEST_ID_LOWER}
    return [(name, value) for name, value in headers if name.lower() not in drop]


def header_value(headers: Iterable[Header], name: bytes) -> bytes | None:
    """First value of header ``name`` (lower-case), or None."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


@dataclass(frozen=True, slots=True)
class ForwardedInfo:
    """What the proxy knows about the client, for X-Forwarded-* headers."""

    client: str
    proto: str = "http"
    enabled: bool = True


def upstream_request_headers(
    headers: Iterable[Header], *, body_length: int, request_id: str, forwarded: ForwardedInfo
) -> list[Header]:
    """Headers to send to the app for a stored request.

    Hop-by-hop fields go, Content-Length is set to the stored (de-chunked) body's length
    in the place the client put it (appended when the client sent chunked),
    X-Forwarded-For/-Proto/-Host are appended and HQM-Request-Id added last.
    """
    out = strip_hop_by_hop(headers)
    has_length = False
    xff_index = -1
    host = None
    has_proto = has_xfhost = False
    for i, (name, value) in enumerate(out):
        lower = name.lower()
        if lower == b"content-length":
            out[i] = (name, str(body_length).encode())
            has_length = True
        elif lower == b"x-forwarded-for":
            xff_index = i
        elif lower == b"x-forwarded-proto":
            has_proto = True
        elif lower == b"x-forwarded-host":
            has_xfhost = True
        elif lower == b"host" and host is None:
            host = value
    if not has_length and body_length:
        out.append((b"Content-Length", str(body_length).encode()))
    if forwarded.enabled:
        client = forwarded.client.encode()
        if xff_index >= 0:
            name, value = out[xff_index]
            out[xff_index] = (name, value + b", " + client)
        else:
            out.append((b"X-Forwarded-For", client))
        if not has_proto:
            out.append((b"X-Forwarded-Proto", forwarded.proto.encode()))
        if not has_xfhost and host is not None:
            out.append((b"X-Forwarded-Host", host))
    out.append((REQUEST_ID, request_id.encode()))
    return out


def client_response_headers(headers: Iterable[Header], *, request_id: str) -> list[Header]:
    """Headers to send to the client for an app response: hop-by-hop dropped, id added.

    Content-Length is kept as the app sent it (it matters for HEAD); the server
    connection fills in framing for everything else.
    """
    out = strip_hop_by_hop(headers)
    out.append((REQUEST_ID, request_id.encode()))
    return out
