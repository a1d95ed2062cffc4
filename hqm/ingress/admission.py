"""What the proxy decides about a request before storing it: its ``Idempotency-Key``
(and the claim the queue remembers it by), its schedule (``HQM-Delay`` /
``HQM-Not-Before``, hqm.proto.schedule) and the headers stored. Pure functions: the
handler calls them; a refusal is an ``AdmissionError`` naming the header (400).

Idempotency-Key (IETF httpapi draft "The Idempotency-Key HTTP Header Field"): an
RFC 8941 sf-string (``"8e03978e-40d5-43e8-bc93-6894a57f9324"``); a bare sf-token is
accepted too. One field, 1 to MAX_IDEMPOTENCY_KEY_CHARS characters. A key belongs to
a route and a caller (Stripe's model; who the caller is: the route's ``caller``,
hqm.ingress.caller): the queue's key is a hash of the route name, the caller's digest
and the key, so another caller's same key is another key; the fingerprint a hash of
method, request-target and body (what makes "the same request").
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass

from hqm.ingress.caller import CallerScope
from hqm.ingress.caller import digest as caller_digest
from hqm.proto.envelope import Headers
from hqm.proto.limits import MAX_IDEMPOTENCY_KEY_CHARS
from hqm.proto.replay_token import HEADER as REPLAY_HEADER
from hqm.proto.schedule import HEADER_NAMES as SCHEDULE_HEADERS
from hqm.proto.schedule import ScheduleError, not_before
from hqm.proto.server import RequestHead
from hqm.queue.base import IdempotencyClaim

#: Headers addressed to hqm itself, never stored: the schedule (HQM-Delay,
#: HQM-Not-Before) and HQM-Replay (only a proxy reads it; each replay mints its own).
CONSUMED = SCHEDULE_HEADERS | {REPLAY_HEADER.lower()}
IDEMPOTENCY_KEY = "Idempotency-Key"
_FIELD = IDEMPOTENCY_KEY.lower().encode()
#: RFC 8941 §3.3.3 sf-string: printable ASCII in quotes, \" and \\ escaped.
_SF_STRING = re.compile(rb'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')
#: RFC 8941 §3.3.4 sf-token.
_SF_TOKEN = re.compile(rb"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_ESCAPE = re.compile(rb'\\(["\\])')
_LENGTH = struct.Struct(">I")


class AdmissionError(ValueError):
    """A request the proxy refuses to store; ``header`` names the culprit."""

    def __init__(self, header: str, reason: str) -> None:
        super().__init__(f"{header}: {reason}")
        self.header = header
        self.payload = {"error": f"bad {header}: {reason}", "header": header}


@dataclass(frozen=True, slots=True, kw_only=True)
class Admission:
    """How to store an admitted request."""

    #: The headers to store (``CONSUMED`` removed).
    headers: Headers
    #: Epoch seconds before which it must not be replayed (0.0: no schedule).
    not_before: float
    idempotency: IdempotencyClaim | None


def idempotency_key(headers: Headers) -> str | None:
    """The Idempotency-Key's value, or None without one; AdmissionError if malformed."""
    values = [value for name, value in headers if name.lower() == _FIELD]
    if not values:
        return None
    if len(values) > 1:
        raise AdmissionError(IDEMPOTENCY_KEY, "given more than once")
    value = values[0]
    quoted = _SF_STRING.fullmatch(value)
    if quoted is not None:
        key = _ESCAPE.sub(rb"\1", quoted.group(1))
    elif _SF_TOKEN.fullmatch(value):
        key = value
    else:
        raise AdmissionError(IDEMPOTENCY_KEY, "not a quoted string nor a token (RFC 8941)")
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_CHARS:
        raise AdmissionError(
            IDEMPOTENCY_KEY, f"must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters"
        )
    return key.decode("ascii")


def _digest(*parts: bytes) -> str:
    """sha256 of the parts, each length-prefixed (no two sequences collide)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(_LENGTH.pack(len(part)))
        digest.update(part)
    return digest.hexdigest()


def idempotency_claim(
    key: str,
    *,
    route: str,
    caller: str,
    method: bytes,
    target: bytes,
    body: bytes,
    ttl_s: float,
) -> IdempotencyClaim:
    """The claim the queue remembers ``key`` by: scoped to ``route`` and ``caller`` (its
    digest), fingerprinted by what the request is."""
    return IdempotencyClaim(
        key=_digest(route.encode(), caller.encode(), key.encode()),
        fingerprint=_digest(method, target, body),
        ttl_s=ttl_s,
    )


def admit(
    head: RequestHead,
    body: bytes,
    *,
    route: str,
    caller: CallerScope,
    client: str,
    now: float,
    idempotency_ttl_s: float,
    max_delay_s: float,
) -> Admission:
    """The request as it will be stored; AdmissionError when a header is refused.
    ``caller``, ``client``: who sent it (its Idempotency-Key is that caller's)."""
    try:
        due = not_before(head.headers, now=now, max_delay_s=max_delay_s)
    except ScheduleError as exc:
        raise AdmissionError(exc.header, exc.reason) from None
    key = idempotency_key(head.headers)
    claim = None
    if key is not None:
        claim = idempotency_claim(
            key,
            route=route,
            caller=caller_digest(caller, head, client),
            method=head.method,
            target=head.target,
            body=body,
            ttl_s=idempotency_ttl_s,
        )
    return Admission(headers=_stored(head.headers), not_before=due, idempotency=claim)


def _stored(headers: Headers) -> Headers:
    """``headers`` without ``CONSUMED`` (the same tuple when none is there)."""
    if not any(name.lower() in CONSUMED for name, _ in headers):
        return headers
    return tuple((name, value) for name, value in headers if name.lower() not in CONSUMED)
