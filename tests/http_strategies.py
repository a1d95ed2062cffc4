"""Hypothesis strategies for valid HTTP/1.1 requests, as raw bytes plus the expected parse.

Reusable by the sans-IO tests (feed ``raw`` to a ``ServerConnection``) and by end-to-end
tests through real sockets (write ``raw`` to the proxy, compare what the app receives).

- :func:`requests` -- a strategy of :class:`GeneratedRequest`: ``raw`` is the request on
  the wire; ``method``, ``target``, ``headers`` (raw-case name, value, in order, repeats
  kept), ``body`` (de-chunked) and ``http_version`` are what a faithful parser yields.
  Opt-in: HTTP/1.0, absolute-form targets, hop-by-hop headers, bodies of 256 KiB - 1 MiB.
- :func:`pipelines` -- several requests in one buffer.
- :func:`split` -- cut bytes into non-empty pieces at random points (never ``b""``, which
  means EOF to the connection classes).
- :func:`mutated` -- a request damaged in the ways a fuzzer should try.

Random header names never collide with :data:`SPECIAL_HEADER_NAMES` (framing, hop-by-hop,
``Host``, ``Expect``, ``Prefer``, ``X-Forwarded-*``, ``HQM-*``), so the random part of a
generated request is passed through a proxy unchanged; the special headers a generated
request carries are exactly one ``Host`` (HTTP/1.1, optional in 1.0), at most one
``Content-Length`` or ``Transfer-Encoding: chunked`` and, with ``hop_by_hop=True``,
hop-by-hop fields (``Connection``, possibly naming random headers of the request,
``Keep-Alive``, ``Proxy-Connection``, ``TE``, ``Trailer``; never ``Upgrade``, which a
proxy refuses). :meth:`GeneratedRequest.end_to_end_headers` is what a proxy must forward
of them, worked out from RFC 9110 section 7.6.1, not from hqm's code.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from hypothesis import strategies as st

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: visible ASCII, allowed in request-targets and header values
VCHAR = "".join(chr(c) for c in range(0x21, 0x7F))
#: obs-text, allowed in header values (RFC 9110 section 5.5)
OBS_TEXT = "".join(chr(c) for c in range(0x80, 0x100))

#: Lower-case names random headers never take: framing and hop-by-hop headers, ``Host``,
#: ``Expect`` (100-continue), ``Prefer`` (reply mode), and names the proxy itself writes.
SPECIAL_HEADER_NAMES = frozenset(
    {
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"expect",
        b"prefer",
    }
)
SPECIAL_HEADER_PREFIXES = (b"x-forwarded-", b"hqm-", b"proxy-")

COMMON_METHODS = (b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS", b"HEAD")

#: Hop-by-hop fields (RFC 9110 section 7.6.1, plus the widespread Proxy-Connection and
#: Keep-Alive): a proxy removes them, and every field that ``Connection`` names.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
#: Smallest and largest size of the large bodies ``requests(large_bodies=True)`` mixes in.
LARGE_BODY_MIN = 256 << 10
LARGE_BODY_MAX = 1 << 20

Header = tuple[bytes, bytes]


@dataclass(frozen=True, slots=True)
class GeneratedRequest:
    """One valid request: the bytes on the wire and what a parser must make of them."""

    method: bytes
    target: bytes
    #: (raw-case name, value) in wire order, repeats kept; values without the OWS padding
    #: the wire form may carry around them. Includes Host / Content-Length /
    #: Transfer-Encoding when the request has them (never the chunked trailers).
    headers: tuple[Header, ...]
    #: the body as the application must see it (de-chunked when ``chunked``)
    body: bytes
    chunked: bool
    raw: bytes
    http_version: bytes = b"1.1"

    def header_values(self, name: bytes) -> list[bytes]:
        """Values of header ``name`` (case-insensitive), in order."""
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def connection_options(self) -> frozenset[bytes]:
        """The lower-case options of every ``Connection`` field (a comma-separated list,
        empty elements ignored: RFC 9110 section 5.6.1)."""
        return frozenset(
            option.strip(b" \t").lower()
            for value in self.header_values(b"connection")
            for option in value.split(b",")
            if option.strip(b" \t")
        )

    def hop_by_hop_names(self) -> frozenset[bytes]:
        """Lower-case names a proxy must not forward: the hop-by-hop fields and every
        field ``Connection`` names."""
        return HOP_BY_HOP | self.connection_options()

    def end_to_end_headers(self) -> tuple[Header, ...]:
        """``headers`` without the hop-by-hop ones: what a proxy forwards as received."""
        drop = self.hop_by_hop_names()
        return tuple((n, v) for n, v in self.headers if n.lower() not in drop)

    @property
    def keep_alive(self) -> bool:
        """The connection may carry another request after this one's response."""
        return self.http_version == b"1.1" and b"close" not in self.connection_options()


