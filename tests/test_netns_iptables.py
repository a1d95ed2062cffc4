"""``hqm iptables`` for real, in throw-away network namespaces: a "pod" (a stand-in
proxy reporting each connection's SO_ORIGINAL_DST, an admin port, app ports) and a
"client" joined by a veth pair (198.18.0.0/15 and fd00::/8 only). The host's own
namespace and rules are never touched. Needs root and ``ip netns``; skipped otherwise.
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hqm.io.iptables_apply import find
from tests.support import wait_until

ROOT = Path(__file__).resolve().parent.parent
POD_V4, CLIENT_V4 = "198.18.0.2", "198.18.0.1"
POD_V6, CLIENT_V6 = "fd00:6871:6d::2", "fd00:6871:6d::1"
PROXY = 8000  # AF_INET and AF_INET6 listeners: the plain paths of original_destination
DUAL_PROXY = 8002  # one dual-stack listener: IPv4 arrives IPv4-mapped
ADMIN = 9090
APPS = (8080, 8081, 8082)
#: Two ways to lack NET_ADMIN: another user (capabilities go with uid 0), or root with
#: the capability dropped (where uid 65534 cannot read the interpreter, e.g. in /root).
WITHOUT_NET_ADMIN = {
    "uid-65534": ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"],
    "no-cap": ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin"],
}
NO_VARIANT = pytest.param("none", marks=pytest.mark.skip(reason="no usable iptables here"))

#: The pod's servers: each connection gets one line and a close.
SERVERS = r"""
import json, socket, sys, threading
from hqm.io.original_dst import original_destination

spec = json.loads(sys.argv[1])

def listeners(port, dual):
    if dual:
        families = [(socket.AF_INET6, "::", 0)]
    else:
        families = [(socket.AF_INET, "0.0.0.0", None), (socket.AF_INET6, "::", 1)]
    for family, host, v6only in families:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if v6only is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
        sock.bind((host, port))
        sock.listen(64)
        yield sock

def answer(role, port, conn):
    if role == "proxy":
        return f"proxy{port}:{original_destination(conn) or 'none'}"
    return f"{role}:{port}"

def serve(sock, role, port):
    while True:
        conn, _ = sock.accept()
        with conn:
            try:
                conn.sendall(answer(role, port, conn).encode() + b"\n")
            except OSError:
                pass

for role, port, dual in spec:
    for sock in listeners(port, dual):
        threading.Thread(target=serve, args=(sock, role, port), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""

#: The client: reads "HOST PORT" lines, answers each with what the server said.
CLIENT = r"""
import socket, sys
for line in sys.stdin:
    host, port = line.split()
    try:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
        print(data.decode().strip() or "empty", flush=True)
    except OSError as exc:
        print(f"error:{type(exc).__name__}", flush=True)
"""


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, **kw)


def _hqm() -> list[str]:
    script = Path(sys.executable).parent / "hqm"
    return [str(script)] if script.exists() else [sys.executable, "-m", "hqm"]


def _usable(variant: str) -> str | None:
    """Why ``iptables-<variant>`` cannot be used here (None: it can)."""
    if find(f"iptables-{variant}-restore") is None:
        return f"iptables-{variant} not installed"
    probe = f"hqm-probe-{secrets.token_hex(4)}"
    if _run(["ip", "netns", "add", probe]).returncode != 0:
        return "cannot create a network namespace"
    try:
        for family in ("iptables", "ip6tables"):
            done = _run(["ip", "netns", "exec", probe, f"{family}-{variant}", "-t", "nat", "-S"])
            if done.returncode != 0:
                return f"{family}-{variant} has no nat table here: {done.stderr.strip()}"
    finally:
        _run(["ip", "netns", "del", probe])
    return None


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root: creates network namespaces and nat rules"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip netns)"
    if _run(["ip", "netns", "list"]).returncode != 0:
        return "ip netns does not work here"
    return None


_REASON = _why_not()
VARIANTS = [v for v in ("legacy", "nft") if _REASON is None and _usable(v) is None]
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


@functools.cache
def _starts_under(prefix: tuple[str, ...]) -> bool:
    return _run([*prefix, *_hqm(), "--version"], cwd=ROOT).returncode == 0


