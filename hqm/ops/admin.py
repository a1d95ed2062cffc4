"""The admin listener: /healthz, /readyz, /metrics (on its own port)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from hqm.io.http_server import Peer, Reply
from hqm.ops.metrics import render
from hqm.proto.server import RequestHead

_TEXT = (b"Content-Type", b"text/plain; charset=utf-8")


class AdminHandler:
    def __init__(
        self,
        *,
        registry: CollectorRegistry,
        ready: Callable[[], Awaitable[bool]],
        refresh: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._registry = registry
        self._ready = ready
        self._refresh = refresh

    async def __call__(
        self, head: RequestHead, body: bytes, peer: Peer, decision: object = None
    ) -> Reply:
        path = head.target.split(b"?", 1)[0]
        if path == b"/healthz":
            return Reply(200, [_TEXT], b"ok\n")
        if path == b"/readyz":
            if await self._ready():
                return Reply(200, [_TEXT], b"ready\n")
            return Reply(503, [_TEXT], b"not ready\n")
        if path == b"/metrics":
            if self._refresh is not None:
                await self._refresh()
            return Reply(
                200, [(b"Content-Type", CONTENT_TYPE_LATEST.encode())], render(self._registry)
            )
        return Reply(404, [_TEXT], b"not found: /healthz, /readyz, /metrics\n")
