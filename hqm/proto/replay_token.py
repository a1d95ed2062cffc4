"""The ``HQM-Replay`` header: a worker's proof that a request is a replay, so a proxy in
transparent mode forwards it straight to the app instead of queueing it again.

Value: ``v1.<request id>.<unix seconds>.<hex HMAC-SHA256 of "v1.<id>.<seconds>">``,
keyed with a secret every proxy and worker of the queue shares. Sans-IO: the caller
passes ``now`` (epoch seconds).

What it proves: someone holding the key minted it for this request id within the
last ``max_age_s``. It does not bind method, target or body; whoever sees a token may
send another request with it until it expires, which is why its life is short.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re

#: The header a replay carries.
HEADER = b"HQM-Replay"
#: Format version, the token's first field; a new format gets a new version.
VERSION = b"v1"
#: How long a token is accepted. A worker mints it just before it sends the request;
#: the proxy checks it on arrival, milliseconds later. Five minutes also covers a
#: worker that mints at claim time and then waits on its rate limit and concurrency
#: gates, and clocks a little apart, while a leaked header is useless soon after.
DEFAULT_MAX_AGE_S = 300.0
#: How far in the future a token's time may be: the minting node's clock may run ahead
#: of the checking node's. NTP keeps nodes within milliseconds; 30 s is the leeway JWT
#: libraries commonly allow, and adds nothing an attacker could use.
CLOCK_SKEW_S = 30.0
#: Longest value looked at: version, a 128-character id, 12 digits, 64 hex digits and
#: the dots come to 209 bytes; anything longer is not ours (and costs no HMAC).
MAX_VALUE_BYTES = 256
#: What a request id may be (the queue's rule for an entry's id): 1 to 128 printable
#: ASCII characters; hqm's own ids are 32 hex digits.
_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,128}")
_SECONDS = re.compile(rb"[0-9]{1,12}")
_MAC = re.compile(rb"[0-9a-f]{64}")


def _mac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).hexdigest().encode("ascii")


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or not key:
        raise ValueError("the replay key must be non-empty bytes")


def sign(key: bytes, request_id: str, now: float) -> bytes:
    """The header value for ``request_id`` minted at ``now``; ValueError for an empty key,
    an id that is not 1-128 printable ASCII characters, or a negative time."""
    _check_key(key)
    try:
        raw_id = request_id.encode("ascii")
    except (AttributeError, UnicodeEncodeError):
        raw_id = b""
    if not _REQUEST_ID.fullmatch(raw_id):
        raise ValueError(f"a request id is 1-128 printable ASCII characters, got {request_id!r}")
    if not (isinstance(now, int | float) and math.isfinite(now) and now >= 0):
        raise ValueError(f"now must be epoch seconds, got {now!r}")
    message = b"%s.%s.%d" % (VERSION, raw_id, int(now))
    return message + b"." + _mac(key, message)


def verify(
    key: bytes, value: bytes, now: float, max_age_s: float = DEFAULT_MAX_AGE_S
) -> str | None:
    """The request id ``value`` was minted for, if it is a token made with ``key`` no
    more than ``max_age_s`` ago (and at most ``CLOCK_SKEW_S`` ahead of ``now``); None for
    anything else. ValueError only for an empty key (a configuration error)."""
    _check_key(key)
    if not isinstance(value, bytes | bytearray) or len(value) > MAX_VALUE_BYTES:
        return None
    value = bytes(value)
    version, dot, rest = value.partition(b".")
    if version != VERSION or not dot:
        return None
    # The id may itself hold dots; seconds and MAC never do.
    parts = rest.rsplit(b".", 2)
    if len(parts) != 3:
        return None
    raw_id, seconds, mac = parts
    if not (_REQUEST_ID.fullmatch(raw_id) and _SECONDS.fullmatch(seconds) and _MAC.fullmatch(mac)):
        return None
    expected = _mac(key, value[: -len(mac) - 1])
    if not hmac.compare_digest(expected, mac):
        return None
    minted = int(seconds)
    # Written as what must hold, so a NaN ``now`` (false in every comparison) fails.
    fresh = now - minted <= max_age_s and minted - now <= CLOCK_SKEW_S
    return raw_id.decode("ascii") if fresh else None
