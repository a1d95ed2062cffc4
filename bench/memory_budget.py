"""Memory under large answers (issue 17 item 6): peak RSS (VmHWM) of the proxy with 8
clients reading one maximum-size result at once (with Redis), and of a worker with
--concurrency 16 receiving maximum-size answers from a real app (bench/big_app.py),
each against its own baseline (RSS after one small request) and the budget
(--max-inflight-bytes). Options at their defaults unless given.

``--baseline DIR``: the same runs with the hqm of an earlier checkout (e.g. ``git
archive d9d2170 | tar -x -C DIR``), which reads results whole.

``--embedded SECONDS``: also an embedded proxy under 64 connections of 1 KiB POSTs, with
--max-queue-bytes at its default and with no bound.

    python bench/memory_budget.py [--size N] [--budget N] [--baseline DIR] [--embedded S]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import common as c

MIB = 1 << 20


def vm_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_big_app(size: int) -> c.Proc:
    port = c.free_port()
    proc = c.Proc("big-app", [c.PY, "big_app.py", "--port", str(port), "--size", str(size)], None)
    proc.wait_port(port)
    proc.port = port
    return proc


def redis_and_app(size: int, procs: list) -> tuple[str, c.Proc]:
    """A fresh redis-server and the app answering ``size`` bytes (added to ``procs``)."""
    redis, url = c.start_redis(c.LOAD_CORE)
    procs.append(redis)
    app = start_big_app(size)
    procs.append(app)
    return url, app


def post(port: int, path: str = "/big") -> str:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=b"x", method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["id"]


def result(port: int, rid: str, timeout: float = 120.0) -> int:
    """Poll the result until it is stored; its size."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_hqm/requests/{rid}") as r:
                body = r.read()
                if r.status != 202:
                    return len(body)
        except urllib.error.HTTPError as exc:
            if exc.code != 503:  # (503: past the budget; the result stays, ask again)
                raise RuntimeError(f"{rid}: {exc.code} {exc.read()[:200]!r}") from None
        time.sleep(0.05)
    raise TimeoutError(rid)


