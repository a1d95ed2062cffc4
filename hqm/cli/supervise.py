"""``--processes N`` (N > 1): this process supervises N children, one core each.

Each child is the same command line with ``--processes 1`` and, in its environment,
``HQM_PROCESS_INDEX`` (0 to N-1), which it adds to every log line as
``process_index``. Per child:

- ``hqm proxy``: ``--listen`` on the port the supervisor reserved (bound, never
  listening, SO_REUSEPORT: port 0 resolves once, a restarted child gets the same port,
  nobody else takes it meanwhile); every child listens on it with SO_REUSEPORT and
  the kernel spreads connections among them.
- both: ``--admin`` on the admin port + index (port 0: each its own free port;
  ``off``: none), so each child's /metrics is its own scrape target and no series of
  two processes is ever mixed; ``--consumer`` (worker) is the consumer + "-" + index.

A child that exits 0 is done (a burst worker's empty queue, or stopped on purpose);
one that fails or is killed is restarted after a backoff, at most MAX_RESTARTS times
within RESTART_WINDOW_S, after which the supervisor stops them all. SIGTERM/SIGINT
are forwarded to every child, each drains within ``--drain-timeout``; the
supervisor exits with the worst (highest) exit code of the children's last runs,
128 + N for one killed by signal N.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass

import click

from hqm.cli.common import UsageFailure
from hqm.config.unknown_env import PROCESS_INDEX
from hqm.io.address import Address

log = logging.getLogger("hqm.supervise")

#: The environment variable naming a child's index (set by the supervisor only).
CHILD_ENV = PROCESS_INDEX
#: Restarts of one child within RESTART_WINDOW_S beyond which the supervisor gives up:
#: a child that cannot stay up (its admin port taken, say) would otherwise loop forever.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
#: First restart delay, doubled with each restart in the window, up to the cap: a
#: crash right at start costs little CPU, a one-off crash is mended at once.
BACKOFF_FIRST_S = 0.1
BACKOFF_CAP_S = 5.0
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def child_index() -> int | None:
    """This process's index when a supervisor started it, else None."""
    raw = os.environ.get(CHILD_ENV, "")
    return int(raw) if raw.isdigit() else None


class _ChildField(logging.Filter):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.process_index = self.index
        return True


def mark_child_logs() -> int | None:
    """In a child: every log line (access log included) names its index."""
    index = child_index()
    if index is not None:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_ChildField(index))
    return index


@dataclass(frozen=True, slots=True, kw_only=True)
class Children:
    """What to start: ``count`` children of the command line ``base``."""

    count: int
    base: tuple[str, ...]
    #: The admin listener of child 0 (None: ``--admin off``).
    admin: Address | None
    #: ``hqm proxy``: the reserved port every child listens on.
    listen: Address | None = None
    #: ``hqm worker``: child i consumes as ``consumer-i``.
    consumer: str | None = None

    def argv(self, index: int) -> list[str]:
        args = [*self.base, "--processes", "1", "--admin", _admin(self.admin, index)]
        if self.listen is not None:
            args += ["--listen", str(self.listen)]
        if self.consumer is not None:
            args += ["--consumer", f"{self.consumer}-{index}"]
        return args


def _admin(admin: Address | None, index: int) -> str:
    if admin is None:
        return "off"
    return str(Address(admin.host, admin.port + index if admin.port else 0))


def command_line() -> tuple[str, ...]:
    """This command as a child runs it (``python -m hqm`` with the same arguments)."""
    return (sys.executable, "-m", "hqm", *sys.argv[1:])


def check_admin(admin: Address | None, count: int) -> None:
    if admin is not None and admin.port and admin.port + count - 1 > 65535:
        raise UsageFailure(f"--admin {admin}: ports up to +{count - 1} needed, past 65535")


def reserve(address: Address) -> tuple[socket.socket, Address]:
    """Bind (not listen) ``address`` with SO_REUSEPORT; the port resolved."""
    try:
        family, _, _, _, where = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:  # as asyncio binds it: IPv6 only
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(where)
    except OSError as exc:
        raise click.ClickException(
            f"--listen {address}: cannot listen: {exc.strerror or exc}"
        ) from None
    return sock, Address(address.host, sock.getsockname()[1])


def exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


class Supervisor:
    def __init__(self, children: Children) -> None:
        self.children = children
        self.stopping = asyncio.Event()
        self.running: dict[int, asyncio.subprocess.Process] = {}

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if not self.stopping.is_set():
            log.info("stopping children", extra={"signal": sig.name})
        self.stopping.set()
        for proc in self.running.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in _SIGNALS:
            loop.add_signal_handler(sig, self.stop, sig)
        log.info(
            "supervising",
            extra={"processes": self.children.count, "listen": str(self.children.listen)},
        )
        slots = [loop.create_task(self.keep(index)) for index in range(self.children.count)]
        codes = await asyncio.gather(*slots)
        worst = max(codes)
        log.info("supervisor stopped", extra={"exit_codes": codes, "exit_code": worst})
        return worst

    async def keep(self, index: int) -> int:
        """Child ``index`` until it is done; its last exit code."""
        restarts: deque[float] = deque()
        env = {**os.environ, CHILD_ENV: str(index)}
        while True:
            proc = await asyncio.create_subprocess_exec(
                *self.children.argv(index), env=env, stdin=subprocess.DEVNULL
            )
            self.running[index] = proc
            if self.stopping.is_set():  # a stop that came while it was starting
                proc.send_signal(signal.SIGTERM)
            log.info("child started", extra={"process_index": index, "pid": proc.pid})
            code = exit_code(await proc.wait())
            del self.running[index]
            fields = {"process_index": index, "pid": proc.pid, "exit_code": code}
            log.log(logging.INFO if code == 0 else logging.WARNING, "child exited", extra=fields)
            if code == 0 or self.stopping.is_set():
                return code
            now = time.monotonic()
            restarts.append(now)
            while restarts[0] <= now - RESTART_WINDOW_S:
                restarts.popleft()
            if len(restarts) > MAX_RESTARTS:
                log.error(
                    "child keeps failing: stopping all",
                    extra={**fields, "restarts": MAX_RESTARTS, "within_s": RESTART_WINDOW_S},
                )
                self.stop()
                return code
            delay = min(BACKOFF_CAP_S, BACKOFF_FIRST_S * 2 ** (len(restarts) - 1))
            log.warning(
                "restarting child",
                extra={**fields, "delay_s": delay, "restarts_in_window": len(restarts)},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
            if self.stopping.is_set():
                return code


def supervise(children: Children, reserved: socket.socket | None = None) -> None:
    """Run the children until they are done; exit with the worst exit code."""
    try:
        code = asyncio.run(Supervisor(children).run())
    finally:
        if reserved is not None:
            reserved.close()
    click.get_current_context().exit(code)
