"""A real ``redis-server`` for tests: free port, temp dir, start/stop/kill/restart.

Not a conftest: test modules import ``RedisServer`` and the ``redis_server`` fixture.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

READY_TIMEOUT_S = 10.0


def free_port(below: int = 65536) -> int:
    """A free port; ``below`` leaves room for a cluster bus port (port + 10000)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port < below:
            return port
        # the ephemeral range is mostly above 55535: pick from a lower band instead
        for candidate in range(20000 + port % 20000, below):
            with socket.socket() as sock, contextlib.suppress(OSError):
                sock.bind(("127.0.0.1", candidate))
                return candidate


def command(port: int, *args: str, timeout: float = 1.0) -> bytes:
    """Send one command (inline protocol) and return the raw reply bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(" ".join(args).encode() + b"\r\n")
        data = b""
        while not _complete(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def _complete(data: bytes) -> bool:
    return _reply_end(data, 0) is not None


def _reply_end(data: bytes, pos: int) -> int | None:
    """Where the RESP2 reply starting at ``pos`` ends, or None while incomplete."""
    eol = data.find(b"\r\n", pos)
    if eol < 0:
        return None
    kind, value, pos = data[pos : pos + 1], data[pos + 1 : eol], eol + 2
    if kind == b"$" and value != b"-1":
        end = pos + int(value) + 2
        return end if len(data) >= end else None
    if kind == b"*" and value != b"-1":
        for _ in range(int(value)):
            end = _reply_end(data, pos)
            if end is None:
                return None
            pos = end
    return pos


class RedisServer:
    """One redis-server process; ``restart()`` keeps port and dir (AOF survives)."""

    def __init__(self, appendonly: bool = False, *, cluster: bool = False) -> None:
        self.appendonly = appendonly
        self.cluster = cluster
        self.port = free_port(55535 if cluster else 65536)
        self.dir = Path(tempfile.mkdtemp(prefix="hqm-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server not found on PATH (apt-get install redis-server)")
        args = [
            exe,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            # kill -9 tests need every acknowledged write on disk, not within a second
            "--appendfsync", "always",
            "--protected-mode", "no",
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready()
        if self.cluster:
            self._wait_cluster()
        return self

    def _wait_cluster(self) -> None:
        """A one-node cluster owning every slot (kept in nodes.conf across restarts)."""
        if b"cluster_state:ok" not in command(self.port, "CLUSTER", "INFO"):
            command(self.port, "CLUSTER", "ADDSLOTSRANGE", "0", "16383")
        deadline = time.monotonic() + READY_TIMEOUT_S
        while b"cluster_state:ok" not in command(self.port, "CLUSTER", "INFO"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster not ok in {READY_TIMEOUT_S}s: {self.log()}")
            time.sleep(0.02)  # polling interval

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited {self.proc.returncode}: {self.log()}")
            with contextlib.suppress(OSError):
                if command(self.port, "PING").startswith(b"+PONG"):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server not ready in {READY_TIMEOUT_S}s: {self.log()}")
            time.sleep(0.02)  # polling interval

    def log(self) -> str:
        path = self.dir / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self) -> None:
        """Graceful: SIGTERM makes redis-server flush the AOF and exit."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final flush."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server.start()
    finally:
        server.cleanup()


class RedisSentinel:
    """A ``redis-server --sentinel`` monitoring one master as ``master_name``."""

    def __init__(self, master: RedisServer, master_name: str = "mymaster") -> None:
        self.master = master
        self.master_name = master_name
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="hqm-sentinel-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.master_name}/0"

    def start(self) -> RedisSentinel:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server not found on PATH (apt-get install redis-server)")
        conf = self.dir / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"logfile {self.dir / 'sentinel.log'}\n"
            f"sentinel monitor {self.master_name} 127.0.0.1 {self.master.port} 1\n"
        )
        self.proc = subprocess.Popen(
            [exe, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sentinel exited {self.proc.returncode}")
            with contextlib.suppress(OSError):
                reply = command(self.port, "SENTINEL", "get-master-addr-by-name", self.master_name)
                if str(self.master.port).encode() in reply:
                    return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"sentinel not ready in {READY_TIMEOUT_S}s")
            time.sleep(0.02)  # polling interval

    def cleanup(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