def _latin1(s: str) -> bytes:
    return s.encode("latin-1")


def _is_special(name: bytes) -> bool:
    lower = name.lower()
    return lower in SPECIAL_HEADER_NAMES or lower.startswith(SPECIAL_HEADER_PREFIXES)


def tokens(min_size: int = 1, max_size: int = 16) -> st.SearchStrategy[bytes]:
    """RFC 9110 tokens (method names, header names)."""
    return st.text(TCHAR, min_size=min_size, max_size=max_size).map(_latin1)


def header_names() -> st.SearchStrategy[bytes]:
    """Random-case field names that are never special (see module docstring)."""
    common = st.sampled_from(
        [b"Accept", b"User-Agent", b"X-Custom", b"x-lower", b"X-UPPER", b"Cookie", b"Set-Thing"]
    )
    return st.one_of(common, tokens(1, 20)).filter(lambda n: not _is_special(n))


@st.composite
def header_values(draw, *, obs_text: bool = True, max_words: int = 4) -> bytes:
    """A field-value: empty, or runs of vchar/obs-text separated by SP/HTAB runs."""
    alphabet = VCHAR + (OBS_TEXT if obs_text else "")
    words = draw(st.lists(st.text(alphabet, min_size=1, max_size=12), max_size=max_words))
    out = words[0] if words else ""
    for word in words[1:]:
        out += draw(st.sampled_from([" ", "\t", "  ", " \t"])) + word
    return _latin1(out)


def ows() -> st.SearchStrategy[bytes]:
    return st.sampled_from([b"", b"", b" ", b"\t", b"  ", b" \t "])


def request_methods() -> st.SearchStrategy[bytes]:
    """Common methods and random tokens; never CONNECT (refused, not a plain request)."""
    return st.one_of(st.sampled_from(COMMON_METHODS), tokens(1, 10)).filter(
        lambda m: m.upper() != b"CONNECT"
    )


def targets() -> st.SearchStrategy[bytes]:
    """Raw request-targets: origin-form with arbitrary vchar (``%ZZ``, ``//``, ``..``)."""
    path = st.text(VCHAR, max_size=40).map(lambda s: b"/" + _latin1(s))
    fixed = st.sampled_from([b"/", b"/a%2Fb?x=1&y=%ZZ", b"//x/../y?q=%00#frag", b"/?a=1&a=2"])
    return st.one_of(fixed, path)


def absolute_targets(authority: bytes) -> st.SearchStrategy[bytes]:
    """absolute-form request-targets (RFC 9112 section 3.2.2) for ``authority``."""
    scheme = st.sampled_from([b"http://", b"http://", b"https://", b"HTTP://"])
    return st.builds(lambda s, path: s + authority + path, scheme, targets())


def large_bodies(
    min_size: int = LARGE_BODY_MIN, max_size: int = LARGE_BODY_MAX
) -> st.SearchStrategy[bytes]:
    """Random bodies of ``min_size``..``max_size`` bytes. Built from a drawn seed: such a
    body is more bytes than Hypothesis draws for one example, and it still replays and
    shrinks (towards ``min_size``)."""
    return st.builds(
        lambda size, seed: random.Random(seed).randbytes(size),
        st.integers(min_size, max_size),
        st.integers(0, 2**32 - 1),
    )


def hosts() -> st.SearchStrategy[bytes]:
    name = st.from_regex(r"\A[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?\Z", fullmatch=True)
    port = st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}"))
    return st.builds(lambda n, p: _latin1(n + p), name, port)


@st.composite
def _chunked_body(draw, body: bytes, trailer_headers: bool) -> bytes:
    """``body`` in chunked transfer coding: random cuts, hex case, extensions, trailers."""
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(body) - 1)), max_size=6))))
    cuts = [c for c in cuts if 0 < c < len(body)]
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True) if b > a]
    ext = st.sampled_from([b"", b"", b";x", b";name=value", b';q="quoted str"', b";a=1;b=2"])
    out = bytearray()
    for piece in pieces:
        size = f"{len(piece):x}"
        size = draw(st.sampled_from([size, size.upper(), "0" + size]))
        out += _latin1(size) + draw(ext) + b"\r\n" + piece + b"\r\n"
    out += draw(st.sampled_from([b"0", b"00", b"000"])) + draw(ext) + b"\r\n"
    if trailer_headers:
        for name, value in draw(st.lists(st.tuples(header_names(), header_values()), max_size=2)):
            out += name + b": " + value + b"\r\n"
    out += b"\r\n"
    return bytes(out)


