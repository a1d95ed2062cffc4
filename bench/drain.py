"""How fast workers drain a backlog, against a bare h11 client ceiling.

Per run: fresh Redis (core 1) and trivial app (bench/ceiling.py answering 200,
core 1); N 1 KiB POSTs are queued through ``hqm proxy`` (async mode), the proxy is
stopped, then ``hqm worker --burst`` (one, or two) on core 0 drains the stream and
exits. msgs/s = N / (first worker ready -> last worker exited).

The ceiling, in the same round: bench/h11load.py on core 0 sending N requests shaped
like the replayed ones (1 KiB body, forwarded headers, request id) to the same app
over the same number of keep-alive connections as one worker's --concurrency.

The worker runs with ``--parser auto`` (httptools reads the app's answers) and, in a
row of its own, ``--parser h11``; a worker without the flag (``hqm worker --help``
does not list it) runs as it is and the h11 row is skipped, with a note.

``--baseline DIR`` adds one worker run from a checkout of an earlier hqm (``git worktree
add DIR COMMIT``), in the same rounds.

    python bench/drain.py [--rounds 3] [-n 20000] [--concurrency 16] [--configs ...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import subprocess
import time
from pathlib import Path

import common as c
from h11load import Request, closed_loop

CONFIGS = ("ceiling", "1 worker", "1 worker h11", "2 workers")
#: Workers and the --parser of each worker configuration.
WORKERS = {"1 worker": (1, "auto"), "1 worker h11": (1, "h11"), "2 workers": (2, "auto")}
#: ``--baseline DIR``: one worker from a checkout of an earlier hqm, its default parser.
BASELINE = "1 worker, --baseline"
NAMES = {"ceiling": "ceiling", "1": "1 worker", "1-h11": "1 worker h11", "2": "2 workers"}


def accepts_flag(command: str, flag: str) -> bool:
    """True when ``hqm <command> --help`` lists ``flag`` (a flag another change may add)."""
    argv = [*c.hqm_cmd(), command, "--help"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout
    return re.search(rf"(^|\s){re.escape(flag)}[\s=/]", out, re.M) is not None


def label(config: str, concurrency: int, parser_flag: bool) -> str:
    if config == "ceiling":
        return f"bare h11 client ceiling ({concurrency} connections)"
    if config == BASELINE:
        return f"1 worker of the --baseline hqm, --concurrency {concurrency}"
    workers, parser = WORKERS[config]
    text = f"{workers} worker{'s (both on core 0)' if workers > 1 else ''}"
    text += f", --concurrency {concurrency}"
    return text + (f", --parser {parser}" if parser_flag else ", no --parser (not in this hqm)")


def fill(redis_url: str, app_port: int, n: int) -> float:
    """Queue n requests through the proxy; returns the proxy's accept rate."""
    proxy = c.start_proxy(c.SERVER_CORE, app_port, redis_url)
    try:
        req = Request(b"POST", b"/", [(b"Content-Type", b"text/plain")], b"x" * 1024)
        res = asyncio.run(closed_loop(proxy.port, [req] * n, 64))
        if res["statuses"] != {202: n}:
            raise RuntimeError(f"fill: {res['statuses']}")
        return res["rps"]
    finally:
        proxy.stop()


def drain(workers: int, n: int, concurrency: int, *extra: str, source=None) -> dict:
    redis, url = c.start_redis(c.LOAD_CORE)
    app = c.start_app(c.LOAD_CORE, status=200)
    try:
        fill_rps = fill(url, app.port, n)
        argv = c.worker_argv(url, app.port, concurrency, *extra, burst=True, source=source)
        procs = [c.Proc("worker", argv, c.SERVER_CORE) for _ in range(workers)]
        for proc in procs:
            proc.wait_log("worker started", timeout=30)
        t0 = min(p.ready_ts for p in procs)  # as logged by the workers
        cpu0 = {p.pid: p.cpu_s() for p in procs}
        cpu = dict(cpu0)
        while any(p.popen.poll() is None for p in procs):
            for p in procs:
                if p.popen.poll() is None:
                    with contextlib.suppress(OSError):
                        cpu[p.pid] = p.cpu_s()
            time.sleep(0.01)
        elapsed = time.time() - t0
        codes = [p.stop() for p in procs]
        depth = left_in_streams(redis.port)
        return {
            "msgs_per_s": n / elapsed,
            "elapsed_s": elapsed,
            "cpu_us": sum(cpu[p] - cpu0[p] for p in cpu) * 1e6 / n,
            "fill_rps": fill_rps,
            "exit_codes": codes,
            "left_in_streams": depth,
        }
    finally:
        app.stop()
        redis.stop()


