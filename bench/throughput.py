"""How many requests per second one sidecar accepts, against two bare ceilings.

1 KiB POST, 64 keep-alive connections, wrk pinned to core 1, the server to core 0.
Every round runs each configuration once, in a rotated order (A/B interleaved), on
fresh processes; figures are medians over rounds, ratios are medians of per-round
ratios against (a) and (a2) from the same round.

  (a)  ceiling     bench/ceiling.py: asyncio + uvloop + h11 answering 202
  (a2) httptools   bench/ceiling.py --engine httptools: the same answer, parsed by
                   httptools (what ``--parser auto`` uses for plain requests)
  (b)  redis       hqm proxy --parser auto, async mode, Redis (no AOF) on core 1, no workers
  (b-h11) redis-h11  as (b) with --parser h11
  (c)  embedded    hqm proxy --parser auto, embedded queue; its in-process worker replays
                   every request to a trivial app on core 1 and shares the proxy's core
  (d)  aof         as (b), Redis with appendonly yes, appendfsync everysec

With ``--baseline DIR`` (a checkout of an earlier hqm, e.g. ``git worktree add DIR
COMMIT``): (e) as (b) with that code, in the same rounds.

Beside it, the raw Redis ceiling: redis-benchmark XADD of a 1 KiB field, pipelined.

    python bench/throughput.py [--rounds 3] [--duration 8] [--configs ceiling,httptools,redis]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import subprocess
import time
from pathlib import Path

import common as c

CONFIGS = ("ceiling", "httptools", "redis", "redis-h11", "embedded", "aof")
CEILINGS = {"h11": "ceiling", "httptools": "httptools"}
LABELS = {
    "ceiling": "(a) bare h11 ceiling",
    "httptools": "(a2) bare httptools ceiling",
    "redis": "(b) hqm proxy + Redis, --parser auto",
    "redis-h11": "(b-h11) hqm proxy + Redis, --parser h11",
    "embedded": "(c) hqm proxy embedded, --parser auto",
    "aof": "(d) hqm proxy + Redis AOF everysec, --parser auto",
    "baseline": "(e) as (b), the hqm of --baseline (its default parser)",
}
#: ``--baseline DIR``: a checkout of an earlier hqm, measured as config "baseline".
BASELINE: dict[str, Path] = {}
#: The parser of each hqm configuration, always passed (HQM_PROXY_PARSER cannot change it).
PARSERS = {"redis": "auto", "redis-h11": "h11", "embedded": "auto", "aof": "auto"}


@contextlib.contextmanager
def server(config: str):
    """Start one configuration; yields (port, {name: Proc} whose CPU is measured)."""
    procs: list[c.Proc] = []
    try:
        if config in CEILINGS.values():
            engine = "h11" if config == "ceiling" else "httptools"
            app = c.start_app(c.SERVER_CORE, status=202, engine=engine)
            procs.append(app)
            yield app.port, {"server": app}
        elif config == "embedded":
            app = c.start_app(c.LOAD_CORE, status=200)
            proxy = c.start_proxy(c.SERVER_CORE, app.port, None, "--parser", PARSERS[config])
            procs += [proxy, app]
            yield proxy.port, {"server": proxy, "app": app}
        else:
            redis, url = c.start_redis(c.LOAD_CORE, aof=config == "aof")
            # No worker: the proxy's ingress alone is measured; the upstream is never called.
            if config == "baseline":
                proxy = c.start_proxy(c.SERVER_CORE, c.free_port(), url, source=BASELINE["dir"])
            else:
                parser = ("--parser", PARSERS[config])
                proxy = c.start_proxy(c.SERVER_CORE, c.free_port(), url, *parser)
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


def pick_configs(text: str) -> tuple[str, ...]:
    """``--configs a,b``: those, in CONFIGS order; with no ceiling among them both
    ceilings are added (a figure is only ever quoted as a ratio to one)."""
    picked = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(picked) - set(CONFIGS))
    if unknown:
        raise SystemExit(f"--configs: unknown {unknown}; choose from {', '.join(CONFIGS)}")
    if not set(picked) & set(CEILINGS.values()):
        print("--configs has no ceiling: adding both (ceiling, httptools)")
        picked += CEILINGS.values()
    return tuple(name for name in CONFIGS if name in picked)


def add_ratios(results: dict[str, dict]) -> None:
    """ratio_<ceiling> (req/s) and cpu_ratio_<ceiling> (CPU µs per request) of every row
    against each ceiling of the same round; nan for a ceiling not run."""
    for res in results.values():
        for name, config in CEILINGS.items():
            ceiling = results.get(config)
            if ceiling is None:
                res[f"ratio_{name}"] = res[f"cpu_ratio_{name}"] = float("nan")
                continue
            res[f"ratio_{name}"] = res["rps"] / ceiling["rps"]
            # req/s per core-second against the ceiling's: robust to CPU stolen by neighbours
            res[f"cpu_ratio_{name}"] = ceiling["server_cpu_us"] / res["server_cpu_us"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="wrk seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"of {', '.join(CONFIGS)}")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of an earlier hqm (e.g. git worktree add DIR COMMIT): adds (e)",
    )
    parser.add_argument("--no-xadd", action="store_true", help="skip redis-benchmark XADD")
    args = parser.parse_args()
    configs = pick_configs(args.configs)
    if args.baseline is not None:
        BASELINE["dir"] = args.baseline.resolve()
        configs = (*configs, "baseline")

    rounds: list[dict[str, dict]] = []
    xadd: list[float] = []
    started = time.monotonic()
    for r in range(args.rounds):
        order = configs[r % len(configs) :] + configs[: r % len(configs)]
        results = {config: one_run(config, args.duration, args.warmup) for config in order}
        add_ratios(results)
        rounds.append({config: results[config] for config in configs})
        if not args.no_xadd:
            xadd.append(redis_xadd_ceiling()["rps"])
        print(f"round {r + 1}: " + ", ".join(f"{k} {v['rps']:.0f}" for k, v in results.items()))

    med = c.median_rows(rounds)
    rows = [{"config": LABELS[k], **med[k]} for k in configs]
    columns = ["config", "rps", "ratio_h11", "ratio_httptools", "server_cpu_us"]
    columns += ["cpu_ratio_h11", "cpu_ratio_httptools", "p50_ms", "p99_ms", "server_rss_mib"]
    print()
    print(c.table(rows, columns, "Throughput: 1 KiB POST, 64 connections (medians)"))
    print()
    extra = [
        {"part": f"redis CPU µs/req in {LABELS[k].split()[0]}", "value": med[k]["redis_cpu_us"]}
        for k in ("redis", "redis-h11", "aof")
        if k in med
    ]
    if "embedded" in med:
        extra += [
            {"part": "app CPU µs/req in (c)", "value": med["embedded"].get("app_cpu_us")},
            {"part": "(c) replayed by the in-process worker", "value": med["embedded"]["replayed"]},
            {"part": "(c) backlog left at the end", "value": med["embedded"]["backlog"]},
        ]
    if xadd:
        extra.append({"part": "raw Redis XADD req/s (redis-benchmark)", "value": c.median(xadd)})
    if extra:
        print(c.table(extra, ["part", "value"]))
    print(
        "\nratio_X: req/s / ceiling X's req/s, same round. cpu_ratio_X: ceiling X's CPU µs per"
        " request / this server's (the req/s ratio if each had a whole core). server_cpu_us:"
        " CPU µs per request of the server process (the proxy; in (a), (a2) the ceiling)."
    )
    c.finish(
        "throughput",
        {"args": vars(args), "medians": med, "redis_xadd_rps": xadd, "rounds": rounds},
        started,
    )


if __name__ == "__main__":
    main()
