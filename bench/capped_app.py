"""An app that serves at most ``cap / service`` requests per second.

At most ``--cap`` requests are served at once (a semaphore), each taking ``--service``
seconds, so with the defaults (10, 0.1 s) it never does more than 100 req/s.
It records its peak concurrency twice: requests at its door (what the workers sent
it at once: must never exceed the cap) and requests being served. ``GET /stats``
answers JSON counters without waiting for a slot.

    python bench/capped_app.py --port 8081 [--cap 10 --service 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import uvloop
from ceiling import BODY, Http, serve


class CappedApp:
    def __init__(self, cap: int, service_s: float) -> None:
        self.cap, self.service_s = cap, service_s
        self.slots = asyncio.Semaphore(cap)
        self.arrived = self.completed = self.at_door = self.serving = 0
        self.peak_at_door = self.peak_serving = 0
        self.first_arrival = self.last_completion = 0.0  # wall clock

    async def __call__(self, request) -> tuple[int, bytes]:
        if request.target == b"/stats":
            return 200, json.dumps(self.stats()).encode()
        self.arrived += 1
        self.first_arrival = self.first_arrival or time.time()
        self.at_door += 1
        self.peak_at_door = max(self.peak_at_door, self.at_door)
        try:
            async with self.slots:
                self.serving += 1
                self.peak_serving = max(self.peak_serving, self.serving)
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
            "max_rate": self.cap / self.service_s,
            "arrived": self.arrived,
            "completed": self.completed,
            "peak_at_door": self.peak_at_door,
            "peak_serving": self.peak_serving,
            "first_arrival": self.first_arrival,
            "last_completion": self.last_completion,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cap", type=int, default=10)
    parser.add_argument("--service", type=float, default=0.1)
    args = parser.parse_args()

    async def run() -> None:
        app = CappedApp(args.cap, args.service)
        await serve(args.port, lambda: Http(handler=app))

    uvloop.run(run())


if __name__ == "__main__":
    main()
