"""The proxy's request handler: reply modes, admission (Idempotency-Key, HQM-Delay:
hqm.ingress.admission), the queue write; the results API is hqm.ingress.results_api.

A queue failure is the client's 503 with a fixed body (``{"error": "queue unavailable",
"retry_after": 1}``: perhaps stored; ``"queue full"`` or ``"queue refused the write"``:
not stored): backend details (hosts, ports, driver errors) go to the log only, once per
run of identical failures, and the recovery is logged. Enqueue failures feed /readyz
(hqm.ops.readiness).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from hqm.ingress.admission import AdmissionError, admit
from hqm.ingress.caller import owner
from hqm.ingress.held import HeldWaits
from hqm.ingress.openhqm_api import OpenHqmApi
from hqm.ingress.passthrough import PassThrough
from hqm.ingress.replay_gate import ReplayGate
from hqm.ingress.reserved import reserved_routes
from hqm.ingress.results_api import API_PREFIX as _API_PREFIX
from hqm.ingress.results_api import RETRY_AFTER as _RETRY_AFTER
from hqm.ingress.results_api import ResultsApi, accepted_reply, queue_failure
from hqm.ingress.results_api import Trouble as _Trouble
from hqm.ingress.results_api import json_reply as _json_reply
from hqm.ingress.routes import Decision, Route
from hqm.ingress.settings import ProxySettings
from hqm.io.budget import ByteBudget
from hqm.io.http_server import Peer, Reply
from hqm.io.http_streaming import StreamedReply
from hqm.io.streams import BodyStream, ResponseStream
from hqm.ops.access_log import AccessLog, ResponseTap, proxy_entry, request_id_of
from hqm.ops.metrics import ProxyMetrics
from hqm.ops.readiness import Readiness
from hqm.proto.envelope import RequestRecord
from hqm.proto.headers import header_value
from hqm.proto.prefer import parse_prefer
from hqm.proto.replay_token import HEADER
from hqm.proto.server import RequestHead
from hqm.proto.traceparent import trace_id_of
from hqm.queue.base import Queue, QueueError

_CONFLICT = {
    "error": "Idempotency-Key already used for another request",
    "header": "Idempotency-Key",
}

log = logging.getLogger("hqm.ingress")
#: Transparent mode: a port no app is configured on (502, never dialled); a worker's
#: signed replay (straight to the app, as it was already queued once).
_NO_APP = Route(name="transparent", action="reject", status=502)
REPLAY_HEADER_LOWER = HEADER.lower()


def new_request_id() -> str:
    """128 random bits, hex: unguessable, so the id is the capability to read the result."""
    return secrets.token_hex(16)


class ProxyHandler:
    def __init__(
        self,
        *,
        queue: Queue,
        settings: ProxySettings,
        metrics: ProxyMetrics,
        wall_clock: Callable[[], float] = time.time,
        queues: Mapping[str, Queue] | None = None,
        passthrough: PassThrough | None = None,
        access_log: AccessLog | None = None,
        readiness: Readiness | None = None,
        budget: ByteBudget | None = None,
    ) -> None:
        #: --access-log: ``logged`` is then the server's handler (None: off).
        self._access = access_log if access_log is not None and access_log.enabled else None
        self._queue = queue
        #: By name, every queue a route names (the default queue among them).
        self._queues = dict(queues or {})
        self._queues.setdefault(queue.name, queue)
        self._routes = settings.routes.with_reserved(reserved_routes(settings.openhqm_api))
        self._pass = passthrough
        #: Transparent mode: the configured app of each port ("default" first).
        self._by_port = {address.port: name for name, address in settings.upstreams.items()}
        self._by_port[settings.upstream.port] = "default"
        #: HQM-Replay checked and spent (None: no replay key, the header is dropped).
        self._replays = (
            None
            if settings.replay_key is None
            else ReplayGate(
                key=settings.replay_key,
                queue=queue,
                max_body_bytes=settings.limits.max_body_bytes,
                on_refused=lambda: self._route_count("replay", "reject"),
                wall_clock=wall_clock,
            )
        )
        self._settings = settings
        self._metrics = metrics
        self._now = wall_clock
        self._counters: dict[tuple[str, str], Any] = {}
        self._route_counters: dict[tuple[str, str], Any] = {}
        self._enqueue_trouble = _Trouble("enqueue")
        self._readiness = readiness
        #: Wait-mode clients held; released (answered as async) at the drain's end.
        self.waits = HeldWaits()
        self._wait_trouble = _Trouble("wait")
        #: --max-inflight-bytes: results read and wait-mode answers (``hqm.io.budget``).
        budget = budget or ByteBudget(settings.max_inflight_bytes)
        self._results = ResultsApi(
            queues=[queue, *self._queues.values()], budget=budget, wall_clock=wall_clock
        )
        #: The original OpenHQM's API on /api/v1/ (--openhqm-api), None when off.
        self._openhqm = (
            OpenHqmApi(
                queue=queue,
                settings=settings,
                metrics=metrics,
                budget=budget,
                wall_clock=wall_clock,
            )
            if settings.openhqm_api
            else None
        )

    async def logged(
        self, head: RequestHead, body: bytes, peer: Peer, decision: object = None
    ) -> Reply | StreamedReply:
        """``__call__``, and its access-log line (the server's handler with --access-log)."""
        access = self._access
        if access is None or not access.wanted():
            return await self(head, body, peer, decision)
        if not isinstance(decision, Decision):
            decision = self.classify(head, peer)
        ts, started = self._now(), time.perf_counter()
        note: dict[str, str] = {}
        status, bytes_out, request_id = 500, 0, ""
        try:
            reply = await self(head, body, peer, decision, note)
            status = reply.status
            bytes_out = reply.size if isinstance(reply, StreamedReply) else len(reply.body)
            request_id = note.get("id") or request_id_of(reply.headers)
            return reply
        finally:
            route, action = decision.route.name, decision.action
            access.add(
                proxy_entry(
                    head,
                    ts=ts,
                    client=peer.host,
                    status=status,
                    bytes_in=len(body),
                    bytes_out=bytes_out,
                    elapsed_s=time.perf_counter() - started,
                    route=route,
                    action=action,
                    request_id=request_id,
                    mode=note.get("mode", ""),
                )
            )

    async def __call__(
        self,
        head: RequestHead,
        body: bytes,
        peer: Peer,
        decision: object = None,
        note: dict[str, str] | None = None,
    ) -> Reply | StreamedReply:
        if not isinstance(decision, Decision):
            decision = self.classify(head, peer)
        if decision.target is not None:  # hqm's API, or a path normalized
            head = replace(head, target=decision.target)
        if decision.action == "api":
            self._route_count(decision.route.name, "api")
            if head.target.startswith(_API_PREFIX) or self._openhqm is None:
                return await self._results(head, peer.host)
            return await self._openhqm(head, body, peer)
        route = decision.route
        if decision.action == "reject":
            self._route_count(route.name, "reject")
            self._count("reject", "refused")
            error = decision.error or "refused by route"
            return _json_reply(route.status, {"error": error, "route": route.name})
        self._route_count(route.name, "queue")
        queue = self._queues[route.queue]
        mode, wait_s, applied = self._reply_mode(head, route)
        received_at = self._now()
        try:
            admitted = admit(
                head,
                body,
                route="" if route is self._routes.default else route.name,
                caller=route.caller,
                client=peer.host,
                now=received_at,
                idempotency_ttl_s=self._settings.idempotency_ttl_s,
                max_delay_s=self._settings.max_delay_s,
            )
        except AdmissionError as exc:
            self._count(mode, "refused")
            return _json_reply(400, exc.payload)
        if admitted.not_before > received_at and mode == "wait":
            mode, applied = "async", b""  # its answer cannot come within the wait
        request_id = new_request_id()
        record = RequestRecord(
            id=request_id,
            method=head.method,
            target=head.target,
            headers=admitted.headers,
            body=body,
            http_version=head.http_version,
            client=peer.host,
            received_at=received_at,
            not_before=admitted.not_before,
            reply_to=queue.reply_channel if mode == "wait" else "",
            mode=mode,
            upstream=decision.upstream,
            timeout_s=route.timeout_s,
            max_attempts=route.max_attempts,
            route="" if route is self._routes.default else route.name,
            trace_id=trace_id_of(head.headers),
            owner=owner(route.caller, head, peer.host) if route.result_access == "caller" else "",
        )
        if note is not None:
            note["mode"] = mode
        started = time.perf_counter()
        try:
            enqueued = await queue.enqueue(record, idempotency=admitted.idempotency)
        except QueueError as exc:
            return self._enqueue_failed(mode, exc)
        if self._enqueue_trouble.failing:
            self._enqueue_trouble.recovered()
            if self._readiness is not None:
                self._readiness.enqueue_ok()
        self._metrics.enqueue_seconds.observe(time.perf_counter() - started)
        if enqueued.conflict:
            self._count(mode, "conflict")
            return _json_reply(422, _CONFLICT)
        request_id = enqueued.request_id  # a duplicate's: the first request's
        if note is not None:
            note["id"] = request_id
        if mode == "wait":
            try:
                result = await self.waits.wait(queue, request_id, wait_s)
            except QueueError as exc:
                self._wait_trouble.failed(exc)
                result = None  # the request is safely queued: answer as async
            else:
                if self._wait_trouble.failing:
                    self._wait_trouble.recovered()
            if result is not None:
                extra = [(b"Preference-Applied", applied)] if applied else []
                reply = self._results.reply(
                    request_id, result, *extra, method=head.method, answered=head.method
                )
                if isinstance(reply, StreamedReply):
                    self._count(mode, "answered")
                    return reply
                # No budget for it now: the async answer; the result waits, stored.
            mode, applied = "async", b""
        self._count(mode, "accepted")
        delayed = record.not_before > received_at and not enqueued.duplicate
        return accepted_reply(request_id, mode, applied, record.not_before if delayed else 0.0)

    def _enqueue_failed(self, mode: str, exc: QueueError) -> Reply:
        """503: "queue full" (--max-depth, or Redis at maxmemory) and "queue refused the
        write" stored nothing; "queue unavailable" may have been stored."""
        self._enqueue_trouble.failed(exc)
        if self._readiness is not None:
            self._readiness.enqueue_failed(exc)
        outcome, payload = queue_failure(exc)
        self._count(mode, outcome)
        return _json_reply(503, payload, _RETRY_AFTER)

    def _route_count(self, route: str, action: str) -> None:
        counter = self._route_counters.get((route, action))
        if counter is None:
            counter = self._metrics.routed.labels(route, action)
            self._route_counters[route, action] = counter
        counter.inc()

    def _count(self, mode: str, outcome: str) -> None:
        """Count a request; labelled children are looked up once, not per request."""
        counter = self._counters.get((mode, outcome))
        if counter is None:
            counter = self._counters[mode, outcome] = self._metrics.requests.labels(mode, outcome)
        counter.inc()

    def classify(self, head: RequestHead, peer: Peer) -> Decision:
        """What becomes of a request, from its head (the server asks before the body)."""
        decision = self._routes.decide(head, peer.host)
        if decision.action == "api":
            return decision
        dialled = None
        if peer.original_port is not None:  # transparent, and the client was redirected
            dialled = self._by_port.get(peer.original_port)
            if dialled is None:  # never dialled: nobody configured an app on that port
                error = f"no app is configured for port {peer.original_port}"
                return Decision(_NO_APP, "reject", error=error)
        if self._replays is not None and decision.action != "reject":
            value = header_value(head.headers, REPLAY_HEADER_LOWER)
            if value is not None:  # a worker's replay: to the app, once proven
                decision = self._replays.decide(value)
        return decision if dialled is None else replace(decision, dialled=dialled)

    async def stream(
        self,
        head: RequestHead,
        decision: Decision,
        peer: Peer,
        body: BodyStream,
        out: ResponseStream,
    ) -> None:
        """A request passed straight to the app, both bodies streamed (a replay's body
        read whole and proven first)."""
        if decision.target is not None:  # its path normalized (--ambiguous-path normalize)
            head = replace(head, target=decision.target)
        route = decision.route
        access = self._access
        if access is None or not access.wanted():
            await self._relay(head, decision, peer, body, out)
            return
        ts, started = self._now(), time.perf_counter()
        tap = ResponseTap(out)
        try:
            await self._relay(head, decision, peer, body, ResponseStream(tap))
        finally:
            declared = header_value(head.headers, b"content-length")
            access.add(
                proxy_entry(
                    head,
                    ts=ts,
                    client=peer.host,
                    status=tap.status,
                    bytes_in=int(declared) if declared and declared.isdigit() else None,
                    bytes_out=tap.bytes_out,
                    elapsed_s=time.perf_counter() - started,
                    route=route.name,
                    action="pass",
                    request_id=tap.request_id,
                    mode="pass",
                )
            )

    async def _relay(
        self,
        head: RequestHead,
        decision: Decision,
        peer: Peer,
        body: BodyStream,
        out: ResponseStream,
    ) -> None:
        if decision.replay is not None:
            assert self._replays is not None
            proven = await self._replays.proven(head, decision.replay, body, out)
            if proven is None:
                return
            body = proven
        route = decision.route
        self._route_count(route.name, "pass")
        self._count("pass", "passed")
        assert self._pass is not None
        await self._pass.relay(
            head, decision.upstream, route.inject_headers, route.timeout_s, peer, body, out
        )

    def _reply_mode(self, head: RequestHead, route: Route) -> tuple[str, float, bytes]:
        """(mode, wait seconds, Preference-Applied value) for this request."""
        prefer = parse_prefer(head.headers)
        if prefer.respond_async:
            return "async", 0.0, b"respond-async"
        if prefer.wait_s is not None:
            wait_s = min(prefer.wait_s, self._settings.max_wait_s)
            return "wait", wait_s, b"wait=%d" % int(wait_s)
        mode = route.mode or self._settings.mode
        return mode, self._settings.wait_s if route.wait_s is None else route.wait_s, b""
