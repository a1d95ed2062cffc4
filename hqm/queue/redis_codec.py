"""What the Redis backend stores, encoded and decoded (docs/architecture.md §4).

The fields of request stream entries (``r`` the encoded request, ``a`` the attempt,
``i`` the request id), the state JSON (``{"s": status, "a": attempts, "e": error, "c":
submitted at, "u": updated at, "d": due at, "o": owner, "x": stream entry}``, written by
``encode_state`` only; "c" to "x" optional, so older states still read; "o" only for a
request bound to its caller), stored results, the members of the delayed-retry
sorted set, the items of the ``finish`` script; and how a Redis failure reaches the
callers: as ``QueueUnavailable`` (perhaps stored), or, for an enqueue Redis refused
before storing any of it, ``QueueRefused`` (hqm.queue.redis_refusals).

Decoding is total: whatever bytes a field holds (garbage, empty, a number beyond 64
bits, negative, huge), a decoder returns a value or raises ``Corrupt`` with the reason,
never anything else. A stream entry (hqm.queue.redis_group) or delayed member that does
not decode is dead-lettered with that reason; a state or result that does not decode
is reported as unknown, a dead letter as a placeholder (hqm.queue.redis_dlq).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import secrets
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from redis.exceptions import RedisError

from hqm.proto.envelope import (
    RequestRecord,
    ResponseRecord,
    decode_request,
    decode_response,
    encode_response,
    error_response,
)
from hqm.queue.base import (
    QueueError,
    QueueRefused,
    QueueUnavailable,
    RequestState,
    Status,
)
from hqm.queue.redis_lua import (
    COMPLETE,
    DEAD,
    DROP,
    ENTRY_SLOT,
    MARK,
    MEMBER_HEAD,
    OPS,
    PROMOTE,
    RECORD,
    RETRY,
    Op,
)
from hqm.queue.redis_wait import notification

log = logging.getLogger("hqm.queue.redis_streams")  # the backend's one logger

#: An item of the ``finish`` script: (op code, request id naming its keys or "", fields).
Item = tuple[str, str, list[Any]]
#: Delayed member: attempt u32 | len(request id) u16 | 8 random bytes | id | record
_MEMBER = MEMBER_HEAD
#: Largest attempt an entry may carry: the next one must fit the member's u32.
MAX_ATTEMPT = 0xFFFF_FFFE
#: A request id as hqm writes it (32 hex digits) or any other short printable token:
#: it becomes part of key names and of the HQM-Request-Id header.
_REQUEST_ID = re.compile(r"[!-~]{1,128}")
ATTEMPT_DIGITS = re.compile(rb"[0-9]{1,10}")  # (decimal, at most 10 digits)
_REASON_CHARS = 200
_F_RECORD = RECORD.encode()


class Corrupt(ValueError):
    """A stored item that cannot be decoded; the message says why."""


@contextlib.contextmanager
def errors(op: str) -> Iterator[None]:
    """Turn every Redis/socket failure into QueueUnavailable."""
    try:
        yield
    except QueueError:
        raise
    except (RedisError, OSError, TimeoutError, RuntimeError) as exc:
        # (RuntimeError: uvloop's "unable to perform operation on <TCPTransport
        # closed=True>" when redis-py writes to a connection Redis just dropped)
        raise QueueUnavailable(f"redis {op} failed: {type(exc).__name__}: {exc}") from exc


def failed(op: str) -> Callable[[BaseException], QueueError]:
    """What the callers of a failed batch get: QueueUnavailable with the reason, or the
    refusal itself (a new one each) when Redis refused the whole batch's write."""

    def failure(exc: BaseException) -> QueueError:
        if isinstance(exc, QueueRefused):
            return type(exc)(str(exc))
        if isinstance(exc, QueueError):
            return QueueUnavailable(str(exc))
        return QueueUnavailable(f"{op} aborted: {exc!r}")

    return failure


def text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _reason(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__)[:_REASON_CHARS]


def encode_state(
    status: Status,
    attempts: int = 0,
    error: str | None = None,
    *,
    submitted: float = 0.0,
    updated: float = 0.0,
    due: str = "",
    owner: str = "",
    entry_slot: bool = False,
) -> bytes:
    """``due``: the delayed set's score as written (``score``); ``owner``: who may read
    it (``RequestRecord.owner``); ``entry_slot``: the request enters the stream, and the
    script fills in its entry id (ENTRY_SLOT)."""
    state: dict[str, Any] = {"s": status.value, "a": attempts}
    if error is not None:
        state["e"] = error
    state["c"], state["u"] = submitted, updated
    if due:
        state["d"] = due
    if owner:
        state["o"] = owner
    if entry_slot:
        state["x"] = ""
    raw = orjson.dumps(state)
    assert not entry_slot or raw.endswith(ENTRY_SLOT.encode())
    return raw


