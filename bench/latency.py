"""What wait mode adds to latency at a fixed, moderate rate.

An open-loop generator (bench/h11load.py open, core 1) sends 1 KiB POSTs at a fixed
rate on keep-alive connections and measures each latency from its scheduled send time.
Per round, interleaved: straight to the trivial app (bench/ceiling.py answering 200,
core 1); through ``hqm proxy`` with ``Prefer: wait=10`` and Redis (proxy and one
worker on core 0, Redis on core 1); through ``hqm proxy`` embedded (core 0).
Added latency = percentile through the proxy - same percentile straight, same round.

    python bench/latency.py [--rounds 3] [--rate 500] [--duration 10]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import time

import common as c

CONFIGS = ("direct", "wait+redis", "wait+embedded")


@contextlib.contextmanager
def target(config: str, app_port: int):
    """Yields the port to load and the measured processes for one configuration."""
    procs: list[c.Proc] = []
    try:
        if config == "direct":
            yield app_port, {}
        elif config == "wait+embedded":
            procs.append(c.start_proxy(c.SERVER_CORE, app_port))
            yield procs[0].port, {"proxy": procs[0]}
        else:
            redis, url = c.start_redis(c.LOAD_CORE)
            procs.append(redis)
            procs.append(c.start_proxy(c.SERVER_CORE, app_port, url))
            procs.append(c.start_worker(c.SERVER_CORE, url, app_port, 16))
            yield procs[1].port, {"proxy": procs[1], "worker": procs[2]}
    finally:
        for proc in reversed(procs):
            proc.stop()


def one_run(config: str, app_port: int, rate: float, duration: float) -> dict:
    with target(config, app_port) as (port, procs):
        argv = ["taskset", "-c", str(c.LOAD_CORE), c.PY, "h11load.py", "open"]
        argv += ["--port", str(port), "--rate", str(rate), "--duration", str(duration)]
        argv += ["-H", "Prefer: wait=10"] if config != "direct" else []

        def run() -> dict:
            out = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=c.BENCH)
            return json.loads(out.stdout)

        res = c.measured(procs, run, per="sent")  # warmup included
        res["errors"] = sum(v for k, v in res["statuses"].items() if k != "200")
        return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--duration", type=float, default=10)
    args = parser.parse_args()

    started = time.monotonic()
    rounds: list[dict[str, dict]] = []
    for r in range(args.rounds):
        app = c.start_app(c.LOAD_CORE, status=200)
        try:
            order = CONFIGS[r % 3 :] + CONFIGS[: r % 3]
            results = {k: one_run(k, app.port, args.rate, args.duration) for k in order}
        finally:
            app.stop()
        for k in CONFIGS:
            for pct in ("p50", "p90", "p99"):
                results[k][f"added_{pct}_ms"] = (
                    results[k][f"{pct}_ms"] - results["direct"][f"{pct}_ms"]
                )
        rounds.append(results)
        print(
            f"round {r + 1}: " + ", ".join(f"{k} p50 {v['p50_ms']:.2f}" for k, v in results.items())
        )

    med = c.median_rows(rounds)
    rows = [{"config": k, **med[k]} for k in CONFIGS]
    columns = ["config", "p50_ms", "p90_ms", "p99_ms", "added_p50_ms", "added_p99_ms"]
    columns += ["max_ms", "errors", "send_lag_max_ms", "proxy_cpu_us"]
    title = f"Latency at {args.rate:g} req/s, 1 KiB POST, {args.duration:g} s (medians)"
    print()
    print(c.table(rows, columns, title))
    c.finish("latency", {"args": vars(args), "medians": med, "rounds": rounds}, started)


if __name__ == "__main__":
    main()
