"""``python -m openhqm.worker.worker [WORKER_ID [INDEX COUNT]]``: the original OpenHQM's
worker is ``hqm worker``, reading OPENHQM_*. WORKER_ID is the consumer name
(``--consumer``); INDEX and COUNT chose partitions, which hqm has not: ignored. Flags
after them are ``hqm worker``'s."""

from __future__ import annotations

import sys

from hqm.cli.main import main as hqm


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    positional = 0
    while positional < len(args) and not args[positional].startswith("-"):
        positional += 1
    consumer = ["--consumer", args[0]] if positional else []
    hqm(["worker", *consumer, *args[positional:]], prog_name="openhqm.worker.worker")


if __name__ == "__main__":
    main()