def record_state(
    record: RequestRecord,
    status: Status,
    attempts: int = 0,
    error: str | None = None,
    *,
    now: float,
    due: str = "",
    entry_slot: bool = False,
) -> bytes:
    """The state of ``record``'s request, changed at ``now``."""
    return encode_state(
        status,
        attempts,
        error,
        submitted=record.received_at,
        updated=now,
        due=due,
        owner=record.owner,
        entry_slot=entry_slot,
    )


def score(due_at: float) -> str:
    """A delayed member's score as the scripts write it; the state keeps the same text,
    so that ``cancel`` finds the member at exactly that score."""
    return repr(float(due_at))


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredState:
    """A state as stored: what it reports, and where its request waits (``entry``: its
    stream entry id; ``due``: its score in the delayed set; "" when not known)."""

    state: RequestState
    entry: str = ""
    due: str = ""


def valid_request_id(raw: bytes | str) -> str | None:
    """``raw`` as a request id, or None when it cannot be one."""
    value = text(raw) if len(raw) <= 128 else ""
    return value if _REQUEST_ID.fullmatch(value) else None


def decode_record(raw: bytes) -> RequestRecord:
    """An encoded request, with an id usable in key names and headers; else Corrupt."""
    try:
        record = decode_request(raw)
    except Exception as exc:  # EnvelopeError, and whatever else garbage may raise
        raise Corrupt(_reason(exc)) from None
    if valid_request_id(record.id) is None:
        raise Corrupt(f"bad request id {record.id[:40]!r}")
    return record


def decode_attempt(raw: bytes) -> int:
    """An entry's attempt: decimal digits, 0 to MAX_ATTEMPT; else Corrupt."""
    if not ATTEMPT_DIGITS.fullmatch(raw) or int(raw) > MAX_ATTEMPT:
        raise Corrupt(f"bad attempt {bytes(raw[:24])!r}")
    return int(raw)


def decode_entry(raw: bytes, raw_attempt: bytes) -> tuple[RequestRecord, int]:
    """(record, attempt) of a stream entry; Corrupt with the reason otherwise."""
    return decode_record(raw), decode_attempt(raw_attempt)


def _stamp(value: Any) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ValueError("time")
    return float(value)


def decode_stored(raw: bytes, request_id: str) -> StoredState | None:
    """None (and a warning) when the stored state cannot be read."""
    try:
        state = orjson.loads(raw)
        status, attempts, error = Status(state["s"]), state.get("a", 0), state.get("e")
        if type(attempts) is not int or not 0 <= attempts <= MAX_ATTEMPT + 1:
            raise ValueError("attempts")
        if error is not None and not isinstance(error, str):
            raise ValueError("error")
        entry, due, owner = state.get("x", ""), state.get("d", ""), state.get("o", "")
        if not (isinstance(entry, str) and isinstance(due, str) and isinstance(owner, str)):
            raise ValueError("entry")
        reported = RequestState(
            status,
            attempts,
            error,
            submitted_at=_stamp(state.get("c", 0.0)),
            updated_at=_stamp(state.get("u", 0.0)),
            not_before=_stamp(float(due)) if due else 0.0,
            owner=owner,
        )
        return StoredState(state=reported, entry=entry, due=due)
    except Exception:  # not JSON, not an object, wrong types: unknown
        log.warning("unreadable state for request %s: %r", request_id, bytes(raw[:100]))
        return None


def decode_state(raw: bytes, request_id: str) -> RequestState | None:
    stored = decode_stored(raw, request_id)
    return None if stored is None else stored.state


def decode_result(raw: bytes, request_id: str) -> ResponseRecord | None:
    """None (and a warning) when the stored response cannot be read."""
    try:
        return decode_response(raw)
    except Exception as exc:
        log.warning("unreadable result for request %s: %s", request_id, _reason(exc))
        return None


_LENGTH = struct.Struct(">I").pack


def pack_item(op: Op, nkeys: int, *fields: bytes | str | int) -> bytes:
    """One item of an item script: op code, key count, each field length-prefixed."""
    if len(fields) != len(op.fields) or not (
        nkeys == len(op.keys) or (nkeys == 0 and op.optional_keys)
    ):
        raise ValueError(f"op {op.name}: {nkeys} keys, {len(fields)} fields")
    parts = [b"%s%c" % (op.code.encode(), nkeys)]
    for field in fields:
        data = field if type(field) is bytes else str(field).encode()
        parts.append(_LENGTH(len(data)))
        parts.append(data)
    return b"".join(parts)


