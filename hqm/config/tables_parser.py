"""``--parser``: which engine reads HTTP: the requests of clients on ``hqm proxy``, the
answers of the app on ``hqm worker`` (and the proxy's in-process worker). Listed in the
PROXY and WORKER tables of ``hqm.config.tables``; shared, so ``HQM_PARSER`` sets both.

``auto`` reads the plain common message with httptools (llhttp) and hands anything
else to h11 (``hqm.proto.fast_server``, ``hqm.proto.fast_client``); ``h11`` reads every
message with h11, the reference. Whole answers are written by one writer for both
(``hqm.proto.framing.answer_bytes``). tests/test_proto_fast_server.py and
tests/test_proto_client_fast.py hold the engines to the same events and bytes.
"""

from __future__ import annotations

from hqm.config.options import Option, choice
from hqm.proto.grammar import DEFAULT_PARSER, PARSERS

PARSER = Option(
    "parser",
    "choice",
    DEFAULT_PARSER,
    "HTTP parser: auto (httptools for plain messages, h11 for the rest) or h11 (all).",
    choice(*PARSERS),
    shared=True,
)
