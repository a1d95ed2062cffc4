"""The queue envelope: how a request and its response are stored, byte for byte.

"Verbatim" means exactly this. A stored request keeps
- the method and the raw request-target bytes as received (no normalisation,
  no percent-decoding);
- every header line in its original order, header names in their original case,
  repeated headers repeated; values as h11 yields them, that is with surrounding
  whitespace trimmed (h11 unfolds an obs-fold continuation line into one value);
  h11 folds identical duplicate Content-Length lines into one, and differing ones are
  refused;
- the body bytes exactly. A chunked body is stored de-chunked (trailers dropped) and
  is replayed with a Content-Length; hop-by-hop headers are kept in the record and
  removed when the request is replayed (``hqm.proto.headers``).
A stored response keeps status, reason phrase, headers (same rules) and body bytes,
and the method of the request it answers (``request_method``, b"" when unknown): a
response to HEAD has no body although its headers describe one.

Wire format, version 1 (binary-safe, no pickle, no base64)::

    b"HQM" | version:u8 | kind:u8 | head_length:u32be | head (JSON) | body (raw bytes)

The JSON head holds the metadata and the body's length (a truncated record is an
error, not a shorter body); header bytes travel as latin-1 strings, which maps every
byte 0-255 to one code point and back, so any header h11 accepts round-trips.
Optional head keys are written only when set and read with their default, so records
with and without them decode on either side of an upgrade (still version 1):
``request_method`` of a response; ``timeout_s``, ``max_attempts``, ``not_before``,
``route``, ``trace_id`` and ``owner`` of a request.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import orjson

from hqm.proto.errors import EnvelopeError

ENVELOPE_VERSION = 1
_MAGIC = b"HQM"
_KIND_REQUEST = 1
_KIND_RESPONSE = 2
_PREFIX = struct.Struct(">3sBBI")

Headers = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """A request as the proxy received it, plus what the worker needs to replay it."""

    id: str
    method: bytes
    target: bytes
    headers: Headers
    body: bytes = b""
    http_version: bytes = b"1.1"
    client: str = ""
    scheme: str = "http"
    received_at: float = 0.0
    #: Notification channel of the proxy holding a waiting client ("" when none waits).
    reply_to: str = ""
    #: Reply mode: "async", "wait" or "fire" (fire keeps no result).
    mode: str = "async"
    #: Name of the upstream (from the worker's own config) this request goes to.
    upstream: str = "default"
    #: The route's per-request limits (0: the worker's own --read-timeout and
    #: --max-attempts).
    timeout_s: float = 0.0
    max_attempts: int = 0
    #: Epoch seconds before which it is not replayed (HQM-Delay / HQM-Not-Before; 0: now).
    not_before: float = 0.0
    #: The route that queued it ("" for the default route): the metric label.
    route: str = ""
    #: The W3C trace id of its ``traceparent`` ("" when none or invalid): for the logs
    #: only (the header itself travels with the others, untouched).
    trace_id: str = ""
    #: Who may read its result ("": whoever has the id): the submitter's scope and
    #: credential digest (hqm.ingress.caller.owner), never the credential itself.
    owner: str = ""


@dataclass(frozen=True, slots=True)
class ResponseRecord:
    """The app's response (or the error standing in for it) as stored for the client."""

    status: int
    reason: bytes
    headers: Headers
    body: bytes = b""
    http_version: bytes = b"1.1"
    attempts: int = 1
    completed_at: float = 0.0
    #: Set when the proxy or worker made this response up (app down, dead-lettered).
    error: str | None = None
    #: Method of the request this answers (b"": unknown, e.g. a record from before it
    #: was kept). b"HEAD" means the body is empty by rule, whatever the headers say.
    request_method: bytes = b""


def _hdrs_out(headers: Headers) -> list[list[str]]:
    return [[n.decode("latin-1"), v.decode("latin-1")] for n, v in headers]


def _hdrs_in(raw: object) -> Headers:
    if not isinstance(raw, list):
        raise EnvelopeError("record headers are not a list")
    out = []
    for pair in raw:
        if not (
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)
        ):
            raise EnvelopeError("record header is not a [name, value] pair of strings")
        out.append((pair[0].encode("latin-1"), pair[1].encode("latin-1")))
    return tuple(out)


def _pack(kind: int, head: dict, body: bytes) -> bytes:
    head["body_len"] = len(body)
    head_bytes = orjson.dumps(head)
    return _PREFIX.pack(_MAGIC, ENVELOPE_VERSION, kind, len(head_bytes)) + head_bytes + body


#: Bytes before a record's JSON head: ``head_end`` needs this many.
PREFIX_BYTES = _PREFIX.size


def head_end(data: bytes, kind: int = _KIND_RESPONSE) -> int:
    """Where the body of the record starting with ``data`` (at least PREFIX_BYTES of
    it) begins; EnvelopeError when it is not a record of ``kind``."""
    if len(data) < _PREFIX.size:
        raise EnvelopeError("record too short")
    magic, version, got_kind, head_len = _PREFIX.unpack_from(data)
    if magic != _MAGIC:
        raise EnvelopeError("not an hqm record")
    if version != ENVELOPE_VERSION:
        raise EnvelopeError(f"unsupported envelope version {version}")
    if got_kind != kind:
        raise EnvelopeError(f"record kind {got_kind}, expected {kind}")
    return _PREFIX.size + head_len


