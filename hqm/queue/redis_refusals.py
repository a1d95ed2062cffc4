"""Writes Redis refused: what tells them from a failure whose outcome is unknown, and
the write probe of the proxy's /readyz (docs/architecture.md §5, §6)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)

from hqm.queue.base import QueueOutOfMemory, QueueRefused
from hqm.queue.keys import QueueKeys
from hqm.queue.redis_codec import errors

#: Errors Redis answers a command with before running it, or a script with at its first
#: write (Redis lets a script that has written go on: it refuses no later write of it),
#: so that nothing of the command was stored: by redis-py's class (NOAUTH and WRONGPASS
#: are AuthenticationError, LOADING BusyLoadingError), and by code for those it has no
#: class for. Not NOPERM (ACLs check each key a script touches, after writes it may have
#: made), nor a plain ERR (a script can raise one after writing).
_REFUSED_CLASSES = (ReadOnlyError, AuthenticationError, NoScriptError, BusyLoadingError)
_REFUSED_CODES = ("MISCONF ", "BUSY ", "MASTERDOWN ", "NOREPLICAS ", "WRONGTYPE ")


@contextlib.contextmanager
def refusals(op: str) -> Iterator[None]:
    """``errors``, but a write Redis refused before storing any of it is QueueRefused
    (QueueOutOfMemory at ``maxmemory``). Only for a write whose first command or first
    write is where Redis refuses: the enqueue script (its first commands read the keys
    every item writes, XLEN and ZCARD: a key of the wrong type fails there; an
    Idempotency-Key of the wrong type is an item's own reply, not the script's error)."""
    with errors(op):
        try:
            yield
        except OutOfMemoryError as exc:
            raise QueueOutOfMemory(f"redis {op} refused: OOM {exc}") from exc
        except _REFUSED_CLASSES as exc:
            raise QueueRefused(f"redis {op} refused: {type(exc).__name__}: {exc}") from exc
        except ResponseError as exc:
            if str(exc).startswith(_REFUSED_CODES):
                raise QueueRefused(f"redis {op} refused: {exc}") from exc
            raise


#: Lifetime of the key the probe writes: one key per queue, gone soon after probes stop.
_PROBE_TTL_MS = 10_000


async def probe_write(redis: Any, keys: QueueKeys, value: str, timeout_s: float) -> None:
    """What an enqueue would meet, without queueing anything: XLEN and ZCARD of the
    keys every enqueue writes (a key of the wrong type), then SET of ``probe`` (a
    write: OOM at maxmemory, READONLY on a replica, NOAUTH, MISCONF)."""
    pipe = redis.pipeline(transaction=False)
    pipe.xlen(keys.stream)
    pipe.zcard(keys.delayed)
    pipe.set(keys.probe, value, px=_PROBE_TTL_MS)
    with refusals("probe"):
        async with asyncio.timeout(timeout_s):
            await pipe.execute()
