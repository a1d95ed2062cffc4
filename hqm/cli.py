"""The ``hqm`` command line. Every flag can also be set as HQM_<COMMAND>_<FLAG>."""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import click

from hqm import __version__
from hqm.config import (
    REPLY_MODES,
    ConfigError,
    ProxySettings,
    WorkerSettings,
    parse_listen,
    parse_upstream,
)
from hqm.dlq_cli import check_redis_url, dlq
from hqm.logs import setup as setup_logging
from hqm.proto import limits as L
from hqm.proto.limits import Limits


def _run(coro) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(coro)
    except OSError as exc:  # e.g. a port already in use
        raise click.ClickException(f"cannot start: {exc.strerror or exc}") from None
    except ConfigError as exc:  # found while starting, e.g. a --redis URL redis-py refuses
        raise click.UsageError(str(exc)) from None


def _settings(build):
    try:
        return build()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


_common = [
    click.option("--upstream", required=True, help="The app: HOST:PORT or http://HOST:PORT."),
    click.option("--queue", default="default", show_default=True, help="Queue name."),
    click.option(
        "--result-ttl",
        type=float,
        default=L.RESULT_TTL_S,
        show_default=True,
        help="Seconds a finished result stays collectable.",
    ),
    click.option(
        "--drain-timeout",
        type=float,
        default=L.DRAIN_TIMEOUT_S,
        show_default=True,
        help="On SIGTERM/SIGINT, seconds in-flight requests get to finish.",
    ),
    click.option("--log-level", default="info", show_default=True),
]

_worker_opts = [
    click.option(
        "--concurrency", type=int, default=None, help="Requests in flight to the app (hard cap)."
    ),
    click.option("--rate", type=float, default=0.0, help="Requests/s to the app; 0 = no limit."),
    click.option("--max-attempts", type=int, default=5, show_default=True),
    click.option(
        "--retry-base",
        type=float,
        default=0.5,
        show_default=True,
        help="Backoff base seconds (full jitter).",
    ),
    click.option(
        "--retry-max", type=float, default=30.0, show_default=True, help="Backoff cap, seconds."
    ),
    click.option(
        "--visibility-timeout",
        type=float,
        default=30.0,
        show_default=True,
        help="Seconds before another worker takes over an unfinished entry.",
    ),
    click.option("--max-deliveries", type=int, default=10, show_default=True),
    click.option("--connect-timeout", type=float, default=L.CONNECT_TIMEOUT_S, show_default=True),
    click.option("--read-timeout", type=float, default=L.READ_TIMEOUT_S, show_default=True),
    click.option(
        "--forwarded-headers/--no-forwarded-headers",
        default=True,
        show_default=True,
        help="Append X-Forwarded-For/-Proto/-Host.",
    ),
]


def _apply(options):
    def decorate(func):
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def _worker_settings(opts: dict, *, consumer: str, burst: bool, default_concurrency: int):
    return WorkerSettings(
        consumer=consumer,
        concurrency=opts["concurrency"] or default_concurrency,
        rate=opts["rate"],
        visibility_timeout_s=opts["visibility_timeout"],
        max_attempts=opts["max_attempts"],
        max_deliveries=opts["max_deliveries"],
        retry_base_s=opts["retry_base"],
        retry_max_s=opts["retry_max"],
        drain_timeout_s=opts["drain_timeout"],
        connect_timeout_s=opts["connect_timeout"],
        read_timeout_s=opts["read_timeout"],
        forwarded_headers=opts["forwarded_headers"],
        burst=burst,
    )


@click.group(context_settings={"auto_envvar_prefix": "HQM", "show_default": True})
@click.version_option(__version__, prog_name="hqm")
def main() -> None:
    """OpenHQM: a durable queue in front of any HTTP/1.1 app."""


