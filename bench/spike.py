"""The seed's Black Friday: a burst far above what the app can serve, absorbed by the queue.

The app (bench/capped_app.py, core 1) serves at most 100 req/s: 10 at once, 0.1 s
each. ``hqm proxy`` (core 0, async mode, Redis on core 1) takes a burst from wrk
(core 1, 64 connections, as fast as it goes) for ``--duration`` s; wrk writes the id
of every 202 into a ledger. Two ``hqm worker`` (unpinned, --concurrency 5 each, so
10 in flight at most: the app's cap) drain it. Every 0.5 s arrivals/s (proxy
/metrics), completions/s (the app's own counter) and queue depth are sampled and
drawn to results/spike.png. After the drain every ledger id is looked up with
GET /_hqm/requests/{id}: each must answer the app's stored 200.

``--global-rate R`` (the seed's story: a burst at wrk's pace arrives, workers scale
out, the app is fed at most the rate it was given): ``--workers`` (4 by default) run
with ``--global-rate R --global-burst B`` shared through Redis, and the app is not
capped (``capped_app.py --cap 0 --service 0``): only the fleet-wide rate holds it
back. The app counts arrivals per second of its own clock; the bench reports the
most in any one second (must stay within R + B), the drain time against N/R s, and
the plot (results/spike-fleet.png, beside results/spike-fleet.json) shows the app's
count per second.

    python bench/spike.py [--duration 20]     # quick: --duration 3
    python bench/spike.py --global-rate 100 --duration 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time

import common as c
from h11load import Request, closed_loop

_REQUESTS = "hqm_proxy_requests_total"
_DEPTH = 'hqm_queue_depth{queue="default"}'


class Sampler(threading.Thread):
    """Every ``period`` s: (t, proxy requests answered, app completions, queue depth)."""

    def __init__(self, proxy: c.Proc, app: c.Proc, period: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.proxy, self.app, self.period = proxy, app, period
        self.samples: list[tuple[float, float, float, float]] = []
        self.done = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.done.is_set():
            metrics = c.scrape(self.proxy.admin)
            answered = sum(v for k, v in metrics.items() if k.startswith(_REQUESTS))
            stats = json.loads(c.http_get(self.app.port, "/stats"))
            t = time.monotonic() - start
            self.samples.append((t, answered, stats["completed"], metrics.get(_DEPTH, 0.0)))
            self.done.wait(self.period - (time.monotonic() - start) % self.period)

    def series(self) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {"t": [], "arrivals": [], "completions": [], "depth": []}
        for prev, cur in zip(self.samples, self.samples[1:], strict=False):
            dt = cur[0] - prev[0]
            out["t"].append(cur[0])
            out["arrivals"].append((cur[1] - prev[1]) / dt)
            out["completions"].append((cur[2] - prev[2]) / dt)
            out["depth"].append(cur[3])
        return out


def plot(
    series: dict[str, list[float]],
    burst_s: float,
    title: str,
    per_second: list[tuple[float, int]] | None = None,
    limit: float = 0.0,
    name: str = "spike",
) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, rates = plt.subplots(figsize=(10, 5))
    rates.plot(series["t"], series["arrivals"], label="arrivals/s (proxy)", color="tab:red")
    rates.plot(series["t"], series["completions"], label="completions/s (app)", color="tab:green")
    rates.set_yscale("symlog", linthresh=100)
    rates.set_xlabel("seconds since the burst started")
    rates.set_ylabel("requests/s")
    if per_second:
        rates.bar(
            [t + 0.5 for t, _ in per_second],
            [n for _, n in per_second],
            width=0.9,
            color="tab:olive",
            alpha=0.6,
            label="app arrivals per second (its clock)",
        )
        rates.axhline(limit, color="black", linestyle="--", linewidth=1, label="rate + burst")
    rates.axvspan(0, burst_s, color="tab:red", alpha=0.08, label="burst")
    depth = rates.twinx()
    depth.plot(series["t"], series["depth"], label="queue depth", color="tab:blue")
    depth.set_ylabel("queue depth (entries)")
    lines = rates.get_legend_handles_labels()
    more = depth.get_legend_handles_labels()
    rates.legend(lines[0] + more[0], lines[1] + more[1], loc="upper right")
    rates.set_title(title)
    c.RESULTS.mkdir(exist_ok=True)
    path = c.RESULTS / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return str(path)


def read_ledger(prefix) -> list[str]:
    ids: list[str] = []
    for path in sorted(prefix.parent.glob(prefix.name + "-*.txt")):
        ids += [line for line in path.read_text().split() if line]
    return ids


def check_ledger(port: int, ids: list[str]) -> dict:
    """GET every id's result; done = the app's stored 200."""
    reqs = [Request(b"GET", f"/_hqm/requests/{rid}".encode()) for rid in ids]
    res = asyncio.run(closed_loop(port, reqs, 32))
    return {str(k): v for k, v in res["statuses"].items()}


def start_workers(args, url: str, app_port: int, per_worker: int) -> list[c.Proc]:
    extra = []
    if args.global_rate:
        extra = ["--global-rate", f"{args.global_rate:g}", "--global-burst", str(args.global_burst)]
    workers = []
    for _ in range(args.workers):
        proc = c.Proc("worker", [*c.worker_argv(url, app_port, per_worker), *extra], None)
        proc.wait_log("worker started")
        workers.append(proc)
    return workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20, help="burst seconds")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--cap", type=int, default=10, help="app: requests served at once")
    parser.add_argument("--service", type=float, default=0.1, help="app: seconds each")
    parser.add_argument("--workers", type=int, help="default 2; 4 with --global-rate")
    parser.add_argument(
        "--global-rate", type=float, default=0, help="workers' fleet-wide rate; app uncapped"
    )
    parser.add_argument("--global-burst", type=int, default=10)
    parser.add_argument(
        "--worker-concurrency", type=int, help="default: cap / workers; 16 with --global-rate"
    )
    args = parser.parse_args()
    fleet = args.global_rate > 0
    args.workers = args.workers or (4 if fleet else 2)
    if fleet:
        args.cap, args.service = 0, 0.0  # the app takes everything: only the fleet limits
    cap_rate = args.global_rate if fleet else args.cap / args.service
    started = time.monotonic()

    redis, url = c.start_redis(c.LOAD_CORE)
    app = c.start_capped_app(c.LOAD_CORE, args.cap, args.service)
    proxy = c.start_proxy(c.SERVER_CORE, app.port, url)
    per_worker = args.worker_concurrency or (16 if fleet else max(1, args.cap // args.workers))
    workers = start_workers(args, url, app.port, per_worker)
    ledger = c.TMP / "spike-ledger"
    sampler = Sampler(proxy, app)
    sampler.start()
    burst_start = time.time()
    script = c.lua_script(1024, ledger=ledger)
    load = c.wrk(proxy.port, args.duration, connections=args.connections, script=script)
    burst_s = time.time() - burst_start

    accepted = c.scrape(proxy.admin).get(f'{_REQUESTS}{{mode="async",outcome="accepted"}}', 0)
    theory_s = accepted / cap_rate
    deadline = time.monotonic() + theory_s * 2 + 60
    while time.monotonic() < deadline:
        stats = json.loads(c.http_get(app.port, "/stats"))
        if stats["completed"] >= accepted and c.scrape(proxy.admin).get(_DEPTH, 1) == 0:
            break
        time.sleep(0.2)
    time.sleep(1.0)  # one more sample of the flat tail
    sampler.done.set()
    sampler.join()
    stats = json.loads(c.http_get(app.port, "/stats"))
    seconds = json.loads(c.http_get(app.port, "/seconds"))
    drain_s = stats["last_completion"] - burst_start
    ids = read_ledger(ledger)
    checked = check_ledger(proxy.port, ids)
    for proc in [*workers, proxy, app, redis]:
        proc.stop()

    res = {
        "burst_s": burst_s,
        "sent": load["requests"] + load["socket_errors"],
        "burst_rps": load["rps"],
        "accepted_202": len(ids),
        "accepted_pct": 100.0 * len(ids) / max(load["requests"] + load["socket_errors"], 1),
        "errors": load["non_2xx"] + load["socket_errors"],
        "queued_total": accepted,
        "lost": len(ids) - checked.get("200", 0),
        "ledger_check": checked,
        "app_completed": stats["completed"],
        "duplicates": stats["completed"] - accepted,
        "drain_s": drain_s,
        "theoretical_s": theory_s,
        "drain_vs_theory": drain_s / theory_s if theory_s else float("nan"),
    }
    per_second = [(int(k) - burst_start, n) for k, n in seconds.items()]
    if fleet:
        limit = args.global_rate + args.global_burst
        # The first and last seconds are partial; every full one is at the rate or under.
        res |= {
            "workers": args.workers,
            "global_rate": args.global_rate,
            "global_burst": args.global_burst,
            "limit_rate_plus_burst": limit,
            "app_max_calendar_second": stats["max_calendar_second"],
            "app_max_1s_window": stats["max_1s_window"],
            "app_max_vs_limit": stats["max_1s_window"] / limit,
            "limit_kept": stats["max_1s_window"] <= limit,
            "drain_within_10pct": abs(res["drain_vs_theory"] - 1) <= 0.10,
            "app_seconds_counted": len(seconds),
        }
    else:
        res |= {
            "app_cap": args.cap,
            "peak_at_door": stats["peak_at_door"],
            "peak_serving": stats["peak_serving"],
            "app_max_1s_window": stats["max_1s_window"],
        }
    series = sampler.series()
    bench = "spike-fleet" if fleet else "spike"  # each mode keeps its own JSON and PNG
    what = f"{args.workers} workers, --global-rate {args.global_rate:g}" if fleet else ""
    title = f"hqm spike: {len(ids)} requests in {burst_s:.0f} s into an app " + (
        f"fed by {what}" if fleet else f"capped at {cap_rate:g}/s"
    )
    res["png"] = plot(
        series,
        burst_s,
        title,
        per_second if fleet else None,
        args.global_rate + args.global_burst,
        bench,
    )
    rows = [{"figure": k, "value": v} for k, v in res.items() if k not in ("ledger_check", "png")]
    print(c.table(rows, ["figure", "value"], "Spike (one run)"))
    print(f"\nledger check (GET status: count): {checked}")
    c.finish(
        bench,
        {"args": vars(args), **res, "series": series, "app_per_second": seconds},
        started,
        f"; plot {res['png']}",
    )


if __name__ == "__main__":
    main()
