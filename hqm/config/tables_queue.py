"""``--queue``: one queue for every command, and one or several for ``hqm worker``.

They belong to the commands' tables (``hqm.config.tables`` lists them); a module of
their own keeps that one small.
"""

from __future__ import annotations

from dataclasses import replace

from hqm.config.options import Option, queue_name, queue_set

QUEUE = Option(
    "queue",
    "name",
    "default",
    "Queue name.",
    queue_name,
    shared=True,
)
#: ``hqm worker`` consumes one queue or several: the same option (name, default,
#: variables, file key), repeatable, with the parser for several.
WORKER_QUEUE = replace(
    QUEUE,
    help="Queue to consume; several (repeat --queue, or NAME,NAME) in strict priority "
    "order, or shared by weight with NAME=WEIGHT (reports=3,default=1).",
    parse=queue_set,
    multiple=True,
)
