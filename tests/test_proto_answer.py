"""The answer writer both engines share (``framing.answer_bytes``) against h11's writer:
for every status, reason, header list, request method and keep-alive it either writes
exactly the bytes h11 writes, or leaves the answer to h11 (None); and it does take the
answers hqm makes all day (the 202, a stored result, a HEAD, a 204)."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hqm.proto.framing import answer_bytes, client_keeps_alive, with_content_length
from tests.http_strategies import header_names, header_values

ODD_HEADERS = st.sampled_from(
    [
        (b"Connection", b"close"),
        (b"Connection", b"keep-alive"),
        (b"Host", b"app"),
        (b"Content-Length", b"3"),
        (b"content-length", b"12"),
        (b"Content-Length", b"1, 1"),
        (b"Content-Length", b""),
        (b"Content-Length", b"1" * 21),
        (b"Transfer-Encoding", b"chunked"),
        (b"X-Space", b" lead"),
        (b"X-Space", b"trail\t"),
        (b"Bad Name", b"x"),
        (b"", b"x"),
        (b"X-Ctl", b"a\x00b"),
        (b"X-Ctl", b"a\x0bb"),
        (b"X-Nl", b"a\r\nb"),
        (b"X-Obs", b"caf\xe9"),
        (b"X-Empty", b""),
    ]
)
HEADERS = st.lists(st.tuples(header_names(), header_values()) | ODD_HEADERS, max_size=6)
REASONS = st.none() | st.sampled_from([b"", b"OK", b"Fine Thanks", b"caf\xe9", b"a\rb", b"\x00"])


def h11_answer(
    method: bytes,
    version: bytes,
    connection: bytes | None,
    status: int,
    reason: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
) -> bytes | None:
    """What h11 writes for this answer to this request; None where it refuses it."""
    conn = h11.Connection(h11.SERVER)
    lines = b"" if connection is None else b"Connection: " + connection + b"\r\n"
    host = b"Host: h\r\n" if version == b"1.1" else b""
    conn.receive_data(b"%s / HTTP/%s\r\n%s%s\r\n" % (method, version, host, lines))
    assert isinstance(conn.next_event(), h11.Request)
    assert isinstance(conn.next_event(), h11.EndOfMessage)
    try:
        out = conn.send(h11.Response(status_code=status, headers=headers, reason=reason))
        if body:
            out += conn.send(h11.Data(data=body))
        out += conn.send(h11.EndOfMessage())
    except h11.LocalProtocolError:
        return None
    return out


@settings(max_examples=600, deadline=None)
@given(
    method=st.sampled_from([b"GET", b"POST", b"HEAD"]),
    version=st.sampled_from([b"1.0", b"1.1"]),
    connection=st.none() | st.sampled_from([b"close", b"keep-alive", b"Keep-Alive, Close", b"x"]),
    status=st.sampled_from([100, 199, 200, 202, 204, 301, 304, 404, 503, 599, 600, 999]),
    reason=REASONS,
    headers=HEADERS,
    body=st.sampled_from([b"", b"answer body\n", b"x" * 300]),
    framed=st.booleans(),
)
def test_writes_what_h11_writes_or_leaves_it_to_h11(
    method, version, connection, status, reason, headers, body, framed
):
    bodyless = method == b"HEAD" or status in (204, 304)
    if framed and status not in (204, 304):
        headers = with_content_length(headers, len(body))  # as send_response frames it
    reason = b"Reason" if reason is None else reason
    keep_alive = client_keeps_alive(version, () if connection is None else (connection,))
    ours = answer_bytes(status, reason, headers, None if bodyless else body, keep_alive=keep_alive)
    if ours is not None:
        sent = b"" if bodyless else body
        assert ours == h11_answer(method, version, connection, status, reason, headers, sent)


ANSWERS = {
    "async 202": (202, [(b"Content-Type", b"application/json"), (b"Location", b"/x")], b"{}"),
    "stored result": (200, [(b"Content-Type", b"text/plain"), (b"X-App", b"v1")], b"done"),
    "empty reason": (201, [(b"X-Empty", b"")], b"made"),
    "no content": (204, [(b"Date", b"Tue, 01 Dec 2026 10:00:00 GMT")], b""),
    "not modified with the app's length": (304, [(b"Content-Length", b"42")], b""),
}


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
@pytest.mark.parametrize(
    "version, connection", [(b"1.1", None), (b"1.1", b"close"), (b"1.0", None)]
)
@pytest.mark.parametrize("case", ANSWERS.values(), ids=ANSWERS.keys())
def test_the_answers_hqm_makes_are_written_here(case, method, version, connection):
    status, headers, body = case
    if status not in (204, 304):
        headers = with_content_length(headers, len(body))
    bodyless = method == b"HEAD" or status in (204, 304)
    sent = b"" if bodyless else body
    keep_alive = client_keeps_alive(version, () if connection is None else (connection,))
    ours = answer_bytes(
        status, b"Reason", headers, None if bodyless else body, keep_alive=keep_alive
    )
    assert ours is not None
    assert ours == h11_answer(method, version, connection, status, b"Reason", headers, sent)
    assert (b"Connection: close\r\n" in ours) is (not keep_alive)


@pytest.mark.parametrize(
    "version, headers, keeps",
    [
        (b"1.1", [], True),
        (b"1.1", [(b"Connection", b"keep-alive")], True),
        (b"1.1", [(b"connection", b"Upgrade, CLOSE")], False),
        (b"1.1", [(b"Connection", b"foo"), (b"Connection", b" close ")], False),
        (b"1.1", [(b"Connection", b"closed")], True),
        (b"1.0", [(b"Connection", b"keep-alive")], False),
        (b"1.0", [], False),
    ],
)
def test_keep_alive_is_decided_as_h11_decides_it(version, headers, keeps):
    conn = h11.Connection(h11.SERVER)
    host = [(b"Host", b"h")] if version == b"1.1" else []
    lines = b"".join(b"%s: %s\r\n" % pair for pair in [*host, *headers])
    conn.receive_data(b"GET / HTTP/%s\r\n%s\r\n" % (version, lines))
    conn.next_event()
    conn.next_event()
    conn.send(h11.Response(status_code=200, headers=[(b"Content-Length", b"0")]))
    conn.send(h11.EndOfMessage())
    assert (conn.our_state is h11.DONE) is keeps
    values = [value for name, value in headers if name.lower() == b"connection"]
    assert client_keeps_alive(version, values) is keeps
