"""The access-log options (``hqm.ops.access_log``), shared by ``hqm proxy`` and
``hqm worker`` (the same Option objects in both tables; also ``HQM_ACCESS_LOG`` and
top-level file keys, as ``--log-level``). A module of their own keeps
``hqm.config.tables`` small.

Off by default: with it on, every request is a line on stderr (about 300 bytes: at
20k requests/s some 6 MB/s, a day's worth in the hundreds of GB), which a log pipeline
must be sized for; ``sampled`` keeps a share. Its own cost is a dict per request on the
event loop and the formatting in the writer thread (a few µs per line each).
"""

from __future__ import annotations

from hqm.config.options import Option, choice, number
from hqm.ops.access_log import ACCESS_LOG_MODES

ACCESS_LOG = (
    Option(
        "access-log",
        "choice",
        "off",
        "One JSON line per request on stderr (logger hqm.access): off, on, or sampled "
        "(a share of them, --access-log-sample).",
        choice(*ACCESS_LOG_MODES),
        shared=True,
    ),
    Option(
        "access-log-sample",
        "ratio",
        0.01,
        "With --access-log sampled: the share of requests logged, 0 to 1.",
        number(low=0.0, high=1.0),
        shared=True,
    ),
)
