"""Where each microsecond of ``hqm proxy`` (or ``hqm worker``) goes: a py-spy profile.

``hqm proxy --redis --parser P`` on core 0 (Redis and wrk on core 1), 1 KiB POSTs on
64 keep-alive connections; py-spy samples the proxy (``--rate`` Hz, non-blocking)
for ``--duration`` seconds while wrk runs. Each sample's innermost frame is put in a
part of the data path by the file it is in; a part's µs per request is its share of
the samples times the proxy's CPU µs per request over the same window (from /proc).
Samples in C code are counted where Python called it: ``transport.write`` of an
answer is "io", the Redis socket write "redis client", the uvloop loop itself (its
reads, epoll, callbacks' dispatch) "event loop".

``--target worker``: ``-n`` 1 KiB POSTs are queued through a proxy (then stopped), and
``hqm worker --burst --concurrency 16`` on core 0 drains them into the trivial app
(bench/ceiling.py answering 200, core 1, with Redis); py-spy samples the worker from
its start to its exit, and µs per message = its CPU over the drain / the messages.

    python bench/profile.py [--target proxy|worker] [--parser auto|h11] [--duration 10]

Beside it, when ``perf`` is on the PATH (Debian's linux-perf), ``perf record`` samples
the same process over the same window: the share of its CPU in each shared object (the
Python interpreter, the kernel, uvloop, httptools, ...). py-spy puts a sample it cannot
place in Python code under the loop's entry frame (``Runner.run``); perf tells how much
of that is the loop's own C code and how much is Python run from its callbacks.

Needs py-spy (``.venv/bin/pip install py-spy``) and root (or ptrace permission).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import common as c
from drain import fill

#: First match wins: (part, pattern on "function (file:line)"; py-spy names a file of
#: the standard library or site-packages by its path there: "(h11/_state.py:12)").
PARTS = [
    (
        "parse (sans-IO connections)",
        r"hqm/proto/(fast_server|server|events|client|fast_client|grammar)\.py|\(h11/|\(httptools/",
    ),
    ("answer writer", r"hqm/proto/framing\.py"),
    ("io (asyncio protocol, transport writes)", r"hqm/io/"),
    (
        "ingress, headers, envelope",
        r"hqm/ingress/|hqm/proto/(prefer|schedule|headers|traceparent|envelope)\.py",
    ),
    ("queue (records, batching, codec)", r"hqm/queue/"),
    ("worker (loop, sender, outcomes, pool)", r"hqm/worker/"),
    ("redis client (redis-py, socket write)", r"\(redis/|asyncio/streams\.py"),
    ("metrics, logs", r"hqm/ops/|\(prometheus_client/|\(logging/"),
    ("at the loop's entry frame (py-spy could not place it lower: see perf)", r"asyncio/|uvloop"),
]
_FRAME = re.compile(r"(.*) \((.*):(\d+)\)$")


def part_of(frame: str) -> str:
    for name, pattern in PARTS:
        if re.search(pattern, frame):
            return name
    return "other"


#: perf's shared objects, grouped: (part, pattern on the object's name).
OBJECTS = [
    ("Python interpreter (libpython: all Python code)", r"libpython|^python"),
    ("kernel (syscalls, TCP)", r"kernel|vdso"),
    ("uvloop (loop.so, libuv)", r"^loop\."),
    ("httptools (llhttp)", r"^parser\.|^url_parser\."),
    ("libc (malloc, memcpy)", r"^libc"),
    ("orjson", r"^orjson"),
    ("hiredis", r"^hiredis"),
]


def perf_start(pid: int, out: Path) -> subprocess.Popen | None:
    """``perf record`` of ``pid`` (None without perf); ends with it or on SIGINT."""
    if shutil.which("perf") is None:
        return None
    argv = ["perf", "record", "-F", "499", "-o", str(out), "-p", str(pid)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def perf_split(perf: subprocess.Popen | None, out: Path, cpu_us: float) -> list[dict]:
    """The share of the samples in each group of shared objects, and its µs."""
    if perf is None:
        return []
    if perf.poll() is None:
        perf.send_signal(signal.SIGINT)
    perf.wait(60)
    argv = ["perf", "report", "-i", str(out), "--sort", "dso", "--stdio", "-g", "none"]
    report = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    shares: collections.Counter[str] = collections.Counter()
    for line in report.splitlines():
        match = re.match(r"\s*([0-9.]+)%\s+(\S+)", line)
        if match:
            name = match[2].strip("[]")
            part = next((p for p, pattern in OBJECTS if re.search(pattern, name)), "other")
            shares[part] += float(match[1]) / 100
    return [
        {"object": part, "share": share, "us_per_req": cpu_us * share}
        for part, share in shares.most_common()
    ]


def summarize(raw: Path, cpu_us: float, top: int) -> tuple[list[dict], list[dict]]:
    parts: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        leaf = stack.split(";")[-1]
        parts[part_of(leaf)] += n
        match = _FRAME.match(leaf)
        if match:
            leaf = f"{match[1]} ({'/'.join(Path(match[2]).parts[-2:])}:{match[3]})"
        leaves[leaf] += n
    total = max(total, 1)

    def row(key: str, n: int, label: str) -> dict:
        return {label: key, "share": n / total, "us_per_req": cpu_us * n / total}

    return (
        [row(k, n, "part") for k, n in parts.most_common()],
        [row(k, n, "line") for k, n in leaves.most_common(top)],
    )


PERF_DATA = c.TMP / "perf.data"
#: perf's split of the run, set by the profile functions.
PERF: dict[str, list[dict]] = {}


def profile_proxy(args: argparse.Namespace, record: list[str]) -> tuple[float, float, str]:
    redis, url = c.start_redis(c.LOAD_CORE)
    proxy = c.start_proxy(c.SERVER_CORE, c.free_port(), url, "--parser", args.parser)
    try:
        c.wrk(proxy.port, 1.0)  # warm-up
        load: dict = {}
        runner = threading.Thread(
            target=lambda: load.update(c.wrk(proxy.port, args.duration + 2)), daemon=True
        )
        runner.start()
        time.sleep(1.0)  # wrk at full rate before the window opens (a ramp, not an outcome)
        cpu0, t0 = proxy.cpu_s(), time.monotonic()
        perf = perf_start(proxy.pid, PERF_DATA)
        subprocess.run([*record, "--pid", str(proxy.pid)], check=True, capture_output=True)
        cpu_s, window_s = proxy.cpu_s() - cpu0, time.monotonic() - t0
        if perf is not None:
            perf.send_signal(signal.SIGINT)
        runner.join()
    finally:
        proxy.stop()
        redis.stop()
    cpu_us = cpu_s * 1e6 / max(load["rps"] * window_s, 1)
    PERF["split"] = perf_split(perf, PERF_DATA, cpu_us)
    title = (
        f"hqm proxy --parser {args.parser} + Redis: {load['rps']:.0f} req/s, "
        f"{cpu_us:.1f} CPU µs/request over the {window_s:.1f} s window"
    )
    return load["rps"], cpu_us, title


def profile_worker(args: argparse.Namespace, record: list[str]) -> tuple[float, float, str]:
    redis, url = c.start_redis(c.LOAD_CORE)
    app = c.start_app(c.LOAD_CORE, status=200)
    try:
        fill(url, app.port, args.n)
        argv = c.worker_argv(url, app.port, 16, "--parser", args.parser, burst=True)
        worker = c.Proc("worker", argv, c.SERVER_CORE)
        # py-spy follows the worker to its exit: the whole drain, start-up included.
        spy = subprocess.Popen([*record, "--pid", str(worker.pid)], stdout=subprocess.DEVNULL)
        perf = perf_start(worker.pid, PERF_DATA)
        worker.wait_log("worker started", timeout=30)
        t0 = worker.ready_ts
        usage = os.wait4(worker.pid, 0)[2]  # reaps it: CPU from the kernel's accounting
        elapsed = time.time() - t0
        spy.wait(60)
    finally:
        app.stop()
        redis.stop()
    cpu_us = (usage.ru_utime + usage.ru_stime) * 1e6 / args.n
    PERF["split"] = perf_split(perf, PERF_DATA, cpu_us)
    rate = args.n / elapsed
    title = (
        f"hqm worker --parser {args.parser} draining {args.n} messages: {rate:.0f} msgs/s, "
        f"{cpu_us:.1f} CPU µs/message (start-up included)"
    )
    return rate, cpu_us, title


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=("proxy", "worker"), default="proxy")
    parser.add_argument("--parser", choices=("auto", "h11"), default="auto")
    parser.add_argument("-n", type=int, default=60000, help="--target worker: messages")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        sys.exit("py-spy not found: .venv/bin/pip install py-spy")

    started = time.monotonic()
    raw = c.RESULTS / f"profile-{args.target}-{args.parser}.txt"
    record = [spy, "record", "--rate", str(args.rate), "--format", "raw", "--nonblocking"]
    record += ["-o", str(raw)]
    if args.target == "proxy":
        rate, cpu_us, title = profile_proxy(args, [*record, "--duration", str(int(args.duration))])
    else:
        rate, cpu_us, title = profile_worker(args, record)
    parts, lines = summarize(raw, cpu_us, args.top)
    print(c.table(parts, ["part", "share", "us_per_req"], title))
    print()
    print(c.table(lines, ["line", "share", "us_per_req"], "Innermost frames"))
    if PERF.get("split"):
        print()
        print(c.table(PERF["split"], ["object", "share", "us_per_req"], "perf: shared objects"))
    c.finish(
        f"profile-{args.target}-{args.parser}",
        {
            "args": vars(args),
            "rate": rate,
            "cpu_us": cpu_us,
            "parts": parts,
            "lines": lines,
            "perf": PERF.get("split", []),
        },
        started,
    )


if __name__ == "__main__":
    main()
