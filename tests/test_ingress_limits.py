"""Connection exhaustion: past --max-connections a client gets 503 and a close at
once, the admin listener stays reachable, and a connection that never sends a byte is
closed at --header-timeout (not kept for the keep-alive idle timeout)."""

from __future__ import annotations

import socket

from hqm.io.fdlimit import RESERVE_MIN, connection_limit
from tests.support import proxy, request

SILENT = 2000
LIMIT = 900


def test_the_default_limit_leaves_a_reserve_of_the_descriptors():
    assert connection_limit(1024) == 1024 - 102
    assert connection_limit(256) == 256 - RESERVE_MIN
    assert connection_limit(20000) == 18000
    assert connection_limit(1024, configured=50) == 50
    assert connection_limit(10) == 1


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_silent_connections_cannot_lock_out_clients_or_the_admin_port(backend):
    hqm = proxy(
        backend.address,
        "--max-connections",
        str(LIMIT),
        "--header-timeout",
        "1",
        "--idle-timeout",
        "300",
    )
    silent: list[socket.socket] = []
    try:
        assert hqm.info["max_connections"] == LIMIT
        for _ in range(SILENT):
            silent.append(socket.create_connection(("127.0.0.1", hqm.port), timeout=20))
        # past the limit: an answer at once, not a hang
        over = socket.create_connection(("127.0.0.1", hqm.port), timeout=20)
        with over:
            answer = _read_all(over)
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), answer
        assert b"Retry-After: 1\r\n" in answer
        ready = request(hqm.admin_port, b"GET", b"/readyz")
        assert ready.status == 200  # the admin listener is not behind the limit
        # every silent connection is closed at the header timeout: EOF (or an early
        # 503 for those over the limit), well before the 300 s idle timeout
        refused = 0
        for sock in silent:
            data = _read_all(sock)
            refused += data.startswith(b"HTTP/1.1 503 ")
            assert data in (b"",) or data.startswith(b"HTTP/1.1 503 "), data[:80]
        assert refused == SILENT - LIMIT
        accepted = request(hqm.port, b"POST", b"/after", body=b"x")
        assert accepted.status == 202  # room again for real clients
    finally:
        for sock in silent:
            sock.close()
        hqm.terminate()
