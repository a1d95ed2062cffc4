"""SIGTERM and SIGINT: the first one stops the process gracefully (it drains); for a
process that says what a second one abandons, the second one exits at once, as
Ctrl-C twice does with uvicorn or Sidekiq: one log line with what was abandoned, exit
status 128 + the signal's number (130 for SIGINT)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable

log = logging.getLogger("hqm")

#: The signals that stop an hqm process.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_on_signals(stop: asyncio.Event, *, abandon: Callable[[], str] | None = None) -> None:
    """The first stop signal sets ``stop``. With ``abandon``: a second one, while the
    process drains, logs ``abandon()`` (what is left undone) and exits at once."""
    loop = asyncio.get_running_loop()

    def received(sig: signal.Signals) -> None:
        if abandon is None or not stop.is_set():
            stop.set()
            return
        log.warning("second %s: exiting at once; %s", sig.name, abandon())
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        os._exit(128 + sig.value)  # no cleanup: that is what a second Ctrl-C asks

    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, received, sig)
