"""The original OpenHQM's API shapes, written out from its pydantic models: checking a
submit body (``SubmitRequest`` with ``RequestMetadata``) and the JSON of its answers
(``SubmitResponse``, ``StatusResponse``, ``ResultResponse``).

A bad body is refused as FastAPI refuses it: 422 with ``{"detail": [{"type", "loc",
"msg", "input"}, ...]}``, every problem listed. Times are ISO 8601 in UTC with a ``Z``,
as pydantic writes an aware UTC datetime.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from hqm.proto.envelope import Headers, ResponseRecord
from hqm.proto.headers import HOP_BY_HOP

#: RequestMetadata's bounds in the original: priority 0-9, timeout > 0, retry_count >= 0.
PRIORITY_LOW, PRIORITY_HIGH = 0, 9
#: RFC 9110 token: a method or a field name.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: A field value as h11 sends it: visible bytes (obs-text included), inner spaces/tabs.
_FIELD_VALUE = re.compile(rb"([\x21-\x7e\x80-\xff]([\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?")
#: Headers a submit's ``headers`` may not set: the record's own framing, and Host, which
#: the worker writes for the app it sends to (as the original's HTTP client did).
_OWN_HEADERS = HOP_BY_HOP | {b"host", b"content-length"}
JSON_TYPE = (b"Content-Type", b"application/json")
#: Methods a worker does not replay (the proxy refuses them too).
_REFUSED_METHODS = frozenset({b"CONNECT"})
_MISSING = object()


@dataclass(frozen=True, slots=True)
class Submit:
    """A checked ``POST /api/v1/submit`` body."""

    payload: dict[str, Any]
    #: The headers to send, without the ones hqm writes itself.
    headers: Headers
    endpoint: str | None
    method: bytes | None
    #: ``metadata.timeout`` when the client gave it (None: the worker's own).
    timeout_s: float | None


class SubmitInvalid(Exception):
    """The FastAPI validation errors of a submit body."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} validation error(s)")
        self.errors = errors


def error(kind: str, loc: tuple[Any, ...], msg: str, value: Any) -> dict[str, Any]:
    return {"type": kind, "loc": ["body", *loc], "msg": msg, "input": value}


