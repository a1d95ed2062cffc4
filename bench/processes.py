"""``--processes 2`` against ``--processes 1`` on this 2-core machine, same round.

- proxy: ``hqm proxy --redis --parser auto --processes P``, 1 KiB POST, 64 keep-alive
  connections, wrk (one thread) and Redis pinned to core 1; the hqm processes are not
  pinned (two children need both cores), so with P = 2 one of them competes with wrk
  and Redis for core 1. req/s, and CPU µs per request summed over the whole process
  tree (supervisor + children), each as the ratio x2 / x1 of the same round. Beside
  it, the bare h11 ceiling (bench/ceiling.py, one process, not pinned either) with
  the same wrk: ratio_h11 of every proxy row.
- worker: N queued 1 KiB POSTs (filled through a proxy, then stopped), drained by
  ``hqm worker --processes P --burst`` (``--concurrency`` per child) into the trivial
  app on core 1 with Redis; msgs/s and CPU µs per message of the tree, x2 / x1. The
  window opens once every child has logged ``worker started`` (the entries still in
  the stream then are the messages counted) and closes when the supervisor exits;
  its CPU then is read from wait4 (its own and its reaped children's).

Rounds are interleaved: each runs every configuration once, in a rotated order, on
fresh processes (fresh Redis too).

    python bench/processes.py [--rounds 3] [--duration 8] [-n 20000] [--configs ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from pathlib import Path

import common as c
from drain import accepts_flag, fill, left_in_streams

CONFIGS = ("ceiling", "proxy x1", "proxy x2", "worker x1", "worker x2")
PAIRS = {"proxy": ("proxy x1", "proxy x2"), "worker": ("worker x1", "worker x2")}
#: How often the drain's end is polled (the window closes within this of the exit).
POLL_S = 0.005


# --- process trees --------------------------------------------------------------------
def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it (by parent pid in /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                children.setdefault(int(_stat(int(entry.name))[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process tree: utime + stime + cutime + cstime of every live
    process in it, so a child that exited and was waited for still counts (in its
    parent's cutime)."""
    ticks = 0
    for member in descendants(pid):
        with contextlib.suppress(OSError, IndexError):
            ticks += sum(int(v) for v in _stat(member)[11:15])
    return ticks / c.TICK


