"""Shared bench helpers: processes (pinned, awaited), wrk, CPU/RSS probes, reporting.

Placement on the 2-core machine: the server under test on core 0 (SERVER_CORE), the
load generator and helpers (Redis, the app) on core 1 (LOAD_CORE), so the measured
process has a core to itself, as the ceiling server has.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

# reporting lives in bench/report.py; re-exported for the benches that use common as c
from report import BENCH as BENCH
from report import RESULTS as RESULTS
from report import command_line as command_line
from report import finish as finish
from report import fmt as fmt
from report import machine as machine
from report import median as median
from report import median_rows as median_rows
from report import table as table
from report import write_json as write_json

PY = sys.executable
SERVER_CORE, LOAD_CORE = 0, 1
TICK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
_LIVE: list[Proc] = []
TMP = Path(tempfile.mkdtemp(prefix="hqm-bench-"))


def epoch_of(ts: str) -> float:
    """A log line's ``ts`` (RFC 3339 UTC, hqm.ops.logs) as epoch seconds."""
    return datetime.fromisoformat(ts).timestamp()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def raise_nofile(limit: int = 20000) -> int:
    """Raise this process's fd limit (children inherit it); returns the new soft limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return new


def hqm_cmd() -> list[str]:
    script = Path(PY).with_name("hqm")
    return [str(script)] if script.exists() else [PY, "-m", "hqm"]


def hqm_command(source: Path | None) -> list[str]:
    """This hqm, or the one of the checkout ``source`` (``--baseline`` of the benches)."""
    return hqm_cmd() if source is None else ["env", f"PYTHONPATH={source}", PY, "-m", "hqm"]


class Proc:
    """A child process pinned to one core, its stderr in a log file."""

    def __init__(self, name: str, argv: Sequence[str], core: int | None) -> None:
        self.name = name
        self.log = TMP / f"{name}-{time.monotonic_ns()}.log"
        prefix = ["taskset", "-c", str(core)] if core is not None else []
        with open(self.log, "wb") as err:
            self.popen = subprocess.Popen(
                [*prefix, *argv], stdout=subprocess.DEVNULL, stderr=err, cwd=BENCH
            )
        self.pid = self.popen.pid  # taskset execs the command: same pid
        self.ready_at = self.ready_ts = 0.0
        _LIVE.append(self)

    def log_lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    def wait_log(self, marker: str, timeout: float = 20.0) -> dict:
        """Wait for a JSON log line whose msg is ``marker``; returns it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_lines():
                with contextlib.suppress(ValueError):
                    if marker in line and json.loads(line).get("msg") == marker:
                        self.ready_at = time.monotonic()
                        self.ready_ts = epoch_of(json.loads(line)["ts"])  # as logged
                        return json.loads(line)
            self._check_alive()
            time.sleep(0.01)
        raise TimeoutError(f"{self.name}: no {marker!r} in {timeout}s:\n{self.tail()}")

    def wait_port(self, port: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                self.ready_at = time.monotonic()
                return
            self._check_alive()
            time.sleep(0.02)
        raise TimeoutError(f"{self.name}: port {port} not open in {timeout}s:\n{self.tail()}")

    def _check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited {self.popen.returncode}:\n{self.tail()}")

    def tail(self, n: int = 20) -> str:
        return "\n".join(self.log_lines()[-n:])

    def cpu_s(self) -> float:
        """utime + stime so far (the process's own threads, not children)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        with contextlib.suppress(ValueError):
            _LIVE.remove(self)
        return self.popen.returncode


@atexit.register
def _cleanup() -> None:
    for proc in list(_LIVE):
        with contextlib.suppress(Exception):
            proc.stop(5)
    shutil.rmtree(TMP, ignore_errors=True)


# --- the parts -----------------------------------------------------------------
def start_redis(core: int | None = LOAD_CORE, *, aof: bool = False) -> tuple[Proc, str]:
    port = free_port()
    data = Path(tempfile.mkdtemp(dir=TMP, prefix="redis-"))
    persist = (
        ["--appendonly", "yes", "--appendfsync", "everysec"] if aof else ["--appendonly", "no"]
    )
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)]
    argv += ["--save", "", *persist, "--logfile", ""]
    proc = Proc("redis", argv, core)
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2) as s:
            s.sendall(b"PING\r\n")
            if s.recv(64).startswith(b"+PONG"):
                break
        if time.monotonic() > deadline:
            raise TimeoutError(f"redis on {port} did not start:\n{proc.tail()}")
        time.sleep(0.02)
    proc.port = port
    return proc, f"redis://127.0.0.1:{port}/0"


def redis_ping(port: int, timeout: float = 0.2) -> bool:
    """True once redis-server on ``port`` answers PONG (not while loading its AOF)."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout) as s:
        s.sendall(b"PING\r\n")
        return s.recv(64).startswith(b"+PONG")
    return False


def start_redis_at(
    port: int, data: Path, core: int | None = None, *, appendfsync: str = "always"
) -> Proc:
    """redis-server with AOF on a given port and dir, so that a restart finds the same
    data (``--appendfsync always``: every acknowledged write is on disk first)."""
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)]
    argv += ["--save", "", "--appendonly", "yes", "--appendfsync", appendfsync, "--logfile", ""]
    proc = Proc("redis", argv, core)
    deadline = time.monotonic() + 30
    while not redis_ping(port):
        proc._check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"redis on {port} did not start:\n{proc.tail()}")
        time.sleep(0.02)
    proc.ready_at = time.monotonic()
    proc.port = port
    return proc


