"""Pass-through: a synchronous reverse proxy to the app for routes that do not queue
(``action = "pass"``, and the share a ``percent`` route leaves out).

Both bodies stream with bounded memory: the client's body goes to the app as it
arrives (``hqm.io.streams`` stops reading the client while the app is slower), the
app's answer goes to the client as it comes (each write waits while the client is
slower). Headers follow the replay rules (``hqm.proto.headers``: hop-by-hop dropped,
X-Forwarded-* by the forwarding policy, HQM-Request-Id added) plus the route's
injected headers, which replace any the client sent under the same names. Idle
connections to the app are kept and reused (keep-alive), as the worker does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import orjson

from hqm.io.address import Address
from hqm.io.http_server import Peer
from hqm.io.streams import BodyError, BodyStream, ResponseStream
from hqm.proto import limits as L
from hqm.proto.client import keep_alive_timeout
from hqm.proto.errors import ProtocolError
from hqm.proto.events import RequestHead
from hqm.proto.headers import (
    ForwardedInfo,
    ForwardingPolicy,
    client_response_headers,
    header_value,
    upstream_request_headers,
    with_injected,
)
from hqm.proto.relay import AppData, AppEnd, AppResponse, RelayConnection

log = logging.getLogger("hqm.ingress.pass")

#: Bytes read from the app at a time.
_READ_SIZE = 64 * L.KIB
_JSON = (b"Content-Type", b"application/json")


@dataclass(frozen=True, slots=True)
class PassSettings:
    connect_timeout_s: float = L.CONNECT_TIMEOUT_S
    #: Longest wait for the app's next bytes (a route's ``timeout`` replaces it).
    read_timeout_s: float = L.READ_TIMEOUT_S
    idle_timeout_s: float = L.UPSTREAM_IDLE_TIMEOUT_S
    #: Idle connections kept per upstream.
    pool_size: int = L.POOL_SIZE


@dataclass(slots=True)
class _Link:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    relay: RelayConnection
    reused: bool = False
    #: The app's own Keep-Alive timeout, when it said one.
    keep_for: int | None = None


class _AppFailed(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class PassThrough:
    def __init__(
        self,
        *,
        upstreams: Mapping[str, Address],
        settings: PassSettings,
        forwarding: ForwardingPolicy,
        request_id: Callable[[], str],
    ) -> None:
        self._upstreams = upstreams
        self._settings = settings
        self._forwarding = forwarding
        self._request_id = request_id
        #: Per upstream: idle connections with the time they must retire by.
        self._idle: dict[Address, list[tuple[_Link, float]]] = {}

    async def relay(
        self,
        head: RequestHead,
        route_upstream: str,
        inject: tuple[tuple[bytes, bytes], ...],
        timeout_s: float,
        peer: Peer,
        body: BodyStream,
        out: ResponseStream,
    ) -> None:
        """Pass one request to the app and its answer back (the server calls this with
        the body still arriving)."""
        address = self._upstreams[route_upstream]
        request_id = self._request_id()
        headers = upstream_request_headers(
            head.headers,
            body_length=None,
            request_id=request_id,
            forwarded=ForwardedInfo(client=peer.host, proto="http", policy=self._forwarding),
            default_host=str(address).encode(),
        )
        headers = with_injected(headers, inject)
        bodyless = header_value(headers, b"content-length") in (None, b"0") and (
            header_value(headers, b"transfer-encoding") is None
        )
        try:
            link = await self._exchange(head, headers, address, body, out, bodyless, timeout_s)
        except _AppFailed as exc:
            if out.started:
                raise  # the answer broke off midway: the server closes the connection
            log.info("pass-through to %s failed: %s", address, exc)
            payload = {"error": str(exc), "status": exc.status}
            headers = [_JSON, (b"HQM-Request-Id", request_id.encode())]
            if out.start(exc.status, headers):
                await out.write(orjson.dumps(payload))
                out.end()
            return
        if link is not None:
            self._keep(address, link)

    async def _exchange(
        self,
        head: RequestHead,
        headers: list[tuple[bytes, bytes]],
        address: Address,
        body: BodyStream,
        out: ResponseStream,
        bodyless: bool,
        timeout_s: float,
    ) -> _Link | None:
        """The exchange; the link when it can carry another one."""
        timeout = timeout_s or self._settings.read_timeout_s
        request_id = header_value(headers, b"hqm-request-id").decode()
        link = self._checkout(address) or await self._connect(address)
        while True:  # twice at most: a fresh link is never retried
            link.writer.write(link.relay.start(head.method, head.target, headers))
            sender = asyncio.ensure_future(self._send_body(link, body))
            try:
                await self._answer(link, out, timeout, request_id)
                break
            except BaseException as exc:
                sender.cancel()
                link.writer.close()
                stale = link.reused and bodyless and not link.relay.answered
                if not isinstance(exc, _AppFailed) or not stale:
                    raise
            # a kept connection the app had closed before answering, and no body went:
            # the app never took it, so it goes again on a fresh connection
            link = await self._connect(address)
        if not sender.done():  # the app answered before reading all of the body
            sender.cancel()
            link.writer.close()
            return None
        if sender.exception() is not None or not link.relay.reusable:
            link.writer.close()
            return None
        return link

    async def _send_body(self, link: _Link, body: BodyStream) -> None:
        try:
            while data := await body.read():
                link.writer.write(link.relay.body(data))
                await link.writer.drain()
            link.writer.write(link.relay.end())
            await link.writer.drain()
        except (BodyError, ProtocolError, OSError):
            link.writer.close()  # the app sees the request break off, as the client did
            raise

    async def _answer(
        self, link: _Link, out: ResponseStream, timeout_s: float, request_id: str
    ) -> None:
        while True:
            try:
                async with asyncio.timeout(timeout_s):
                    data = await link.reader.read(_READ_SIZE)
            except TimeoutError:
                raise _AppFailed(504, f"no answer from the app within {timeout_s:g} s") from None
            except OSError as exc:
                raise _AppFailed(502, f"connection to the app failed: {exc}") from None
            try:
                events = link.relay.receive(data)
            except ProtocolError as exc:
                raise _AppFailed(502, str(exc)) from None
            for event in events:
                if isinstance(event, AppResponse):
                    link.keep_for = keep_alive_timeout(event.headers)
                    out.start(
                        event.status,
                        client_response_headers(event.headers, request_id=request_id),
                        event.reason,
                    )
                elif isinstance(event, AppData):
                    await out.write(event.data)
                elif isinstance(event, AppEnd):
                    out.end()
                    return

    async def _connect(self, address: Address) -> _Link:
        try:
            async with asyncio.timeout(self._settings.connect_timeout_s):
                reader, writer = await asyncio.open_connection(address.host, address.port)
        except (OSError, TimeoutError) as exc:
            raise _AppFailed(502, f"cannot connect to the app: {exc or 'timeout'}") from None
        return _Link(reader, writer, RelayConnection())

    def _checkout(self, address: Address) -> _Link | None:
        idle = self._idle.get(address)
        now = time.monotonic()
        while idle:
            link, retire_at = idle.pop()
            if now < retire_at and not link.reader.at_eof() and not link.writer.is_closing():
                link.reused = True
                return link
            link.writer.close()
        return None

    def _keep(self, address: Address, link: _Link) -> None:
        keep_for = self._settings.idle_timeout_s
        if link.keep_for is not None:
            keep_for = min(keep_for, link.keep_for - L.KEEP_ALIVE_MARGIN_S)
        idle = self._idle.setdefault(address, [])
        if keep_for <= 0 or len(idle) >= self._settings.pool_size:
            link.writer.close()
            return
        link.relay.next_cycle()
        idle.append((link, time.monotonic() + keep_for))

    async def close(self) -> None:
        for idle in self._idle.values():
            for link, _ in idle:
                link.writer.close()
                with contextlib.suppress(OSError):
                    await link.writer.wait_closed()
        self._idle.clear()
