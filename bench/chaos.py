"""Chaos soak: mixed traffic through two proxies while workers, Redis, the app and a
proxy are killed; every accepted request must end answered or dead-lettered.

Parts (127.0.0.1, unpinned): one redis-server (`--appendonly yes --appendfsync
always`, a fixed port and dir, so a restart finds every acknowledged write),
bench/chaos_app.py (answers 200, logs every request it receives), two `hqm proxy
--mode fire` (a request's `Prefer` picks async or wait; without one it is fire), and
three `hqm worker`. This process is the load generator: `--rate` req/s for
`--duration` s, open loop, a new connection per request, each request sent to a
seeded proxy (to the other one when its connection is refused: nothing was sent).
The mix (seeded): async / wait (`Prefer: wait=5`) / fire, crossed with GET / POST /
POST with an `Idempotency-Key`; POST bodies of 64 B-8 KiB whose SHA-256 the app checks; a few POSTs
make the app take 0.3-1.5 s. Every request and its answer go to a ledger.

The chaos schedule (seeded, printed at start, between 10% and 80% of the run): SIGKILL
a worker (restarted at once) `--worker-kills` times, restart Redis twice (SIGTERM,
then SIGKILL; 2 s down; same port, dir and AOF), restart the app twice (SIGKILL; 2 s
and 20 s down; same port), SIGKILL one proxy once (restarted at once).

After the load: wait (at most `--drain-timeout` s) until XLEN stream + ZCARD delayed
is 0, then look up every 202 with a Location (GET /_hqm/requests/{id}), every fire
request in the app's log and its state in Redis, and the DLQ; classify; print the
table and the cases to look at; write results/chaos.json and results/chaos/ (ledger,
app log, every process's log).

    python bench/chaos.py [--duration 300] [--seed 1] [--rate 60]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import json
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field

import common as c
import redis

STREAM, DELAYED = "hqm:{default}:stream", "hqm:{default}:delayed"
STATE = "hqm:{default}:st:"
MODES = (("async", 0.4), ("wait", 0.3), ("fire", 0.3))
KINDS = (("GET", 0.3), ("POST", 0.4), ("POST+idem", 0.3))
WAIT_S = 5
VISIBILITY_S = 30  # the workers' --visibility-timeout


# --- the traffic ---------------------------------------------------------------------
@dataclass
class Spec:
    seq: int
    mode: str
    kind: str
    proxy: int
    body_len: int
    delay_ms: int


def pick(rng: random.Random, table) -> str:
    return rng.choices([name for name, _ in table], [w for _, w in table])[0]


def make_specs(seed: int, n: int, slow_share: float) -> list[Spec]:
    rng = random.Random(seed)
    specs = []
    for seq in range(n):
        mode, kind = pick(rng, MODES), pick(rng, KINDS)
        post = kind != "GET"
        body_len = rng.randint(64, 8192) if post else 0
        delay = rng.randint(300, 1500) if post and rng.random() < slow_share else 0
        specs.append(Spec(seq, mode, kind, rng.randrange(2), body_len, delay))
    return specs


def payload(spec: Spec, seed: int) -> bytes:
    method = "GET" if spec.kind == "GET" else "POST"
    lines = [f"{method} /ledger/{spec.seq}?mode={spec.mode} HTTP/1.1", "Host: 127.0.0.1"]
    lines += ["Connection: close", f"X-Chaos-Seq: {spec.seq}"]
    if spec.mode == "async":
        lines.append("Prefer: respond-async")
    elif spec.mode == "wait":
        lines.append(f"Prefer: wait={WAIT_S}")
    if spec.kind == "POST+idem":
        lines.append(f"Idempotency-Key: chaos-{seed}-{spec.seq}")
    body = b""
    if method == "POST":
        body = random.Random(seed * 1_000_003 + spec.seq).randbytes(spec.body_len)
        lines += ["Content-Type: application/octet-stream", f"Content-Length: {len(body)}"]
        lines.append(f"X-Chaos-Sha: {hashlib.sha256(body).hexdigest()[:16]}")
    if spec.delay_ms:
        lines.append(f"X-Chaos-Delay-Ms: {spec.delay_ms}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError(f"no complete answer ({len(raw)} bytes)")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode()] = value.strip().decode("latin-1")
    length = headers.get("content-length")
    if length is not None:
        if len(body) < int(length):
            raise ValueError(f"answer cut: {len(body)} of {length} body bytes")
        body = body[: int(length)]
    return status, headers, body


class NotSent(Exception):
    """The connection could not be made: nothing was sent."""


class Unsure(Exception):
    """Sent, but no complete answer came back: the client cannot know what happened."""


async def exchange(port: int, data: bytes, timeout: float) -> tuple[int, dict, bytes]:
    """One request on a fresh connection (Connection: close)."""
    try:
        opening = asyncio.open_connection("127.0.0.1", port)
        reader, writer = await asyncio.wait_for(opening, 2.0)
    except OSError as exc:  # TimeoutError included
        raise NotSent(str(exc) or type(exc).__name__) from None
    try:
        writer.write(data)
        raw = await asyncio.wait_for(reader.read(-1), timeout)
        return parse_response(raw)
    except (OSError, ValueError) as exc:
        raise Unsure(str(exc) or type(exc).__name__) from None
    finally:
        writer.close()


async def send(spec: Spec, data: bytes, ports: list[int]) -> dict:
    rec = {"seq": spec.seq, "mode": spec.mode, "kind": spec.kind, "t": time.time()}
    rec.update(proxy=None, failover=False, status=None, id="", outcome="")
    for n, i in enumerate((spec.proxy, 1 - spec.proxy)):
        rec.update(proxy=i, failover=n > 0)
        try:
            status, headers, body = await exchange(ports[i], data, WAIT_S + 25)
        except NotSent as exc:
            rec["connect_error"] = str(exc)
            continue  # try the other proxy
        except Unsure as exc:
            rec.update(outcome="conn-error", error=str(exc))
            return rec
        except Exception as exc:  # a bench bug must show in the ledger, not vanish
            rec.update(outcome="bench-error", error=repr(exc))
            return rec
        rec.update(status=status, latency_s=time.time() - rec["t"])
        rec["id"] = headers.get("hqm-request-id", "")
        if status == 202:
            rec["outcome"] = "accepted" if "location" in headers else "fire-accepted"
        elif status == 503:
            rec["outcome"] = "refused"
        elif spec.mode == "wait" and rec["id"]:
            rec["outcome"] = "direct"  # the app's answer (or a dead letter's 502)
            rec["body"] = body.decode("utf-8", "replace")[:300]
        else:
            rec["outcome"] = f"other-{status}"
            rec["body"] = body.decode("utf-8", "replace")[:300]
        return rec
    rec["outcome"] = "conn-refused"
    return rec


async def load(specs: list[Spec], seed: int, rate: float, ports: list[int]) -> list[dict]:
    out: list[dict] = []
    tasks: set[asyncio.Task] = set()
    start = time.perf_counter() + 0.05
    for spec in specs:
        delay = start + spec.seq / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.get_running_loop().create_task(send(spec, payload(spec, seed), ports))
        tasks.add(task)
        task.add_done_callback(lambda t: (tasks.discard(t), out.append(t.result())))
    while tasks:
        await asyncio.wait(set(tasks))
    return sorted(out, key=lambda r: r["seq"])


# --- the parts and the chaos -----------------------------------------------------------
class Cluster:
    def __init__(self, workers: int, worker_args: list[str]) -> None:
        self.redis_port, self.app_port = c.free_port(), c.free_port()
        self.proxy_ports = [c.free_port(), c.free_port()]
        self.data = c.TMP / "redis-data"
        self.data.mkdir()
        self.app_log = c.TMP / "app.jsonl"
        self.url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.worker_args = worker_args
        self.started: list[c.Proc] = []  # every process ever started (their logs)
        self.redis = self.app = None
        self.proxies: list[c.Proc | None] = [None, None]
        self.workers: list[c.Proc | None] = [None] * workers

    def _keep(self, proc: c.Proc) -> c.Proc:
        self.started.append(proc)
        return proc

    def start_redis(self) -> None:
        self.redis = self._keep(c.start_redis_at(self.redis_port, self.data))

    def start_app(self) -> None:
        argv = [c.PY, "chaos_app.py", "--port", str(self.app_port), "--log", str(self.app_log)]
        self.app = self._keep(c.Proc("app", argv, None))
        self.app.wait_port(self.app_port)

    def start_proxy(self, i: int) -> None:
        argv = [*c.hqm_cmd(), "proxy", "--listen", f"127.0.0.1:{self.proxy_ports[i]}"]
        argv += ["--admin", "off", "--upstream", f"127.0.0.1:{self.app_port}"]
        argv += ["--redis", self.url, "--mode", "fire"]
        self.proxies[i] = self._keep(c.Proc(f"proxy{i}", argv, None))
        self.proxies[i].wait_log("listening")

    def start_worker(self, i: int) -> None:
        argv = [*c.hqm_cmd(), "worker", "--redis", self.url, "--admin", "off"]
        argv += ["--upstream", f"127.0.0.1:{self.app_port}", *self.worker_args]
        self.workers[i] = self._keep(c.Proc(f"worker{i}", argv, None))
        self.workers[i].wait_log("worker started", timeout=30)

    def start_all(self) -> None:
        self.start_redis()
        self.start_app()
        for i in range(2):
            self.start_proxy(i)
        for i in range(len(self.workers)):
            self.start_worker(i)

    def current(self) -> list[c.Proc]:
        return [p for p in [*self.workers, *self.proxies, self.app, self.redis] if p]

    def stop_all(self) -> None:
        for proc in self.current():
            proc.stop()


@dataclass
class Event:
    kind: str  # worker-kill, redis-restart, app-restart, proxy-kill
    target: str  # worker1, proxy0, SIGTERM, ...
    down_s: float = 0.0  # how long it stays down before the restart
    at: float = 0.0  # seconds after the load started (schedule)
    t0: float = 0.0  # wall clock: the kill
    t1: float = 0.0  # wall clock: back up
    note: str = ""
    extra: dict = field(default_factory=dict)


def make_schedule(rng: random.Random, duration: float, workers: int, kills: int) -> list[Event]:
    events = [Event("worker-kill", f"worker{rng.randrange(workers)}") for _ in range(kills)]
    events += [Event("redis-restart", "SIGTERM", 2.0), Event("redis-restart", "SIGKILL", 2.0)]
    events += [Event("app-restart", "SIGKILL", 2.0), Event("app-restart", "SIGKILL", 20.0)]
    events.append(Event("proxy-kill", f"proxy{rng.randrange(2)}"))
    rng.shuffle(events)
    begin, end = 0.1 * duration, 0.8 * duration
    busy = sum(e.down_s + 1.5 for e in events)  # ~1.5 s for a restart to be ready
    weights = [rng.random() for _ in range(len(events) + 1)]
    scale = max(0.0, end - begin - busy) / sum(weights)
    t = begin
    for event, weight in zip(events, weights, strict=False):
        t += weight * scale
        event.at = round(t, 1)
        t += event.down_s + 1.5
    return events


def run_event(cluster: Cluster, event: Event) -> None:
    event.t0 = time.time()
    if event.kind == "worker-kill":
        i = int(event.target[-1])
        event.extra["pid"] = cluster.workers[i].pid
        c.kill(cluster.workers[i])
        cluster.start_worker(i)
    elif event.kind == "proxy-kill":
        i = int(event.target[-1])
        c.kill(cluster.proxies[i])
        cluster.start_proxy(i)
    elif event.kind == "redis-restart":
        event.extra["rc"] = c.kill(cluster.redis, getattr(signal, event.target))
        time.sleep(event.down_s)
        cluster.start_redis()
    elif event.kind == "app-restart":
        c.kill(cluster.app)
        time.sleep(event.down_s)
        cluster.start_app()
    event.t1 = time.time()


def chaos(cluster: Cluster, events: list[Event], start_wall: float, stop: threading.Event):
    for event in events:
        if stop.wait(max(0.0, start_wall + event.at - time.time())):
            event.note = "not run: the load ended first"
            continue
        try:
            run_event(cluster, event)
        except Exception as exc:  # a restart that failed is a finding, not a crash
            event.note = f"failed: {exc!r}"[:500]
            event.t1 = time.time()


# --- after the load: what became of every request ---------------------------------------
def drain(url: str, timeout: float) -> tuple[float, int]:
    client = redis.Redis.from_url(url, socket_timeout=2)
    started = time.monotonic()
    depth = -1
    while time.monotonic() - started < timeout:
        with contextlib.suppress(redis.RedisError):
            depth = client.xlen(STREAM) + client.zcard(DELAYED)
            if depth == 0:
                break
        time.sleep(1.0)
    return time.monotonic() - started, depth


async def lookup(ids: list[str], ports: list[int]) -> dict[str, tuple[int, bytes]]:
    """GET /_hqm/requests/{id} for each id (alternating proxies; 503s asked again)."""
    out: dict[str, tuple[int, bytes]] = {}
    gate = asyncio.Semaphore(16)

    async def one(n: int, rid: str) -> None:
        data = f"GET /_hqm/requests/{rid} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        async with gate:
            for attempt in range(6):
                try:
                    status, _, body = await exchange(ports[(n + attempt) % 2], data.encode(), 10)
                except (NotSent, Unsure):
                    status, body = -1, b""
                if status not in (-1, 503):
                    break
                await asyncio.sleep(0.5)
            out[rid] = (status, body)

    await asyncio.gather(*(one(n, rid) for n, rid in enumerate(ids)))
    return out


def read_app_log(path) -> dict[str, dict[str, list[dict]]]:
    """id -> {"head": [...], "body": [...], "answer": [...], "cut": [...]} (seq too)."""
    by_id: dict[str, dict[str, list[dict]]] = collections.defaultdict(
        lambda: collections.defaultdict(list)
    )
    starts = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry["ev"] == "start":
                starts.append(entry)
            else:
                by_id[entry["id"]][entry["ev"]].append(entry)
    return by_id


def dead_letters(url: str) -> dict[str, dict]:
    argv = [*c.hqm_cmd(), "dlq", "list", "--redis", url, "--json", "--count", "1000000"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout
    return {d["id"]: d for d in map(json.loads, out.splitlines())}


def states(url: str, ids: list[str]) -> dict[str, dict | None]:
    client = redis.Redis.from_url(url)
    pipe = client.pipeline(transaction=False)
    for rid in ids:
        pipe.get(STATE + rid)
    return {rid: json.loads(v) if v else None for rid, v in zip(ids, pipe.execute(), strict=True)}


def app_by_seq(app: dict, seq: int) -> list[dict]:
    return [e for lines in app.values() for e in lines.get("head", []) if e["seq"] == seq]


def echo_ok(body: bytes | str, rid: str) -> bool:
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        return json.loads(body).get("id") == rid
    return False


def could_cause(e: Event, first: float, again: float) -> bool:
    """Whether event ``e`` can explain why a request that first reached the app at
    ``first`` came again at ``again``: a worker killed with it in flight (on the wire
    a few ms after the kill at most; taken over a visibility timeout later), the app
    killed while serving it (sent again once the app is back), Redis down when its
    outcome was to be recorded (taken over a visibility timeout later). A proxy is not
    on the delivery path: never."""
    if not e.t0 or e.t0 > again:
        return False
    reclaimed = again - e.t0 >= 0.9 * VISIBILITY_S
    if e.kind == "worker-kill":
        return e.t0 >= first - 0.5 and reclaimed
    if e.kind == "app-restart":
        return e.t0 >= first and again >= e.t1 - 0.5
    if e.kind == "redis-restart":
        return e.t0 >= first - 2.0 and first <= e.t1 + 0.5 and reclaimed
    return False


def cause(events: list[Event], first: float, again: float, unrecorded: bool) -> list[Event]:
    """The events that can explain a second delivery, the likeliest first (the
    earliest; a Redis restart first when a worker logged it could not record it)."""
    near = [e for e in events if could_cause(e, first, again)]
    if unrecorded:
        near.sort(key=lambda e: e.kind != "redis-restart")
    return near


def why_again(event: Event | None, answered_first: bool, unrecorded: bool) -> str:
    """What the logs say made the app see a request again."""
    if unrecorded:
        return "the app answered, the outcome could not be recorded (Redis down): reclaimed"
    if event is None:
        return "no chaos event: unexplained"
    if event.kind == "worker-kill":
        return (
            "its worker was killed while it was at the app: reclaimed after the visibility timeout"
        )
    if event.kind == "app-restart" and not answered_first:
        return "the app was killed while serving it: sent again (connection closed, no answer)"
    if event.kind == "redis-restart":
        return "Redis restarted while it was in flight (no 'could not record' logged)"
    return f"after {event.kind}"


def grep_logs(procs: list[c.Proc], needle: str, limit: int = 20) -> list[str]:
    hits = []
    for proc in procs:
        with contextlib.suppress(OSError):
            hits += [f"{proc.name}: {line}" for line in proc.log_lines() if needle in line]
    return hits[:limit]


def unrecorded_index(procs: list[c.Proc]) -> dict[str, list[float]]:
    """request id -> when a worker logged it could not record its outcome."""
    out: dict[str, list[float]] = collections.defaultdict(list)
    for proc in procs:
        with contextlib.suppress(OSError):
            for line in proc.log_lines():
                if "could not record " in line:
                    with contextlib.suppress(ValueError, KeyError, IndexError):
                        entry = json.loads(line)
                        rid = entry["msg"].split("could not record ", 1)[1].split(":", 1)[0]
                        out[rid].append(c.epoch_of(entry["ts"]))
    return out


def error_lines(procs: list[c.Proc], start_wall: float) -> list[dict]:
    """Every error-level line of the hqm processes (an exception's last line kept)."""
    out = []
    for proc in procs:
        if not proc.name.startswith(("proxy", "worker")):
            continue
        with contextlib.suppress(OSError):
            for line in proc.log_lines():
                if '"level":"error"' not in line and '"level":"critical"' not in line:
                    continue
                with contextlib.suppress(ValueError, KeyError):
                    entry = json.loads(line)
                    last = (entry.get("exc") or "").strip().splitlines()[-1:]
                    out.append(
                        {
                            "proc": proc.name,
                            "at_s": c.epoch_of(entry["ts"]) - start_wall,
                            "msg": entry["msg"],
                            "exc": last[0] if last else "",
                        }
                    )
    return out


def classify(ledger, app, dlq, looked, st, events, start_wall, procs) -> tuple[dict, dict]:
    outcomes = collections.Counter(r["outcome"] for r in ledger)
    fate: dict[str, list] = collections.defaultdict(list)
    for r in ledger:
        rid, o = r["id"], r["outcome"]
        if o not in ("accepted", "fire-accepted", "direct"):
            continue
        seen = app.get(rid, {})
        if o == "direct":
            final = "answered" if r["status"] == 200 and echo_ok(r.get("body", ""), rid) else ""
            final = final or ("dead" if rid in dlq else "mismatch")
        elif o == "accepted":
            status, body = looked.get(rid, (-1, b""))
            if status == 200:
                final = "answered" if echo_ok(body, rid) else "mismatch"
            elif status == 502 and rid in dlq:
                final = "dead"
            elif status == 202:
                final = "stuck"
            else:
                final = "lost"
            r["lookup"] = [status, body.decode("utf-8", "replace")[:200]]
        else:  # fire: no result is kept; the app's log and the state tell
            state = (st.get(rid) or {}).get("s")
            if rid in dlq:
                final = "dead"
            elif seen.get("answer") and state == "done":
                final = "answered"
            elif state in ("queued", "processing", "retrying"):
                final = "stuck"
            else:
                final = "lost"
            r["state"] = st.get(rid)
        r["final"] = final
        fate[final].append(r)

    seq_seen = {e["seq"] for lines in app.values() for e in lines.get("head", [])}
    unsure = collections.Counter(
        r["outcome"] for r in ledger if r["outcome"] in ("refused", "conn-error")
    )
    unsure_ran = collections.Counter(
        r["outcome"]
        for r in ledger
        if r["outcome"] in ("refused", "conn-error") and r["seq"] in seq_seen
    )
    others = [r for r in ledger if r["outcome"].startswith(("other-", "bench-"))]
    for r in others:
        r["reached_app"] = r["seq"] in seq_seen
    logged = error_lines(procs, start_wall)
    never = {rid: d for rid, d in dlq.items() if not app.get(rid, {}).get("head")}
    reached = {rid: d for rid, d in dlq.items() if app.get(rid, {}).get("head")}

    dups, by_cause, by_reason = [], collections.Counter(), collections.Counter()
    not_recorded = unrecorded_index(procs)
    for rid, lines in app.items():
        heads = sorted(e["t"] for e in lines.get("head", []))
        if len(heads) < 2:
            continue
        first_head = min(lines["head"], key=lambda e: e["t"])
        answered_first = any(a["t"] < heads[1] for a in lines.get("answer", []))
        unrecorded = any(heads[0] <= t <= heads[1] for t in not_recorded.get(rid, ()))
        near = cause(events, heads[0], heads[1], unrecorded)
        event = near[0] if near else None
        reason = why_again(event, answered_first, unrecorded)
        by_cause[event.kind if event else "no chaos event"] += 1
        by_reason[reason] += 1
        dups.append(
            {
                "id": rid,
                "seq": first_head["seq"],
                "method": first_head["method"],
                "idem": bool(first_head["idem"]),
                "deliveries": len(heads),
                "first_s": heads[0] - start_wall,
                "again_after_s": heads[1] - heads[0],
                "app_answered_first": answered_first,
                "after": f"{event.kind} {event.target}" if event else "no chaos event",
                "event_at_s": event.t0 - start_wall if event else None,
                "events_between": [f"{e.kind} {e.target}" for e in near],
                "why": reason,
            }
        )
    bodies = [b for lines in app.values() for b in lines.get("body", [])]
    cut = sum(
        1 for lines in app.values() if len(lines.get("head", [])) > len(lines.get("body", []))
    )
    summary = {
        "sent": len(ledger),
        "outcomes": dict(outcomes),
        "accepted": sum(outcomes[k] for k in ("accepted", "fire-accepted", "direct")),
        "refused_503": outcomes["refused"],
        "refused_503_reached_app": unsure_ran["refused"],
        "conn_errors": outcomes["conn-error"],
        "conn_errors_reached_app": unsure_ran["conn-error"],
        "conn_refused_both": outcomes["conn-refused"],
        "other_answers": len(others),
        "other_answers_statuses": dict(collections.Counter(r["outcome"] for r in others)),
        "other_answers_reached_app": sum(1 for r in others if r["reached_app"]),
        "errors_logged": len(logged),
        "errors_logged_kinds": dict(
            collections.Counter(f"{e['proc']}: {e['msg']}: {e['exc']}"[:160] for e in logged)
        ),
        "failovers": sum(1 for r in ledger if r["failover"]),
        "answered": len(fate["answered"]),
        "direct_answers": sum(1 for r in fate["answered"] if r["outcome"] == "direct"),
        "dead_lettered": len(fate["dead"]),
        "dlq_total": len(dlq),
        "dlq_never_reached": len(never),
        "dlq_reached": len(reached),
        "dlq_reached_errors": dict(
            collections.Counter(
                re.sub(r"\d+(\.\d+)?", "N", d["error"])[:90] for d in reached.values()
            )
        ),
        "dlq_reached_methods": dict(
            collections.Counter(
                d["method"] + (" idem" if app[rid]["head"][0]["idem"] else "")
                for rid, d in reached.items()
            )
        ),
        "lost": len(fate["lost"]),
        "stuck": len(fate["stuck"]),
        "mismatch": len(fate["mismatch"]),
        "duplicates": len(dups),
        "duplicates_by_cause": dict(by_cause),
        "duplicates_by_reason": dict(by_reason),
        "duplicates_post_without_key": sum(
            1 for d in dups if d["method"] == "POST" and not d["idem"]
        ),
        "app_requests_seen": len(app),
        "bodies_not_intact": sum(1 for b in bodies if not b["intact"]),
        "cut_mid_request": cut,
        "unsure_total": dict(unsure),
    }
    look_at = {}
    for name in ("lost", "stuck", "mismatch"):
        look_at[name] = [
            {**r, "app": app.get(r["id"], {}), "logs": grep_logs(procs, r["id"])}
            for r in fate[name]
        ]
    look_at["dlq_never_reached"] = [
        {**d, "logs": grep_logs(procs, rid)} for rid, d in never.items()
    ]
    look_at["dlq_reached"] = list(reached.values())
    look_at["duplicates"] = dups
    look_at["other_answers"] = [
        {**r, "app": app.get(next((e["id"] for e in app_by_seq(app, r["seq"])), ""), {})}
        for r in others
    ]
    look_at["errors_logged"] = logged
    return summary, look_at


def report_rows(
    s: dict, load_s: float, drain_s: float, depth: int, drain_limit: float
) -> list[dict]:
    o = s["outcomes"]
    pct = 100.0 * s["accepted"] / max(s["sent"], 1)
    dup_note = ", ".join(f"{n} after {k}" for k, n in sorted(s["duplicates_by_cause"].items()))
    errors = "; ".join(f"{n} x {e}" for e, n in s["dlq_reached_errors"].items())
    return [
        {
            "figure": "sent",
            "value": s["sent"],
            "note": f"in {load_s:.0f} s ({s['sent'] / load_s:.0f}/s); {s['failovers']} sent to "
            "the other proxy (connection refused: nothing was sent)",
        },
        {
            "figure": "accepted (202/200)",
            "value": s["accepted"],
            "note": f"{pct:.2f}%: {o.get('accepted', 0)} 202+Location, "
            f"{o.get('direct', 0)} wait-mode answers, {o.get('fire-accepted', 0)} fire 202",
        },
        {
            "figure": "refused (503)",
            "value": s["refused_503"],
            "note": "queue unavailable (Redis restarting): the client may retry; "
            f"{s['refused_503_reached_app']} of them were stored anyway and reached the app",
        },
        {
            "figure": "connection errors",
            "value": s["conn_errors"] + s["conn_refused_both"],
            "note": f"{s['conn_errors']} cut after sending (proxy killed; outcome unknown to "
            f"the client: {s['conn_errors_reached_app']} reached the app), "
            f"{s['conn_refused_both']} refused by both proxies",
        },
        {
            "figure": "other answers",
            "value": s["other_answers"],
            "note": (", ".join(f"{n} {k}" for k, n in s["other_answers_statuses"].items()) or "-")
            + f"; {s['other_answers_reached_app']} of them reached the app (stored, but the "
            "client got no id to look it up)",
        },
        {
            "figure": "answered",
            "value": s["answered"],
            "note": f"{s['direct_answers']} directly in wait mode; the rest a stored 200 "
            "(echoing its id) or, fire, the app's log",
        },
        {"figure": "lost", "value": s["lost"], "note": "target 0"},
        {"figure": "stuck (pending at the end)", "value": s["stuck"], "note": "target 0"},
        {
            "figure": "dead-lettered, never reached the app",
            "value": s["dlq_never_reached"],
            "note": "target 0",
        },
        {
            "figure": "dead-lettered after reaching the app",
            "value": s["dlq_reached"],
            "note": errors or "-",
        },
        {
            "figure": "duplicates delivered to the app",
            "value": s["duplicates"],
            "note": (dup_note or "-")
            + f" (request ids seen twice or more; {s['duplicates_post_without_key']} of them POSTs "
            "without an Idempotency-Key)",
        },
        {"figure": "stored answer not its request's", "value": s["mismatch"], "note": "target 0"},
        {
            "figure": "bodies not intact / cut mid-request",
            "value": f"{s['bodies_not_intact']} / {s['cut_mid_request']}",
            "note": "SHA-256 checked by the app / a head without its body",
        },
        {
            "figure": "errors in the hqm logs",
            "value": s["errors_logged"],
            "note": "; ".join(f"{n} x {k}" for k, n in s["errors_logged_kinds"].items()) or "-",
        },
        {
            "figure": "drain after the load",
            "value": f"{drain_s:.0f} s",
            "note": f"depth {depth} at the end (limit {drain_limit:g} s)",
        },
    ]


def save_artifacts(cluster: Cluster, ledger: list[dict]) -> str:
    out = c.RESULTS / "chaos"
    shutil.rmtree(out, ignore_errors=True)
    (out / "logs").mkdir(parents=True)
    for n, proc in enumerate(cluster.started):
        with contextlib.suppress(OSError):
            shutil.copy(proc.log, out / "logs" / f"{n:02d}-{proc.name}.log")
    shutil.copy(cluster.app_log, out / "app.jsonl")
    with open(out / "ledger.jsonl", "w") as f:
        for r in ledger:
            f.write(json.dumps(r) + "\n")
    return str(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=300, help="load seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=60, help="requests/s sent")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--worker-kills", type=int, default=4)
    parser.add_argument("--slow-share", type=float, default=0.05, help="POSTs the app holds")
    parser.add_argument("--drain-timeout", type=float, default=120)
    parser.add_argument("--concurrency", type=int, default=16, help="per worker")
    args = parser.parse_args()
    started = time.monotonic()
    c.raise_nofile()

    rng = random.Random(args.seed)
    events = make_schedule(rng, args.duration, args.workers, args.worker_kills)
    specs = make_specs(args.seed, int(args.rate * args.duration), args.slow_share)
    mix = collections.Counter(f"{s.mode} {s.kind}" for s in specs)
    print(
        f"chaos soak: seed {args.seed}, {len(specs)} requests at {args.rate:g}/s "
        f"for {args.duration:g} s; schedule:\n"
    )
    rows = [{"at s": e.at, "event": e.kind, "target": e.target, "down s": e.down_s} for e in events]
    print(c.table(rows, ["at s", "event", "target", "down s"]))
    print("\nmix: " + ", ".join(f"{k} {n}" for k, n in sorted(mix.items())) + "\n", flush=True)

    worker_args = ["--concurrency", str(args.concurrency)]
    cluster = Cluster(args.workers, [*worker_args, "--visibility-timeout", str(VISIBILITY_S)])
    cluster.start_all()
    stop = threading.Event()
    start_wall = time.time()
    thread = threading.Thread(target=chaos, args=(cluster, events, start_wall, stop), daemon=True)
    thread.start()
    ledger = asyncio.run(load(specs, args.seed, args.rate, cluster.proxy_ports))
    load_s = time.time() - start_wall
    stop.set()
    thread.join()
    for e in events:
        print(
            f"  {e.t0 - start_wall:7.1f} s  {e.kind} {e.target}: back after "
            f"{e.t1 - e.t0:.1f} s {e.note}".rstrip()
        )
    drain_s, depth = drain(cluster.url, args.drain_timeout)
    alive = {p.name: p.popen.poll() for p in cluster.current()}

    ids = [r["id"] for r in ledger if r["outcome"] == "accepted"]
    fire = [r["id"] for r in ledger if r["outcome"] == "fire-accepted"]
    looked = asyncio.run(lookup(ids, cluster.proxy_ports))
    st = states(cluster.url, fire)
    dlq = dead_letters(cluster.url)
    app = read_app_log(cluster.app_log)
    summary, look_at = classify(ledger, app, dlq, looked, st, events, start_wall, cluster.started)
    cluster.stop_all()
    artifacts = save_artifacts(cluster, ledger)

    print(
        c.table(
            report_rows(summary, load_s, drain_s, depth, args.drain_timeout),
            ["figure", "value", "note"],
            f"Chaos soak (seed {args.seed})",
        )
    )
    exited = {k: v for k, v in alive.items() if v is not None}
    if exited:
        print(f"\nprocesses that exited on their own before the end: {exited}")
    for name in ("lost", "stuck", "mismatch", "dlq_never_reached", "other_answers"):
        for case in look_at[name][:5]:
            print(f"\n{name}: {json.dumps(case, default=str)[:3000]}")
    if look_at["duplicates"]:
        print("\nduplicates (first 10):")
        for why, n in summary["duplicates_by_reason"].items():
            print(f"  {n} x {why}")
        for d in look_at["duplicates"][:10]:
            print(
                f"  seq {d['seq']} {d['method']}{' idem' if d['idem'] else ''} "
                f"x{d['deliveries']} at {d['first_s']:.1f} s, again {d['again_after_s']:.1f} s "
                f"later, app answered first: {d['app_answered_first']}, after {d['after']}"
            )
    c.finish(
        "chaos",
        {
            "args": vars(args),
            "load_s": load_s,
            "drain_s": drain_s,
            "depth_at_end": depth,
            "schedule": [asdict(e) | {"t0_s": e.t0 - start_wall} for e in events],
            "summary": summary,
            "look_at": look_at,
            "exited_early": exited,
            "artifacts": artifacts,
        },
        started,
        f"; ledger, app log and process logs in {artifacts}",
    )


if __name__ == "__main__":
    main()
