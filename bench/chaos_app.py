"""The chaos soak's app: answers 200 and writes down everything it receives.

Every request leaves up to three JSON lines in ``--log`` (appended, one ``write``
each, so a SIGKILL loses nothing already written and a restarted app appends to the
same file):

- ``head``: the request head arrived (``id`` from ``HQM-Request-Id``, ``seq`` from the
  load generator's ``X-Chaos-Seq``, method, target, declared length);
- ``body``: the whole body arrived; ``intact`` says whether its SHA-256 matches the
  ``X-Chaos-Sha`` the load generator computed (byte for byte what the client sent);
- ``answer``: the 200 was written to the socket.

A head without its body line is a request cut mid-way (the connection died, or the app
did). ``X-Chaos-Delay-Ms`` makes the app hold its answer that long (the load generator
gives it to a small share of POSTs). The answer echoes the ids, so a stored result can
be checked against its request.

    python bench/chaos_app.py --port 8081 --log app.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import time

import h11
import uvloop


class Ledger:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.pid = os.getpid()

    def write(self, event: str, **fields) -> None:
        line = {"t": time.time(), "ev": event, "pid": self.pid, **fields}
        os.write(self.fd, json.dumps(line, separators=(",", ":")).encode() + b"\n")


class LedgerHttp(asyncio.Protocol):
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.conn = h11.Connection(h11.SERVER)
        self.busy = False
        self.req: dict | None = None
        self.task: asyncio.Future | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self.pump()

    def eof_received(self) -> None:
        self.conn.receive_data(b"")
        self.pump()

    def connection_lost(self, exc) -> None:
        req = self.req
        if req is not None and not req["complete"]:
            self.ledger.write("cut", id=req["id"], seq=req["seq"], got=req["got"])

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
                self.start(event)
            elif isinstance(event, h11.Data):
                self.req["got"] += len(event.data)
                self.req["sha"].update(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self.busy = True
                self.task = asyncio.ensure_future(self.answer())

    def start(self, event: h11.Request) -> None:
        headers = {name.lower(): value for name, value in event.headers}
        req = {
            "id": headers.get(b"hqm-request-id", b"").decode(),
            "seq": int(headers.get(b"x-chaos-seq", b"-1")),
            "method": event.method.decode(),
            "declared": int(headers.get(b"content-length", b"0")),
            "want_sha": headers.get(b"x-chaos-sha", b"").decode(),
            "delay_s": int(headers.get(b"x-chaos-delay-ms", b"0")) / 1000,
            "idem": headers.get(b"idempotency-key", b"").decode(),
            "got": 0,
            "sha": hashlib.sha256(),
            "complete": False,
        }
        self.req = req
        self.ledger.write(
            "head",
            id=req["id"],
            seq=req["seq"],
            method=req["method"],
            target=event.target.decode(),
            declared=req["declared"],
            idem=req["idem"],
        )

    async def answer(self) -> None:
        req = self.req
        req["complete"] = True
        sha = req["sha"].hexdigest()[:16]
        intact = req["got"] == req["declared"] and (not req["want_sha"] or sha == req["want_sha"])
        self.ledger.write("body", id=req["id"], seq=req["seq"], got=req["got"], intact=intact)
        if req["delay_s"]:
            await asyncio.sleep(req["delay_s"])
        if self.transport.is_closing():
            return
        body = json.dumps({"id": req["id"], "seq": req["seq"], "intact": intact}).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        out = self.conn.send(h11.Response(status_code=200, headers=headers))
        self.transport.write(out + self.conn.send(h11.Data(data=body)))
        self.conn.send(h11.EndOfMessage())
        self.ledger.write("answer", id=req["id"], seq=req["seq"])
        self.req = None
        if self.conn.our_state is h11.MUST_CLOSE or self.conn.their_state is h11.MUST_CLOSE:
            self.transport.close()
            return
        self.conn.start_next_cycle()
        self.busy = False
        self.pump()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True, help="JSON lines, appended")
    args = parser.parse_args()
    ledger = Ledger(args.log)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: LedgerHttp(ledger), "127.0.0.1", args.port, backlog=4096, reuse_address=True
        )
        ledger.write("start", port=args.port)
        async with server:
            await server.serve_forever()

    uvloop.run(run())


if __name__ == "__main__":
    main()
