"""The nat rules of transparent mode, as data: which inbound TCP connections the kernel
redirects to ``hqm proxy``, rendered for ``iptables-restore --noflush``.

Pure: no processes, no files (``hqm.io.iptables_apply`` runs the binaries). The layout
follows the sidecar meshes (Istio's ``ISTIO_INBOUND``/``ISTIO_IN_REDIRECT``, Linkerd's
``PROXY_INIT_REDIRECT``), in chains of our own so that nothing else is touched:

    nat PREROUTING  -p tcp -j HQM_INBOUND
    HQM_INBOUND     -p tcp --dport <proxy port> -j RETURN      always
                    -p tcp --dport <admin port> -j RETURN      always
                    -p tcp --dport <excluded>   -j RETURN      per --exclude-ports entry
                    -p tcp [--dport <port>] -j HQM_IN_REDIRECT per --ports entry (none: all)
    HQM_IN_REDIRECT -p tcp -j REDIRECT --to-ports <proxy port>

With ``--noflush``, declaring a chain (``:HQM_INBOUND - [0:0]``) creates it, or empties
it when it exists, in the same atomic commit that fills it: applying twice leaves one
copy of every rule. The PREROUTING jump lives in a chain we do not own, so it is only
added when missing (the caller checks with ``-C``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

TABLE = "nat"
#: Where inbound packets pass before routing: the hook our jump sits in.
HOOK_CHAIN = "PREROUTING"
INBOUND_CHAIN = "HQM_INBOUND"
REDIRECT_CHAIN = "HQM_IN_REDIRECT"
#: Ours, in the order they are declared; deleted in the same order (the first refers
#: to the second).
CHAINS = (INBOUND_CHAIN, REDIRECT_CHAIN)
MIN_PORT, MAX_PORT = 1, 65535


class Family(StrEnum):
    IPV4 = "IPv4"
    IPV6 = "IPv6"

    @property
    def iptables(self) -> str:
        """The command family's name: ``iptables`` or ``ip6tables``."""
        return "ip6tables" if self is Family.IPV6 else "iptables"


@dataclass(frozen=True, slots=True)
class PortRange:
    first: int
    last: int

    def __str__(self) -> str:
        """As the flags write it: ``8080`` or ``9000-9005``."""
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"

    @property
    def dport(self) -> str:
        """As iptables writes it: ``8080`` or ``9000:9005``."""
        return str(self.first) if self.first == self.last else f"{self.first}:{self.last}"


@dataclass(frozen=True, slots=True)
class PortSet:
    """Ports in ascending, non-overlapping ranges (``parse_ports`` merges)."""

    ranges: tuple[PortRange, ...] = ()

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.ranges)


def _port(text: str, original: str) -> int:
    if not text.isdigit() or not MIN_PORT <= int(text) <= MAX_PORT:
        where = f" in {original!r}" if text != original.strip() else ""
        raise ValueError(f"port must be {MIN_PORT}-{MAX_PORT}, got {text!r}{where}")
    return int(text)


def parse_ports(text: str) -> PortSet:
    """``8080,8443,9000-9005`` (``9000:9005`` too; spaces around items allowed) as a
    PortSet; an empty text is the empty set. ValueError names the bad item."""
    items = [item.strip() for item in text.split(",")]
    if items == [""]:
        return PortSet()
    ranges = []
    for item in items:
        if not item:
            raise ValueError(f"empty item in {text!r}")
        separator = "-" if "-" in item else ":"
        first_text, sep, last_text = item.partition(separator)
        first = _port(first_text.strip(), text)
        last = _port(last_text.strip(), text) if sep else first
        if first > last:
            raise ValueError(f"range {item!r} runs backwards in {text!r}")
        ranges.append(PortRange(first, last))
    return merge(ranges)


def merge(ranges: list[PortRange] | tuple[PortRange, ...]) -> PortSet:
    """Sorted, overlapping and adjacent ranges joined: one canonical form per set."""
    out: list[PortRange] = []
    for r in sorted(ranges, key=lambda r: (r.first, r.last)):
        if out and r.first <= out[-1].last + 1:
            out[-1] = PortRange(out[-1].first, max(out[-1].last, r.last))
        else:
            out.append(r)
    return PortSet(tuple(out))