_SEPARATORS = [b",", b", ", b" , ", b",  ", b", ,"]


@st.composite
def _hop_by_hop_lines(draw, random_names: list[bytes]) -> list[tuple[bytes, bytes]]:
    """Hop-by-hop fields: ``Connection`` (options: close/keep-alive, hop-by-hop names,
    names of the request's random headers, names of fields added here for it) and some of
    ``Keep-Alive``, ``Proxy-Connection``, ``TE``, ``Trailer``; never Upgrade."""
    case = st.sampled_from
    lines: list[tuple[bytes, bytes]] = []
    for _ in range(draw(st.integers(0, 2))):  # Connection, possibly repeated
        options: list[bytes] = []
        if draw(st.booleans()):
            options.append(draw(case([b"close", b"Close", b"keep-alive", b"Keep-Alive"])))
        options += draw(
            st.lists(
                case([b"TE", b"te", b"Trailer", b"keep-alive", b"Proxy-Connection"]), max_size=2
            )
        )
        if random_names and draw(st.booleans()):  # a random header of the request
            name = draw(case(random_names))
            options.append(draw(case([name, name.lower(), name.upper()])))
        for name in draw(st.lists(header_names(), max_size=2)):  # a field just for this hop
            options.append(name)
            lines.append((name, draw(header_values())))
        if not options:
            options.append(draw(case([b"keep-alive", b"close"])))
        value = options[0]
        for option in options[1:]:
            value += draw(case(_SEPARATORS)) + option
        lines.append((draw(case([b"Connection", b"connection", b"CONNECTION"])), value))
    others = [
        (case([b"Keep-Alive", b"keep-alive"]), case([b"timeout=5, max=100", b"300"])),
        (case([b"Proxy-Connection", b"proxy-connection"]), case([b"keep-alive", b"close"])),
        (case([b"TE", b"te", b"Te"]), case([b"trailers", b"trailers, deflate;q=0.5", b"gzip"])),
        (case([b"Trailer", b"trailer"]), case([b"X-Checksum", b"Expires, X-Sig"])),
    ]
    for name, value in draw(st.lists(st.sampled_from(others), max_size=4)):
        lines.append((draw(name), draw(value)))
    return lines


@st.composite
def requests(
    draw,
    *,
    max_body: int = 2048,
    max_headers: int = 8,
    allow_chunked: bool = True,
    allow_http10: bool = False,
    methods: st.SearchStrategy[bytes] | None = None,
    bodies: st.SearchStrategy[bytes] | None = None,
    absolute_form: bool = False,
    hop_by_hop: bool = False,
    large_bodies: bool = False,
    always_host: bool = False,
) -> GeneratedRequest:
    """A strategy of valid requests (see :class:`GeneratedRequest`).

    ``allow_http10`` mixes in HTTP/1.0 requests (no chunked, Host optional unless
    ``always_host``, the connection closes after them). ``methods``/``bodies`` override
    the defaults. ``absolute_form`` mixes in ``GET http://host/path`` targets (the
    authority is the Host value when there is one); ``hop_by_hop`` adds hop-by-hop
    fields; ``large_bodies`` makes about one body in six 256 KiB - 1 MiB.
    """
    method = draw(methods if methods is not None else request_methods())
    version = draw(st.sampled_from([b"1.1", b"1.0"])) if allow_http10 else b"1.1"
    with_host = version == b"1.1" or always_host or draw(st.booleans())
    host = draw(hosts()) if with_host else None
    if absolute_form and draw(st.booleans()):
        target = draw(absolute_targets(host if host is not None else draw(hosts())))
    else:
        target = draw(targets())
    if bodies is not None:
        body = draw(bodies)
    elif large_bodies and draw(st.integers(0, 5)) == 5:
        body = draw(_large_bodies())
    else:
        body = draw(st.binary(max_size=max_body))
    chunked = version == b"1.1" and allow_chunked and draw(st.booleans())

    # (name, value-as-parsed, wire-line)
    lines: list[tuple[bytes, bytes, bytes]] = []
    for name, value in draw(
        st.lists(st.tuples(header_names(), header_values()), max_size=max_headers)
    ):
        lines.append((name, value, name + b":" + draw(ows()) + value + draw(ows())))

    def insert(name: bytes, value: bytes) -> None:
        at = draw(st.integers(0, len(lines)))
        lines.insert(at, (name, value, name + b":" + draw(ows()) + value + draw(ows())))

    case = st.sampled_from

    if hop_by_hop:
        for name, value in draw(_hop_by_hop_lines([name for name, _, _ in lines])):
            insert(name, value)
    if host is not None:
        insert(draw(case([b"Host", b"host", b"HOST"])), host)
    if chunked:
        insert(draw(case([b"Transfer-Encoding", b"transfer-encoding"])), b"chunked")
    elif body or draw(st.booleans()):
        insert(draw(case([b"Content-Length", b"content-length"])), b"%d" % len(body))

    head = method + b" " + target + b" HTTP/" + version + b"\r\n"
    head += b"".join(line + b"\r\n" for _, _, line in lines) + b"\r\n"
    wire_body = draw(_chunked_body(body, trailer_headers=draw(st.booleans()))) if chunked else body
    return GeneratedRequest(
        method=method,
        target=target,
        headers=tuple((name, value) for name, value, _ in lines),
        body=body,
        chunked=chunked,
        raw=head + wire_body,
        http_version=version,
    )


