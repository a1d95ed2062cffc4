"""Where a redirected connection was going: the kernel's ``SO_ORIGINAL_DST``.

In transparent mode nat rules (``hqm iptables``) redirect connections for the app's
ports to the proxy's port; the connection tracking entry still holds the address the
client connected to, and ``getsockopt(SOL_IP, SO_ORIGINAL_DST)`` (IPv4) or
``getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)`` (IPv6) returns it as a ``sockaddr_in``
or ``sockaddr_in6``. Linux only.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
import sys
from typing import Any

from hqm.io.address import Address

#: ``SO_ORIGINAL_DST`` (linux/netfilter_ipv4.h) at level ``SOL_IP``.
SO_ORIGINAL_DST = 80
#: ``IP6T_SO_ORIGINAL_DST`` (linux/netfilter_ipv6/ip6_tables.h) at level ``SOL_IPV6``.
IP6T_SO_ORIGINAL_DST = 80
SOL_IP = 0
SOL_IPV6 = 41
#: ``sizeof(struct sockaddr_in)``: family, port, address, 8 bytes of zero padding.
SOCKADDR_IN_BYTES = 16
#: ``sizeof(struct sockaddr_in6)``: family, port, flow info, address, scope id.
SOCKADDR_IN6_BYTES = 28
#: Errors that mean "this connection was not redirected": no conntrack entry for it
#: (ENOENT), or no netfilter connection tracking for this family at all (ENOPROTOOPT).
_NOT_REDIRECTED = frozenset({errno.ENOENT, errno.ENOPROTOOPT})

# sa_family and the IPv6 scope id are in host byte order; port, flow info and address
# in network byte order.
_FAMILY = struct.Struct("=H")


def parse_sockaddr(data: bytes) -> Address:
    """A ``sockaddr_in`` (16 bytes, AF_INET) or ``sockaddr_in6`` (28 bytes, AF_INET6) as
    an Address; ValueError for anything else."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError(f"expected sockaddr bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < 2:
        raise ValueError(f"not a sockaddr: {len(data)} bytes")
    family = _FAMILY.unpack_from(data)[0]
    if family == socket.AF_INET:
        if len(data) != SOCKADDR_IN_BYTES:
            raise ValueError(f"AF_INET sockaddr must be {SOCKADDR_IN_BYTES} bytes, got {len(data)}")
        port = int.from_bytes(data[2:4], "big")
        host = str(ipaddress.IPv4Address(data[4:8]))
        return Address(host, port)
    if family == socket.AF_INET6:
        if len(data) != SOCKADDR_IN6_BYTES:
            raise ValueError(
                f"AF_INET6 sockaddr must be {SOCKADDR_IN6_BYTES} bytes, got {len(data)}"
            )
        port = int.from_bytes(data[2:4], "big")
        host = str(ipaddress.IPv6Address(data[8:24]))
        scope_id = int.from_bytes(data[24:28], sys.byteorder)
        return Address(f"{host}%{scope_id}" if scope_id else host, port)
    raise ValueError(f"not an AF_INET or AF_INET6 sockaddr: family {family}, {len(data)} bytes")


def _local(sock: socket.socket) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """The socket's own address, an IPv4-mapped IPv6 one in its IPv4 form (as the IPv4
    conntrack entry of a dual-stack listener's connection holds it)."""
    host, port = sock.getsockname()[:2]
    ip = ipaddress.ip_address(host.partition("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, port
    return ip, port


def original_destination(sock: socket.socket) -> Address | None:
    """The address the client connected to before a nat REDIRECT/DNAT, or None when the
    connection was not redirected (no conntrack entry, or the original destination is
    the socket's own address)."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    local_ip, local_port = _local(sock)
    if isinstance(local_ip, ipaddress.IPv4Address):  # AF_INET, or IPv4 on a dual-stack socket
        level, option, size = SOL_IP, SO_ORIGINAL_DST, SOCKADDR_IN_BYTES
    else:
        level, option, size = SOL_IPV6, IP6T_SO_ORIGINAL_DST, SOCKADDR_IN6_BYTES
    try:
        data = sock.getsockopt(level, option, size)
    except OSError as exc:
        if exc.errno in _NOT_REDIRECTED:
            return None
        raise
    original = parse_sockaddr(data)
    same_ip = ipaddress.ip_address(original.host.partition("%")[0]) == local_ip
    return None if same_ip and original.port == local_port else original


def original_port(transport: Any) -> int | None:
    """The port a transport's client dialled before a redirect (None: not redirected,
    or the kernel cannot say). Never raises: a connection is served either way."""
    sock = transport.get_extra_info("socket")
    try:
        original = original_destination(sock) if sock is not None else None
    except (OSError, ValueError):
        return None
    return None if original is None else original.port
