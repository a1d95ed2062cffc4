"""Wait mode over Redis: one reply channel per proxy process and the requests waiting.

A worker that finishes a wait-mode request publishes on the proxy's channel the
request id, and, when it is small enough, the encoded result itself
(``id + b"\\n" + encode_response(...)``), in the same Lua script that stores it. A
waiter so notified needs no GET. A notification without a usable result (oversized,
corrupt, or from an older worker) makes the waiter GET the result key; and every
waiter also polls the result key, so a lost notification (subscription not yet live,
reconnect) never strands it.

A proxy registers the waiter of a wait-mode request *before* its XADD
(``expect``), so ``wait`` starts by waiting, not with a GET that cannot hit yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from hqm.proto.envelope import ResponseRecord, decode_response
from hqm.queue.base import QueueUnavailable

log = logging.getLogger(__name__)

#: A result larger than this is announced by id only (the waiter GETs it): a slow
#: subscriber must not hit Redis's pub/sub output buffer limit.
NOTIFY_MAX_BYTES = 64 << 10
#: A waiter registered by ``expect`` and not taken by ``wait`` within this time (its
#: caller went away) is forgotten. ``wait`` without a registered waiter still works.
_EXPECT_HORIZON_S = 2.0
_FIRST_POLL_S = 0.25
_MAX_POLL_S = 1.0

Waiter = asyncio.Future[ResponseRecord | None]


def notification(request_id: str, result: bytes) -> bytes:
    """The reply-channel message for a finished request (``result`` b"": fire mode)."""
    if result and len(result) <= NOTIFY_MAX_BYTES:
        return b"%s\n%s" % (request_id.encode(), result)
    return request_id.encode()


class Replies:
    """The reply channel of one process: waiters by request id, one subscription."""

    def __init__(
        self,
        client: Any,
        channel: str,
        fetch: Callable[[str], Awaitable[ResponseRecord | None]],
    ) -> None:
        self._client = client  # the client without socket timeout (pub/sub)
        self.channel = channel
        self._fetch = fetch
        self.waiters: dict[str, set[Waiter]] = {}
        #: Waiters registered by ``expect``: the subscription epoch then (-1: not live).
        self._expected: dict[str, tuple[Waiter, int]] = {}
        self._horizon: deque[tuple[float, str]] = deque()
        self._listener: asyncio.Task[None] | None = None
        self._epoch = 0  # one per subscription made live
        self._live = False
        self._closed = False
        #: Notifications received on the channel.
        self.notifications = 0

    def _start(self) -> None:
        if self._listener is None and not self._closed:
            self._listener = asyncio.create_task(self._listen())

    def _add(self, request_id: str) -> Waiter:
        waiter: Waiter = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(request_id, set()).add(waiter)
        return waiter

    def _discard(self, request_id: str, waiter: Waiter) -> None:
        waiters = self.waiters.get(request_id)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self.waiters[request_id]

    def expect(self, request_id: str) -> None:
        """Register the waiter of a request about to be queued (before its XADD)."""
        self._start()
        now = asyncio.get_running_loop().time()
        self._expected[request_id] = (self._add(request_id), self._epoch if self._live else -1)
        self._horizon.append((now + _EXPECT_HORIZON_S, request_id))
        while self._horizon and self._horizon[0][0] < now:  # callers gone: forget them
            self.forget(self._horizon.popleft()[1])

    def forget(self, request_id: str) -> None:
        """Drop the waiter ``expect`` registered (the enqueue failed)."""
        item = self._expected.pop(request_id, None)
        if item is not None:
            self._discard(request_id, item[0])

    async def wait(
        self,
        request_id: str,
        timeout_s: float,
        fetch: Callable[[str], Awaitable[Any]] | None = None,
    ) -> Any:
        """The result a notification carried (a ResponseRecord), or what ``fetch``
        (default: the one given at construction) read of it; None after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        self._start()
        item = self._expected.pop(request_id, None)
        if item is None:
            waiter, covered = self._add(request_id), False
        else:  # notified for sure unless the subscription was not live throughout
            waiter, covered = item[0], self._live and item[1] == self._epoch
            covered = covered and (waiter.done() or timeout_s > 0)
        interval = _FIRST_POLL_S
        try:
            while not self._closed:
                if not covered:  # also catches a result stored before we registered
                    result = await self._poll(request_id, fetch or self._fetch)
                    if result is not None:
                        return result
                covered = False
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                if not waiter.done():
                    await asyncio.wait((waiter,), timeout=min(interval, remaining))
                    interval = min(interval * 2, _MAX_POLL_S)
                if waiter.done():
                    if waiter.cancelled():
                        break  # closed
                    result = waiter.result()
                    if result is not None:
                        return result
                    # Notified without the result: GET it now, wait on a fresh waiter.
                    self._discard(request_id, waiter)
                    waiter = self._add(request_id)
            return None
        finally:
            self._discard(request_id, waiter)

    async def _poll(self, request_id: str, fetch: Callable[[str], Awaitable[Any]]) -> Any:
        try:
            return await fetch(request_id)
        except QueueUnavailable as exc:
            log.debug("wait_result poll of %s: %s", request_id, exc)
            return None

    async def _listen(self) -> None:
        """The one subscription; resubscribes with backoff after failures."""
        backoff = 0.1
        while not self._closed:
            client = self._client
            pubsub = client.pubsub()
            try:
                await client.initialize()  # a cluster client must know its slots first
                await pubsub.subscribe(self.channel)
                self._epoch += 1
                self._live = True
                backoff = 0.1
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        self._notify(message["data"])
            except Exception as exc:  # the listener must survive anything
                log.warning("reply channel %s lost (%s); resubscribing", self.channel, exc)
            finally:
                self._live = False
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def _notify(self, data: bytes) -> None:
        self.notifications += 1
        raw_id, _, payload = data.partition(b"\n")
        waiters = self.waiters.get(raw_id.decode("ascii", "replace"))
        if not waiters:
            return
        result = None
        if payload:
            try:
                result = decode_response(payload)
            except ValueError as exc:  # EnvelopeError included: GET it instead
                log.warning("unreadable result in a notification on %s: %s", self.channel, exc)
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(result)

    async def close(self) -> None:
        self._closed = True
        for waiters in self.waiters.values():
            for waiter in waiters:
                waiter.cancel()
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.wait((self._listener,))
