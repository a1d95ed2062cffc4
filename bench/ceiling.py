"""The ceiling for our stack: a bare asyncio + uvloop + h11 keep-alive server.

Answers every request with a tiny body (202 by default; ``--status 200`` makes it the
trivial fast app that workers replay to). ``handler`` lets bench/capped_app.py reuse
the connection loop with an async handler; the ceiling itself answers inline.

    python bench/ceiling.py --port 8080 [--status 200]
"""

from __future__ import annotations

import argparse
import asyncio

import h11
import uvloop

BODY = b'{"ok":true}'


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
        self.transport.write(out + self.conn.send(h11.Data(data=body)))
        self.conn.send(h11.EndOfMessage())
        if self.conn.our_state is h11.MUST_CLOSE or self.conn.their_state is h11.MUST_CLOSE:
            self.transport.close()
        else:
            self.conn.start_next_cycle()


async def serve(port: int, factory) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--status", type=int, default=202)
    args = parser.parse_args()
    uvloop.run(serve(args.port, lambda: Http(args.status)))


if __name__ == "__main__":
    main()
