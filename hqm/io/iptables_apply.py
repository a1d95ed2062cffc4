"""Installing and removing the rules of ``hqm.io.iptables_rules``: picks the iptables
backend, runs ``<iptables>-restore --noflush``, and turns every failure into one line.

Backend (``--mode auto``), as Istio's istio-iptables picks it: the variant that already
holds rules in this network namespace (the legacy one first: iptables-nft warns about
legacy tables and cannot see their rules), else nft when installed, else legacy, else
a plain ``iptables``. Rules of both variants in one namespace both apply, so adding
ours with the variant that is not in use would split the rule set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from hqm.io.iptables_rules import (
    HOOK_CHAIN,
    JUMP,
    TABLE,
    Family,
    InboundPlan,
    RuleSet,
    build,
    cleanup_text,
    installed_chains,
    installed_jumps,
)

MODES = ("auto", "nft", "legacy")
#: Seconds to wait for the xtables lock another iptables user holds (kube-proxy, a CNI
#: plugin, a second init container); Istio waits 30 s as well.
LOCK_WAIT_S = 30
#: Upper bound on one iptables process: the lock wait and then some.
COMMAND_TIMEOUT_S = LOCK_WAIT_S + 15
#: Searched after $PATH: the binaries live in /usr/sbin, which a non-login PATH lacks.
SBIN_DIRS = ("/usr/sbin", "/sbin")
#: What iptables prints when the caller lacks CAP_NET_ADMIN (or the lock file).
_DENIED = ("permission denied", "operation not permitted", "you must be root")

#: Runs argv with stdin text, returns (exit code, stdout, stderr).
Runner = Callable[[list[str], str], tuple[int, str, str]]


class IptablesError(Exception):
    """Rules could not be read or written; the message is one line for the user."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Backend:
    """One iptables variant for one family: ``iptables-nft``, ``ip6tables-legacy``, ..."""

    family: Family
    #: "nft", "legacy", or "" for the plain (unsuffixed) binaries.
    variant: str

    @property
    def binary(self) -> str:
        base = self.family.iptables
        return f"{base}-{self.variant}" if self.variant else base

    @property
    def restore(self) -> str:
        return f"{self.binary}-restore"

    @property
    def save(self) -> str:
        return f"{self.binary}-save"


@dataclass(frozen=True, slots=True, kw_only=True)
class IptablesRun:
    """What ``hqm iptables`` does: one plan per family (IPv4, and IPv6 with --ipv6)."""

    plans: tuple[InboundPlan, ...]
    mode: str = "auto"
    dry_run: bool = False
    cleanup: bool = False

    @property
    def rule_sets(self) -> tuple[RuleSet, ...]:
        return tuple(build(plan) for plan in self.plans)


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    backend: Backend
    #: Apply: whether the PREROUTING jump had to be added. Cleanup: jumps removed.
    jumps: int
    #: Cleanup: our chains that existed and were removed.
    chains: tuple[str, ...] = ()


def find(name: str) -> str | None:
    path = os.environ.get("PATH", os.defpath)
    return shutil.which(name, path=os.pathsep.join((path, *SBIN_DIRS)))


def run_command(argv: list[str], stdin: str = "") -> tuple[int, str, str]:
    """Runs one iptables binary (found on $PATH or in /usr/sbin, /sbin)."""
    path = find(argv[0])
    if path is None:
        raise IptablesError(f"{argv[0]} not found (install the iptables package)")
    try:
        done = subprocess.run(
            [path, *argv[1:]],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise IptablesError(
            f"{argv[0]} did not finish within {COMMAND_TIMEOUT_S} s (xtables lock held?)"
        ) from None
    except OSError as exc:
        raise IptablesError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    return done.returncode, done.stdout, done.stderr


def _first_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("#", "Try `"))]
    return (useful or lines or ["no message"])[0]


def _denied(stderr: str) -> bool:
    return any(text in stderr.lower() for text in _DENIED)


def _fail(argv: list[str], code: int, stderr: str) -> IptablesError:
    if _denied(stderr):
        return IptablesError(
            f"{argv[0]}: permission denied: hqm iptables needs CAP_NET_ADMIN "
            "(run it as root, e.g. in an init container with NET_ADMIN)"
        )
    return IptablesError(f"{argv[0]} failed (exit {code}): {_first_line(stderr)}")


