"""A background round run every few seconds for the life of a process (the queue
gauges' refresh, the proxy's promotion of due requests): a failing round is logged
and the next one runs; ``close`` cancels it and waits for it to end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable


class Periodic:
    __slots__ = ("_interval_s", "_log", "_round", "_task", "_what")

    def __init__(
        self,
        round_: Callable[[], Awaitable[object]],
        interval_s: float,
        *,
        what: str,
        logger: logging.Logger,
    ) -> None:
        self._round = round_
        self._interval_s = interval_s
        self._what = what
        self._log = logger
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            try:
                await self._round()
            except Exception:  # a bug: this round is lost, the process goes on
                self._log.exception("%s failed", self._what)
            await asyncio.sleep(self._interval_s)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