def left_in_streams(port: int) -> int:
    """Entries left in every stream of the Redis (0 once everything is finished)."""
    import redis as redis_py

    client = redis_py.Redis(port=port)
    try:
        return sum(
            client.xlen(k) for k in client.scan_iter(_type="stream") if b"dlq" not in k.lower()
        )
    finally:
        client.close()


def ceiling(n: int, concurrency: int) -> dict:
    app = c.start_app(c.LOAD_CORE, status=200)
    try:
        argv = ["taskset", "-c", str(c.SERVER_CORE), c.PY, "h11load.py", "closed"]
        argv += ["--port", str(app.port), "-n", str(n), "-c", str(concurrency)]
        out = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=c.BENCH)
        res = json.loads(out.stdout)
        if res["statuses"] != {"200": n}:
            raise RuntimeError(f"ceiling: {res['statuses']}")
        return {"msgs_per_s": res["rps"], "elapsed_s": res["elapsed_s"], "cpu_us": res["cpu_us"]}
    finally:
        app.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-n", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=16, help="per worker, and ceiling")
    parser.add_argument(
        "--configs", default=",".join(NAMES), help=f"of {', '.join(NAMES)} (ceiling always runs)"
    )
    parser.add_argument("--baseline", type=Path, help="a checkout of an earlier hqm: adds a row")
    args = parser.parse_args()
    picked = {name.strip() for name in args.configs.split(",")} | {"ceiling"}
    if picked - set(NAMES):
        raise SystemExit(f"--configs: unknown {sorted(picked - set(NAMES))}")
    configs = [NAMES[name] for name in NAMES if name in picked]
    parser_flag = accepts_flag("worker", "--parser")
    if not parser_flag and "1 worker h11" in configs:
        configs.remove("1 worker h11")
        print("note: `hqm worker --help` has no --parser: the --parser h11 row is skipped")
    if args.baseline is not None:
        configs.append(BASELINE)

    started = time.monotonic()
    rounds: list[dict[str, dict]] = []
    for r in range(args.rounds):
        order = configs[r % len(configs) :] + configs[: r % len(configs)]
        results = {}
        for config in order:
            if config == "ceiling":
                results[config] = ceiling(args.n, args.concurrency)
            elif config == BASELINE:
                source = args.baseline.resolve()
                results[config] = drain(1, args.n, args.concurrency, source=source)
            else:
                workers, parser_name = WORKERS[config]
                extra = ("--parser", parser_name) if parser_flag else ()
                results[config] = drain(workers, args.n, args.concurrency, *extra)
        top = results["ceiling"]
        for config in configs:
            results[config]["ratio"] = results[config]["msgs_per_s"] / top["msgs_per_s"]
            results[config]["cpu_ratio"] = top["cpu_us"] / results[config]["cpu_us"]
        rounds.append({config: results[config] for config in configs})
        print(
            f"round {r + 1}: " + ", ".join(f"{k} {results[k]['msgs_per_s']:.0f}" for k in configs)
        )

    med = c.median_rows(rounds)
    rows = [{"config": label(k, args.concurrency, parser_flag), **med[k]} for k in configs]
    columns = ["config", "msgs_per_s", "ratio", "cpu_us", "cpu_ratio", "elapsed_s"]
    columns.append("left_in_streams")
    title = f"Drain: {args.n} queued 1 KiB POSTs, concurrency {args.concurrency} (medians)"
    print()
    print(c.table(rows, columns, title))
    print(
        "\ncpu_us: CPU µs per message of the worker process(es), or of the ceiling client."
        " ratio: msgs/s / the ceiling's, same round; cpu_ratio: the ceiling's CPU µs per"
        " message / this one's (the ratio if each had a whole core)."
    )
    data = {"args": vars(args), "worker_parser_flag": parser_flag, "medians": med}
    c.finish("drain", {**data, "rounds": rounds}, started)


if __name__ == "__main__":
    main()
