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
#: Headers only hqm writes: what a peer sent under these names goes no further (the
#: request id; a replay's signature, which each replay mints anew).
_PROXY_OWNED = frozenset({_REQUEST_ID_LOWER, b"hqm-replay"})


def strip_hop_by_hop(headers: Iterable[Header]) -> list[Header]:
    """Return ``headers`` without hop-by-hop fields, order and case kept.

    Also drops any ``HQM-Request-Id`` or ``HQM-Replay`` a peer sent: hqm owns those.
    """
    headers = list(headers)
    named: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
    named.discard(b"host")  # "Connection: host" must not make a request unroutable
    drop = HOP_BY_HOP | named | _PROXY_OWNED
    return [(name, value) for name, value in headers if name.lower() not in drop]


def header_value(headers: Iterable[Header], name: bytes) -> bytes | None:
    """First value of header ``name`` (lower-case), or None."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


@dataclass(frozen=True, slots=True)
class ForwardingPolicy:
    """How replays write X-Forwarded-* (Envoy's ``xff_num_trusted_hops`` model).

    ``enabled`` False: hqm writes none and leaves whatever the client sent alone.
    Otherwise X-Forwarded-For always gets the client address appended (the app takes
    the rightmost entries it trusts), and X-Forwarded-Proto / X-Forwarded-Host are
    believed from the request only when ``trusted_hops`` > 0 (hqm sits behind that many
    proxies of your own); with 0 a client's values are replaced by what hqm saw.
    """

    enabled: bool
    trusted_hops: int


@dataclass(frozen=True, slots=True)
class ForwardedInfo:
    """What the proxy knows about the client, for X-Forwarded-* headers."""

    client: str
    proto: str
    policy: ForwardingPolicy


_FORWARDED_SET = frozenset({b"x-forwarded-proto", b"x-forwarded-host"})


def upstream_request_headers(
    headers: Iterable[Header],
    *,
    body_length: int | None,
    request_id: str,
    forwarded: ForwardedInfo,
    default_host: bytes = b"",
) -> list[Header]:
    """Headers to send to the app for a stored request, or (``body_length`` None) for
    one whose body is streamed through as it arrives.

    Hop-by-hop fields go, Content-Length is set to the stored (de-chunked) body's length
    in the place the client put it (appended when the client sent chunked); streamed,
    the client's Content-Length stays and a chunked body goes on chunked;
    X-Forwarded-* are written by ``forwarded.policy`` and HQM-Request-Id added last;
    a request without Host (HTTP/1.0) gets ``default_host``.
    """
    policy = forwarded.policy
    headers = tuple(headers)
    out = strip_hop_by_hop(headers)
    if policy.enabled and not policy.trusted_hops:  # a client's own claims are dropped
        out = [(name, value) for name, value in out if name.lower() not in _FORWARDED_SET]
    streamed = body_length is None
    chunked = streamed and header_value(headers, b"transfer-encoding") is not None
    has_length = False
    xff_index = -1
    host = None
    has_proto = has_xfhost = False
    for i, (name, value) in enumerate(out):
        lower = name.lower()
        if lower == b"content-length":
            if not streamed:
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
    if host is None and default_host:
        # An HTTP/1.0 request may come without Host; the replay is HTTP/1.1, which
        # requires one (RFC 9112 3.2): the app's own address, first as is usual.
        out.insert(0, (b"Host", default_host))
    if chunked:
        out.append((b"Transfer-Encoding", b"chunked"))
    elif not has_length and body_length:
        out.append((b"Content-Length", str(body_length).encode()))
    if policy.enabled:
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


def with_injected(headers: list[Header], inject: Iterable[Header]) -> list[Header]:
    """A route's ``inject_headers`` added, replacing any header of the same names (the
    app gets the credentials the route holds, never a client's own)."""
    inject = tuple(inject)
    if not inject:
        return headers
    names = {name.lower() for name, _ in inject}
    return [(n, v) for n, v in headers if n.lower() not in names] + list(inject)


def client_response_headers(headers: Iterable[Header], *, request_id: str) -> list[Header]:
    """Headers to send to the client for an app response: hop-by-hop dropped, id added.

    Content-Length is kept as the app sent it (it matters for HEAD); the server
    connection fills in framing for everything else.
    """
    out = strip_hop_by_hop(headers)
    out.append((REQUEST_ID, request_id.encode()))
    return out


#: On a stored answer to HEAD read back with another method: why its body is empty.
ORIGINAL_METHOD = b"HQM-Original-Method"
_ORIGINAL_METHOD_LOWER = ORIGINAL_METHOD.lower()


def result_response_headers(
    headers: Iterable[Header], *, request_id: str, original_method: bytes | None = None
) -> list[Header]:
    """``client_response_headers`` for a stored app response, and the proxy's own
    ``HQM-Original-Method``: any the app sent is dropped; with ``original_method`` given
    (the request the app answered was a HEAD, the client reads it with GET) it is added.
    """
    out = [
        (name, value)
        for name, value in client_response_headers(headers, request_id=request_id)
        if name.lower() != _ORIGINAL_METHOD_LOWER
    ]
    if original_method:
        out.append((ORIGINAL_METHOD, original_method))
    return out
