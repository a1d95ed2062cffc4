"""An app that serves at most ``cap / service`` requests per second.

At most ``--cap`` requests are served at once (a semaphore), each taking ``--service``
seconds, so with the defaults (10, 0.1 s) it never does more than 100 req/s.
It records its peak concurrency twice: requests at its door (what the workers sent
it at once: must never exceed the cap) and requests being served. ``GET /stats``
answers JSON counters without waiting for a slot.

``--cap 0`` takes every request at once (no semaphore; ``--service 0``: no delay
either): then only the workers' own limits (``--global-rate``) hold it back. Either
way it counts arrivals per second of its own clock: the most in any one second
(``max_1s_window``, a sliding window ending at each arrival) and per calendar second
(``GET /seconds``: ``{"<epoch second>": count}``).

    python bench/capped_app.py --port 8081 [--cap 10 --service 0.1]
    python bench/capped_app.py --port 8081 --cap 0 --service 0
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import time

import uvloop
from ceiling import BODY, Http, serve


class CappedApp:
    def __init__(self, cap: int, service_s: float) -> None:
        self.cap, self.service_s = cap, service_s
        self.slots = asyncio.Semaphore(cap) if cap > 0 else contextlib.nullcontext()
        self.arrived = self.completed = self.at_door = self.serving = 0
        self.peak_at_door = self.peak_serving = 0
        self.first_arrival = self.last_completion = 0.0  # wall clock
        #: Arrivals per second of the app's clock, and those of the last second.
        self.per_second: collections.Counter[int] = collections.Counter()
        self.window: collections.deque[float] = collections.deque()
        self.max_1s_window = 0

    def arrival(self) -> None:
        now = time.time()
        self.arrived += 1
        self.first_arrival = self.first_arrival or now
        self.per_second[int(now)] += 1
        window = self.window
        window.append(now)
        while window[0] <= now - 1.0:
            window.popleft()
        self.max_1s_window = max(self.max_1s_window, len(window))

    async def __call__(self, request) -> tuple[int, bytes]:
        if request.target == b"/stats":
            return 200, json.dumps(self.stats()).encode()
        if request.target == b"/seconds":
            return 200, json.dumps({str(k): v for k, v in sorted(self.per_second.items())}).encode()
        self.arrival()
        self.at_door += 1
        self.peak_at_door = max(self.peak_at_door, self.at_door)
        try:
            async with self.slots:
                self.serving += 1
                self.peak_serving = max(self.peak_serving, self.serving)
                if self.service_s > 0:
                    await asyncio.sleep(self.service_s)
                self.serving -= 1
        finally:
            self.at_door -= 1
        self.completed += 1
        self.last_completion = time.time()
        return 200, BODY

    def stats(self) -> dict:
        return {
            "cap": self.cap,
            "max_rate": self.cap / self.service_s if self.cap and self.service_s else None,
            "arrived": self.arrived,
            "completed": self.completed,
            "peak_at_door": self.peak_at_door,
            "peak_serving": self.peak_serving,
            "first_arrival": self.first_arrival,
            "last_completion": self.last_completion,
            "max_1s_window": self.max_1s_window,
            "max_calendar_second": max(self.per_second.values(), default=0),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cap", type=int, default=10, help="0: no cap")
    parser.add_argument("--service", type=float, default=0.1)
    args = parser.parse_args()

    async def run() -> None:
        app = CappedApp(args.cap, args.service)
        await serve(args.port, lambda: Http(handler=app))

    uvloop.run(run())


if __name__ == "__main__":
    main()
