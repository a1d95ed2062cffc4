"""Transparent mode for real: a "pod" network namespace runs the app (:8080, and a
health endpoint on :8081), Redis, ``hqm iptables --ports 8080`` as the init step and
``hqm proxy --transparent``; a "client" namespace, joined by a veth pair, sends to
pod:8080 and runs the worker (as a worker Deployment in another pod would). Addresses
from 198.18.0.0/15 and fd00::/8 only; the host's namespace is never touched. Needs root,
``ip netns`` and a usable iptables; skipped otherwise.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import wait_until
from tests.test_netns_iptables import (
    _REASON,
    POD_V4,
    POD_V6,
    ROOT,
    VARIANTS,
    _hqm,
    _namespace,
    _run,
    _stop,
    link,
)

pytestmark = pytest.mark.skipif(
    _REASON is not None or not VARIANTS or shutil.which("redis-server") is None,
    reason=_REASON or "no usable iptables, or no redis-server",
)
REDIS_PORT = 6390
KEY = "replay-key-of-the-test-" + secrets.token_hex(8)

#: The app: every request it gets is a JSON line on stdout; answers "app:<port> <target>".
APP = r"""
import http.server, json, socket, sys, threading

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        port = self.server.server_address[1]
        print(json.dumps({"port": port, "method": self.command, "target": self.path,
                          "host": self.headers.get("Host"), "body": body,
                          "replay": self.headers.get("HQM-Replay")}), flush=True)
        out = f"app:{port} {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    do_GET = do_POST = do_any
    def log_message(self, *args):
        pass