#: Ops that record an entry's outcome: a "processing" mark riding with one is moot.
_OUTCOMES = frozenset((COMPLETE.code, RETRY.code, DEAD.code))


def finish_items(
    batch: list[Item], keys_of: dict[str, list[Callable[[str], str]]]
) -> tuple[list[tuple[list[str], bytes]], list[Any]]:
    """The (keys, packed item) of one ``finish`` call, and per item of ``batch`` its
    outcome so far: None, or the exception of an item that is malformed (it fails
    alone). ``keys_of``: per op code, the builders of its keys from the request id. A
    mark riding with an outcome of its request is left out."""
    finals = {rid for code, rid, _ in batch if code in _OUTCOMES}
    items: list[tuple[list[str], bytes]] = []
    outcomes: list[Any] = []
    for code, rid, fields in batch:
        outcome: Any = None
        if code != MARK.code or rid not in finals:
            try:
                keys = [build(rid) for build in keys_of[code]] if rid else []
                items.append((keys, pack_item(OPS[code], len(keys), *fields)))
            except (KeyError, ValueError) as exc:
                outcome = QueueUnavailable(f"finish item {code!r}: {exc!r}")
        outcomes.append(outcome)
    return items, outcomes


def delayed_member(attempt: int, record: RequestRecord, encoded: bytes) -> bytes:
    """A delayed-retry member; the random bytes keep two retries of one id apart."""
    request_id = record.id.encode()
    head = _MEMBER.pack(attempt, len(request_id), secrets.token_bytes(8))
    return head + request_id + encoded


def member_request_id(member: bytes) -> str | None:
    """The request id a delayed member names, if it names a usable one."""
    if len(member) < _MEMBER.size:
        return None
    _, id_len, _ = _MEMBER.unpack_from(member)
    if _MEMBER.size + id_len > len(member):
        return None
    return valid_request_id(member[_MEMBER.size : _MEMBER.size + id_len])


def decode_member(member: bytes) -> tuple[int, RequestRecord, bytes]:
    """(attempt, record, encoded record) of a delayed member; Corrupt otherwise."""
    if len(member) < _MEMBER.size:
        raise Corrupt(f"member of {len(member)} bytes")
    attempt, id_len, _ = _MEMBER.unpack_from(member)
    if attempt > MAX_ATTEMPT + 1 or _MEMBER.size + id_len > len(member):
        raise Corrupt("bad member head")
    request_id = member[_MEMBER.size : _MEMBER.size + id_len]
    raw = member[_MEMBER.size + id_len :]
    record = decode_record(raw)
    if record.id.encode() != request_id:
        raise Corrupt("member and record name different requests")
    return attempt, record, raw


def dead_result(error: str, attempts: int, now: float) -> bytes:
    """The 502 record a dead letter leaves as its request's result."""
    return encode_response(error_response(502, error, attempts=attempts, now=now))


def dead_item(
    entry_id: str,
    raw: bytes,
    error: str,
    attempts: int,
    now: float,
    request_id: str = "",
    result: bytes | None = None,
    reply_to: str = "",
    submitted: float = 0.0,
    owner: str = "",
) -> Item:
    """Op ``dead`` for a stream entry: the letter; with a request id, its state and
    result (``result`` None: the 502 record; b"": none, fire mode); with ``reply_to``,
    the notification of its waiting proxy."""
    state = b""
    if request_id:
        state = encode_state(
            Status.DEAD, attempts, error, submitted=submitted, updated=now, owner=owner
        )
        result = dead_result(error, attempts, now) if result is None else result
    message = notification(request_id, result or b"") if reply_to else b""
    stamp = repr(float(now))
    return (
        DEAD.code,
        request_id,
        [entry_id, raw, error, attempts, stamp, result or b"", state, reply_to, message],
    )


def promotion(member: bytes, now: float) -> Item:
    """Op ``promote`` for a due delayed member, or ``drop`` (dead-lettered with the
    reason) when it does not decode."""
    try:
        attempt, record, raw = decode_member(member)
    except Corrupt as exc:
        log.error("dead-lettering a corrupt retry: %s", exc)
        error, rid = f"corrupt retry: {exc}", member_request_id(member) or ""
        result = dead_result(error, 0, now) if rid else b""
        state = encode_state(Status.DEAD, 0, error, updated=now) if rid else b""
        return (DROP.code, rid, [member, member, error, repr(float(now)), result, state])
    state = record_state(record, Status.QUEUED, attempt, now=now, entry_slot=True)
    return (PROMOTE.code, record.id, [member, attempt, record.id, raw, state])
