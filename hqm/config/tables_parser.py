"""``--parser``: which engine reads client requests on ``hqm proxy`` (listed in the PROXY
table of ``hqm.config.tables``; a module of its own keeps that one small).

``auto`` reads the plain common request with httptools (llhttp) and hands anything
else to h11 (``hqm.proto.fast_server``); ``h11`` reads every request with h11. Both
answer with h11, and tests/test_proto_fast_server.py holds them to the same events and
bytes.
"""

from __future__ import annotations

from hqm.config.options import Option, choice
from hqm.proto.fast_server import PARSERS

PARSER = Option(
    "parser",
    "choice",
    "auto",
    "Request parser: auto (httptools for plain requests, h11 for the rest) or h11.",
    choice(*PARSERS),
)
