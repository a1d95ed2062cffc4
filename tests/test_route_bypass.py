"""No spelling of a path walks around a route: a corpus of encodings sent through a real
hqm proxy to real apps on three Python stacks (Flask/werkzeug, Starlette/uvicorn,
aiohttp), each started by the test (tests/framework_apps.py).

The routes (ROUTES): ``/internal/*`` rejected, ``/reports/*`` passed with a credential
injected, ``/billing/*`` queued for half of its requests (the rest passed) with another
credential, ``/public/*`` passed; everything else queued (wait mode, so the app's answer
comes back). Each app is behind a proxy that refuses ambiguous paths (the default) and
one that normalizes them. For every vector, either hqm refuses it or the app's answer shows that the
route protecting the path it acted on applied: its ``/internal/`` view never answers, a
credential only ever reaches the view of its own route, and no spelling of ``/_hqm/``
reaches the app.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from hqm.ingress.routes import AMBIGUOUS_POLICIES
from tests.framework_apps import KINDS
from tests.redis_server import free_port
from tests.support import HqmProcess, Response, request, wait_until

ROUTES = """
[[routes]]
name = "internal"
path = "/internal/*"
action = "reject"
status = 404

[[routes]]
name = "reports"
path = "/reports/*"
action = "pass"
inject_headers = { Authorization = "Bearer reports-token" }

[[routes]]
name = "billing"
path = "/billing/*"
percent = 50
mode = "wait"
inject_headers = { Authorization = "Bearer billing-token" }

[[routes]]
name = "public"
path = "/public/*"
action = "pass"
"""

#: Credentials injected by a route, and the app view each may reach.
CREDENTIALS = {"reports-token": "REPORTS", "billing-token": "BILLING"}
API_ID = "0" * 32


def _hex(char: str, upper: bool) -> str:
    code = f"{ord(char):02x}"
    return "%" + (code.upper() if upper else code)


def spellings(name: str) -> list[str]:
    """One path segment, as an attacker may spell it."""
    return [
        name,
        _hex(name[0], False) + name[1:],  # one unreserved character encoded
        name[:-1] + _hex(name[-1], False),  # lower-case hex
        name[:-1] + _hex(name[-1], True),  # upper-case hex
        "".join(_hex(c, False) for c in name),  # every character
        "%25" + f"{ord(name[0]):02x}" + name[1:],  # encoded twice
        name + ";x",  # a path parameter
    ]


#: What may stand for the "/" between two segments.
SEPARATORS = ["/", "//", "%2f", "%2F", "\\", "%5c", "%5C", "%252f", "/./", "/%2e/", ";/"]
#: What may stand before the first segment.
LEADING = ["/", "//", "///", "/./", "/%2e/", "/%2f", "/;x/", "/x/../", "/%2e%2e/"]
#: Absolute forms: the same host, other spellings of it, another host, userinfo.
ABSOLUTE = [
    "http://shop",
    "HTTP://SHOP",
    "https://shop",
    "http://other.example:8080",
    "http://user:pw@shop",
]
#: Ways from a decoy segment's route to the segment after it.
WALKS = [
    "/../",
    "/%2e%2e/",
    "/%2E%2E/",
    "/.%2e/",
    "/%2e./",
    "/..%2f",
    "/..%2F",
    "/..%5c",
    "/..\\",
    "/..;/",
    "/x/../../",
    "/%252e%252e/",
    "%2f..%2f",
    "/..%252f",
    "/./../",
    "//../",
]


def corpus() -> list[tuple[str, str]]:
    """(family, target) pairs: encodings of /internal/secret (a reject route), of
    /admin/... reached from the credential routes, and of hqm's /_hqm/."""
    vectors: list[tuple[str, str]] = []

    def direct(family: str, first: str, rest: str) -> None:
        for spelled, sep in itertools.product(spellings(first), SEPARATORS):
            vectors.append((family, "/" + spelled + sep + rest))
        for lead, spelled in itertools.product(LEADING, spellings(first)[:2]):
            vectors.append((family, lead + spelled + "/" + rest))
        for prefix in ABSOLUTE:
            for path in ("/" + first, "/" + spellings(first)[1], "//" + first, "/x/../" + first):
                vectors.append((family, prefix + path + "/" + rest))
            vectors.append((family, prefix + "/" + first + "%2f" + rest))

    def walk(family: str, decoy: str, first: str, rest: str) -> None:
        for way, spelled, prefix in itertools.product(
            WALKS, spellings(decoy)[:2], ["", "http://shop"]
        ):
            vectors.append((family, prefix + "/" + spelled + way + first + "/" + rest))

    direct("reject", "internal", "secret")
    walk("reject", "public", "internal", "secret")
    walk("inject", "reports", "admin", "delete-all")
    walk("percent", "billing", "admin", "delete-all")
    direct("api", "_hqm", "requests/" + API_ID)
    walk("api", "public", "_hqm", "requests/" + API_ID)
    # The fragment a client should never send, and a NUL an app in C may stop at.
    for decoy, target in [("public", "internal/secret"), ("reports", "admin/x")]:
        vectors.append(("fragment", f"/{decoy}#/../{target}"))
        vectors.append(("nul", f"/{target.split('/')[0]}%00/../{decoy}/x"))
    return list(dict.fromkeys(vectors))


