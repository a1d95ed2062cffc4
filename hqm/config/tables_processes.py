"""``--processes``: how many processes serve ``hqm proxy`` / ``hqm worker`` (one
asyncio loop each, so one core each). Above 1 the command supervises that many
children (``hqm.cli.supervise``). Listed in the PROXY and WORKER tables of
``hqm.config.tables``; a module of its own keeps that one small.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from hqm.config.options import Option, integer

#: What ``auto`` stands for: one process per core the machine reports.
AUTO = "auto"
#: More children than this is a typo, not a machine: each one holds its own
#: connections, pools and Redis clients.
MAX_PROCESSES = 256

_count = integer(low=1, high=MAX_PROCESSES)


def processes(raw: Any) -> int:
    """An integer from 1 to MAX_PROCESSES, or ``auto`` (``os.cpu_count()``)."""
    if isinstance(raw, str) and raw.strip().lower() == AUTO:
        return min(os.cpu_count() or 1, MAX_PROCESSES)
    try:
        return _count(raw)
    except ValueError as exc:
        raise ValueError(f"{exc} (or {AUTO})") from None


@dataclass(frozen=True, slots=True)
class CountOption(Option):
    """An option whose file value is an integer or the text ``auto``."""

    def parse_file(self, raw: Any) -> Any:
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise ValueError(f'expected an integer or "{AUTO}", got {type(raw).__name__} {raw!r}')
        return self.parse(raw)


PROCESSES = CountOption(
    "processes",
    "int",
    1,
    "Processes serving this command, one per core: N, or auto (one per CPU). Above 1, "
    'this process supervises N children (README "Several processes").',
    processes,
)
