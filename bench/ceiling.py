"""The ceilings for our stack: a bare asyncio + uvloop keep-alive server, h11 or httptools.

Answers every request with a tiny body (202 by default; ``--status 200`` makes it the
trivial fast app that workers replay to). ``--engine h11`` (the default) parses with
h11; ``--engine httptools`` with httptools (llhttp), the parser of hqm's ``--parser
auto`` fast path, writing the very bytes h11 writes. Both keep HTTP/1.1 connections
alive and close after the answer to HTTP/1.0 or ``Connection: close``. ``handler``
lets bench/capped_app.py reuse the h11 connection loop with an async handler; the
ceilings themselves answer inline.

    python bench/ceiling.py --port 8080 [--status 200] [--engine h11|httptools]
"""

from __future__ import annotations

import argparse
import asyncio
import functools

import h11
import httptools
import uvloop

BODY = b'{"ok":true}'
ENGINES = ("h11", "httptools")


class Http(asyncio.Protocol):
    def __init__(self, status: int = 202, handler=None) -> None:
        self.conn = h11.Connection(h11.SERVER)
        self.status, self.handler, self.busy = status, handler, False
        self.request: h11.Request | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self.pump()

    def eof_received(self) -> None:
        self.conn.receive_data(b"")
        self.pump()

    def pump(self) -> None:
        while not self.busy:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError:
                self.transport.close()
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.ConnectionClosed):
                self.transport.close()
                return
            if isinstance(event, h11.Request):
                self.request = event
            elif isinstance(event, h11.EndOfMessage):
                if self.handler is None:
                    self.send(self.status, BODY)
                else:
                    self.busy = True
                    self.task = asyncio.ensure_future(self.run_handler())

    async def run_handler(self) -> None:
        status, body = await self.handler(self.request)
        self.busy = False
        self.send(status, body)
        self.pump()

    def send(self, status: int, body: bytes) -> None:
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        out = self.conn.send(h11.Response(status_code=status, headers=headers))
        if self.request is None or self.request.method != b"HEAD":  # HEAD: the head alone
            out += self.conn.send(h11.Data(data=body))
        self.transport.write(out)
        self.conn.send(h11.EndOfMessage())
        if self.conn.our_state is h11.MUST_CLOSE or self.conn.their_state is h11.MUST_CLOSE:
            self.transport.close()
        else:
            self.conn.start_next_cycle()


def response_head(status: int, body: bytes, *, close: bool) -> bytes:
    """The head h11 writes for ``Http.send`` (no reason phrase; Connection: close)."""
    head = b"HTTP/1.1 %d \r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % (
        status,
        len(body),
    )
    return head + (b"Connection: close\r\n\r\n" if close else b"\r\n")


@functools.cache
def answers(status: int) -> tuple[bytes, bytes, bytes, bytes]:
    """(keep-alive answer, closing answer, and both heads alone, for HEAD)."""
    keep, close = response_head(status, BODY, close=False), response_head(status, BODY, close=True)
    return keep + BODY, close + BODY, keep, close


class FastHttp(asyncio.Protocol):
    """The httptools ceiling: parse with llhttp, answer each complete request inline."""

    def __init__(self, status: int = 202) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.closed = False
        self.keep_alive, self.closing, self.keep_alive_head, self.closing_head = answers(status)

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:  # HttpParserUpgrade too: not served
            self.closed = True
            self.transport.close()

    def on_message_complete(self) -> None:
        if self.closed:  # a request pipelined behind a closing one: not answered
            return
        parser = self.parser
        keep = parser.get_http_version() == "1.1" and parser.should_keep_alive()
        if parser.get_method() == b"HEAD":
            self.transport.write(self.keep_alive_head if keep else self.closing_head)
        else:
            self.transport.write(self.keep_alive if keep else self.closing)
        if not keep:
            self.closed = True
            self.transport.close()


async def serve(port: int, factory) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--status", type=int, default=202)
    parser.add_argument("--engine", choices=ENGINES, default="h11")
    args = parser.parse_args()
    protocol = Http if args.engine == "h11" else FastHttp
    uvloop.run(serve(args.port, lambda: protocol(args.status)))


if __name__ == "__main__":
    main()
