"""SO_ORIGINAL_DST: the sockaddr bytes the kernel returns, parsed; and the socket call
on a connection nothing redirected. (Redirected connections: test_netns_iptables.py.)"""

from __future__ import annotations

import socket
import struct
import sys

import pytest

from hqm.io.address import Address
from hqm.io.original_dst import original_destination, parse_sockaddr


def _family(family: int) -> bytes:
    return family.to_bytes(2, sys.byteorder)  # sa_family_t: host byte order


def sockaddr_in(ip: bytes, port: int) -> bytes:
    return _family(socket.AF_INET) + struct.pack("!H4s8x", port, ip)


def sockaddr_in6(ip: bytes, port: int, *, flow: int = 0, scope: int = 0) -> bytes:
    return (
        _family(socket.AF_INET6)
        + struct.pack("!HI16s", port, flow, ip)
        + scope.to_bytes(4, sys.byteorder)
    )


def test_ipv4():
    assert parse_sockaddr(sockaddr_in(bytes([198, 18, 0, 2]), 8080)) == Address("198.18.0.2", 8080)
    assert parse_sockaddr(sockaddr_in(bytes(4), 65535)) == Address("0.0.0.0", 65535)
    # the port is big-endian whatever the host: 0x1f90 = 8080
    data = _family(socket.AF_INET) + b"\x1f\x90" + bytes([10, 0, 0, 1]) + bytes(8)
    assert parse_sockaddr(bytearray(data)) == Address("10.0.0.1", 8080)


def test_ipv6():
    ip = socket.inet_pton(socket.AF_INET6, "fd00::2")
    assert parse_sockaddr(sockaddr_in6(ip, 8080, flow=7)) == Address("fd00::2", 8080)
    assert str(parse_sockaddr(sockaddr_in6(ip, 443))) == "[fd00::2]:443"
    link_local = socket.inet_pton(socket.AF_INET6, "fe80::1")
    assert parse_sockaddr(sockaddr_in6(link_local, 80, scope=3)) == Address("fe80::1%3", 80)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a sockaddr"),
        (b"\x02", "not a sockaddr"),
        (sockaddr_in(bytes(4), 80)[:-1], "AF_INET sockaddr must be 16 bytes"),
        (sockaddr_in(bytes(4), 80) + b"\x00", "AF_INET sockaddr must be 16 bytes"),
        (sockaddr_in6(bytes(16), 80)[:16], "AF_INET6 sockaddr must be 28 bytes"),
        (_family(socket.AF_UNIX) + bytes(14), "not an AF_INET or AF_INET6"),
        (_family(0xFFFF) + bytes(26), "not an AF_INET or AF_INET6"),
        ("198.18.0.2:80", "expected sockaddr bytes"),
    ],
)
def test_anything_else_is_a_clear_value_error(data, message):
    with pytest.raises(ValueError, match=message):
        parse_sockaddr(data)


@pytest.mark.parametrize(
    ("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
)
def test_a_connection_nothing_redirected_has_none(family, host):
    try:
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.bind((host, 0))
    except OSError as exc:
        pytest.skip(f"no {host} here: {exc}")
    with listener:
        listener.listen()
        with socket.create_connection((host, listener.getsockname()[1])) as client:
            server, _ = listener.accept()
            with server:
                assert client.getpeername()[1] == server.getsockname()[1]
                assert original_destination(server) is None


def test_not_an_ip_socket_has_none():
    left, right = socket.socketpair()
    with left, right:
        assert original_destination(left) is None
