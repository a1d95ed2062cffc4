"""Microbench of the two request engines (``--parser h11`` / ``auto``) in one run: a 1 KiB
POST with the headers a load generator sends, through the sans-IO server connection.

- parse: a fresh connection per request, bytes in until RequestReceived;
- cycle: one keep-alive connection, the request parsed and answered with a 202 (the
  proxy's async answer), the bytes to send taken: the whole sans-IO cost per request.

Three engines: ``h11 only`` (h11 reads and writes: the reference, as before the shared
answer writer), ``h11`` (``--parser h11``: h11 reads, ``framing.answer_bytes`` writes)
and ``fast`` (``--parser auto``). µs per request, the best of ``--repeat`` timeit runs,
the engines interleaved; ratios against ``h11 only`` (below 1: cheaper)."""

from __future__ import annotations

import argparse
import timeit

from hqm.proto.fast_server import FastServerConnection
from hqm.proto.limits import KIB, Limits
from hqm.proto.server import RequestReceived, ServerConnection

LIMITS = Limits()
BODY = b"x" * KIB
REQUEST = (
    b"POST /orders?id=7 HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: wrk/4.2\r\n"
    b"Accept: */*\r\nContent-Type: application/octet-stream\r\n"
    b"X-Request-Id: 3f1c0a9e-1b2d-4e5f-8a7b-6c5d4e3f2a1b\r\n"
    b"Traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
    b"Content-Length: %d\r\n\r\n" % len(BODY)
) + BODY
ANSWER = [
    (b"Content-Type", b"application/json"),
    (b"Location", b"/_hqm/requests/01JD3ZK9Q8"),
    (b"Retry-After", b"1"),
]
ANSWER_BODY = b'{"id":"01JD3ZK9Q8","status":"queued"}\n'


class H11Only(ServerConnection):
    """h11 writes every answer too (the shared writer off)."""

    def _request_read(self) -> bool:
        return False


def parse(engine) -> None:
    conn = engine(LIMITS)
    conn.receive_data(REQUEST)
    assert isinstance(conn.next_event(), RequestReceived)


def cycler(engine):
    conn = engine(LIMITS)

    def cycle() -> None:
        conn.receive_data(REQUEST)
        conn.next_event()
        conn.send_response(202, ANSWER, ANSWER_BODY)
        conn.data_to_send()

    return cycle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    engines = {"h11 only": H11Only, "h11": ServerConnection, "fast": FastServerConnection}
    cycle = {name: cycler(engine) for name, engine in engines.items()}
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.repeat):
        for name, engine in engines.items():
            runs = {
                "parse": timeit.timeit(lambda e=engine: parse(e), number=args.number),
                "cycle": timeit.timeit(cycle[name], number=args.number),
            }
            for what, seconds in runs.items():
                us = seconds / args.number * 1e6
                best[what, name] = min(best.get((what, name), us), us)
    print(f"{len(REQUEST)} B request; µs per request, best of {args.repeat} runs of {args.number}")
    print("| what | h11 only µs | h11 µs | fast µs | h11/h11 only | fast/h11 only |")
    print("|---|---|---|---|---|---|")
    for what in ("parse", "cycle"):
        ref, h11_us, fast_us = (best[what, name] for name in engines)
        print(
            f"| {what} | {ref:.1f} | {h11_us:.1f} | {fast_us:.1f} | {h11_us / ref:.2f} |"
            f" **{fast_us / ref:.2f}** |"
        )


if __name__ == "__main__":
    main()
