"""RFC 7240 ``Prefer`` parsing for reply-mode selection."""

from __future__ import annotations

from dataclasses import dataclass

from hqm.proto.envelope import Headers


@dataclass(frozen=True, slots=True)
class Preference:
    respond_async: bool = False
    wait_s: float | None = None


def parse_prefer(headers: Headers) -> Preference:
    """Read ``respond-async`` and ``wait=N`` from every Prefer header; junk is ignored.

    Only the first ``wait`` counts (RFC 7240 section 2).
    """
    respond_async = False
    wait: float | None = None
    for name, value in headers:
        if name.lower() != b"prefer":
            continue
        for item in value.split(b","):
            token = item.split(b";", 1)[0].strip().lower()
            if token == b"respond-async":
                respond_async = True
            elif token.startswith(b"wait"):
                key, _, number = token.partition(b"=")
                if key.strip() != b"wait":
                    continue
                try:
                    seconds = float(number.strip().strip(b'"'))
                except ValueError:
                    continue
                if wait is None and 0 <= seconds < float("inf"):  # RFC 7240: first wins
                    wait = seconds
    return Preference(respond_async=respond_async, wait_s=wait)
