"""A stored result read in pieces (``Queue.open_result`` over Redis).

A result key holds ``encode_response``'s bytes: prefix, JSON head, body
(hqm.proto.envelope). The first GETRANGE takes RESULT_CHUNK_BYTES from the start,
with STRLEN in the same round trip: the head (a second GETRANGE only when the head is
longer than that) and, for most results, the whole body. The body is then read with
GETRANGE a piece at a time, as the client takes it: a reader holds one piece, never the
result (a GET of a 50 MiB result is 50 MiB in the reply buffer, again in the decoded
record, again in the answer's bytes, per reader).

Each later piece comes with the key's STRLEN: a result that expired or was written
again meanwhile (a dead letter replayed) is noticed, and the reader breaks off rather
than send bytes of another answer.
"""

from __future__ import annotations

import logging
from typing import Any

from hqm.proto.envelope import PREFIX_BYTES, ResponseRecord, decode_response_head, head_end
from hqm.proto.limits import RESULT_CHUNK_BYTES
from hqm.queue.base import QueueUnavailable, StoredResult, whole_result
from hqm.queue.keys import QueueKeys
from hqm.queue.redis_codec import errors
from hqm.queue.redis_wait import Replies

log = logging.getLogger("hqm.queue.redis_streams")


async def _range(redis: Any, key: str, start: int, length: int) -> tuple[int, bytes]:
    """(STRLEN, GETRANGE of ``length`` bytes from ``start``) in one round trip."""
    with errors("open_result"):
        pipe = redis.pipeline(transaction=False)
        pipe.strlen(key)
        pipe.getrange(key, start, start + length - 1)
        size, data = await pipe.execute()
    return int(size), data


async def open_result(redis: Any, key: str, request_id: str) -> StoredResult | None:
    """The result stored at ``key``; None when there is none or it does not decode."""
    size, first = await _range(redis, key, 0, RESULT_CHUNK_BYTES)
    if not size:
        return None
    try:
        end = head_end(first[:PREFIX_BYTES])
        if end > len(first) and end <= size:  # a head longer than one piece
            size, rest = await _range(redis, key, len(first), end - len(first))
            first += rest
        head, body_at = decode_response_head(first, size)
    except Exception as exc:  # EnvelopeError, and whatever else garbage may raise
        log.warning("unreadable result for request %s: %s", request_id, str(exc)[:200])
        return None
    total = size
    held = first[body_at:]  # (the body's first bytes, read already)

    async def read(offset: int, length: int) -> bytes:
        if offset + length <= len(held):
            return held[offset : offset + length]
        now, data = await _range(redis, key, body_at + offset, length)
        if now != total or len(data) != min(length, total - body_at - offset):
            raise QueueUnavailable(f"result of {request_id} expired or changed while read")
        return data

    return StoredResult(head, size - body_at, read)


class PieceReads:
    """``RedisQueue``'s results read in pieces (its ``_redis``, ``keys``, ``_replies``)."""

    _redis: Any
    _replies: Replies
    keys: QueueKeys

    async def open_result(self, request_id: str) -> StoredResult | None:
        return await open_result(self._redis, self.keys.result(request_id), request_id)

    async def wait_stored(self, request_id: str, timeout_s: float) -> StoredResult | None:
        """As ``wait_result``; a result the notification did not carry (over 64 KiB)
        is opened to be read in pieces, never GET whole."""
        result = await self._replies.wait(request_id, timeout_s, self.open_result)
        return whole_result(result) if isinstance(result, ResponseRecord) else result
