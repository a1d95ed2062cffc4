"""UpstreamPool against a scripted app on a real socket: keep-alive reuse, the stale
keep-alive retry (idempotent methods only), and what each failure means
(UpstreamError.reached / .permanent)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

import pytest

from hqm.io.address import Address
from hqm.worker.upstream import PoolSettings, UpstreamError, UpstreamPool
from tests.redis_server import free_port
from tests.support import HandClock

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
HEADERS = [(b"Host", b"app"), (b"Content-Length", b"3")]

#: Per accepted connection: (reader, writer, index of the connection) -> None.
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


class App:
    def __init__(self, script: Script | None = None) -> None:
        self.script = script or self.serve
        self.connections = 0
        self.requests: list[bytes] = []

    async def __aenter__(self) -> App:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.script(reader, writer, self.connections)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    def pool(self, **settings: float) -> UpstreamPool:
        return UpstreamPool(Address("127.0.0.1", self.port), PoolSettings(**settings))

    async def serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _index: int
    ) -> None:
        """Answer OK to every request, keep-alive."""
        while True:
            self.requests.append(await read_request(reader))
            writer.write(OK)


def run(coro: Awaitable[None], timeout_s: float = 20) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout_s))


def test_keep_alive_connection_is_reused() -> None:
    async def body() -> None:
        async with App() as app:
            pool = app.pool()
            for i in range(3):
                response = await pool.request(b"POST", b"/%d" % i, HEADERS, b"abc")
                assert (response.status, response.body) == (200, b"ok")
            assert app.connections == 1
            assert app.requests[2].startswith(b"POST /2 HTTP/1.1\r\nHost: app\r\n")
            assert app.requests[2].endswith(b"\r\n\r\nabc")
            await pool.close()

    run(body())


def _stale_app(answered: list[int]) -> Script:
    """The first connection answers once, then takes the next request and closes."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
        if i == 1:
            await read_request(reader)
            writer.write(OK)
            answered.append(i)
            await read_request(reader)
            return  # closed without an answer
        while True:
            await read_request(reader)
            writer.write(OK)
            answered.append(i)

    return script


@pytest.mark.parametrize("method", [b"GET", b"PUT", b"DELETE", b"POST", b"PATCH"])
def test_reused_connection_closed_before_an_answer_is_sent_again_fresh(method: bytes) -> None:
    """RFC 9112 9.3.1: a reused connection closed before any byte of an answer: the
    request goes out again at once on a fresh connection, whatever its method."""

    async def body() -> None:
        answered: list[int] = []
        async with App(_stale_app(answered)) as app:
            pool = app.pool()
            await pool.request(b"GET", b"/", [(b"Host", b"app")], b"")
            response = await pool.request(method, b"/", HEADERS, b"abc")
            assert response.status == 200
            assert answered == [1, 2]
            assert pool.stale_retries == 1
            await pool.close()

    run(body())


def test_fresh_connection_closed_without_an_answer_is_an_error() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
        await read_request(reader)  # read, then closed without a byte of answer

    async def body() -> None:
        async with App(script) as app:
            pool = app.pool()
            with pytest.raises(UpstreamError) as info:
                await pool.request(b"POST", b"/", HEADERS, b"abc")
            assert info.value.reached and "without answering" in str(info.value)
            assert app.connections == 1  # a fresh connection is not retried
            await pool.close()

    run(body())


#: The issue's figures are 300 POSTs 200 ms apart against an app closing connections
#: idle for 200 ms (a minute); the suite runs 60 at 50 ms (HQM_TEST_KEEPALIVE=300,0.2
#: runs them in full).
KEEPALIVE_COUNT, KEEPALIVE_GAP_S = (
    float(x) for x in os.environ.get("HQM_TEST_KEEPALIVE", "60,0.05").split(",")
)


def test_app_closing_idle_connections_loses_no_request() -> None:
    """An app that closes connections idle as long as the gap between POSTs: every POST
    reaches the app exactly once and none fails (the race of a request with the app's
    close is the stale case above)."""
    count = int(KEEPALIVE_COUNT)

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
        while True:
            try:
                request = await asyncio.wait_for(read_request(reader), KEEPALIVE_GAP_S)
            except TimeoutError:
                return  # idle too long: the app closes it
            app.requests.append(request)
            writer.write(OK)

    async def body() -> None:
        async with App(script) as served:
            nonlocal app
            app = served
            pool = served.pool()
            for i in range(count):
                response = await pool.request(b"POST", b"/%d" % i, HEADERS, b"abc")
                assert response.status == 200
                await asyncio.sleep(KEEPALIVE_GAP_S)  # pacing the traffic: not a wait
            targets = [r.split(b" ")[1] for r in served.requests]
            assert targets == [b"/%d" % i for i in range(count)]
            await pool.close()

    app: App
    run(body(), timeout_s=20 + 3 * count * KEEPALIVE_GAP_S)


