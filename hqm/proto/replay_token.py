"""The ``HQM-Replay`` header: a worker's proof that a request is the replay of one
stored request, so a proxy in transparent mode forwards it straight to the app instead
of queueing it again (docs/architecture.md §6, §13).

Value: ``v2.<request id>.<unix seconds>.<nonce>.<hex HMAC-SHA256>``, keyed with a secret
every proxy and worker of the queue shares. The MAC covers the version, id, time and
nonce as written, and the request it was minted for: method, request-target and a
sha256 digest of the body (each length-prefixed). The nonce (128 random bits) makes
every token distinct: a worker mints one per send, retries included.

What it proves: someone holding the key minted it within the last ``max_age_s`` for
this very request (method, target, body). A proxy checks the time from the head
(``parse``, ``Token.check_time``), the MAC once it has the body (``Token.verify``), and
spends it: it remembers the token until it expires (``Token.spent_id``,
``REMEMBER_S``), so a token is accepted once. A captured token is worth nothing: spent
by the request it came with, and never valid for another one.

Sans-IO: the caller passes ``now`` (epoch seconds); only the nonce is drawn here.
``v1`` tokens (MAC over id and time only) are no longer accepted.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import struct
from dataclasses import dataclass

#: The header a replay carries.
HEADER = b"HQM-Replay"
#: Format version, the token's first field; a new format gets a new version.
VERSION = b"v2"
#: How long a token is accepted. A worker mints it just before it writes the request;
#: the proxy checks it on arrival, milliseconds later. Five minutes covers clocks a
#: little apart and a slow connect; a token is spent on first use anyway.
DEFAULT_MAX_AGE_S = 300.0
#: How far in the future a token's time may be: the minting node's clock may run ahead
#: of the checking node's. NTP keeps nodes within milliseconds; 30 s is the leeway JWT
#: libraries commonly allow, and adds nothing an attacker could use.
CLOCK_SKEW_S = 30.0
#: How long a proxy remembers a spent token: past it, the token has expired anyway
#: (accepted from ``minted - CLOCK_SKEW_S`` to ``minted + DEFAULT_MAX_AGE_S``).
REMEMBER_S = DEFAULT_MAX_AGE_S + CLOCK_SKEW_S
#: Longest value looked at: version, a 128-character id, 12 digits, 32 hex digits of
#: nonce, 64 of MAC and the dots come to 243 bytes; anything longer is not ours.
MAX_VALUE_BYTES = 256
#: Random bytes of a nonce (hex in the token).
NONCE_BYTES = 16
#: What a request id may be (the queue's rule for an entry's id): 1 to 128 printable
#: ASCII characters; hqm's own ids are 32 hex digits.
_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,128}")
_SECONDS = re.compile(rb"[0-9]{1,12}")
_NONCE = re.compile(rb"[0-9a-f]{%d}" % (2 * NONCE_BYTES))
_MAC = re.compile(rb"[0-9a-f]{64}")
_LENGTH = struct.Struct(">I")


class ReplayRefused(ValueError):
    """A token that does not let this request through; the message says why (for the
    client's 403, never the token itself)."""


def _mac(key: bytes, signed: bytes, method: bytes, target: bytes, body: bytes) -> bytes:
    mac = hmac.new(key, signed, hashlib.sha256)
    for part in (method, target, hashlib.sha256(body).digest()):
        mac.update(_LENGTH.pack(len(part)))
        mac.update(part)
    return mac.hexdigest().encode("ascii")


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or not key:
        raise ValueError("the replay key must be non-empty bytes")


def sign(
    key: bytes,
    request_id: str,
    now: float,
    *,
    method: bytes,
    target: bytes,
    body: bytes,
    nonce: bytes | None = None,
) -> bytes:
    """A fresh header value for the request ``request_id`` (``method``, ``target``,
    ``body`` as the worker sends them) minted at ``now``; ``nonce``: NONCE_BYTES (a new
    random one when None). ValueError for an empty key, an id that is not 1-128
    printable ASCII characters, or a negative time."""
    _check_key(key)
    try:
        raw_id = request_id.encode("ascii")
    except (AttributeError, UnicodeEncodeError):
        raw_id = b""
    if not _REQUEST_ID.fullmatch(raw_id):
        raise ValueError(f"a request id is 1-128 printable ASCII characters, got {request_id!r}")
    if not (isinstance(now, int | float) and math.isfinite(now) and now >= 0):
        raise ValueError(f"now must be epoch seconds, got {now!r}")
    nonce = secrets.token_bytes(NONCE_BYTES) if nonce is None else nonce
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"a nonce is {NONCE_BYTES} bytes")
    signed = b"%s.%s.%d.%s" % (VERSION, raw_id, int(now), nonce.hex().encode())
    return signed + b"." + _mac(key, signed, method, target, body)


@dataclass(frozen=True, slots=True)
class Token:
    """A well-formed token, not yet verified."""

    request_id: str
    minted: int
    #: What the MAC covers besides the request: version, id, time and nonce as written.
    signed: bytes
    mac: bytes

    def check_time(self, now: float, max_age_s: float = DEFAULT_MAX_AGE_S) -> None:
        """ReplayRefused unless minted at most ``max_age_s`` ago (and at most
        ``CLOCK_SKEW_S`` ahead of ``now``)."""
        # Written as what must hold, so a NaN ``now`` (false in every comparison) fails.
        if not now - self.minted <= max_age_s:
            raise ReplayRefused("expired")
        if not self.minted - now <= CLOCK_SKEW_S:
            raise ReplayRefused("minted in the future")

    def verify(self, key: bytes, *, method: bytes, target: bytes, body: bytes) -> None:
        """ReplayRefused unless made with ``key`` for exactly this request. ValueError
        only for an empty key (a configuration error)."""
        _check_key(key)
        if not hmac.compare_digest(_mac(key, self.signed, method, target, body), self.mac):
            raise ReplayRefused("not signed for this request")

    @property
    def spent_id(self) -> str:
        """What a proxy remembers a spent token by (a digest: never the token)."""
        return hashlib.sha256(self.mac).hexdigest()[:32]


def parse(value: bytes) -> Token:
    """The token ``value`` holds, checked for form only; ReplayRefused otherwise."""
    if not isinstance(value, bytes | bytearray) or len(value) > MAX_VALUE_BYTES:
        raise ReplayRefused("malformed")
    value = bytes(value)
    version, dot, rest = value.partition(b".")
    if version != VERSION or not dot:
        if version == b"v1":  # bound to nothing but an id: a reusable pass
            raise ReplayRefused("version v1 is no longer accepted (upgrade the workers)")
        raise ReplayRefused("malformed")
    # The id may itself hold dots; seconds, nonce and MAC never do.
    parts = rest.rsplit(b".", 3)
    if len(parts) != 4:
        raise ReplayRefused("malformed")
    raw_id, seconds, nonce, mac = parts
    if not (
        _REQUEST_ID.fullmatch(raw_id)
        and _SECONDS.fullmatch(seconds)
        and _NONCE.fullmatch(nonce)
        and _MAC.fullmatch(mac)
    ):
        raise ReplayRefused("malformed")
    return Token(raw_id.decode("ascii"), int(seconds), value[: -len(mac) - 1], mac)
