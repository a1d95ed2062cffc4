"""Bytes of Redis memory per queued request and per stored result.

A fresh redis-server; N POSTs with a body of --size bytes are queued through
``hqm proxy`` (async mode, 64 keep-alive connections), then ``hqm worker --burst``
replays them to an app answering 200 with a body of --response-size bytes and exits.
Redis's ``used_memory`` is read with no hqm connection open: after one warm-up
request (stream, consumer group and scripts exist), after the fill, after the drain.
Per queued request = (fill - warm-up) / N: the stream entry and its ``st:`` state key.
Per stored result = (drain - warm-up) / N: the ``res:`` and ``st:`` keys kept for
--result-ttl (the entries are gone from the stream by then). Beside each, ``MEMORY
USAGE`` of the stream (per entry) and of sample keys, and each as a ratio to the body.

    python bench/redis_bytes.py [-n 10000] [--size 1024] [--response-size 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time

import common as c
import redis
from h11load import Request, closed_loop

CONCURRENCY = 64  # the fill's keep-alive connections, as bench/drain.py
STREAM = "hqm:{default}:stream"
SAMPLES = 20  # keys of each kind whose MEMORY USAGE is averaged


def serve_app(port: int, size: int) -> None:
    """The app: 200 with a body of ``size`` bytes to every request."""
    import uvloop
    from ceiling import Http, serve

    body = b"r" * size

    async def answer(_request) -> tuple[int, bytes]:
        return 200, body

    uvloop.run(serve(port, lambda: Http(200, answer)))


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def usage(client: redis.Redis, pattern: str) -> float:
    """Mean MEMORY USAGE (SAMPLES 0: exact) of up to SAMPLES keys matching ``pattern``."""
    names = list(itertools.islice(client.scan_iter(match=pattern), SAMPLES))
    sizes = [client.memory_usage(name, samples=0) or 0 for name in names]
    return sum(sizes) / len(sizes) if sizes else 0.0


def fill(redis_url: str, app_port: int, requests: list[Request]) -> None:
    proxy = c.start_proxy(None, app_port, redis_url)
    try:
        res = asyncio.run(closed_loop(proxy.port, requests, CONCURRENCY))
        if res["statuses"] != {202: len(requests)}:
            raise RuntimeError(f"fill: {res['statuses']}")
    finally:
        proxy.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10000)
    parser.add_argument("--size", type=int, default=1024, help="request body, bytes")
    parser.add_argument("--response-size", type=int, default=1024, help="response body, bytes")
    parser.add_argument("--serve-app", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_app:
        serve_app(args.serve_app, args.response_size)
        return

    started = time.monotonic()
    server, url = c.start_redis(None)
    app_port = c.free_port()
    argv = [c.PY, "redis_bytes.py", "--serve-app", str(app_port)]
    app = c.Proc("app", [*argv, "--response-size", str(args.response_size)], None)
    app.wait_port(app_port)
    client = redis.Redis(port=server.port)
    try:
        request = Request(b"POST", b"/orders", [(b"Content-Type", b"text/plain")], b"x" * args.size)
        fill(url, app_port, [request])  # warm-up: stream, group, scripts
        base = used_memory(client)
        fill(url, app_port, [request] * args.n)
        queued = used_memory(client)
        entries = client.xlen(STREAM)
        stream_bytes = client.memory_usage(STREAM, samples=0) or 0
        [(_, fields)] = client.xrange(STREAM, count=1)
        record_bytes = len(fields[b"r"])
        queued_state = usage(client, "hqm:{default}:st:*")

        worker = c.Proc("worker", c.worker_argv(url, app_port, 16, burst=True), None)
        worker.wait_log("worker started", timeout=30)
        code = worker.popen.wait(timeout=600)
        if code != 0 or client.xlen(STREAM):
            raise RuntimeError(f"drain: exit {code}, {client.xlen(STREAM)} left\n{worker.tail()}")
        drained = used_memory(client)
        result_key = usage(client, "hqm:{default}:res:*")
        done_state = usage(client, "hqm:{default}:st:*")
        stream_left = client.memory_usage(STREAM, samples=0) or 0
        version = client.info("server")["redis_version"]
    finally:
        client.close()
        app.stop()
        server.stop()

    n = args.n
    per_queued = (queued - base) / n
    per_result = (drained - base) / n
    rows = [
        {"what": "queued request (used_memory delta / N)", "bytes": per_queued,
         "ratio": per_queued / args.size, "to": "request body"},
        {"what": "  stream, MEMORY USAGE / entry", "bytes": stream_bytes / entries,
         "ratio": stream_bytes / entries / args.size, "to": "request body"},
        {"what": "  encoded record (field r)", "bytes": float(record_bytes),
         "ratio": record_bytes / args.size, "to": "request body"},
        {"what": "  st: key (queued), MEMORY USAGE", "bytes": queued_state,
         "ratio": queued_state / args.size, "to": "request body"},
        {"what": "stored result (used_memory delta / N)", "bytes": per_result,
         "ratio": per_result / args.response_size, "to": "response body"},
        {"what": "  res: key, MEMORY USAGE", "bytes": result_key,
         "ratio": result_key / args.response_size, "to": "response body"},
        {"what": "  st: key (done), MEMORY USAGE", "bytes": done_state,
         "ratio": done_state / args.response_size, "to": "response body"},
        {"what": "  stream left after the drain, MEMORY USAGE / N", "bytes": stream_left / n,
         "ratio": stream_left / n / args.response_size, "to": "response body"},
    ]  # fmt: skip
    title = (
        f"Redis memory: {n} requests of {args.size} B queued, answered with "
        f"{args.response_size} B (redis-server {version})"
    )
    print()
    print(c.table(rows, ["what", "bytes", "ratio", "to"], title))
    day = 100 * 86400 * per_result
    print(f"\nresults held = rate x --result-ttl x bytes per result: 100 req/s x 24 h = "
          f"8,640,000 results x {per_result:,.0f} B = {day / 2**30:.1f} GiB")  # fmt: skip
    data = {"args": vars(args), "rows": rows, "used_memory": [base, queued, drained]}
    c.finish("redis_bytes", data, started)


if __name__ == "__main__":
    sys.exit(main())
