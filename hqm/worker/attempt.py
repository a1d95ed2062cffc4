"""One delivery's attempt: sent to the app its entry names, and the outcome that
follows from the answer (complete, retry later, dead-letter)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import Histogram

from hqm.proto.envelope import ResponseRecord
from hqm.proto.headers import (
    ForwardedInfo,
    header_value,
    upstream_request_headers,
    with_injected,
)
from hqm.queue.base import Delivery
from hqm.worker.claims import Lane
from hqm.worker.fleet import FleetGate
from hqm.worker.retry import (
    RETRY_ANY_METHOD,
    RETRY_IDEMPOTENT,
    Failure,
    may_retry,
    parse_retry_after,
)
from hqm.worker.sender import Sender, replay_stamp
from hqm.worker.settings import WorkerSettings
from hqm.worker.slots import Seat
from hqm.worker.upstream import UpstreamError

_RETRY_STATUSES = RETRY_ANY_METHOD | RETRY_IDEMPOTENT


class Attempts:
    def __init__(
        self,
        *,
        settings: WorkerSettings,
        senders: Mapping[str, Sender],
        fleet: FleetGate,
        wall_clock: Callable[[], float],
        wait_seconds: Mapping[str, Histogram],
    ) -> None:
        self._settings = settings
        self._senders = senders
        self._fleet = fleet
        self._now = wall_clock
        self._wait_seconds = wait_seconds

    async def run(self, lane: Lane, delivery: Delivery, seat: Seat) -> None:
        record, outcomes = delivery.record, lane.outcomes
        if delivery.deliveries > self._settings.max_deliveries:
            seat.release()
            error = f"delivered {delivery.deliveries - 1} times without finishing"
            await outcomes.dead_letter(delivery, error, delivery.attempt)
            return
        sender = self._senders.get(record.upstream)
        if sender is None:  # never dialled: a shared Redis is no way to reach other hosts
            seat.release()
            error = f"upstream {record.upstream!r} is not configured on this worker"
            await outcomes.dead_letter(delivery, error, delivery.attempt)
            return
        if delivery.attempt == 0 and delivery.deliveries == 1:
            wait_s = max(0.0, self._now() - record.received_at)
            self._wait_seconds[lane.name].observe(wait_s)
        attempt = delivery.attempt + 1
        headers = upstream_request_headers(
            record.headers,
            body_length=len(record.body),
            request_id=record.id,
            forwarded=ForwardedInfo(
                client=record.client, proto=record.scheme, policy=self._settings.forwarding
            ),
            default_host=sender.host,
        )
        if record.route:
            headers = with_injected(headers, self._settings.route_headers.get(record.route, ()))
        key = self._settings.replay_key  # (a transparent proxy passes a signed replay on)
        stamp = None if key is None else replay_stamp(key, record, self._now)
        try:
            response = await sender.send(delivery, headers, seat=seat, queue=lane.name, stamp=stamp)
        except UpstreamError as exc:
            seat.release()
            failure = Failure(str(exc), reached=exc.reached, permanent=exc.permanent)
            await outcomes.failed(delivery, failure, attempt)
            return
        seat.release()  # the app is done with it: its slot is free
        if response is None:
            return  # stopping while the app was unreachable: left pending, not lost
        retry_after = None
        if response.status in _RETRY_STATUSES:
            retry_after = parse_retry_after(
                header_value(response.headers, b"retry-after"), now=self._now()
            )
        if response.status in RETRY_ANY_METHOD:  # "come back later": slow everyone down
            await self._fleet.throttled(retry_after)
        else:
            self._fleet.succeeded()
        if response.status in _RETRY_STATUSES:
            failure = Failure(
                f"app answered {response.status}",
                reached=True,
                status=response.status,
                retry_after_s=retry_after,
            )
            if may_retry(failure, record.method, record.headers):
                await outcomes.retry_or_give_up(delivery, failure, attempt)
                return
        # A real answer (also a 5xx that is not safe to ask again) goes to the client.
        # (Built directly: dataclasses.replace costs several µs per message.)
        response = ResponseRecord(
            response.status,
            response.reason,
            response.headers,
            response.body,
            response.http_version,
            attempt,
            self._now(),
            response.error,
            record.method,
        )
        await outcomes.complete(delivery, response)