_large_bodies = large_bodies  # ``requests`` has a parameter of that name


def pipelines(
    min_size: int = 2, max_size: int = 4, **kwargs
) -> st.SearchStrategy[list[GeneratedRequest]]:
    """Several keep-alive (HTTP/1.1) requests meant to be sent back to back in one write."""
    kwargs.setdefault("max_body", 256)
    return st.lists(requests(**kwargs), min_size=min_size, max_size=max_size)


@st.composite
def split(draw, data: bytes, max_pieces: int = 12) -> list[bytes]:
    """``data`` cut at random points into non-empty pieces (joined, they equal ``data``)."""
    if not data:
        return []
    cuts = sorted(
        set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=max_pieces - 1)))
    )
    cuts = [c for c in cuts if 0 < c < len(data)]
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


_DAMAGE = [b"\r", b"\n", b"\x00", b"\r\n", b"\r\n\r\n", b" ", b"\t", b":", b";", b"\xff"]
_HEADER_INJECTIONS = [
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: xchunked\r\n",
    b"Transfer-Encoding : chunked\r\n",
    b"Content-Length: 7\r\n",
    b"Content-Length: 99999999999\r\n",
    b"Expect: 100-continue\r\n",
    b"Upgrade: websocket\r\n",
    b"Connection: close\r\n",
    b"Host: other\r\n",
    b" folded\r\n",
]


@st.composite
def mutated(draw, raw: bytes, max_mutations: int = 4) -> bytes:
    """``raw`` with 1..max_mutations of: byte flip, random insert, delete, truncation,
    a duplicated line, CR/LF/NUL insertion, a header injection, a huge chunk size."""
    data = bytearray(raw)
    for _ in range(draw(st.integers(1, max_mutations))):
        kind = draw(
            st.sampled_from(
                ["flip", "insert", "delete", "truncate", "dup_line", "damage", "inject", "chunk"]
            )
        )
        pos = draw(st.integers(0, len(data)))
        if kind == "flip" and data:
            i = min(pos, len(data) - 1)
            data[i] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del data[pos:]
        elif kind == "dup_line":
            start = data.rfind(b"\n", 0, pos) + 1
            end = data.find(b"\n", pos)
            if end >= 0:
                data[start:start] = data[start : end + 1]
        elif kind == "damage":
            data[pos:pos] = draw(st.sampled_from(_DAMAGE))
        elif kind == "inject":
            head_end = data.find(b"\r\n")
            at = head_end + 2 if head_end >= 0 else pos
            data[at:at] = draw(st.sampled_from(_HEADER_INJECTIONS))
        elif kind == "chunk":
            data[pos:pos] = draw(
                st.sampled_from([b"ffffffffffffffffffff\r\n", b"7fffffffffffffff\r\nxx", b"1" * 25])
            )
    return bytes(data)


@st.composite
def mutated_requests(draw, **kwargs) -> bytes:
    """Raw bytes of a valid request (or a pipeline of two) after :func:`mutated`."""
    reqs = draw(st.lists(requests(**kwargs), min_size=1, max_size=2))
    return draw(mutated(b"".join(r.raw for r in reqs)))