@main.command()
@click.option("--listen", default=":8000", help="Where clients connect: :PORT or HOST:PORT.")
@click.option("--admin", default="127.0.0.1:9090", help="/metrics, /healthz, /readyz listener.")
@click.option(
    "--redis",
    "redis_url",
    default=None,
    callback=check_redis_url,
    help="redis:// URL; none = embedded queue.",
)
@click.option("--mode", type=click.Choice(REPLY_MODES), default="async", help="Reply mode.")
@click.option("--wait", "wait_s", type=float, default=L.WAIT_S, help="Wait-mode hold, seconds.")
@click.option("--max-wait", type=float, default=L.MAX_WAIT_S, help="Cap on Prefer: wait=N.")
@click.option("--max-body", type=int, default=L.MAX_BODY_BYTES, help="Request body limit (413).")
@click.option("--max-header-bytes", type=int, default=L.MAX_HEADER_BYTES, help="Head limit (431).")
@click.option("--max-depth", type=int, default=0, help="Backlog limit (503); 0 = none.")
@click.option("--header-timeout", type=float, default=L.HEADER_TIMEOUT_S, help="408 after.")
@click.option("--body-timeout", type=float, default=L.BODY_TIMEOUT_S, help="408 after.")
@click.option("--idle-timeout", type=float, default=L.IDLE_TIMEOUT_S, help="Keep-alive idle.")
@_apply(_common)
@_apply(_worker_opts)
def proxy(**opts) -> None:
    """Accept requests, queue them, answer 202 (or the app's response in wait mode).

    Without --redis an in-process worker drains an embedded (non-durable) queue.
    """
    setup_logging(opts["log_level"])
    settings = _settings(
        lambda: ProxySettings(
            listen=parse_listen(opts["listen"], allow_any_port=True),
            upstream=parse_upstream(opts["upstream"]),
            admin=parse_listen(opts["admin"], what="--admin", allow_any_port=True),
            redis_url=opts["redis_url"],
            queue=opts["queue"],
            mode=opts["mode"],
            wait_s=opts["wait_s"],
            max_wait_s=opts["max_wait"],
            limits=Limits(
                max_header_bytes=opts["max_header_bytes"],
                max_body_bytes=opts["max_body"],
                header_timeout_s=opts["header_timeout"],
                body_timeout_s=opts["body_timeout"],
                idle_timeout_s=opts["idle_timeout"],
            ),
            max_depth=opts["max_depth"],
            result_ttl_s=opts["result_ttl"],
            drain_timeout_s=opts["drain_timeout"],
            forwarded_headers=opts["forwarded_headers"],
            embedded_worker=_worker_settings(
                opts, consumer="embedded", burst=False, default_concurrency=8
            ),
        )
    )
    from hqm.runtime import run_proxy

    _run(run_proxy(settings))


def _default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@main.command()
@click.option(
    "--redis",
    "redis_url",
    required=True,
    callback=check_redis_url,
    help="redis:// URL of the queue.",
)
@click.option("--consumer", default=None, help="Consumer name; default HOST-PID.")
@click.option("--admin", default="127.0.0.1:9091", help="/metrics, /healthz, /readyz listener.")
@click.option("--burst", is_flag=True, help="Exit once the queue is empty (tests, batch jobs).")
@_apply(_common)
@_apply(_worker_opts)
def worker(**opts) -> None:
    """Replay queued requests to the app at the rate it can bear; record its answers."""
    setup_logging(opts["log_level"])
    from hqm.runtime import WorkerRun, run_worker

    run = _settings(
        lambda: WorkerRun(
            upstream=parse_upstream(opts["upstream"]),
            redis_url=opts["redis_url"],
            queue=opts["queue"],
            admin=parse_listen(opts["admin"], what="--admin", allow_any_port=True),
            result_ttl_s=opts["result_ttl"],
            worker=_worker_settings(
                opts,
                consumer=opts["consumer"] or _default_consumer(),
                burst=opts["burst"],
                default_concurrency=16,
            ),
        )
    )
    _run(run_worker(run))


main.add_command(dlq)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
