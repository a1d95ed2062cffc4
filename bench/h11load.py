"""A bare h11 keep-alive client on asyncio protocols, and two load loops on it.

- closed loop: N requests over C keep-alive connections as fast as they answer (the
  drain ceiling: what one process can send to the app; also fills queues).
- open loop: requests scheduled at fixed times (rate R for D s) on a pool of
  keep-alive connections; latency is measured from the scheduled time, so a slow
  answer cannot hide the requests queued behind it (no coordinated omission).

    python bench/h11load.py closed --port P -n 20000 -c 16
    python bench/h11load.py open --port P --rate 500 --duration 10 [-H 'Prefer: wait=10']
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import secrets
import statistics
import time
from collections.abc import Sequence

import h11

Header = tuple[bytes, bytes]


class Request:
    def __init__(
        self, method: bytes = b"POST", target: bytes = b"/", headers=(), body: bytes = b""
    ) -> None:
        self.method, self.target, self.body = method, target, body
        self.headers = [(b"Host", b"127.0.0.1"), *headers]
        if body or method == b"POST":
            self.headers.append((b"Content-Length", str(len(body)).encode()))


def replayed_request(body: int = 1024) -> Request:
    """What a worker sends the app for a 1 KiB POST stored by the proxy."""
    headers = [
        (b"Content-Type", b"application/octet-stream"),
        (b"X-Forwarded-For", b"127.0.0.1"),
        (b"X-Forwarded-Proto", b"http"),
        (b"X-Forwarded-Host", b"127.0.0.1"),
        (b"HQM-Request-Id", secrets.token_hex(16).encode()),
    ]
    return Request(b"POST", b"/", headers, b"x" * body)


class Client(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.conn = h11.Connection(h11.CLIENT)
        self.waiter: asyncio.Future | None = None
        self.status, self.body, self.broken = 0, [], False

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> Client:
        _, proto = await asyncio.get_running_loop().create_connection(cls, host, port)
        return proto

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.broken = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed by peer"))

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                return
            if isinstance(event, h11.Response):
                self.status = event.status_code
            elif isinstance(event, h11.Data):
                self.body.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                try:
                    self.conn.start_next_cycle()
                except h11.LocalProtocolError:
                    self.broken = True  # the server said close
                self.waiter.set_result((self.status, b"".join(self.body)))
                return

    async def request(self, req: Request) -> tuple[int, bytes]:
        self.body = []
        self.waiter = asyncio.get_running_loop().create_future()
        out = self.conn.send(h11.Request(method=req.method, target=req.target, headers=req.headers))
        if req.body:
            out += self.conn.send(h11.Data(data=req.body))
        self.transport.write(out + self.conn.send(h11.EndOfMessage()))
        return await self.waiter

    def close(self) -> None:
        self.transport.close()


async def closed_loop(
    port: int, requests: Sequence[Request], concurrency: int, *, keep_bodies: bool = False
) -> dict:
    """Send every request once over ``concurrency`` connections; statuses (and bodies)."""
    statuses: collections.Counter = collections.Counter()
    bodies: list[bytes | None] = [None] * len(requests) if keep_bodies else []
    pending = iter(range(len(requests)))

    async def lane() -> None:
        client = await Client.open(port)
        for i in pending:
            if client.broken:
                client = await Client.open(port)
            try:
                status, body = await client.request(requests[i])
            except ConnectionError:
                status, body, client.broken = -1, b"", True
            statuses[status] += 1
            if keep_bodies:
                bodies[i] = body
        client.close()

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(min(concurrency, len(requests)))))
    elapsed = time.perf_counter() - started
    res = {"requests": len(requests), "elapsed_s": elapsed, "statuses": dict(statuses)}
    res["rps"] = len(requests) / elapsed
    if keep_bodies:
        res["bodies"] = bodies
    return res


def percentiles_ms(latencies: list[float]) -> dict:
    if not latencies:
        return {"p50_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan")}
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"p50_ms": q[49] * 1e3, "p90_ms": q[89] * 1e3, "p99_ms": q[98] * 1e3}


async def open_loop(
    port: int, req: Request, rate: float, duration: float, warmup: float = 1.0
) -> dict:
    """``warmup`` seconds at the same rate first, not recorded."""
    loop, clock = asyncio.get_running_loop(), time.perf_counter  # uvloop's time() is in ms
    idle = [await Client.open(port) for _ in range(8)]
    latencies: list[float] = []
    statuses: collections.Counter = collections.Counter()
    tasks = set()

    async def one(client: Client, scheduled: float) -> None:
        try:
            status, _ = await client.request(req)
        except ConnectionError:
            status = -1
        if scheduled < recorded_from:
            return
        statuses[status] += 1
        if status > 0:
            latencies.append(clock() - scheduled)
        if not client.broken:
            idle.append(client)

    total, worst_lag = int(rate * (warmup + duration)), 0.0
    start = clock() + 0.05
    recorded_from = start + warmup
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        worst_lag = max(worst_lag, -delay)
        client = idle.pop() if idle else await Client.open(port)
        task = loop.create_task(one(client, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    res = {
        "requests": len(latencies),
        "sent": total,
        "statuses": dict(statuses),
        **percentiles_ms(latencies),
    }
    res["max_ms"] = max(latencies, default=float("nan")) * 1e3
    res["connections"] = len(idle)
    res["send_lag_max_ms"] = worst_lag * 1e3
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["closed", "open"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("-n", type=int, default=20000)
    parser.add_argument("-c", type=int, default=16)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=1)
    parser.add_argument("--body", type=int, default=1024)
    parser.add_argument("-H", dest="headers", action="append", default=[])
    args = parser.parse_args()
    extra: list[Header] = []
    for h in args.headers:
        name, _, value = h.partition(":")
        extra.append((name.strip().encode(), value.strip().encode()))
    import uvloop

    cpu = time.process_time()

    if args.mode == "closed":
        reqs = [replayed_request(args.body)] * args.n
        res = uvloop.run(closed_loop(args.port, reqs, args.c))
    else:
        req = Request(b"POST", b"/", [(b"Content-Type", b"text/plain"), *extra], b"x" * args.body)
        res = uvloop.run(open_loop(args.port, req, args.rate, args.duration, args.warmup))
    res["cpu_us"] = (time.process_time() - cpu) * 1e6 / max(res["requests"], 1)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