def read_all(port: int, rid: str, go: threading.Event, out: list) -> None:
    """Send the GET, wait for ``go``, read the answer to the end (digesting it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(f"GET /_hqm/requests/{rid} HTTP/1.1\r\nHost: b\r\n\r\n".encode())
        go.wait(60)
        digest, total = hashlib.sha256(), 0
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1 << 16)
        head, _, rest = head.partition(b"\r\n\r\n")
        length = int(next(v for k, v in _fields(head) if k == b"content-length"))
        status = int(head.split(b" ", 2)[1])
        digest.update(rest)
        total = len(rest)
        while total < length:
            data = sock.recv(1 << 16)
            if not data:
                break
            digest.update(data)
            total += len(data)
        out.append((status, total))


def _fields(head: bytes):
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        yield name.strip().lower(), value.strip()


def readers(size: int, budget: int | None, source: Path | None) -> dict:
    """8 clients reading one result of ``size`` bytes at once, proxy with Redis."""
    procs: list[c.Proc] = []
    try:
        url, app = redis_and_app(size, procs)
        extra = ["--max-inflight-bytes", str(budget)] if budget else []
        proxy = c.start_proxy(c.SERVER_CORE, app.port, url, *extra, source=source)
        procs.append(proxy)
        wargv = c.worker_argv(url, app.port, 16, "--max-response", str(size), source=source)
        if source is not None:  # (its worker knows no --max-response: 64 MiB fixed)
            wargv = c.worker_argv(url, app.port, 16, source=source)
        worker = c.Proc("worker", wargv, c.LOAD_CORE)
        worker.wait_log("worker started")
        procs.append(worker)
        small = post(proxy.port, "/small")
        result(proxy.port, small)
        rid = post(proxy.port)
        assert result(proxy.port, rid) == size  # one whole read: the baseline has seen one
        baseline = vm_mib(proxy.pid, "VmRSS")
        go, out = threading.Event(), []
        threads = [
            threading.Thread(target=read_all, args=(proxy.port, rid, go, out)) for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        time.sleep(0.5)  # (the 8 GETs are in before anyone reads)
        go.set()
        for thread in threads:
            thread.join()
        peak = vm_mib(proxy.pid, "VmHWM")
        assert sorted(out) == [(200, size)] * 8, out
        return {"baseline_mib": baseline, "peak_mib": peak}
    finally:
        for proc in reversed(procs):
            proc.stop()


def receiving(size: int, budget: int | None, source: Path | None) -> dict:
    """A worker with --concurrency 16 and 64 requests answered with ``size`` bytes."""
    procs: list[c.Proc] = []
    try:
        url, app = redis_and_app(size, procs)
        proxy = c.start_proxy(c.LOAD_CORE, app.port, url, source=source)
        procs.append(proxy)
        extra = ["--max-response", str(size)] if source is None else []
        extra += ["--max-inflight-bytes", str(budget)] if budget and source is None else []
        worker = c.Proc("worker", c.worker_argv(url, app.port, 16, *extra, source=source), 0)
        worker.wait_log("worker started")
        procs.append(worker)
        result(proxy.port, post(proxy.port, "/small"))
        baseline = vm_mib(worker.pid, "VmRSS")
        ids = [post(proxy.port) for _ in range(64)]
        sizes = [result(proxy.port, rid) for rid in ids]
        peak = vm_mib(worker.pid, "VmHWM")
        assert sizes == [size] * 64, sizes
        return {"baseline_mib": baseline, "peak_mib": peak}
    finally:
        for proc in reversed(procs):
            proc.stop()


def embedded(seconds: float) -> dict:
    """The embedded queue under load: 64 keep-alive connections POSTing 1 KiB for
    ``seconds``, with --max-queue-bytes at its default and with 0 (no bound)."""
    import asyncio
    import collections

    from h11load import Client, Request

    async def load(port: int) -> collections.Counter:
        req = Request(b"POST", b"/", [(b"Content-Type", b"text/plain")], b"x" * 1024)
        counts: collections.Counter = collections.Counter()
        end = time.monotonic() + seconds

        async def one() -> None:
            client = await Client.open(port)
            while time.monotonic() < end:
                status, _ = await client.request(req)
                counts[status] += 1

        await asyncio.gather(*(one() for _ in range(64)))
        return counts

    out = {}
    for name, extra in (("bound", []), ("no bound", ["--max-queue-bytes", "0"])):
        procs: list[c.Proc] = []
        try:
            procs.append(app := c.start_app(c.LOAD_CORE))
            procs.append(proxy := c.start_proxy(c.SERVER_CORE, app.port, None, *extra))
            baseline = vm_mib(proxy.pid, "VmRSS")
            counts = asyncio.run(load(proxy.port))
            peak = vm_mib(proxy.pid, "VmHWM")
            out[name] = {"baseline_mib": baseline, "peak_mib": peak}
            out[name].update({str(k): v for k, v in counts.items()})
        finally:
            for proc in reversed(procs):
                proc.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16 * MIB, help="the answers' size")
    parser.add_argument("--budget", type=int, default=None, help="--max-inflight-bytes")
    parser.add_argument("--baseline", type=Path, default=None)
    parser.add_argument(
        "--embedded", type=float, default=0, help="seconds of load on an embedded proxy"
    )
    args = parser.parse_args()
    from hqm.proto.limits import MAX_INFLIGHT_BYTES

    budget_mib = (args.budget or MAX_INFLIGHT_BYTES) / MIB
    started = time.monotonic()
    sources = {"hqm": None}
    if args.baseline is not None:
        sources["baseline"] = args.baseline.resolve()
    rows, results = [], {}
    for name, source in sources.items():
        for case, run in (("8 readers", readers), ("worker c16", receiving)):
            res = run(args.size, args.budget, source)
            growth = res["peak_mib"] - res["baseline_mib"]
            res["growth_mib"] = growth
            res["growth_per_budget"] = growth / budget_mib
            res["growth_per_answer"] = growth / (args.size / MIB)
            results[f"{name} {case}"] = res
            rows.append({"run": f"{name}: {case}", **res})
    columns = ["run", "baseline_mib", "peak_mib", "growth_mib", "growth_per_budget"]
    columns.append("growth_per_answer")
    title = f"Peak RSS, answers of {args.size / MIB:g} MiB, budget {budget_mib:g} MiB"
    print(c.table(rows, columns, title))
    if args.embedded:
        results["embedded"] = embedded(args.embedded)
        rows = [{"queue": k, **v} for k, v in results["embedded"].items()]
        title = f"Embedded proxy, {args.embedded:g} s of 1 KiB POSTs on 64 connections"
        print(c.table(rows, ["queue", "baseline_mib", "peak_mib", "202", "503"], title))
    c.finish(
        "memory_budget", {"args": {k: str(v) for k, v in vars(args).items()}, **results}, started
    )


if __name__ == "__main__":
    main()
