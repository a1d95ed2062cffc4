"""Response framing shared by the server connection's answers: Content-Length set to
the body sent, reason phrases, and answers written without h11 (it refused to frame
one, or no request has come yet)."""

from __future__ import annotations

from http import HTTPStatus

_PHRASES = {status.value: status.phrase.encode() for status in HTTPStatus}


def reason_phrase(status: int) -> bytes:
    """The standard reason phrase of ``status`` (b"" for a code HTTPStatus does not know)."""
    return _PHRASES.get(status, b"")


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


def raw_error(status: int, message: str, *, head: bool, extra: bytes = b"") -> bytes:
    """An error answer written without h11 (it refused to frame one, or no request has
    come yet); no body for HEAD. ``extra``: more header lines, CRLF-terminated."""
    body = message.encode("utf-8", "replace") + b"\n"
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\n%sConnection: close\r\n\r\n"
        % (status, reason_phrase(status), len(body), extra)
    ) + (b"" if head else body)


def too_many_connections(retry_after_s: int) -> bytes:
    """What a connection over the listener's limit gets at once, before its request:
    503 and close (never a hang)."""
    extra = b"Retry-After: %d\r\n" % retry_after_s
    return raw_error(503, "too many connections", head=False, extra=extra)