CORPUS = corpus()
_APP_ANSWER = re.compile(rb"(SECRET|ADMIN|REPORTS|BILLING|PUBLIC) path='(.*)' auth=(.*)\n")


def violation(response: Response) -> str | None:
    """What this answer shows walked around a route (None: nothing)."""
    match = _APP_ANSWER.search(response.body)
    if match is None:
        return None  # hqm's own answer (refused, or its API), or the app's 404/400
    view, path, auth = (part.decode("latin-1") for part in match.groups())
    if view == "SECRET":
        return "the app's /internal/ view answered"
    for token, own_view in CREDENTIALS.items():
        if token in auth and view != own_view:
            return f"{token} reached the app's {view} view ({path})"
    if "_hqm" in path:
        return f"an /_hqm/ path reached the app ({path})"
    return None


@pytest.fixture(scope="module", params=list(itertools.product(KINDS, AMBIGUOUS_POLICIES)))
def stack(request, tmp_path_factory):
    kind, policy = request.param
    port = free_port()
    app = subprocess.Popen(
        [sys.executable, "-m", "tests.framework_apps", kind, str(port)],
        cwd=Path(__file__).parent.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def answering() -> bool:
        try:
            return request_app(port).status == 200
        except OSError:
            return False

    config = tmp_path_factory.mktemp(f"{kind}-{policy}") / "routes.toml"
    config.write_text(ROUTES)
    hqm = None
    try:
        assert wait_until(answering, 30.0), f"{kind} app did not start"
        hqm = HqmProcess(
            "proxy",
            *("--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"),
            *("--upstream", f"127.0.0.1:{port}", "--config", str(config)),
            *("--mode", "wait", "--wait", "10", "--ambiguous-path", policy),
        ).wait_ready()
        yield f"{kind} --ambiguous-path {policy}", port, hqm
    finally:
        if hqm is not None:
            hqm.kill()
        app.kill()
        app.wait()


def request_app(port: int) -> Response:
    return request(port, b"GET", b"/public/ping")


def test_the_corpus_covers_every_family_and_route_kind():
    families = {family for family, _ in CORPUS}
    assert families == {"reject", "inject", "percent", "api", "fragment", "nul"}
    assert len(CORPUS) > 400


def outcome(response: Response) -> str:
    """Who answered: the app, hqm's refusal of the path, a route's reject, hqm's API."""
    if _APP_ANSWER.search(response.body):
        return "app"
    if response.header(b"Content-Type") == b"application/json":
        route = response.json().get("route")
        if route in ("ambiguous-path", "bad-target", "internal"):
            return route
        return "hqm api"
    return f"hqm {response.status}"  # the parser's own refusal (a raw "\\", say)


def test_no_vector_walks_around_a_route(stack):
    kind, _, hqm = stack
    bypasses, outcomes = [], Counter()
    for family, target in CORPUS:
        via_hqm = request(hqm.port, b"GET", target.encode("latin-1"), [(b"Host", b"shop")])
        found = violation(via_hqm)
        if found is not None:
            bypasses.append(f"{family} {target}: {found}")
        outcomes[outcome(via_hqm)] += 1
    print(f"{kind}: {len(CORPUS)} vectors: {dict(outcomes)}")
    assert bypasses == [], f"{kind}: {len(bypasses)} of {len(CORPUS)} vectors walked around"
    # Not everything refused: spellings that read one way only take their route (and
    # normalized, most of the others do too).
    assert outcomes["internal"] > 20 and outcomes["hqm api"] > 20, outcomes
    if kind.endswith("normalize"):
        assert outcomes["ambiguous-path"] < len(CORPUS) * 0.3, outcomes


def test_the_same_corpus_straight_to_the_app_does_walk_around(stack):
    """The corpus is not toothless: sent to the app directly, many vectors reach what the
    routes protect (so hqm's zero above is hqm's doing)."""
    kind, app_port, _ = stack
    reached = 0
    for _, target in CORPUS:
        answer = request(app_port, b"GET", target.encode("latin-1"), [(b"Host", b"shop")])
        reached += b"SECRET " in answer.body
    assert reached > 20, f"{kind}: only {reached} vectors reach /internal/ directly"


@pytest.mark.parametrize(
    ("target", "view"),
    [
        ("/public/a%2Fb", b"PUBLIC"),  # an id with an encoded slash: same route either way
        ("/reports/q4%2F2026", b"REPORTS"),
        ("/%69nternal/x", None),  # the reject route (decided on the decoded "i")
        ("http://shop/internal/x", None),
        ("http://shop/reports/x", b"REPORTS"),
        ("/reports/a/../b", b"REPORTS"),  # dot segments inside one route: still that route
    ],
)
def test_unambiguous_spellings_take_their_route(stack, target, view):
    _, _, hqm = stack
    answer = request(hqm.port, b"GET", target.encode(), [(b"Host", b"shop")])
    if view is None:
        assert answer.status == 404 and answer.json()["route"] == "internal"
    else:
        assert answer.status == 200 and answer.body.startswith(view), answer.body
        if view == b"REPORTS":
            assert b"auth=Bearer reports-token" in answer.body
