"""Microbench of a route decision (``RouteTable.decide`` with hqm's own endpoints first,
as the proxy asks it for every request) against the sans-IO cycle of the fast engine
(``--parser auto``: parse a 1 KiB POST and answer it 202) measured in the same run.

Tables: none configured (only ``/_hqm/*`` and ``/api/v1/*``), and ``examples/routes.toml``.
Targets: a plain path, one with an encoded unreserved character (one reading), and paths
that read several ways (a dot segment, ``%2F`` in an id, ``%25``): those are worked out
reading by reading; and the costliest path hqm reads (every feature, repeated up to
MAX_AMBIGUOUS_PATH_BYTES). µs per decision, the best of ``--repeat`` timeit runs; ratios to
the cycle (0.1: a tenth of the cost of parsing and answering the request)."""

from __future__ import annotations

import argparse
import timeit
import tomllib
from pathlib import Path

from parser import cycler  # bench/parser.py (run as a script from bench/'s directory)

from hqm.config.routes_file import build_routes
from hqm.ingress.routes import Route
from hqm.proto.events import RequestHead
from hqm.proto.fast_server import FastServerConnection
from hqm.proto.target import MAX_AMBIGUOUS_PATH_BYTES

RESERVED = (
    Route(name="api", action="api", path="/_hqm/*"),
    Route(name="api", action="api", path="/api/v1/*"),
)
#: A path of MAX_AMBIGUOUS_PATH_BYTES holding every feature, again and again: the most
#: readings hqm works out for one request (the attacker's best).
_WORST_SEGMENT = b"/a%252e;x/..%5c%00#//./"
WORST = (_WORST_SEGMENT * (MAX_AMBIGUOUS_PATH_BYTES // len(_WORST_SEGMENT) + 1))[
    :MAX_AMBIGUOUS_PATH_BYTES
]
TARGETS = {
    "plain": b"/orders?id=7",
    "encoded unreserved": b"/%6Frders?id=7",
    "dot segment": b"/reports/2026/../q4",
    "%2F in an id": b"/files/a%2Fb",
    "%25": b"/search/100%25",
    f"worst, {MAX_AMBIGUOUS_PATH_BYTES} B": WORST,
}


def tables():
    example = Path(__file__).resolve().parent.parent / "examples" / "routes.toml"
    raw = tomllib.loads(example.read_text())
    env = {"REPORTS_TOKEN": "t"}
    routes = build_routes(
        str(example), tuple(raw["routes"]), upstreams=raw["upstreams"], env=env,
        default_queue="default",
    )  # fmt: skip
    none = build_routes("", (), upstreams={}, env={}, default_queue="default")
    return {
        "no routes": none.with_reserved(RESERVED),
        "routes.toml": routes.with_reserved(RESERVED),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=20_000)
    args = parser.parse_args()

    def best(fn, number=args.number):
        return min(timeit.repeat(fn, number=number, repeat=args.repeat))

    cycle_us = best(cycler(FastServerConnection)) / args.number * 1e6
    print(f"fast engine cycle (parse + 202): {cycle_us:.2f} µs")
    print("| table | target | readings | µs | / cycle |")
    print("|---|---|---|---|---|")
    for table_name, table in tables().items():
        for name, target in TARGETS.items():
            head = RequestHead(b"GET", target, ((b"Host", b"shop.example"),), b"1.1")
            readings = len(table.match(head).target.readings)
            number = args.number if len(target) < 100 else max(1, args.number // 1000)
            us = best(lambda h=head, t=table: t.decide(h, "10.0.0.1"), number) / number * 1e6
            print(f"| {table_name} | {name} | {readings} | {us:.2f} | {us / cycle_us:.3f} |")


if __name__ == "__main__":
    main()
