"""Options of transparent mode (docs/architecture.md §6): the proxy reading each
connection's original destination, and the key proxies and workers share to sign and
check ``HQM-Replay``. ``hqm.config.tables`` lists them in the PROXY and WORKER tables;
a module of their own keeps that one small."""

from __future__ import annotations

from hqm.config.options import Option, boolean, path, text

TRANSPARENT = Option(
    "transparent",
    "bool",
    False,
    "Behind `hqm iptables`: each connection goes to the app on the port the client "
    "dialled (--upstream or [upstreams] by port; any other port: 502).",
    boolean,
    switch=True,
)
REPLAY_KEY_FILE = Option(
    "replay-key-file",
    "path",
    None,
    "File holding the HMAC key of HQM-Replay: replays it signs (worker) or checks (proxy) "
    "go straight to the app, never queued again.",
    path,
    shared=True,
)
REPLAY_KEY = Option(
    "replay-key",
    "secret",
    None,
    "The HMAC key itself (prefer --replay-key-file, or this as HQM_REPLAY_KEY).",
    text(max_len=4096),
    shared=True,
    display=lambda value: "<redacted>",
)
REPLAY = (REPLAY_KEY_FILE, REPLAY_KEY)
