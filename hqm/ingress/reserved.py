"""hqm's own endpoints as routes: the results API (/_hqm/) and, with --openhqm-api, the
original OpenHQM's (/api/v1/). The proxy's route table puts them before the configured
routes, on every reading of a path (so no spelling of /_hqm/... reaches the app, nor an
app path reaches hqm's); ``hqm routes test`` puts them there too, so it says what the
proxy does.
"""

from __future__ import annotations

from hqm.ingress.openhqm_api import PREFIX as OPENHQM_PREFIX
from hqm.ingress.results_api import API_PREFIX
from hqm.ingress.routes import Route

RESULTS_ROUTE = Route(name="api", action="api", path=API_PREFIX.decode() + "*")
OPENHQM_ROUTE = Route(name="api", action="api", path=OPENHQM_PREFIX.decode() + "*")


def reserved_routes(openhqm_api: bool) -> tuple[Route, ...]:
    """The routes matched before the configured ones (``RouteTable.with_reserved``)."""
    return (RESULTS_ROUTE, OPENHQM_ROUTE) if openhqm_api else (RESULTS_ROUTE,)
