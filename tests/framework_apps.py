"""Real apps on the Python stacks people run, each with the same three views, for the
path-encoding corpus (tests/test_route_bypass.py): started in their own process by
``python -m tests.framework_apps KIND PORT``.

- ``/internal/<rest>``: answers ``SECRET`` (what a reject route protects);
- ``/admin/<rest>``: answers ``ADMIN`` and the ``Authorization`` it received;
- ``/reports/<rest>``, ``/billing/<rest>``: ``REPORTS``, ``BILLING``, likewise;
- anything else: ``PUBLIC``.

Every answer also names the path the framework routed on, so a test can tell which
view a request reached whatever the framework's reading of the target was.
"""

from __future__ import annotations

import sys

KINDS = ("werkzeug", "starlette", "aiohttp")


def _answer(view: str, path: str, authorization: str | None) -> bytes:
    return f"{view} path={path!r} auth={authorization or '-'}\n".encode()


def run_werkzeug(port: int) -> None:
    from flask import Flask, request

    app = Flask("corpus")

    @app.route("/internal/<path:rest>", methods=["GET", "POST", "DELETE", "PUT"])
    def internal(rest: str) -> bytes:
        return _answer("SECRET", request.path, request.headers.get("Authorization"))

    @app.route("/admin/<path:rest>", methods=["GET", "POST", "DELETE", "PUT"])
    def admin(rest: str) -> bytes:
        return _answer("ADMIN", request.path, request.headers.get("Authorization"))

    @app.route("/reports/<path:rest>", methods=["GET", "POST", "DELETE", "PUT"])
    def reports(rest: str) -> bytes:
        return _answer("REPORTS", request.path, request.headers.get("Authorization"))

    @app.route("/billing/<path:rest>", methods=["GET", "POST", "DELETE", "PUT"])
    def billing(rest: str) -> bytes:
        return _answer("BILLING", request.path, request.headers.get("Authorization"))

    @app.route("/", defaults={"rest": ""}, methods=["GET", "POST", "DELETE", "PUT"])
    @app.route("/<path:rest>", methods=["GET", "POST", "DELETE", "PUT"])
    def public(rest: str) -> bytes:
        return _answer("PUBLIC", request.path, request.headers.get("Authorization"))

    from werkzeug.serving import make_server

    make_server("127.0.0.1", port, app, threaded=True).serve_forever()


def run_starlette(port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    def view(name: str):
        async def endpoint(request: Request) -> Response:
            path = request.scope["path"]
            return Response(_answer(name, path, request.headers.get("authorization")))

        return endpoint

    methods = ["GET", "POST", "DELETE", "PUT"]
    app = Starlette(
        routes=[
            Route("/internal/{rest:path}", view("SECRET"), methods=methods),
            Route("/admin/{rest:path}", view("ADMIN"), methods=methods),
            Route("/reports/{rest:path}", view("REPORTS"), methods=methods),
            Route("/billing/{rest:path}", view("BILLING"), methods=methods),
            Route("/{rest:path}", view("PUBLIC"), methods=methods),
        ]
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def run_aiohttp(port: int) -> None:
    from aiohttp import web

    def view(name: str):
        async def endpoint(request: web.Request) -> web.Response:
            body = _answer(name, request.path, request.headers.get("Authorization"))
            return web.Response(body=body)

        return endpoint

    app = web.Application()
    app.router.add_route("*", "/internal/{rest:.*}", view("SECRET"))
    app.router.add_route("*", "/admin/{rest:.*}", view("ADMIN"))
    app.router.add_route("*", "/reports/{rest:.*}", view("REPORTS"))
    app.router.add_route("*", "/billing/{rest:.*}", view("BILLING"))
    app.router.add_route("*", "/{rest:.*}", view("PUBLIC"))
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    {"werkzeug": run_werkzeug, "starlette": run_starlette, "aiohttp": run_aiohttp}[kind](port)
