"""How long ``hqm worker`` runs, and how it shows it is alive: ``--burst``,
``--burst-timeout`` and ``--heartbeat`` (in the worker's table, ``hqm.config.tables``;
a module of their own keeps that one small)."""

from __future__ import annotations

from hqm.config.options import Option, boolean, number, seconds
from hqm.worker.heartbeat import HEARTBEAT_S, TTL_INTERVALS

#: Shortest --heartbeat: the worker writes it with its maintenance, once a second.
MIN_HEARTBEAT_S = 1.0
#: Longest --heartbeat: a killed worker would show as alive for 3 hours.
MAX_HEARTBEAT_S = 3600.0

WORKER_RUN = (
    Option(
        "burst",
        "bool",
        False,
        "Exit 0 once the queue is empty (tests, batch jobs).",
        boolean,
        switch=True,
    ),
    Option(
        "burst-timeout",
        "seconds",
        30.0,
        "In burst mode, exit 1 when the queue stays unreachable this long.",
        seconds(zero_ok=False),
    ),
    Option(
        "heartbeat",
        "seconds",
        HEARTBEAT_S,
        f"Seconds between the worker's liveness writes to Redis (a key per queue and "
        f"consumer, expiring after {TTL_INTERVALS} of them; read by hqm status).",
        number(low=MIN_HEARTBEAT_S, high=MAX_HEARTBEAT_S),
    ),
)