def tree_rss_mib(pid: int) -> float:
    total = 0.0
    for member in descendants(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
    return total


def wait_logs(proc: c.Proc, marker: str, count: int, timeout: float = 30.0) -> None:
    """Until ``count`` JSON log lines say ``marker`` (one per child)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = 0
        for line in proc.log_lines():
            with contextlib.suppress(ValueError):
                found += marker in line and json.loads(line).get("msg") == marker
        if found >= count:
            return
        proc._check_alive()
        time.sleep(0.01)
    raise TimeoutError(f"{proc.name}: {count} x {marker!r} not in {timeout}s:\n{proc.tail()}")


# --- the runs ---------------------------------------------------------------------------
def ceiling_run(duration: float, warmup: float) -> dict:
    app = c.start_app(None, status=202)
    try:
        c.wrk(app.port, warmup)
        cpu0 = tree_cpu_s(app.pid)
        res = c.wrk(app.port, duration)
        res["cpu_us"] = (tree_cpu_s(app.pid) - cpu0) * 1e6 / max(res["requests"], 1)
        res["rss_mib"], res["processes"] = app.rss_mib(), 1
        return res
    finally:
        app.stop()


def proxy_run(processes: int, duration: float, warmup: float) -> dict:
    redis, url = c.start_redis(c.LOAD_CORE)
    port = c.free_port()
    argv = [*c.hqm_cmd(), "proxy", "--listen", f"127.0.0.1:{port}", "--admin", "127.0.0.1:0"]
    # No worker: the ingress alone is measured; the upstream is never called.
    argv += ["--upstream", f"127.0.0.1:{c.free_port()}", "--redis", url, "--parser", "auto"]
    proxy = c.Proc("proxy", [*argv, "--processes", str(processes)], None)
    try:
        wait_logs(proxy, "listening", processes)
        c.wrk(port, warmup)
        cpu0, redis0 = tree_cpu_s(proxy.pid), redis.cpu_s()
        res = c.wrk(port, duration)
        count = max(res["requests"], 1)
        res["cpu_us"] = (tree_cpu_s(proxy.pid) - cpu0) * 1e6 / count
        res["redis_cpu_us"] = (redis.cpu_s() - redis0) * 1e6 / count
        res["rss_mib"], res["processes"] = tree_rss_mib(proxy.pid), len(descendants(proxy.pid))
        return res
    finally:
        proxy.stop()
        redis.stop()


def worker_run(processes: int, n: int, concurrency: int, parser: tuple[str, ...]) -> dict:
    redis, url = c.start_redis(c.LOAD_CORE)
    app = c.start_app(c.LOAD_CORE, status=200)
    try:
        fill(url, app.port, n)
        extra = ("--processes", str(processes), *parser)
        worker = c.Proc(
            "worker", c.worker_argv(url, app.port, concurrency, *extra, burst=True), None
        )
        wait_logs(worker, "worker started", processes)
        members = len(descendants(worker.pid))
        left = left_in_streams(redis.port)
        t0, cpu0 = time.monotonic(), tree_cpu_s(worker.pid)
        deadline = t0 + max(120.0, n / 100)
        while True:
            pid, status, usage = os.wait4(worker.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker --processes {processes}: not done:\n{worker.tail()}")
            time.sleep(POLL_S)
        elapsed = time.monotonic() - t0
        worker.popen.returncode = os.waitstatus_to_exitcode(status)  # reaped here, by wait4
        cpu = usage.ru_utime + usage.ru_stime - cpu0
        return {
            "msgs_per_s": left / elapsed,
            "cpu_us": cpu * 1e6 / max(left, 1),
            "msgs": left,
            "elapsed_s": elapsed,
            "exit_code": worker.popen.returncode,
            "processes": members,
            "left_in_streams": left_in_streams(redis.port),
        }
    finally:
        app.stop()
        redis.stop()


# --- reporting --------------------------------------------------------------------------
def add_ratios(results: dict[str, dict]) -> None:
    rate = {"proxy": "rps", "worker": "msgs_per_s"}
    for kind, (one, two) in PAIRS.items():
        if one in results and two in results:
            for config in (one, two):
                res, base = results[config], results[one]
                res["rate_x2_x1"] = res[rate[kind]] / base[rate[kind]]
                res["cpu_x2_x1"] = res["cpu_us"] / base["cpu_us"]
    if "ceiling" in results:
        for config in ("ceiling", *PAIRS["proxy"]):
            if config in results:
                results[config]["ratio_h11"] = results[config]["rps"] / results["ceiling"]["rps"]
                cpu = results["ceiling"]["cpu_us"] / results[config]["cpu_us"]
                results[config]["cpu_ratio_h11"] = cpu


def pick(text: str) -> list[str]:
    picked = [name.strip() for name in text.split(",") if name.strip()]
    for kind, pair in PAIRS.items():  # "proxy" / "worker": both of its pair
        if kind in picked:
            picked += pair
    unknown = sorted(set(picked) - set(CONFIGS) - set(PAIRS))
    if unknown:
        raise SystemExit(f"--configs: unknown {unknown}; of {', '.join(CONFIGS)}, proxy, worker")
    return [name for name in CONFIGS if name in picked]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="wrk seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("-n", type=int, default=20000, help="queued requests per drain")
    parser.add_argument("--concurrency", type=int, default=16, help="per worker process")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="names, or proxy / worker")
    args = parser.parse_args()
    configs = pick(args.configs)
    worker_parser = ("--parser", "auto") if accepts_flag("worker", "--parser") else ()
    if not worker_parser and any(k.startswith("worker") for k in configs):
        print("note: `hqm worker --help` has no --parser: the workers run with their own")

    started = time.monotonic()
    rounds: list[dict[str, dict]] = []
    for r in range(args.rounds):
        order = configs[r % len(configs) :] + configs[: r % len(configs)]
        results: dict[str, dict] = {}
        for config in order:
            if config == "ceiling":
                results[config] = ceiling_run(args.duration, args.warmup)
            elif config.startswith("proxy"):
                results[config] = proxy_run(int(config[-1]), args.duration, args.warmup)
            else:
                procs = int(config[-1])
                results[config] = worker_run(procs, args.n, args.concurrency, worker_parser)
        add_ratios(results)
        rounds.append({config: results[config] for config in configs})
        print(f"round {r + 1}: " + ", ".join(f"{k} {_rate(results[k]):.0f}" for k in configs))

    med = c.median_rows(rounds)
    proxies = [k for k in configs if not k.startswith("worker")]
    if proxies:
        rows = [{"config": _label(k), **med[k]} for k in proxies]
        columns = ["config", "rps", "rate_x2_x1", "cpu_us", "cpu_x2_x1", "ratio_h11"]
        columns += ["cpu_ratio_h11", "p50_ms", "p99_ms", "redis_cpu_us", "rss_mib", "processes"]
        print()
        print(c.table(rows, columns, "hqm proxy --processes: 1 KiB POST, 64 connections"))
    workers = [k for k in configs if k.startswith("worker")]
    if workers:
        rows = [{"config": _label(k, args.concurrency), **med[k]} for k in workers]
        columns = ["config", "msgs_per_s", "rate_x2_x1", "cpu_us", "cpu_x2_x1", "msgs"]
        columns += ["elapsed_s", "left_in_streams", "processes"]
        print()
        print(c.table(rows, columns, f"hqm worker --processes: drain of {args.n} 1 KiB POSTs"))
    print(
        "\nmedians. cpu_us: CPU µs per request (message) of the whole hqm process tree"
        " (supervisor + children; of the one process at x1). rate_x2_x1, cpu_x2_x1: this"
        " row's req/s (msgs/s), CPU µs per request over x1's, same round. ratio_h11,"
        " cpu_ratio_h11: against the bare h11 ceiling of the same round. processes: in"
        " the tree."
    )
    data = {"args": vars(args), "worker_parser": worker_parser, "medians": med}
    c.finish("processes", {**data, "rounds": rounds}, started)


def _rate(res: dict) -> float:
    return res.get("rps", res.get("msgs_per_s", float("nan")))


def _label(config: str, concurrency: int = 16) -> str:
    if config == "ceiling":
        return "bare h11 ceiling (one process, not pinned)"
    kind, procs = config.split(" x")
    if kind == "proxy":
        return f"hqm proxy + Redis --processes {procs}"
    return f"hqm worker --processes {procs} --burst, --concurrency {concurrency} each"


if __name__ == "__main__":
    main()
