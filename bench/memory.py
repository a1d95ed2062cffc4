"""Proxy memory: RSS idle, and holding 1,000 and 10,000 idle keep-alive connections.

Each connection sends one 1 KiB POST (answered 202) and then stays open, idle, as a
keep-alive client's would. The bare h11 server (bench/ceiling.py) holding the same
connections is the reference. The fd limit is raised in this process and inherited
by the servers it starts.

    python bench/memory.py [--connections 1000,10000]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import common as c
from h11load import Client, Request

CONFIGS = ("ceiling", "proxy+redis", "proxy embedded")


async def hold(port: int, counts: list[int], measure) -> dict[int, float]:
    """Open connections up to each count (one request each), measure RSS at each step."""
    req = Request(b"POST", b"/", [(b"Content-Type", b"text/plain")], b"x" * 1024)
    clients: list[Client] = []
    out = {}

    async def one() -> Client:
        client = await Client.open(port)
        status, _ = await client.request(req)
        if status != 202:
            raise RuntimeError(f"status {status}")
        return client

    for count in counts:
        while len(clients) < count:
            batch = min(500, count - len(clients))
            clients += await asyncio.gather(*(one() for _ in range(batch)))
        await asyncio.sleep(1.0)  # let the server settle (idle timers armed, buffers freed)
        out[count] = measure()
    for client in clients:
        client.close()
    await asyncio.sleep(0.2)
    return out


def one_config(config: str, counts: list[int]) -> dict:
    procs: list[c.Proc] = []
    try:
        if config == "ceiling":
            server = c.start_app(c.SERVER_CORE, status=202)
            procs.append(server)
        else:
            app = c.start_app(c.LOAD_CORE, status=200)
            procs.append(app)
            url = None
            if config == "proxy+redis":
                redis, url = c.start_redis(c.LOAD_CORE)
                procs.append(redis)
            server = c.start_proxy(c.SERVER_CORE, app.port, url)
            procs.append(server)
        time.sleep(1.0)
        res = {"idle_mib": server.rss_mib()}
        held = asyncio.run(hold(server.port, counts, server.rss_mib))
        for count, rss in held.items():
            res[f"{count}_conns_mib"] = rss
        top = max(counts)
        res[f"kib_per_conn_at_{top}"] = (held[top] - res["idle_mib"]) * 1024 / top
        return res
    finally:
        for proc in reversed(procs):
            proc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", default="1000,10000")
    args = parser.parse_args()
    counts = sorted(int(x) for x in args.connections.split(","))
    limit = c.raise_nofile(max(counts) + 2000)
    if limit < max(counts) + 100:
        raise SystemExit(f"fd limit {limit} too low for {max(counts)} connections")

    started = time.monotonic()
    results = {config: one_config(config, counts) for config in CONFIGS}
    rows = [{"server": k, **v} for k, v in results.items()]
    columns = ["server", "idle_mib", *(f"{n}_conns_mib" for n in counts)]
    columns.append(f"kib_per_conn_at_{max(counts)}")
    print(c.table(rows, columns, "RSS (MiB) with idle keep-alive connections"))
    c.finish("memory", {"args": vars(args), "results": results}, started)


if __name__ == "__main__":
    main()
