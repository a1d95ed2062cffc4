"""``HQM_*`` variables that set nothing: a typo (``HQM_PROXY_MAXBODY``) or an option
under the wrong command (``HQM_MAX_BODY``: ``--max-body`` is the proxy's own) would be
ignored without a word, while a file typo is an error. They are reported as the
ignored ``OPENHQM_*`` settings are (``hqm.config.openhqm_env``): logged once as a
warning by ``hqm proxy`` and ``hqm worker``, listed by ``hqm config check``, each with
the closest variable that is one. A warning, not an error: one environment block often
serves proxy and worker, and a variable another version of hqm reads must not stop
this one.

Known: every variable of every command's options table (a proxy's environment may
hold the worker's variables), and the few below that are no option.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from functools import cache

from hqm.config.commands import COMMANDS

PREFIX = "HQM_"
#: A child's index, set by the supervisor of ``--processes N`` (``hqm.cli.supervise``).
PROCESS_INDEX = "HQM_PROCESS_INDEX"
#: Read by the test suite (tests/: ``HQM_TEST_OUTAGE_S`` and the like) from the
#: environment its hqm processes inherit.
TEST_PREFIX = "HQM_TEST_"


@cache
def known() -> frozenset[str]:
    """Every HQM_ variable hqm reads."""
    names = {n for c in COMMANDS.values() for o in c.options for n in c.env_names(o)}
    return frozenset({*names, PROCESS_INDEX})


def unknown(env: Mapping[str, str]) -> tuple[str, ...]:
    """The variables of ``env`` named like hqm's (any case) that set nothing, sorted."""
    return tuple(
        sorted(
            name
            for name in env
            if name.upper().startswith(PREFIX)
            and name not in known()
            and not name.startswith(TEST_PREFIX)
        )
    )


def why_unknown(name: str) -> str:
    close = difflib.get_close_matches(name.upper(), sorted(known()), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"no hqm setting{hint}"
