"""The open connections of one listener: graceful drain and the connection limit."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from hqm.proto.limits import DRAIN_ANSWER_S


class ConnectionTracker:
    """Every open connection of one listener, for graceful shutdown; past
    ``max_connections`` (0: no limit) a new connection gets a 503 and is closed."""

    def __init__(self, max_connections: int = 0) -> None:
        #: The listener's HttpProtocol instances.
        self.connections: set[Any] = set()
        self.draining = False
        self.max_connections = max_connections

    async def drain(self, timeout_s: float, release: Callable[[], object] | None = None) -> None:
        """Close idle connections now; let busy ones finish (then close) up to ``timeout_s``.

        ``release`` is called DRAIN_ANSWER_S before that deadline (at once, for a shorter
        timeout): handlers still holding a client for a result answer it then (the
        proxy's wait mode: 202 + Location), before what is still open is aborted.
        """
        self.draining = True
        for conn in list(self.connections):
            conn.close_if_idle()
        deadline = asyncio.get_running_loop().time() + timeout_s
        if release is not None:
            await self._closed(deadline - DRAIN_ANSWER_S)
            release()
        await self._closed(deadline)
        for conn in list(self.connections):
            conn.abort()

    async def _closed(self, until: float) -> None:
        """Until every connection closed, or the loop time ``until``."""
        loop = asyncio.get_running_loop()
        while self.connections and loop.time() < until:
            busy = [c.closed for c in self.connections]
            await asyncio.wait(busy, timeout=until - loop.time())