def kill(proc: Proc, sig: int = signal.SIGKILL, timeout: float = 15.0) -> int | None:
    """Send ``sig`` (SIGKILL by default: a crash) and reap; the exit code."""
    if proc.popen.poll() is None:
        proc.popen.send_signal(sig)
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait()
    with contextlib.suppress(ValueError):
        _LIVE.remove(proc)
    return proc.popen.returncode


def start_app(core: int | None = LOAD_CORE, *, status: int = 200, engine: str = "h11") -> Proc:
    """bench/ceiling.py as a trivial fast app (or, with status 202, as the ceiling);
    ``engine`` h11 or httptools."""
    port = free_port()
    argv = [PY, "ceiling.py", "--port", str(port), "--status", str(status), "--engine", engine]
    proc = Proc("app", argv, core)
    proc.wait_port(port)
    proc.port = port
    return proc


def start_capped_app(core: int | None, cap: int, service_s: float) -> Proc:
    port = free_port()
    argv = [PY, "capped_app.py", "--port", str(port), "--cap", str(cap)]
    proc = Proc("capped-app", [*argv, "--service", str(service_s)], core)
    proc.wait_port(port)
    proc.port = port
    return proc


def start_proxy(
    core: int | None,
    upstream: int,
    redis_url: str | None = None,
    *extra: str,
    source: Path | None = None,
) -> Proc:
    """``source``: a checkout of another version of hqm, run instead of this one."""
    port, admin = free_port(), free_port()
    argv = [*hqm_command(source), "proxy", "--listen", f"127.0.0.1:{port}", "--admin"]
    argv += [f"127.0.0.1:{admin}", "--upstream", f"127.0.0.1:{upstream}", *extra]
    if redis_url:
        argv += ["--redis", redis_url]
    proc = Proc("proxy", argv, core)
    proc.wait_log("listening")
    proc.port, proc.admin = port, admin
    return proc


def worker_argv(
    redis_url: str,
    upstream: int,
    concurrency: int,
    *extra: str,
    burst: bool = False,
    source: Path | None = None,
) -> list:
    """``source``: a checkout of another version of hqm, run instead of this one."""
    argv = [*hqm_command(source), "worker", "--redis", redis_url]
    argv += ["--upstream", f"127.0.0.1:{upstream}"]
    argv += ["--admin", "127.0.0.1:0", "--concurrency", str(concurrency), *extra]
    return [*argv, "--burst"] if burst else argv


def start_worker(
    core: int | None, redis_url: str, upstream: int, concurrency: int, *, burst: bool = False
) -> Proc:
    proc = Proc("worker", worker_argv(redis_url, upstream, concurrency, burst=burst), core)
    proc.wait_log("worker started")
    return proc


def http_get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.read()


def scrape(admin_port: int) -> dict[str, float]:
    """Prometheus text from an admin port as {'name{labels}': value}."""
    text = http_get(admin_port, "/metrics").decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


# --- wrk -------------------------------------------------------------------------
LUA_POST = """
wrk.method = "POST"
wrk.body = string.rep("x", {body})
wrk.headers["Content-Type"] = "application/octet-stream"
"""

#: Appended to LUA_POST: every thread writes the id of each 202 to ledger-<n>.txt.
LUA_LEDGER = """
local counter, threads = 0, {{}}
function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
  table.insert(threads, thread)
end
function init(args)
  ledger = io.open("{ledger}-" .. tid .. ".txt", "w")
  statuses = {{}}
end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 202 then
    ledger:write(body:match('"id":"(%x+)"'), "\\n")
  end
end
"""


def lua_script(body: int = 1024, ledger: Path | None = None) -> Path:
    text = LUA_POST.format(body=body)
    if ledger is not None:
        text += LUA_LEDGER.format(ledger=ledger)
    path = TMP / f"post-{body}-{time.monotonic_ns()}.lua"
    path.write_text(text)
    return path


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(number) * _UNIT_MS[unit]


def parse_wrk(out: str) -> dict:
    """req/s, p50/p99 (ms), requests, non-2xx/3xx and socket errors from wrk --latency."""
    res = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    res["requests"] = int(re.search(r"(\d+) requests in", out).group(1))
    for pct in ("50", "99"):
        res[f"p{pct}_ms"] = _ms(re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    sock = re.search(r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = sum(map(int, sock.groups())) if sock else 0
    return res


def wrk(
    port: int,
    duration: float,
    *,
    connections: int = 64,
    script: Path | None = None,
    core: int | None = LOAD_CORE,
    path: str = "/",
) -> dict:
    script = script or lua_script()
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "-s",
        str(script),
    ]
    argv = [*(["taskset", "-c", str(core)] if core is not None else []), *argv]
    out = subprocess.run(
        [*argv, f"http://127.0.0.1:{port}{path}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=duration + 60,
    )
    return parse_wrk(out.stdout)


def measured(procs: dict[str, Proc], run: Callable[[], dict], per: str = "requests") -> dict:
    """Run ``run()`` and add each process's CPU µs per unit of ``per`` and its RSS after."""
    before = {name: p.cpu_s() for name, p in procs.items()}
    res = run()
    count = max(res[per], 1)
    for name, p in procs.items():
        res[f"{name}_cpu_us"] = (p.cpu_s() - before[name]) * 1e6 / count
        res[f"{name}_rss_mib"] = p.rss_mib()
    return res
