"""The seed's Black Friday: a burst far above what the app can serve, absorbed by the queue.

The app (bench/capped_app.py, core 1) serves at most 100 req/s: 10 at once, 0.1 s
each. ``hqm proxy`` (core 0, async mode, Redis on core 1) takes a burst from wrk
(core 1, 64 connections, as fast as it goes) for ``--duration`` s; wrk writes the id
of every 202 into a ledger. Two ``hqm worker`` (unpinned, --concurrency 5 each, so
10 in flight at most: the app's cap) drain it. Every 0.5 s arrivals/s (proxy
/metrics), completions/s (the app's own counter) and queue depth are sampled and
drawn to results/spike.png. After the drain every ledger id is looked up with
GET /_hqm/requests/{id}: each must answer the app's stored 200.

    python bench/spike.py [--duration 20]     # quick: --duration 3
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


def plot(series: dict[str, list[float]], burst_s: float, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, rates = plt.subplots(figsize=(10, 5))
    rates.plot(series["t"], series["arrivals"], label="arrivals/s (proxy)", color="tab:red")
    rates.plot(series["t"], series["completions"], label="completions/s (app)", color="tab:green")
    rates.set_yscale("symlog", linthresh=100)
    rates.set_xlabel("seconds since the burst started")
    rates.set_ylabel("requests/s")
    rates.axvspan(0, burst_s, color="tab:red", alpha=0.08, label="burst")
    depth = rates.twinx()
    depth.plot(series["t"], series["depth"], label="queue depth", color="tab:blue")
    depth.set_ylabel("queue depth (entries)")
    lines = rates.get_legend_handles_labels()
    more = depth.get_legend_handles_labels()
    rates.legend(lines[0] + more[0], lines[1] + more[1], loc="upper right")
    rates.set_title(title)
    c.RESULTS.mkdir(exist_ok=True)
    path = c.RESULTS / "spike.png"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20, help="burst seconds")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--cap", type=int, default=10, help="app: requests served at once")
    parser.add_argument("--service", type=float, default=0.1, help="app: seconds each")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    cap_rate = args.cap / args.service
    started = time.monotonic()

    redis, url = c.start_redis(c.LOAD_CORE)
    app = c.start_capped_app(c.LOAD_CORE, args.cap, args.service)
    proxy = c.start_proxy(c.SERVER_CORE, app.port, url)
    per_worker = max(1, args.cap // args.workers)
    workers = [c.start_worker(None, url, app.port, per_worker) for _ in range(args.workers)]
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
        "app_cap": args.cap,
        "peak_at_door": stats["peak_at_door"],
        "peak_serving": stats["peak_serving"],
    }
    series = sampler.series()
    title = (
        f"hqm spike: {len(ids)} requests in {burst_s:.0f} s into an app capped at {cap_rate:g}/s"
    )
    res["png"] = plot(series, burst_s, title)
    rows = [{"figure": k, "value": v} for k, v in res.items() if k not in ("ledger_check", "png")]
    print(c.table(rows, ["figure", "value"], "Spike (one run)"))
    print(f"\nledger check (GET status: count): {checked}")
    c.finish(
        "spike", {"args": vars(args), **res, "series": series}, started, f"; plot {res['png']}"
    )


if __name__ == "__main__":
    main()
