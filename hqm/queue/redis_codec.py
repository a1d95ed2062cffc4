"""What the Redis backend stores, encoded and decoded (docs/architecture.md §4).

Request stream entries (fields ``r`` the encoded request, ``a`` the attempt, ``i`` the
request id), the state JSON (``{"s": status, "a": attempts, "e": error}``), the
members of the delayed-retry sorted set, dead-letter stream entries; and how a Redis
failure reaches the callers: always as ``QueueUnavailable``.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import struct
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from redis.exceptions import RedisError

from hqm.proto.envelope import RequestRecord, decode_request
from hqm.queue.base import DeadLetter, QueueError, QueueUnavailable, RequestState, Status

log = logging.getLogger("hqm.queue.redis_streams")  # the backend's one logger

#: A stream entry read back: (entry id, encoded request, attempt, marked processing).
Entry = tuple[str, bytes, bytes, bool]
#: Delayed-retry member: attempt u32 | len(request id) u16 | 8 random bytes | id | record
#: (the script ``promote`` takes it apart).
_MEMBER = struct.Struct(">IH8s")


@contextlib.contextmanager
def errors(op: str) -> Iterator[None]:
    """Turn every Redis/socket failure into QueueUnavailable."""
    try:
        yield
    except QueueError:
        raise
    except (RedisError, OSError, TimeoutError) as exc:
        raise QueueUnavailable(f"redis {op} failed: {type(exc).__name__}: {exc}") from exc


def failed(op: str) -> Callable[[BaseException], QueueUnavailable]:
    """What the callers of a failed batch get: QueueUnavailable, with the reason."""

    def failure(exc: BaseException) -> QueueUnavailable:
        if isinstance(exc, QueueError):
            return QueueUnavailable(str(exc))
        return QueueUnavailable(f"{op} aborted: {exc!r}")

    return failure


def text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def encode_state(status: Status, attempts: int = 0, error: str | None = None) -> bytes:
    state: dict[str, Any] = {"s": status.value, "a": attempts}
    if error is not None:
        state["e"] = error
    return orjson.dumps(state)


QUEUED = encode_state(Status.QUEUED)


def decode_state(raw: bytes, request_id: str) -> RequestState | None:
    """None (and a warning) when the stored state cannot be read."""
    try:
        state = orjson.loads(raw)
        return RequestState(Status(state["s"]), state.get("a", 0), state.get("e"))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        log.warning("unreadable state for request %s: %r", request_id, raw[:100])
        return None


def entries(items: list[Any]) -> list[Entry]:
    """Stream entries as XREADGROUP or XAUTOCLAIM return them; entries deleted
    meanwhile (no fields) are left out. Not marked processing yet."""
    return [(text(i), f.get(b"r", b""), f.get(b"a", b"0"), False) for i, f in items if f]


def read_entries(reply: Any) -> list[Entry]:
    """The entries of an XREADGROUP reply on one stream (None: nothing came)."""
    return entries(reply[0][1]) if reply else []


def delayed_member(attempt: int, record: RequestRecord, encoded: bytes) -> bytes:
    """A delayed-retry member; the random bytes keep two retries of one id apart."""
    request_id = record.id.encode()
    head = _MEMBER.pack(attempt, len(request_id), secrets.token_bytes(8))
    return head + request_id + encoded


def dead_letter(raw_id: bytes | str, fields: dict[bytes, bytes]) -> DeadLetter:
    """A dead-letter stream entry; a corrupt one (undecodable envelope) comes back as
    an empty placeholder record: id "", the raw bytes as body."""
    raw = fields.get(b"r", b"")
    try:
        record = decode_request(raw)
    except ValueError:
        record = RequestRecord(id="", method=b"", target=b"", headers=(), body=raw)
    return DeadLetter(
        entry_id=text(raw_id),
        record=record,
        error=text(fields.get(b"error", b"")),
        attempts=int(fields.get(b"attempts", b"0")),
        dead_at=float(fields.get(b"dead_at", b"0")),
    )
