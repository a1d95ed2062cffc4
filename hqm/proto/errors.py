"""Protocol errors carry the HTTP status they map to, as h11's do."""

from __future__ import annotations


class ProtocolError(Exception):
    """A request we refuse; ``error_status_hint`` is the status the client gets."""

    def __init__(self, message: str, *, error_status_hint: int = 400) -> None:
        super().__init__(message)
        self.error_status_hint = error_status_hint


class EnvelopeError(ValueError):
    """A stored record that cannot be decoded (corrupt, or a newer version)."""