def _integer(value: Any) -> int | None:
    """pydantic's lax int: an int, an integral float, or decimal digits."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value.strip())
    return None


def _int_field(meta: dict, name: str, low: int, high: int | None, errors: list) -> int | None:
    raw = meta.get(name)
    if raw is None:
        return None
    value = _integer(raw)
    if value is None:
        errors.append(error("int_parsing", ("metadata", name), _INT_MSG, raw))
    elif value < low:
        kind, msg = _BELOW[low == 1]
        errors.append(error(kind, ("metadata", name), msg, raw))
    elif high is not None and value > high:
        msg = f"Input should be less than or equal to {high}"
        errors.append(error("less_than_equal", ("metadata", name), msg, raw))
    return value


_INT_MSG = "Input should be a valid integer, unable to parse string as an integer"
_BELOW = {
    False: ("greater_than_equal", "Input should be greater than or equal to 0"),
    True: ("greater_than", "Input should be greater than 0"),
}
_STR_MSG = "Input should be a valid string"
_DICT_MSG = "Input should be a valid dictionary"


def _text_field(meta: dict, name: str, errors: list) -> str | None:
    raw = meta.get(name)
    if raw is not None and not isinstance(raw, str):
        errors.append(error("string_type", ("metadata", name), _STR_MSG, raw))
        return None
    return raw


def _headers(raw: Any, errors: list) -> Headers:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        errors.append(error("dict_type", ("headers",), _DICT_MSG, raw))
        return ()
    out = []
    for name, value in raw.items():
        if not isinstance(value, str):
            errors.append(error("string_type", ("headers", name), _STR_MSG, value))
            continue
        try:
            name_b, value_b = name.encode("latin-1"), value.strip().encode("latin-1")
        except UnicodeEncodeError:
            name_b = value_b = b"\x00"  # not sendable: refused just below
        if not _TOKEN.fullmatch(name_b) or not _FIELD_VALUE.fullmatch(value_b):
            msg = "Value error, not a header an HTTP/1.1 request can carry"
            errors.append(error("value_error", ("headers", name), msg, value))
        elif name_b.lower() not in _OWN_HEADERS:
            out.append((name_b, value_b))
    return tuple(out)


def _method(meta: dict, errors: list) -> bytes | None:
    text = _text_field(meta, "method", errors)
    if text is None:
        return None
    method = text.strip().upper().encode("latin-1", "replace")
    if not _TOKEN.fullmatch(method) or method in _REFUSED_METHODS:
        msg = "Value error, not an HTTP method a worker can send"
        errors.append(error("value_error", ("metadata", "method"), msg, text))
        return None
    return method


def parse_submit(body: bytes) -> Submit:
    """The submit body, checked as the original's ``SubmitRequest``; SubmitInvalid."""
    if not body.strip():
        raise SubmitInvalid(
            [{"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}]
        )
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        found = {"type": "json_invalid", "loc": ["body", exc.pos], "msg": "JSON decode error"}
        raise SubmitInvalid([{**found, "input": {}, "ctx": {"error": exc.msg}}]) from None
    if not isinstance(data, dict):
        msg = "Input should be a valid dictionary or object to extract fields from"
        raise SubmitInvalid([error("model_attributes_type", (), msg, data)])
    errors: list[dict[str, Any]] = []
    payload = data.get("payload", _MISSING)
    if payload is _MISSING:
        errors.append(error("missing", ("payload",), "Field required", data))
    elif not isinstance(payload, dict):
        errors.append(error("dict_type", ("payload",), _DICT_MSG, payload))
    headers = _headers(data.get("headers"), errors)
    meta = data.get("metadata")
    if meta is None:
        meta = {}
    elif not isinstance(meta, dict):
        msg = "Input should be a valid dictionary or instance of RequestMetadata"
        errors.append(error("model_type", ("metadata",), msg, meta))
        meta = {}
    _int_field(meta, "priority", PRIORITY_LOW, PRIORITY_HIGH, errors)
    timeout = _int_field(meta, "timeout", 1, None, errors)
    _int_field(meta, "retry_count", 0, None, errors)
    endpoint = _text_field(meta, "endpoint", errors)
    method = _method(meta, errors)
    if errors:
        raise SubmitInvalid(errors)
    assert isinstance(payload, dict)
    return Submit(payload, headers, endpoint, method, float(timeout) if timeout else None)


def request_headers(submit: Submit, body: bytes) -> Headers:
    """What the app gets, as the original's ``session.request(json=payload)`` sent it:
    JSON (unless the headers name another Content-Type), the given headers, the length."""
    given = any(name.lower() == b"content-type" for name, _ in submit.headers)
    return (
        *(() if given else (JSON_TYPE,)),
        *submit.headers,
        (b"Content-Length", str(len(body)).encode()),
    )


# --- answers -------------------------------------------------------------------------
def iso(epoch_s: float) -> str:
    """An epoch time as pydantic writes an aware UTC datetime."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat().replace("+00:00", "Z")


def submit_answer(correlation_id: str, submitted_at: float) -> dict[str, Any]:
    return {
        "correlation_id": correlation_id,
        "status": "PENDING",
        "submitted_at": iso(submitted_at),
    }


def status_answer(
    correlation_id: str, status: str, submitted_at: float, updated_at: float
) -> dict[str, Any]:
    return {
        "correlation_id": correlation_id,
        "status": status,
        "submitted_at": iso(submitted_at),
        "updated_at": iso(updated_at),
    }


def result_answer(
    correlation_id: str,
    status: str,
    *,
    result: Any = None,
    headers: dict[str, str] | None = None,
    status_code: int | None = None,
    error: str | None = None,
    processing_time_ms: int | None = None,
    completed_at: float | None = None,
) -> dict[str, Any]:
    """Every field of ``ResultResponse``, null where unset (FastAPI writes them all)."""
    return {
        "correlation_id": correlation_id,
        "status": status,
        "result": result,
        "headers": headers,
        "status_code": status_code,
        "error": error,
        "processing_time_ms": processing_time_ms,
        "completed_at": None if completed_at is None else iso(completed_at),
    }


def _is_json(content_type: bytes | None) -> bool:
    if content_type is None:
        return True  # no type given: JSON if it parses
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")


def app_result(record: ResponseRecord) -> Any:
    """The app's body: any JSON value parsed (an array or a scalar too), else its text;
    None for an empty body."""
    if not record.body:
        return None
    content_type = next((v for n, v in record.headers if n.lower() == b"content-type"), None)
    if _is_json(content_type):
        try:
            return orjson.loads(record.body)
        except orjson.JSONDecodeError:
            pass
    return record.body.decode("utf-8", "replace")


def app_headers(record: ResponseRecord) -> dict[str, str]:
    """The app's headers as the original kept them (Transfer-Encoding and Connection
    dropped); a repeated header's values are joined with ", " (RFC 9110 5.3)."""
    out: dict[str, str] = {}
    for name, value in record.headers:
        if name.lower() in (b"transfer-encoding", b"connection"):
            continue
        key, text = name.decode("latin-1"), value.decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out