@dataclass
class Pod:
    name: str
    client_ns: str
    client: subprocess.Popen

    def ask(self, host: str, port: int) -> str:
        """What a connection from the client namespace to host:port was answered."""
        assert self.client.stdin is not None and self.client.stdout is not None
        self.client.stdin.write(f"{host} {port}\n")
        self.client.stdin.flush()
        return self.client.stdout.readline().strip()

    def hqm(self, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        return _run(["ip", "netns", "exec", self.name, *prefix, *_hqm(), *args], cwd=ROOT)

    def save(self, binary: str) -> str:
        """The nat table as iptables-save prints it, without comments and counters."""
        done = _run(["ip", "netns", "exec", self.name, f"{binary}-save", "-t", "nat"])
        assert done.returncode == 0, done.stderr
        lines = [line for line in done.stdout.splitlines() if not line.startswith("#")]
        return re.sub(r"\[\d+:\d+\]", "[0:0]", "\n".join(lines))


def _namespace(request: pytest.FixtureRequest, role: str) -> str:
    name = f"hqm-{role}-{os.getpid()}-{secrets.token_hex(3)}"
    done = _run(["ip", "netns", "add", name])
    if done.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {done.stderr.strip()}")
    request.addfinalizer(lambda: _run(["ip", "netns", "del", name]))
    return name


def link(pod_ns: str, client_ns: str) -> None:
    """A veth pair between the namespaces, with the pod's and the client's addresses.
    Made inside the pod namespace, its peer put straight into the client's: no
    interface ever exists in the host's namespace."""
    _in(
        pod_ns,
        *["ip", "link", "add", "hqm0", "type", "veth", "peer", "name", "hqm1", "netns"],
        client_ns,
    )
    for ns, v4, v6, dev in (
        (pod_ns, POD_V4, POD_V6, "hqm0"),
        (client_ns, CLIENT_V4, CLIENT_V6, "hqm1"),
    ):
        _in(ns, "ip", "link", "set", "lo", "up")
        _in(ns, "ip", "addr", "add", f"{v4}/24", "dev", dev)
        _in(ns, "ip", "-6", "addr", "add", f"{v6}/64", "dev", dev, "nodad")
        _in(ns, "ip", "link", "set", dev, "up")


def _in(ns: str, *argv: str) -> None:
    done = _run(["ip", "netns", "exec", ns, *argv])
    assert done.returncode == 0, f"{argv}: {done.stderr}"


def _stop(process: subprocess.Popen) -> None:
    process.kill()
    process.wait(timeout=10)


@pytest.fixture
def pod(request: pytest.FixtureRequest) -> Iterator[Pod]:
    pod_ns, client_ns = _namespace(request, "pod"), _namespace(request, "cli")
    link(pod_ns, client_ns)
    spec = [("proxy", PROXY, False), ("proxy", DUAL_PROXY, True), ("admin", ADMIN, False)]
    spec += [("app", port, False) for port in APPS]
    popen = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    servers = subprocess.Popen(
        ["ip", "netns", "exec", pod_ns, sys.executable, "-c", SERVERS, json.dumps(spec)], **popen
    )
    request.addfinalizer(lambda: _stop(servers))
    client = subprocess.Popen(
        ["ip", "netns", "exec", client_ns, sys.executable, "-c", CLIENT], **popen
    )
    request.addfinalizer(lambda: _stop(client))
    pod = Pod(pod_ns, client_ns, client)
    for host in (POD_V4, POD_V6):
        assert wait_until(lambda host=host: pod.ask(host, 8082) == "app:8082"), "servers not up"
    yield pod


def _ours(save: str) -> list[str]:
    return [line for line in save.splitlines() if "HQM_" in line]


@pytest.mark.parametrize("variant", VARIANTS or [NO_VARIANT])
def test_redirect_rerun_ipv6_and_cleanup(pod: Pod, variant: str):
    v4, v6 = f"iptables-{variant}", f"ip6tables-{variant}"
    # what the Kubernetes manifests run
    done = pod.hqm(
        *["iptables", "--ports", "8080", "--proxy-port", "8000", "--admin-port", "9090", "--mode"],
        variant,
    )
    assert done.returncode == 0, done.stderr
    added = f"IPv4 ({v4}): tcp ports 8080 -> 8000, except 8000,9090; PREROUTING jump added\n"
    assert done.stdout == added
    assert pod.ask(POD_V4, 8080) == f"proxy8000:{POD_V4}:8080"  # redirected, original dst read
    assert pod.ask(POD_V4, 8081) == "app:8081"  # not listed: straight to the app
    assert pod.ask(POD_V4, 8000) == "proxy8000:none"
    assert pod.ask(POD_V6, 8080) == "app:8080"  # no --ipv6: no ip6tables rules
    assert _ours(pod.save(v6)) == []

    before = pod.save(v4)
    assert len([line for line in before.splitlines() if "-j HQM_INBOUND" in line]) == 1
    again = pod.hqm("iptables", "--ports", "8080", "--mode", variant)
    assert again.returncode == 0, again.stderr
    assert "PREROUTING jump already present" in again.stdout
    assert pod.save(v4) == before  # not one rule more

    # Every port now, to a dual-stack proxy, both families; the old rules are replaced.
    args = ["--proxy-port", str(DUAL_PROXY), "--exclude-ports", "8081", "--ipv6"]
    done = pod.hqm("iptables", *args, "--mode", variant)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1] == (
        f"IPv6 ({v6}): tcp ports all -> 8002, except 8002,9090,8081; PREROUTING jump added"
    )
    for host, shown in ((POD_V4, POD_V4), (POD_V6, f"[{POD_V6}]")):
        assert pod.ask(host, 8080) == f"proxy8002:{shown}:8080"
        assert pod.ask(host, 8082) == f"proxy8002:{shown}:8082"
        assert pod.ask(host, 8000) == f"proxy8002:{shown}:8000"  # 8000 is an app port now
        assert pod.ask(host, 8081) == "app:8081"  # excluded
        assert pod.ask(host, DUAL_PROXY) == "proxy8002:none"  # the proxy's own port
        assert pod.ask(host, ADMIN) == "admin:9090"  # the admin port
    for binary in (v4, v6):
        rules = _ours(pod.save(binary))
        assert rules.count("-A PREROUTING -p tcp -j HQM_INBOUND") == 1, rules
        assert [line for line in rules if "-j REDIRECT" in line] == [
            "-A HQM_IN_REDIRECT -p tcp -j REDIRECT --to-ports 8002"
        ]
        assert not any("8000 -j RETURN" in line for line in rules), rules
    saved = pod.save(v4), pod.save(v6)
    again = pod.hqm("iptables", *args, "--mode", variant)
    assert again.returncode == 0, again.stderr
    assert (pod.save(v4), pod.save(v6)) == saved  # both families: not one rule more

    done = pod.hqm("iptables", "--cleanup", "--ipv6", "--mode", variant)
    assert done.returncode == 0, done.stderr
    for host in (POD_V4, POD_V6):
        assert pod.ask(host, 8080) == "app:8080"
        assert pod.ask(host, 8000) == "proxy8000:none"
    assert _ours(pod.save(v4)) == [] and _ours(pod.save(v6)) == []
    again = pod.hqm("iptables", "--cleanup", "--ipv6", "--mode", variant)
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"IPv4 ({v4}): nothing installed\nIPv6 ({v6}): nothing installed\n"