@pytest.mark.parametrize(
    ("answer", "idle_timeout", "kept_for"),
    [
        (OK, 1.0, 1.0),
        (
            b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=2, max=100\r\nContent-Length: 2\r\n\r\nok",
            5.0,
            1.5,
        ),
        (b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=0\r\nContent-Length: 2\r\n\r\nok", 5.0, 0.0),
    ],
    ids=["idle-timeout", "keep-alive-timeout", "keep-alive-0"],
)
def test_idle_connections_retire_before_the_app_closes_them(answer, idle_timeout, kept_for):
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
        while True:
            await read_request(reader)
            writer.write(answer)

    async def body() -> None:
        clock = HandClock(0.0)
        async with App(script) as app:
            pool = UpstreamPool(
                Address("127.0.0.1", app.port),
                PoolSettings(idle_timeout_s=idle_timeout),
                clock=clock,
            )
            await pool.request(b"GET", b"/", [(b"Host", b"app")], b"")
            if kept_for:
                clock.now += kept_for - 0.01
                await pool.request(b"GET", b"/", [(b"Host", b"app")], b"")
                assert app.connections == 1  # reused within its time
                clock.now += kept_for + 0.01
            await pool.request(b"GET", b"/", [(b"Host", b"app")], b"")
            assert app.connections == 2  # retired: a fresh connection
            assert pool.stale_retries == 0
            await pool.close()

    run(body())


def test_connect_refused_never_reached() -> None:
    async def body() -> None:
        pool = UpstreamPool(Address("127.0.0.1", free_port()))
        with pytest.raises(UpstreamError) as info:
            await pool.request(b"POST", b"/", HEADERS, b"abc")
        assert not info.value.reached and not info.value.permanent

    run(body())


def test_request_that_cannot_be_sent_is_permanent() -> None:
    async def body() -> None:
        async with App() as app:
            pool = app.pool()
            bad = [(b"Host", b"app"), (b"X", b"a\r\nInjected: 1")]
            with pytest.raises(UpstreamError) as info:
                await pool.request(b"GET", b"/", bad, b"")
            assert not info.value.reached and info.value.permanent
            assert app.requests == []
            await pool.close()

    run(body())


def _answer(raw: bytes, *, close: bool) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
        await read_request(reader)
        writer.write(raw)
        if not close:
            await asyncio.sleep(10)

    return script


@pytest.mark.parametrize(
    ("raw", "close", "message"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", True, "closed"),
        (b"NOT HTTP\r\n\r\n", True, "malformed"),
        (b"", True, "without answering"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", False, "within"),
    ],
    ids=["eof-mid-body", "malformed", "closed-no-answer", "read-timeout"],
)
def test_failures_after_sending_count_as_reached(raw: bytes, close: bool, message: str) -> None:
    async def body() -> None:
        async with App(_answer(raw, close=close)) as app:
            pool = app.pool(read_timeout_s=0.3)
            with pytest.raises(UpstreamError) as info:
                await pool.request(b"GET", b"/", [(b"Host", b"app")], b"")
            assert info.value.reached and not info.value.permanent
            assert message in str(info.value)
            await pool.close()

    run(body())


def test_close_delimited_body_and_connection_not_reused() -> None:
    async def body() -> None:
        raw = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end"
        async with App(_answer(raw, close=True)) as app:
            pool = app.pool()
            for _ in range(2):
                response = await pool.request(b"GET", b"/", [(b"Host", b"app")], b"")
                assert response.body == b"until the end"
            assert app.connections == 2
            await pool.close()

    run(body())


def test_response_split_over_many_packets_and_large_body() -> None:
    big = bytes(range(256)) * 4096  # 1 MiB

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
        while True:
            await read_request(reader)
            raw = b"HTTP/1.1 201 Created\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: %d\r\n\r\n" % len(
                big
            )
            for part in (raw[:5], raw[5:20], raw[20:]):
                writer.write(part)
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(big)

    async def body() -> None:
        async with App(script) as app:
            pool = app.pool()
            for _ in range(2):
                response = await pool.request(b"GET", b"/", [(b"Host", b"app")], b"")
                assert (response.status, response.reason) == (201, b"Created")
                assert response.headers[:2] == ((b"X-A", b"1"), (b"x-a", b"2"))
                assert response.body == big
            assert app.connections == 1
            await pool.close()

    run(body())


def test_idle_connections_bounded_by_pool_size() -> None:
    async def body() -> None:
        async with App() as app:
            pool = app.pool(pool_size=2)
            calls = [pool.request(b"GET", b"/", [(b"Host", b"app")], b"") for _ in range(5)]
            assert all(r.status == 200 for r in await asyncio.gather(*calls))
            assert app.connections == 5
            assert len(pool._idle) == 2
            await pool.close()
            assert pool._idle == []

    run(body())


def test_reused_connection_closed_long_after_the_request_is_not_sent_again() -> None:
    """The app took the request and died on it (closed after working on it for 0.5 s,
    past STALE_WINDOW_S): that is no idle-close race, so it is not sent again."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
        app.requests.append(await read_request(reader))
        writer.write(OK)
        app.requests.append(await read_request(reader))
        await asyncio.sleep(0.5)  # the app works on it, then dies

    async def body() -> None:
        nonlocal app
        async with App(script) as served:
            app = served
            pool = served.pool()
            await pool.request(b"GET", b"/", [(b"Host", b"app")], b"")
            with pytest.raises(UpstreamError) as info:
                await pool.request(b"POST", b"/pay", HEADERS, b"abc")
            assert info.value.reached and "without answering" in str(info.value)
            assert served.connections == 1 and len(served.requests) == 2
            assert pool.stale_retries == 0
            await pool.close()

    app: App
    run(body())
