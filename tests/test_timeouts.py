"""Slow and idle clients, driven by a manual clock: no sleeps, no real waiting."""

from __future__ import annotations

import asyncio

from hqm.assembly import Bound, run_proxy
from hqm.config.build import proxy_from
from hqm.io.clock import ManualClock


async def _yield_to_loop() -> None:
    """Let the loop run every ready callback (no wall time passes)."""
    for _ in range(50):
        await asyncio.sleep(0)


async def _with_proxy(scenario, limits: dict[str, str]):
    clock = ManualClock()
    stop = asyncio.Event()
    ready: asyncio.Future[Bound] = asyncio.get_running_loop().create_future()
    settings = proxy_from(
        {
            "listen": "127.0.0.1:0",
            "upstream": "127.0.0.1:9",
            "admin": "127.0.0.1:0",
            "max-attempts": "1",
            "drain-timeout": "1",
            **limits,
        }
    )
    task = asyncio.create_task(
        run_proxy(settings, stop=stop, on_ready=ready.set_result, clock=clock)
    )
    bound = await ready
    try:
        return await scenario(bound.listen.port, clock)
    finally:
        stop.set()
        await task


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), 10)


def test_slow_head_gets_408_and_close():
    async def scenario(port, clock):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        await writer.drain()
        await _yield_to_loop()  # the server has read what we sent
        clock.advance(9.9)
        await _yield_to_loop()  # anything the server wrote or closed has reached us
        assert reader._buffer == b"" and not reader.at_eof()  # nothing yet: 10 s not up
        clock.advance(0.2)
        return await _read_all(reader)

    out = asyncio.run(_with_proxy(scenario, {"header-timeout": "10"}))
    assert out.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in out.lower()


def test_slow_body_gets_408():
    async def scenario(port, clock):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        await _yield_to_loop()
        clock.advance(29)
        await _yield_to_loop()
        assert reader._buffer == b"" and not reader.at_eof()
        clock.advance(2)
        return await _read_all(reader)

    out = asyncio.run(_with_proxy(scenario, {"body-timeout": "30"}))
    assert out.startswith(b"HTTP/1.1 408 ")


def test_idle_keep_alive_connection_is_closed_quietly():
    async def scenario(port, clock):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /_hqm/requests/x HTTP/1.1\r\nHost: a\r\n\r\n")
        await writer.drain()
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(
            next(
                line.split(b":")[1]
                for line in first.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        await reader.readexactly(length)
        await _yield_to_loop()
        clock.advance(74)
        await _yield_to_loop()
        assert not reader.at_eof()
        clock.advance(2)
        return first, await _read_all(reader)

    first, rest = asyncio.run(_with_proxy(scenario, {"idle-timeout": "75"}))
    assert first.startswith(b"HTTP/1.1 404 ")
    assert rest == b""  # closed without a 408: nothing was in progress