@pytest.mark.skipif(len(VARIANTS) < 2, reason="needs both iptables-legacy and iptables-nft")
def test_auto_mode_uses_the_variant_that_holds_rules(pod: Pod):
    done = pod.hqm("iptables", "--ports", "8080")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("IPv4 (iptables-nft):")  # none holds rules: nft
    assert pod.ask(POD_V4, 8080) == f"proxy8000:{POD_V4}:8080"
    assert pod.hqm("iptables", "--cleanup").returncode == 0
    assert _ours(pod.save("iptables-nft")) == []

    done = pod.hqm("iptables", "--ports", "8080", "--mode", "legacy")
    assert done.returncode == 0, done.stderr
    done = pod.hqm("iptables", "--ports", "8080,8081")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("IPv4 (iptables-legacy):")  # legacy holds rules now
    assert "jump already present" in done.stdout
    assert _ours(pod.save("iptables-nft")) == []
    assert pod.ask(POD_V4, 8081) == f"proxy8000:{POD_V4}:8081"


@pytest.mark.parametrize("how", sorted(WITHOUT_NET_ADMIN))
@pytest.mark.parametrize("variant", VARIANTS or [NO_VARIANT])
def test_without_net_admin_one_line_and_nothing_changed(pod: Pod, variant: str, how: str):
    prefix = tuple(WITHOUT_NET_ADMIN[how])
    if not _starts_under(prefix):
        pytest.skip(f"hqm does not start under {' '.join(prefix)} here")
    for mode in (variant, "auto"):
        done = pod.hqm("iptables", "--ports", "8080", "--mode", mode, prefix=prefix)
        assert done.returncode == 1, done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith("Error: ") and "permission denied" in done.stderr
        assert "CAP_NET_ADMIN" in done.stderr and "Traceback" not in done.stderr
    assert _ours(pod.save(f"iptables-{variant}")) == []
    assert pod.ask(POD_V4, 8080) == "app:8080"
