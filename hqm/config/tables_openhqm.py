"""The proxy's options for the original OpenHQM's API (``hqm.ingress.openhqm_api``).

They belong to the PROXY table (``hqm.config.tables`` lists them); a module of their own
keeps that one small.
"""

from __future__ import annotations

import re
from typing import Any

from hqm.config.options import Option, boolean

#: An origin-form request-target: a path and maybe a query, visible ASCII only (no
#: space, no control character), as it goes on the request line.
_ORIGIN_FORM = re.compile(r"/[!-~]*")
#: Longer is a mistake, not a path (the proxy's own request-line limit is larger).
MAX_TARGET_CHARS = 2000


def request_target(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"expected a string, got {raw!r}")
    value = raw.strip()
    if len(value) > MAX_TARGET_CHARS or not _ORIGIN_FORM.fullmatch(value):
        raise ValueError(
            f"expected a path starting with / (visible ASCII, at most {MAX_TARGET_CHARS} "
            f"characters), got {raw!r}"
        )
    return value


OPENHQM_API = (
    Option(
        "openhqm-api",
        "bool",
        True,
        "Serve the original OpenHQM's API: POST /api/v1/submit, GET /api/v1/status/ID and "
        "/api/v1/response/ID (off: /api/v1/ goes to the app like any path).",
        boolean,
        switch=True,
        negatable=True,
    ),
    Option(
        "openhqm-target",
        "target",
        "/",
        "Path /api/v1/submit POSTs the payload to on --upstream "
        "(the path of OPENHQM_PROXY__DEFAULT_ENDPOINT).",
        request_target,
    ),
)
