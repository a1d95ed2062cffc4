"""Microbench of the two client engines (``parser="h11"`` / ``"auto"``) in one run: the
worker's keep-alive exchange with the app through the sans-IO ClientConnection, a
1 KiB POST out and a small 200 answer in, then ``start_next_cycle``.

- whole: the answer arrives in one read;
- split: the answer arrives in two reads (the head, then the body).

µs per exchange, the best of ``--repeat`` timeit runs, the engines interleaved; the
ratio is fast/h11 (below 1: the httptools fast path is cheaper)."""

from __future__ import annotations

import argparse
import timeit

from hqm.proto.client import ClientConnection
from hqm.proto.limits import KIB

BODY = b"x" * KIB
HEADERS = [
    (b"Host", b"127.0.0.1:8080"),
    (b"User-Agent", b"wrk/4.2"),
    (b"Accept", b"*/*"),
    (b"Content-Type", b"application/octet-stream"),
    (b"X-Request-Id", b"3f1c0a9e-1b2d-4e5f-8a7b-6c5d4e3f2a1b"),
    (b"Traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    (b"Content-Length", b"%d" % len(BODY)),
]
ANSWER_BODY = b'{"ok":true,"id":7}\n'
ANSWER_HEAD = (
    b"HTTP/1.1 200 OK\r\ndate: Mon, 01 Jan 2024 00:00:00 GMT\r\nserver: uvicorn\r\n"
    b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(ANSWER_BODY)
)
ANSWER = ANSWER_HEAD + ANSWER_BODY
READS = {"whole": [ANSWER], "split": [ANSWER_HEAD, ANSWER_BODY]}


def exchanger(parser: str, reads: list[bytes]):
    conn = ClientConnection(parser=parser)

    def exchange() -> None:
        conn.send_request(b"POST", b"/orders?id=7", HEADERS, BODY)
        for data in reads:
            record = conn.receive_data(data)
        assert record is not None
        conn.start_next_cycle()

    exchange()  # and it works
    return exchange


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    engines = {"h11": "h11", "fast": "auto"}
    runs = {
        (what, name): exchanger(engine, reads)
        for what, reads in READS.items()
        for name, engine in engines.items()
    }
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.repeat):
        for key, run in runs.items():
            us = timeit.timeit(run, number=args.number) / args.number * 1e6
            best[key] = min(best.get(key, us), us)
    print(
        f"{len(BODY)} B POST, {len(ANSWER)} B answer; µs per keep-alive exchange, "
        f"best of {args.repeat} runs of {args.number}"
    )
    print("| answer | h11 µs | fast µs | fast/h11 |")
    print("|---|---|---|---|")
    for what in READS:
        h11_us, fast_us = best[what, "h11"], best[what, "fast"]
        print(f"| {what} | {h11_us:.1f} | {fast_us:.1f} | **{fast_us / h11_us:.2f}** |")


if __name__ == "__main__":
    main()
