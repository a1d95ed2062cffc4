"""``python -m openhqm.api.listener``: the original OpenHQM's API (its image's default
command) is ``hqm proxy``, which serves that API on /api/v1/ and reads OPENHQM_*."""

from __future__ import annotations

import sys

from hqm.cli.main import main as hqm


def main(argv: list[str] | None = None) -> None:
    hqm(["proxy", *(sys.argv[1:] if argv is None else argv)], prog_name="openhqm.api.listener")


if __name__ == "__main__":
    main()
