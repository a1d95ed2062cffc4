"""Response framing shared by the server connection's answers: Content-Length set to
the body sent, reason phrases, the one writer of whole answers both request engines
use (``answer_bytes``: h11's bytes, without h11's per-answer cost), and answers written
without h11 (it refused to frame one, or no request has come yet)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from http import HTTPStatus

import orjson

from hqm.proto import grammar

_PHRASES = {status.value: status.phrase.encode() for status in HTTPStatus}

# h11's grammar for what it sends: what matches, h11 writes as given.
_TOKEN = re.compile(grammar.TOKEN)
_FIELD_VALUE = re.compile(grammar.FIELD_VALUE)
_REASON = re.compile(grammar.REASON)
#: Longest Content-Length value h11 writes (its CONTENT_LENGTH_MAX_DIGITS).
_MAX_LENGTH_DIGITS = 20
#: Header names h11 rewrites, moves or frames by when it sends an answer: those answers
#: are h11's to write (Host goes first, Connection and Transfer-Encoding are re-set).
_H11_REWRITES = frozenset({b"connection", b"transfer-encoding", b"host"})
#: Statuses whose answer never carries a body, whatever its headers say.
NO_BODY_STATUSES = frozenset({204, 304})


def reason_phrase(status: int) -> bytes:
    """The standard reason phrase of ``status`` (b"" for a code HTTPStatus does not know)."""
    return _PHRASES.get(status, b"")


def framed(
    status: int,
    headers: list[tuple[bytes, bytes]],
    size: int,
    *,
    head: bool,
    frame_from_body: bool,
) -> list[tuple[bytes, bytes]]:
    """``headers`` of an answer with a body of ``size`` bytes (in hand, or streamed in
    pieces and framed as a whole), with its Content-Length where it has one: not for 1xx,
    204, 304; to a HEAD (``head``) only with ``frame_from_body`` (an answer framed as
    the GET answer would be; False keeps an app's own answer to a HEAD as it is)."""
    if status in NO_BODY_STATUSES or status < 200 or (head and not frame_from_body):
        return headers
    return with_content_length(headers, size)


def with_content_length(
    headers: list[tuple[bytes, bytes]], length: int
) -> list[tuple[bytes, bytes]]:
    """Content-Length set to the body we send, in place of the first one given (if any)."""
    value = str(length).encode()
    out: list[tuple[bytes, bytes]] = []
    seen = False
    for name, current in headers:
        if name.lower() == b"content-length":
            if not seen:
                out.append((name, value))
                seen = True
            continue
        out.append((name, current))
    if not seen:
        out.append((b"Content-Length", value))
    return out


def client_keeps_alive(http_version: bytes, connection: Iterable[bytes]) -> bool:
    """Whether the connection may carry another request after this one's answer, as
    h11 decides it: HTTP/1.1 without a ``close`` token in ``connection`` (the values
    of the request's Connection fields)."""
    if http_version != b"1.1":
        return False
    return not any(
        token.strip() == b"close" for value in connection for token in value.lower().split(b",")
    )


def answer_bytes(
    status: int,
    reason: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    body: bytes | None,
    *,
    keep_alive: bool,
) -> bytes | None:
    """A whole answer (head and ``body``, framed by the Content-Length in ``headers``)
    byte for byte as h11 writes it; None where h11 must write it because it would
    refuse, re-frame or rewrite it (a status below 200, a header outside its grammar,
    a second Content-Length or one that is not the body's, none on a status that has
    a body, Connection, Transfer-Encoding or Host). ``keep_alive`` False adds h11's
    ``Connection: close``. ``body`` is None where none is sent (HEAD, 204, 304): the
    headers then describe the body a GET would get, as given."""
    if not 200 <= status < 1000 or _REASON.fullmatch(reason) is None:
        return None
    lines = []
    lengths = 0
    for name, value in headers:
        lower = name.lower()
        if lower == b"content-length":
            lengths += 1  # a second one: h11 merges or refuses it
            if lengths > 1 or not value.isdigit() or len(value) > _MAX_LENGTH_DIGITS:
                return None
            if body is not None and int(value) != len(body):
                return None  # h11 refuses a body of another length
        elif (
            lower in _H11_REWRITES
            or _TOKEN.fullmatch(name) is None
            or _FIELD_VALUE.fullmatch(value) is None
        ):
            return None
        lines.append(b"%s: %s\r\n" % (name, value))
    if not lengths and status not in NO_BODY_STATUSES:
        return None  # h11 would pick chunked or close-delimited framing
    if not keep_alive:
        lines.append(b"Connection: close\r\n")
    head = b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, reason, b"".join(lines))
    return head if body is None else head + body


#: hqm's refusals of the protocol layer (400, 408, 413, 431, 501, 505, 503) are JSON
#: ``{"error": "..."}``, as every other error answer hqm makes (routes, queue, API).
ERROR_CONTENT_TYPE = b"application/json"


def error_body(message: str) -> bytes:
    """The body of an error answer hqm makes itself."""
    return orjson.dumps({"error": message})


def raw_error(status: int, message: str, *, head: bool, extra: bytes = b"") -> bytes:
    """An error answer written without h11 (it refused to frame one, or no request has
    come yet); no body for HEAD. ``extra``: more header lines, CRLF-terminated."""
    body = error_body(message)
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\n"
        b"Content-Length: %d\r\n%sConnection: close\r\n\r\n"
        % (status, reason_phrase(status), ERROR_CONTENT_TYPE, len(body), extra)
    ) + (b"" if head else body)


def too_many_connections(retry_after_s: int) -> bytes:
    """What a connection over the listener's limit gets at once, before its request:
    503 and close (never a hang)."""
    extra = b"Retry-After: %d\r\n" % retry_after_s
    return raw_error(503, "too many connections", head=False, extra=extra)
