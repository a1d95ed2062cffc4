"""The options of ``hqm iptables``: the nat rules of transparent mode (an init
container with NET_ADMIN runs ``hqm iptables --ports 8080 --proxy-port 8000``)."""

from __future__ import annotations

from typing import Any

from hqm.config.options import Option, boolean, choice, integer
from hqm.config.tables import CONFIG, PROXY, Command
from hqm.io.address import parse_listen
from hqm.io.iptables_apply import MODES
from hqm.io.iptables_rules import MAX_PORT, MIN_PORT, PortSet, parse_ports


def port_set(raw: Any) -> PortSet:
    """``8080,8443,9000-9005``; empty = none given."""
    if not isinstance(raw, str):
        raise ValueError(f'expected a string like "8080,9000-9005", got {raw!r}')
    return parse_ports(raw)


def _shown(empty: str) -> Any:
    return lambda ports: str(ports) or empty


#: The proxy's own defaults (``--listen :8000``, ``--admin 127.0.0.1:9090``): one copy.
PROXY_PORT = parse_listen(PROXY.option("listen").default).port
ADMIN_PORT = parse_listen(PROXY.option("admin").default).port

IPTABLES = Command(
    "iptables",
    (
        Option(
            "ports",
            "ports",
            "",
            "App ports whose inbound TCP is redirected to the proxy: 8080,9000-9005; "
            "empty = every port.",
            port_set,
            default_text="all",
            display=_shown("all"),
        ),
        Option(
            "exclude-ports",
            "ports",
            "",
            "Inbound TCP ports never redirected (--proxy-port and --admin-port never are).",
            port_set,
            default_text="none",
            display=_shown("none"),
        ),
        Option(
            "proxy-port",
            "int",
            PROXY_PORT,
            "The port hqm proxy listens on (its --listen).",
            integer(low=MIN_PORT, high=MAX_PORT),
        ),
        Option(
            "admin-port",
            "int",
            ADMIN_PORT,
            "The proxy's admin port (its --admin).",
            integer(low=MIN_PORT, high=MAX_PORT),
        ),
        Option(
            "ipv6",
            "bool",
            False,
            "Also write the ip6tables rules.",
            boolean,
            switch=True,
        ),
        Option(
            "mode",
            "choice",
            "auto",
            "iptables backend: auto (the one already holding rules, else nft, else legacy), "
            "nft or legacy.",
            choice(*MODES),
        ),
        Option(
            "dry-run",
            "bool",
            False,
            "Print the iptables-restore input for each family and change nothing.",
            boolean,
            switch=True,
        ),
        Option(
            "cleanup",
            "bool",
            False,
            "Remove hqm's rules (the PREROUTING jump, chains HQM_INBOUND and HQM_IN_REDIRECT).",
            boolean,
            switch=True,
        ),
        CONFIG,
    ),
)
