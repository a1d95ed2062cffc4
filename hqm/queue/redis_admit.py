"""A request's way into the Redis backend and back out (docs/architecture.md §4): the
items of script ``enqueue`` (an Idempotency-Key checked and remembered in the same
step; a request with a ``not_before`` put in the delayed set instead of the stream),
what their replies mean, its state as reported, and ``cancel``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Awaitable, Callable
from typing import Any

from hqm.proto.envelope import RequestRecord, ResponseRecord, encode_request
from hqm.queue.base import (
    CancelOutcome,
    Enqueued,
    IdempotencyClaim,
    QueueFull,
    QueueRefused,
    RequestState,
    Status,
)
from hqm.queue.keys import QueueKeys
from hqm.queue.redis_codec import (
    decode_state,
    decode_stored,
    delayed_member,
    encode_state,
    errors,
    pack_item,
    record_state,
    score,
    text,
    valid_request_id,
)
from hqm.queue.redis_lua import ADD, ADD_ONCE, CANCEL, Script

#: An item of script ``enqueue``: its KEYS and its packed argument.
EnqueueItem = tuple[list[str], bytes]
#: ``RedisQueue._script``: (op, script, keys, args) -> its reply.
RunScript = Callable[[str, Script, list[Any], list[Any]], Awaitable[Any]]
#: A state that changed under ``cancel`` this many times running is being worked on.
_CANCEL_TRIES = 3
#: Where a request of each status waits: its stream entry, or its delayed member.
_IN_STREAM = frozenset({Status.QUEUED})
_IN_DELAYED = frozenset({Status.DELAYED, Status.RETRYING})


def _fingerprint(claim: IdempotencyClaim) -> str:
    """Of fixed length: the script tells the stored fingerprint from the id after it."""
    return hashlib.sha256(claim.fingerprint.encode()).hexdigest()


def enqueue_item(
    keys: QueueKeys,
    record: RequestRecord,
    claim: IdempotencyClaim | None,
    *,
    now: float,
    ttl_ms: int,
) -> EnqueueItem:
    """Op ``add`` (or ``add_once`` with an Idempotency-Key) for ``record``. A delayed
    request's state is kept until it is due, and for the TTL after."""
    raw = encode_request(record)
    if record.not_before > record.received_at:
        due = score(record.not_before)
        state = record_state(record, Status.DELAYED, now=now, due=due)
        hold_ms = ttl_ms + max(0, math.ceil((record.not_before - now) * 1000))
        fields: list[Any] = [record.id, b"", delayed_member(0, record, raw), due, state, hold_ms]
    else:
        state = record_state(record, Status.QUEUED, now=now, entry_slot=True)
        fields = [record.id, raw, b"", "", state, ttl_ms]
    state_key = keys.state(record.id)
    if claim is None:
        return [state_key], pack_item(ADD, 1, *fields)
    idem_ms = max(1, math.ceil(claim.ttl_s * 1000))
    packed = pack_item(ADD_ONCE, 2, *fields, _fingerprint(claim), idem_ms)
    return [state_key, keys.idem(claim.key)], packed


def enqueued(reply: Any, record: RequestRecord, full: str) -> Enqueued:
    """What the reply to an ``enqueue`` item means (QueueFull for 0, QueueRefused for
    an Idempotency-Key Redis could not read: that item wrote nothing)."""
    if reply == 0:
        raise QueueFull(full)
    if isinstance(reply, bytes) and reply[:1] == b"?":
        raise QueueRefused(f"redis enqueue refused: {text(reply[1:])}")
    if isinstance(reply, bytes) and reply[:1] in (b"=", b"!"):
        first = valid_request_id(reply[1:])
        if reply[:1] == b"=" and first is not None:
            return Enqueued(request_id=first, duplicate=True)
        # another request under that key (or a stored key that does not name one)
        return Enqueued(request_id=first or record.id, conflict=True)
    return Enqueued(request_id=record.id)


async def read_state(
    redis: Any,
    keys: QueueKeys,
    request_id: str,
    fetch_result: Callable[[str], Awaitable[ResponseRecord | None]],
) -> RequestState | None:
    """The state as stored; an unreadable one as its stored result says, if any."""
    with errors("state"):
        raw = await redis.get(keys.state(request_id))
    if raw is None:
        return None
    state = decode_state(raw, request_id)
    if state is None:
        result = await fetch_result(request_id)
        if result is not None:
            status = Status.DEAD if result.error else Status.DONE
            return RequestState(status, result.attempts, result.error)
    return state


async def cancel(
    redis: Any,
    script: RunScript,
    keys: QueueKeys,
    request_id: str,
    *,
    ttl_ms: int,
    now: Callable[[], float],
) -> CancelOutcome:
    """Read the state, decide, and let script ``cancel`` take the request back if that
    state is still the one stored (else read again)."""
    state_key = keys.state(request_id)
    for _ in range(_CANCEL_TRIES):
        with errors("cancel"):
            raw = await redis.get(state_key)
        if raw is None:
            return CancelOutcome.UNKNOWN
        stored = decode_stored(raw, request_id)
        if stored is None:
            return CancelOutcome.BUSY  # something is there; nothing we can take back
        status = stored.state.status
        entry = stored.entry if status in _IN_STREAM else ""
        due = stored.due if status in _IN_DELAYED else ""
        if not (entry or due):  # held, finished, or written before states knew where
            return CancelOutcome.BUSY
        state = encode_state(
            Status.CANCELLED,
            stored.state.attempts,
            stored.state.error,
            submitted=stored.state.submitted_at,
            updated=now(),
            owner=stored.state.owner,
        )
        call_keys, args = CANCEL.bind(
            stream=keys.stream,
            delayed=keys.delayed,
            state_key=state_key,
            seen=raw,
            id=request_id,
            entry=entry,
            due_at=due,
            state=state,
            ttl_ms=ttl_ms,
        )
        reply = text(await script("cancel", CANCEL, call_keys, args))
        if reply == "cancelled":
            return CancelOutcome.CANCELLED
        if reply == "busy":
            return CancelOutcome.BUSY
    return CancelOutcome.BUSY


async def spend(redis: Any, keys: QueueKeys, token: str, ttl_s: float) -> bool:
    """``Queue.spend``: SET NX PX, so two proxies racing with one token pass one."""
    with errors("spend"):
        ttl_ms = max(1, math.ceil(ttl_s * 1000))
        return bool(await redis.set(keys.spent(token), b"1", nx=True, px=ttl_ms))