def _checked(run: Runner, argv: list[str], stdin: str = "") -> str:
    code, out, err = run(argv, stdin)
    if code != 0:
        raise _fail(argv, code, err)
    return out


def _rule_count(run: Runner, backend: Backend) -> int | None:
    """Rules of this variant in this namespace (any table); None when it is not usable
    here (no binary, no kernel support). Permission problems are raised."""
    if any(find(name) is None for name in (backend.save, backend.restore, backend.binary)):
        return None
    code, out, err = run([backend.save], "")
    if code != 0:
        if _denied(err):
            raise _fail([backend.save], code, err)
        return None
    return sum(1 for line in out.splitlines() if line.startswith("-A "))


def choose_backend(mode: str, family: Family, *, run: Runner = run_command) -> Backend:
    """The variant to use for ``family``: forced by ``mode`` (nft, legacy) or detected."""
    if mode in ("nft", "legacy"):
        backend = Backend(family=family, variant=mode)
        missing = [name for name in (backend.restore, backend.binary) if find(name) is None]
        if missing:
            raise IptablesError(
                f"--mode {mode}: {missing[0]} not found (install the iptables package)"
            )
        return backend
    if mode != "auto":
        raise IptablesError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    legacy, nft = (Backend(family=family, variant=v) for v in ("legacy", "nft"))
    counts = {backend: _rule_count(run, backend) for backend in (legacy, nft)}
    for backend in (legacy, nft):  # one that already holds rules
        if counts[backend]:
            return backend
    for backend in (nft, legacy):  # else nft, else legacy: whichever is usable
        if counts[backend] is not None:
            return backend
    plain = Backend(family=family, variant="")
    if find(plain.restore) is not None and find(plain.binary) is not None:
        return plain
    raise IptablesError(
        f"no usable {legacy.binary} or {nft.binary} found (install the iptables package)"
    )


def _wait() -> str:
    return f"--wait={LOCK_WAIT_S}"


def jump_installed(backend: Backend, *, run: Runner = run_command) -> bool:
    """Whether nat PREROUTING already jumps to our chain (``-C``)."""
    argv = [backend.binary, "-t", TABLE, "-C", HOOK_CHAIN, *JUMP.spec, _wait()]
    code, _out, err = run(argv, "")
    if code != 0 and _denied(err):
        raise _fail(argv, code, err)
    # 1: no such rule; 2: our chain does not exist yet. Anything else will show again,
    # with its message, when the restore runs.
    return code == 0


def apply(rules: RuleSet, backend: Backend, *, run: Runner = run_command) -> Outcome:
    """Installs ``rules``: our chains re-created with exactly these rules, and the
    PREROUTING jump added when it is missing. Running it again changes nothing."""
    add_jump = not jump_installed(backend, run=run)
    text = rules.restore_text(with_jump=add_jump)
    _checked(run, [backend.restore, "--noflush", _wait()], text)
    return Outcome(backend=backend, jumps=int(add_jump))


def cleanup(backend: Backend, *, run: Runner = run_command) -> Outcome:
    """Removes exactly what ``apply`` installs (every PREROUTING jump to our chain, then
    our chains); nothing when nothing is installed."""
    saved = _checked(run, [backend.save, "-t", TABLE])
    jumps, chains = installed_jumps(saved), installed_chains(saved)
    if jumps or chains:
        _checked(run, [backend.restore, "--noflush", _wait()], cleanup_text(jumps))
    return Outcome(backend=backend, jumps=len(jumps), chains=chains)


def describe(plan: InboundPlan, outcome: Outcome) -> str:
    """One line on what ``apply`` left installed."""
    kept = ",".join(str(port) for port in plan.never_redirected)
    if plan.exclude_ports.ranges:
        kept += f",{plan.exclude_ports}"
    jump = "added" if outcome.jumps else "already present"
    return (
        f"{plan.family} ({outcome.backend.binary}): tcp ports {str(plan.redirect_ports) or 'all'}"
        f" -> {plan.proxy_port}, except {kept}; PREROUTING jump {jump}"
    )


def describe_cleanup(family: Family, outcome: Outcome) -> str:
    """One line on what ``cleanup`` removed."""
    if not outcome.jumps and not outcome.chains:
        return f"{family} ({outcome.backend.binary}): nothing installed"
    return (
        f"{family} ({outcome.backend.binary}): removed chains {','.join(outcome.chains) or 'none'}"
        f" and {outcome.jumps} PREROUTING jump(s)"
    )
