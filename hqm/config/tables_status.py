"""The options table of ``hqm status`` (registered in hqm.config.commands)."""

from __future__ import annotations

from dataclasses import replace

from hqm.config.options import Option, boolean
from hqm.config.tables import CONFIG, QUEUE, WORKER, Command, seconds

STATUS = Command(
    "status",
    (
        replace(
            WORKER.option("redis"),
            required=False,
            help="redis:// URL of the queue (rediss:// for TLS); not needed for --keys.",
        ),
        QUEUE,
        Option(
            "max-age",
            "seconds",
            0.0,
            "Exit 1 when the oldest waiting request is older than this; 0 = no limit.",
            seconds(zero_ok=True),
        ),
        replace(
            WORKER.option("visibility-timeout"),
            help="An entry held longer than this is being reclaimed; it counts in its "
            "consumer's IDLE (give the workers' value).",
        ),
        Option(
            "keys",
            "bool",
            False,
            "Print every Redis key name of the queue (for redis-cli) and exit.",
            boolean,
            switch=True,
        ),
        CONFIG,
    ),
)
