"""How many requests per second one sidecar accepts, against the bare h11 ceiling.

1 KiB POST, 64 keep-alive connections, wrk pinned to core 1, the server to core 0.
Every round runs each configuration once, in a rotated order (A/B interleaved), on
fresh processes; figures are medians over rounds, ratios are medians of per-round
ratios against (a) from the same round.

  (a) ceiling  bench/ceiling.py: asyncio + uvloop + h11 answering 202
  (b) redis    hqm proxy, async mode, Redis (no AOF) on core 1, no workers
  (c) embedded hqm proxy, embedded queue; its in-process worker replays every
               request to a trivial app on core 1 and shares the proxy's core
  (d) aof      as (b), Redis with appendonly yes, appendfsync everysec

Beside it, the raw Redis ceiling: redis-benchmark XADD of a 1 KiB field, pipelined.

    python bench/throughput.py [--rounds 3] [--duration 8]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import subprocess
import time

import common as c

CONFIGS = ("ceiling", "redis", "embedded", "aof")
LABELS = {
    "ceiling": "(a) bare h11 ceiling",
    "redis": "(b) hqm proxy + Redis",
    "embedded": "(c) hqm proxy embedded",
    "aof": "(d) hqm proxy + Redis AOF everysec",
}


@contextlib.contextmanager
def server(config: str):
    """Start one configuration; yields (port, {name: Proc} whose CPU is measured)."""
    procs: list[c.Proc] = []
    try:
        if config == "ceiling":
            app = c.start_app(c.SERVER_CORE, status=202)
            procs.append(app)
            yield app.port, {"server": app}
        elif config == "embedded":
            app = c.start_app(c.LOAD_CORE, status=200)
            proxy = c.start_proxy(c.SERVER_CORE, app.port)
            procs += [proxy, app]
            yield proxy.port, {"server": proxy, "app": app}
        else:
            redis, url = c.start_redis(c.LOAD_CORE, aof=config == "aof")
            # No worker: the proxy's ingress alone is measured; the upstream is never called.
            proxy = c.start_proxy(c.SERVER_CORE, c.free_port(), url)
            procs += [proxy, redis]
            yield proxy.port, {"server": proxy, "redis": redis}
    finally:
        for proc in procs:
            proc.stop()


def one_run(config: str, duration: float, warmup: float) -> dict:
    with server(config) as (port, procs):
        c.wrk(port, warmup)
        res = c.measured(procs, lambda: c.wrk(port, duration))
        if config == "embedded":
            metrics = c.scrape(procs["server"].admin)
            res["replayed"] = metrics.get(
                'hqm_worker_processed_total{outcome="done",queue="default"}', 0.0
            )
            res["backlog"] = metrics.get('hqm_queue_depth{queue="default"}', 0.0)
        return res


def redis_xadd_ceiling(requests: int = 200000) -> dict:
    """redis-benchmark: XADD with a 1 KiB field, 64 clients, pipeline 16; Redis on core 0."""
    redis, _url = c.start_redis(c.SERVER_CORE)
    try:
        argv = ["taskset", "-c", str(c.LOAD_CORE), "redis-benchmark", "-p", str(redis.port)]
        argv += ["-n", str(requests), "-c", "64", "-P", "16", "--csv"]
        argv += ["XADD", "s", "*", "f", "x" * 1024]
        out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120)
        row = next(csv.DictReader(io.StringIO(out.stdout)))
        return {"rps": float(row["rps"]), "p50_ms": float(row["p50_latency_ms"])}
    finally:
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="wrk seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()

    rounds: list[dict[str, dict]] = []
    xadd: list[float] = []
    started = time.monotonic()
    for r in range(args.rounds):
        order = CONFIGS[r % len(CONFIGS) :] + CONFIGS[: r % len(CONFIGS)]
        results = {config: one_run(config, args.duration, args.warmup) for config in order}
        for config in CONFIGS:
            ceiling = results["ceiling"]
            results[config]["ratio"] = results[config]["rps"] / ceiling["rps"]
            # req/s per core-second against the ceiling's: robust to CPU stolen by neighbours
            results[config]["cpu_ratio"] = (
                ceiling["server_cpu_us"] / results[config]["server_cpu_us"]
            )
        rounds.append(results)
        xadd.append(redis_xadd_ceiling()["rps"])
        print(f"round {r + 1}: " + ", ".join(f"{k} {v['rps']:.0f}" for k, v in results.items()))

    med = c.median_rows(rounds)
    rows = [{"config": LABELS[k], **med[k]} for k in CONFIGS]
    columns = ["config", "rps", "ratio", "server_cpu_us", "cpu_ratio", "p50_ms", "p99_ms"]
    columns.append("server_rss_mib")
    print()
    print(c.table(rows, columns, "Throughput: 1 KiB POST, 64 connections (medians)"))
    print()
    extra = [
        {"part": "redis CPU µs/req in (b)", "value": med["redis"].get("redis_cpu_us")},
        {"part": "redis CPU µs/req in (d)", "value": med["aof"].get("redis_cpu_us")},
        {"part": "app CPU µs/req in (c)", "value": med["embedded"].get("app_cpu_us")},
        {"part": "(c) replayed by the in-process worker", "value": med["embedded"]["replayed"]},
        {"part": "(c) backlog left at the end", "value": med["embedded"]["backlog"]},
        {"part": "raw Redis XADD req/s (redis-benchmark)", "value": c.median(xadd)},
    ]
    print(c.table(extra, ["part", "value"]))
    print(
        "\nratio: req/s / ceiling req/s, same round. cpu_ratio: ceiling CPU µs per request /"
        " this server's (the req/s ratio if each had a whole core)."
    )
    c.finish(
        "throughput",
        {"args": vars(args), "medians": med, "redis_xadd_rps": xadd, "rounds": rounds},
        started,
    )


if __name__ == "__main__":
    main()