@dataclass(frozen=True, slots=True, kw_only=True)
class InboundPlan:
    """What to redirect: inbound TCP to ``redirect_ports`` (empty: every port) goes to
    ``proxy_port``, except ``exclude_ports`` and, always, the proxy's own listen and
    admin ports (a connection to the proxy must not loop back into it)."""

    proxy_port: int
    admin_port: int
    redirect_ports: PortSet = PortSet()
    exclude_ports: PortSet = PortSet()
    family: Family = Family.IPV4

    @property
    def never_redirected(self) -> tuple[int, ...]:
        """The always-excluded ports, proxy first, without repeats."""
        return tuple(dict.fromkeys((self.proxy_port, self.admin_port)))


@dataclass(frozen=True, slots=True)
class Rule:
    chain: str
    spec: tuple[str, ...]

    def line(self, command: str = "-A") -> str:
        return " ".join((command, self.chain, *self.spec))


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleSet:
    family: Family
    #: The rules of our chains, in order.
    rules: tuple[Rule, ...]
    #: The one rule outside our chains: nat PREROUTING's jump to HQM_INBOUND.
    jump: Rule

    def restore_text(self, *, with_jump: bool = True) -> str:
        """Input for ``iptables-restore --noflush``: (re)creates our chains with these
        rules; with ``with_jump`` also appends the PREROUTING jump."""
        lines = [f"*{TABLE}", *(f":{chain} - [0:0]" for chain in CHAINS)]
        lines += [rule.line() for rule in self.rules]
        if with_jump:
            lines.append(self.jump.line())
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"

    def cleanup_text(self) -> str:
        """Cleanup of what ``restore_text`` installs (the jump assumed present)."""
        return cleanup_text((self.jump.line(),))


def _tcp(*spec: str) -> tuple[str, ...]:
    return ("-p", "tcp", *spec)


#: PREROUTING's jump into our chain, for TCP only (the proxy speaks nothing else).
JUMP = Rule(HOOK_CHAIN, _tcp("-j", INBOUND_CHAIN))


def build(plan: InboundPlan) -> RuleSet:
    """The rules for ``plan``."""
    rules = [Rule(REDIRECT_CHAIN, _tcp("-j", "REDIRECT", "--to-ports", str(plan.proxy_port)))]
    for port in plan.never_redirected:
        rules.append(Rule(INBOUND_CHAIN, _tcp("--dport", str(port), "-j", "RETURN")))
    for excluded in plan.exclude_ports.ranges:
        rules.append(Rule(INBOUND_CHAIN, _tcp("--dport", excluded.dport, "-j", "RETURN")))
    if plan.redirect_ports.ranges:
        for redirected in plan.redirect_ports.ranges:
            rules.append(
                Rule(INBOUND_CHAIN, _tcp("--dport", redirected.dport, "-j", REDIRECT_CHAIN))
            )
    else:
        rules.append(Rule(INBOUND_CHAIN, _tcp("-j", REDIRECT_CHAIN)))
    return RuleSet(family=plan.family, rules=tuple(rules), jump=JUMP)


# --- what is installed, from iptables-save output ----------------------------------
def installed_jumps(save_text: str) -> tuple[str, ...]:
    """The nat PREROUTING rules (``-A PREROUTING ...`` lines) that jump to our chain,
    whatever their matches: each is removed by cleanup."""
    target = ("-j", INBOUND_CHAIN)
    found = []
    for line in _nat_lines(save_text):
        words = line.split()
        if words[:2] == ["-A", HOOK_CHAIN] and any(
            tuple(words[i : i + 2]) == target for i in range(len(words) - 1)
        ):
            found.append(line)
    return tuple(found)


def installed_chains(save_text: str) -> tuple[str, ...]:
    """Our chains that exist in the nat table."""
    declared = {line[1:].split()[0] for line in _nat_lines(save_text) if line.startswith(":")}
    return tuple(chain for chain in CHAINS if chain in declared)


def _nat_lines(save_text: str) -> list[str]:
    """The lines of the ``*nat`` table in iptables-save output."""
    lines, inside = [], False
    for raw in save_text.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            inside = line == f"*{TABLE}"
        elif line == "COMMIT":
            inside = False
        elif inside and line and not line.startswith("#"):
            lines.append(line)
    return lines


def cleanup_text(jumps: tuple[str, ...]) -> str:
    """Input for ``iptables-restore --noflush`` that removes exactly ours: the given
    PREROUTING jumps (``-A`` lines as iptables-save prints them), then our chains
    (declaring one empties it, or creates it empty, so ``-X`` works either way)."""
    lines = [f"*{TABLE}"]
    lines += ["-D" + jump.removeprefix("-A") for jump in jumps]
    lines += [f":{chain} - [0:0]" for chain in CHAINS]
    lines += [f"-X {chain}" for chain in CHAINS]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"
