"""The open connections of one listener: graceful drain and the connection limit."""

from __future__ import annotations

import asyncio
from typing import Any


class ConnectionTracker:
    """Every open connection of one listener, for graceful shutdown; past
    ``max_connections`` (0: no limit) a new connection gets a 503 and is closed."""

    def __init__(self, max_connections: int = 0) -> None:
        #: The listener's HttpProtocol instances.
        self.connections: set[Any] = set()
        self.draining = False
        self.max_connections = max_connections

    async def drain(self, timeout_s: float) -> None:
        """Close idle connections now; let busy ones finish (then close) up to ``timeout_s``."""
        self.draining = True
        for conn in list(self.connections):
            conn.close_if_idle()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.connections and loop.time() < deadline:
            busy = [c.closed for c in self.connections]
            await asyncio.wait(busy, timeout=deadline - loop.time())
        for conn in list(self.connections):
            conn.abort()