class V6(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()

for port in (8080, 8081, 8082):
    for cls, host in ((http.server.ThreadingHTTPServer, "0.0.0.0"), (V6, "::")):
        server = cls((host, port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
print(json.dumps({"ready": True}), flush=True)
sys.stdin.read()
"""

#: One HTTP request from the client namespace: argv = method, host, port, target,
#: headers (JSON), body; prints {"status", "headers", "body"}.
CLIENT = r"""
import http.client, json, sys
method, host, port, target, headers, body = sys.argv[1:]
conn = http.client.HTTPConnection(host, int(port), timeout=15)
conn.request(method, target, body=body.encode() or None, headers=json.loads(headers))
r = conn.getresponse()
print(json.dumps({"status": r.status, "headers": dict(r.getheaders()), "body": r.read().decode()}))
"""


@dataclass
class Pod:
    name: str
    client_ns: str
    app: subprocess.Popen
    key_file: Path

    def hqm(self, *args: str) -> subprocess.CompletedProcess:
        return _run(["ip", "netns", "exec", self.name, *_hqm(), *args], cwd=ROOT)

    def send(self, host: str, port: int, target: str, headers=None, body="", method="POST"):
        headers = {"Host": "shop.example", **(headers or {})}
        argv = [method, host, str(port), target, json.dumps(headers), body]
        done = _run(["ip", "netns", "exec", self.client_ns, sys.executable, "-c", CLIENT, *argv])
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def xlen(self) -> int:
        done = _run(
            [
                "ip",
                "netns",
                "exec",
                self.name,
                "redis-cli",
                "-p",
                str(REDIS_PORT),
                "XLEN",
                "hqm:{default}:stream",
            ]
        )
        return int(done.stdout.strip())

    def drain(self) -> None:
        """``hqm worker --burst`` in the client namespace, as a worker pod: Redis and the
        app's Service address are the pod's, the replay key the shared one."""
        done = _run(
            [
                "ip",
                "netns",
                "exec",
                self.client_ns,
                *_hqm(),
                "worker",
                "--burst",
                "--redis",
                f"redis://{POD_V4}:{REDIS_PORT}/0",
                "--upstream",
                f"{POD_V4}:8080",
                "--replay-key-file",
                str(self.key_file),
                "--admin",
                "off",
            ],
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr


@pytest.fixture
def pod(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pod]:
    pod_ns, client_ns = _namespace(request, "tpod"), _namespace(request, "tcli")
    link(pod_ns, client_ns)
    key_file = tmp_path / "replay.key"
    key_file.write_text(KEY + "\n")
    popen = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    redis = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            pod_ns,
            "redis-server",
            "--port",
            str(REDIS_PORT),
            "--bind",
            "0.0.0.0",
            "::",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    request.addfinalizer(lambda: _stop(redis))
    app = subprocess.Popen(["ip", "netns", "exec", pod_ns, sys.executable, "-c", APP], **popen)
    request.addfinalizer(lambda: _stop(app))
    assert app.stdout is not None and json.loads(app.stdout.readline()) == {"ready": True}
    pod = Pod(pod_ns, client_ns, app, key_file)
    assert wait_until(
        lambda: (
            _run(
                ["ip", "netns", "exec", pod_ns, "redis-cli", "-p", str(REDIS_PORT), "PING"]
            ).stdout.strip()
            == "PONG"
        )
    )
    yield pod


def _app_requests(pod: Pod, count: int) -> list[dict]:
    """The next ``count`` requests the app logged (blocking read of its stdout)."""
    assert pod.app.stdout is not None
    return [json.loads(pod.app.stdout.readline()) for _ in range(count)]


def _proxy(pod: Pod, listen: str, admin: str) -> subprocess.Popen:
    args = [
        "proxy",
        "--transparent",
        "--listen",
        listen,
        "--admin",
        admin,
        "--upstream",
        "127.0.0.1:8080",
        "--redis",
        f"redis://127.0.0.1:{REDIS_PORT}/0",
        "--replay-key-file",
        str(pod.key_file),
    ]
    return subprocess.Popen(
        ["ip", "netns", "exec", pod.name, *_hqm(), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def _wait_proxy(proxy: subprocess.Popen) -> None:
    assert proxy.stderr is not None
    for line in proxy.stderr:
        if '"msg":"listening"' in line:
            return
    raise AssertionError("proxy did not start")


@pytest.mark.parametrize("variant", VARIANTS[:1] or ["none"])
def test_transparent_pod_queues_replays_once_and_cleans_up(pod: Pod, variant: str, request):
    init = pod.hqm(
        "iptables",
        "--ports",
        "8080,8082",
        "--proxy-port",
        "8000",
        "--admin-port",
        "9090",
        "--ipv6",
        "--mode",
        variant,
    )
    assert init.returncode == 0, init.stderr
    save = _run(["ip", "netns", "exec", pod.name, f"iptables-{variant}-save", "-t", "nat"]).stdout
    again = pod.hqm("iptables", "--ports", "8080,8082", "--ipv6", "--mode", variant)
    assert again.returncode == 0, again.stderr
    resave = _run(["ip", "netns", "exec", pod.name, f"iptables-{variant}-save", "-t", "nat"])
    strip = lambda text: [r for r in text.splitlines() if r.startswith("-A")]  # noqa: E731
    assert strip(resave.stdout) == strip(save)  # a re-run adds no rule

    for listen, admin in (("0.0.0.0:8000", "127.0.0.1:9090"), ("[::]:8000", "off")):
        proxy = _proxy(pod, listen, admin)
        request.addfinalizer(lambda proxy=proxy: _stop(proxy))
        _wait_proxy(proxy)

    # the client sends to the app's port: redirected, queued (the stream grew), 202
    answer = pod.send(POD_V4, 8080, "/orders?x=1", body="order-1")
    assert answer["status"] == 202, answer
    location = answer["headers"]["Location"]
    assert pod.xlen() == 1
    # the worker replays it to pod:8080, is redirected too, and passes straight on
    pod.drain()
    (seen,) = _app_requests(pod, 1)
    assert (seen["port"], seen["method"], seen["target"], seen["body"]) == (
        8080,
        "POST",
        "/orders?x=1",
        "order-1",
    )
    assert seen["host"] == "shop.example" and seen["replay"] is None  # signature stripped
    assert pod.xlen() == 0  # one entry, one replay: no loop back into the queue
    result = pod.send(POD_V4, 8080, location, method="GET")
    assert (result["status"], result["body"]) == (200, "app:8080 /orders?x=1")

    # the health port is not redirected: straight to the app
    health = pod.send(POD_V4, 8081, "/healthz", method="GET")
    assert (health["status"], health["body"]) == (200, "app:8081 /healthz")
    assert _app_requests(pod, 1)[0]["port"] == 8081

    # a forged HQM-Replay is refused (403): never queued (that could loop), never passed
    forged = pod.send(POD_V4, 8080, "/forged", {"HQM-Replay": "v1.abc.1.00"}, body="f")
    assert forged["status"] == 403 and "HQM-Replay refused" in forged["body"]
    assert pod.xlen() == 0

    # a redirected port no app is configured on: 502, never dialled
    refused = pod.send(POD_V4, 8082, "/x")
    assert refused["status"] == 502 and "port 8082" in refused["body"]

    # IPv6: the same path, fd00::/8
    answer6 = pod.send(POD_V6, 8080, "/v6", body="six")
    assert answer6["status"] == 202
    pod.drain()
    (seen,) = _app_requests(pod, 1)
    assert (seen["target"], seen["body"], seen["host"]) == ("/v6", "six", "shop.example")

    # --cleanup restores direct access
    done = pod.hqm("iptables", "--cleanup", "--ipv6", "--mode", variant)
    assert done.returncode == 0, done.stderr
    direct = pod.send(POD_V4, 8080, "/direct", method="GET")
    assert (direct["status"], direct["body"]) == (200, "app:8080 /direct")
    direct6 = pod.send(POD_V6, 8080, "/direct6", method="GET")
    assert direct6["status"] == 200
    assert [r["target"] for r in _app_requests(pod, 2)] == ["/direct", "/direct6"]
    assert pod.xlen() == 0