def _unpack_head(data: bytes, kind: int, size: int) -> tuple[dict, int]:
    """(head, where the body starts) of a record of ``size`` bytes in all whose first
    bytes (its head at least) are ``data``."""
    end = head_end(data, kind)
    if end > len(data):
        raise EnvelopeError("truncated record head")
    try:
        head = orjson.loads(data[_PREFIX.size : end])
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError(f"corrupt record head: {exc}") from None
    if not isinstance(head, dict):
        raise EnvelopeError("corrupt record head: not an object")
    if head.get("body_len") != size - end:
        raise EnvelopeError(f"body is {size - end} bytes, record says {head.get('body_len')}")
    return head, end


def _unpack(data: bytes, kind: int) -> tuple[dict, bytes]:
    head, end = _unpack_head(data, kind, len(data))
    return head, bytes(data[end:])


def _field(head: dict, key: str, kind: type | tuple[type, ...]):
    value = head[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise EnvelopeError(f"record field {key!r} has type {type(value).__name__}")
    return value


def _optional(head: dict, key: str, kind: type | tuple[type, ...], default):
    return _field(head, key, kind) if key in head else default


def _text(head: dict, key: str) -> str:
    return _field(head, key, str)


def _raw(head: dict, key: str) -> bytes:
    return _field(head, key, str).encode("latin-1")


def encode_request(record: RequestRecord) -> bytes:
    head = {
        "id": record.id,
        "method": record.method.decode("latin-1"),
        "target": record.target.decode("latin-1"),
        "headers": _hdrs_out(record.headers),
        "http_version": record.http_version.decode("latin-1"),
        "client": record.client,
        "scheme": record.scheme,
        "received_at": record.received_at,
        "reply_to": record.reply_to,
        "mode": record.mode,
        "upstream": record.upstream,
    }
    for key, value in (
        ("timeout_s", record.timeout_s),
        ("max_attempts", record.max_attempts),
        ("not_before", record.not_before),
        ("route", record.route),
        ("trace_id", record.trace_id),
        ("owner", record.owner),
    ):
        if value:
            head[key] = value
    return _pack(_KIND_REQUEST, head, record.body)


def decode_request(data: bytes) -> RequestRecord:
    head, body = _unpack(data, _KIND_REQUEST)
    try:
        return RequestRecord(
            id=_text(head, "id"),
            method=_raw(head, "method"),
            target=_raw(head, "target"),
            headers=_hdrs_in(head["headers"]),
            body=body,
            http_version=_raw(head, "http_version"),
            client=_text(head, "client"),
            scheme=_text(head, "scheme"),
            received_at=float(_field(head, "received_at", (int, float))),
            reply_to=_text(head, "reply_to"),
            mode=_text(head, "mode"),
            upstream=_text(head, "upstream"),
            timeout_s=float(_optional(head, "timeout_s", (int, float), 0.0)),
            max_attempts=_optional(head, "max_attempts", int, 0),
            not_before=float(_optional(head, "not_before", (int, float), 0.0)),
            route=_optional(head, "route", str, ""),
            trace_id=_optional(head, "trace_id", str, ""),
            owner=_optional(head, "owner", str, ""),
        )
    except (KeyError, UnicodeEncodeError) as exc:
        raise EnvelopeError(f"malformed request record: {exc!r}") from None


def encode_response(record: ResponseRecord) -> bytes:
    head = {
        "status": record.status,
        "reason": record.reason.decode("latin-1"),
        "headers": _hdrs_out(record.headers),
        "http_version": record.http_version.decode("latin-1"),
        "attempts": record.attempts,
        "completed_at": record.completed_at,
        "error": record.error,
    }
    if record.request_method:
        head["request_method"] = record.request_method.decode("latin-1")
    return _pack(_KIND_RESPONSE, head, record.body)


def decode_response(data: bytes) -> ResponseRecord:
    head, body = _unpack(data, _KIND_RESPONSE)
    return _response(head, body)


def decode_response_head(data: bytes, size: int) -> tuple[ResponseRecord, int]:
    """A stored response read in pieces: ``data`` its first bytes (up to ``head_end``
    at least) of ``size`` in all; the record without its body, and where the body
    starts. EnvelopeError as ``decode_response``."""
    head, end = _unpack_head(data, _KIND_RESPONSE, size)
    return _response(head, b""), end


def _response(head: dict, body: bytes) -> ResponseRecord:
    try:
        error = head["error"]
        if error is not None and not isinstance(error, str):
            raise EnvelopeError("record field 'error' is not a string")
        return ResponseRecord(
            status=_field(head, "status", int),
            reason=_raw(head, "reason"),
            headers=_hdrs_in(head["headers"]),
            body=body,
            http_version=_raw(head, "http_version"),
            attempts=_field(head, "attempts", int),
            completed_at=float(_field(head, "completed_at", (int, float))),
            error=error,
            request_method=_raw(head, "request_method") if "request_method" in head else b"",
        )
    except (KeyError, UnicodeEncodeError) as exc:
        raise EnvelopeError(f"malformed response record: {exc!r}") from None


def error_response(
    status: int, error: str, *, attempts: int = 0, now: float = 0.0
) -> ResponseRecord:
    """A JSON error record standing in for an app response (app down, dead letter)."""
    body = orjson.dumps({"error": error, "status": status})
    return ResponseRecord(
        status=status,
        reason=b"",
        headers=((b"Content-Type", b"application/json"),),
        body=body,
        attempts=attempts,
        completed_at=now,
        error=error,
    )
