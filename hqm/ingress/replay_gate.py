"""The proxy's side of ``HQM-Replay`` (hqm.proto.replay_token): a worker's replay
passes straight to the app only once its token is proven for this very request and
spent (docs/architecture.md §6).

``decide`` (from the head, after the routes: a reject route rejects a replay too)
checks the token's form and time; ``proven`` (on the pass path, before any byte goes
on) reads the body whole, bounded by --max-body as when the request was queued, checks
the MAC against method, target and body, and spends the token in the queue
(``Queue.spend``: Redis SET NX PX, or the embedded queue's bounded memory). Whatever
fails is answered 403 naming why: never queued (a replay queued again would loop),
never passed. Tokens are neither stored nor logged; only a digest is remembered.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson

from hqm.ingress.results_api import JSON, RETRY_AFTER, Trouble, queue_failure
from hqm.ingress.routes import Decision, Route
from hqm.io.streams import BodyError, BodyStream, ResponseStream
from hqm.proto.events import RequestHead
from hqm.proto.replay_token import REMEMBER_S, ReplayRefused, Token, parse
from hqm.queue.base import Queue, QueueError

#: A proven replay: straight to the app (the route's injected headers came with it).
REPLAY = Route(name="replay", action="pass")
#: A request with an HQM-Replay that proves nothing.
REFUSED = Route(name="replay", action="reject", status=403)


class ReplayGate:
    def __init__(
        self,
        *,
        key: bytes,
        queue: Queue,
        max_body_bytes: int,
        on_refused: Callable[[], None],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = key
        self._queue = queue
        self._max_body = max_body_bytes
        self._on_refused = on_refused
        self._now = wall_clock
        self._trouble = Trouble("replay check")

    def decide(self, value: bytes) -> Decision:
        """A replay's decision from its head: its form and time checked here, its MAC
        and single use once the body is in (``proven``)."""
        try:
            token = parse(value)
            token.check_time(self._now())
        except ReplayRefused as exc:
            return Decision(REFUSED, "reject", error=f"HQM-Replay refused: {exc}")
        return Decision(REPLAY, "pass", replay=token)

    async def proven(
        self, head: RequestHead, token: Token, body: BodyStream, out: ResponseStream
    ) -> BodyStream | None:
        """The replay's body, once its token holds for this request and is spent here;
        else None, the refusal answered (403 naming why, 413, 503)."""
        try:
            data = await _read_whole(body, self._max_body)
        except BodyError:
            return None  # the client broke off: nothing to answer
        try:
            if data is None:
                await _json(out, 413, {"error": "request body too large"})
                return None
            token.verify(self._key, method=head.method, target=head.target, body=data)
            if not await self._queue.spend(token.spent_id, REMEMBER_S):
                raise ReplayRefused("already used")
        except ReplayRefused as exc:
            self._on_refused()
            await _json(out, 403, {"error": f"HQM-Replay refused: {exc}", "route": REFUSED.name})
            return None
        except QueueError as exc:
            self._trouble.failed(exc)
            await _json(out, 503, queue_failure(exc)[1], RETRY_AFTER)
            return None
        if self._trouble.failing:
            self._trouble.recovered()
        whole = BodyStream(pause=_nothing, resume=_nothing)
        if data:
            whole.feed(data)
        whole.finish()
        return whole


def _nothing() -> None:
    """A proven replay's body is all in memory: no client to pause or resume."""


async def _read_whole(body: BodyStream, limit: int) -> bytes | None:
    """All of ``body``; None once it passes ``limit`` bytes (the rest is not read)."""
    chunks, size = [], 0
    while data := await body.read():
        size += len(data)
        if size > limit:
            return None
        chunks.append(data)
    return b"".join(chunks)


async def _json(
    out: ResponseStream, status: int, payload: dict, *extra: tuple[bytes, bytes]
) -> None:
    if out.start(status, [JSON, *extra]):
        await out.write(orjson.dumps(payload))
        out.end()
