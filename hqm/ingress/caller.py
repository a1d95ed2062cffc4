"""Who sent a request, as far as hqm can tell (docs/architecture.md §13): the caller a
route's ``Idempotency-Key`` belongs to (Stripe's model: a key is the account's that
sent it) and, with ``result_access = "caller"``, the only one who may read the result.

A route's ``caller`` says what identifies the caller:

- ``"authorization"`` (the default): the ``Authorization`` header's value(s);
- ``"header:NAME"``: another header's value(s), e.g. ``"header:X-Api-Key"``;
- ``"client"``: the client's address (as the proxy sees it: behind a load balancer
  every caller may share one).

A request without that header has the empty credential: every such caller is one
caller (anonymous callers share their keys, as before). hqm never stores the
credential: only a sha256 digest of the scope and the value (``digest``), which the
queue keeps with the request's state when the route binds the result to its caller
(``owner``). The credential itself still travels in the stored request, as sent.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from dataclasses import dataclass

from hqm.proto.events import RequestHead

SCOPE_KINDS = ("authorization", "header", "client")
#: ``result_access``: "id" (the 128-bit id is the capability) or "caller".
RESULT_ACCESS = ("id", "caller")
_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_LENGTH = struct.Struct(">I")
_AUTHORIZATION = b"authorization"
#: Between an owner's scope and its digest (never in a header name, nor in hex).
_OWNER_SEP = "/"


@dataclass(frozen=True, slots=True)
class CallerScope:
    kind: str = "authorization"  # one of SCOPE_KINDS
    #: kind "header": the header's name, lower case.
    name: bytes = b""

    def __str__(self) -> str:
        return f"header:{self.name.decode()}" if self.kind == "header" else self.kind

    @classmethod
    def parse(cls, text: str) -> CallerScope:
        """``"authorization"``, ``"client"`` or ``"header:NAME"``; ValueError otherwise."""
        kind, sep, name = text.partition(":")
        if kind == "header" and sep and _TOKEN.fullmatch(name):
            return cls("header", name.lower().encode())
        if kind in ("authorization", "client") and not sep:
            return cls(kind)
        raise ValueError(f'"authorization", "client" or "header:NAME", got {text!r}')

    def credential(self, head: RequestHead, client: str) -> bytes:
        """What identifies the caller of ``head`` (b"" when it carries none)."""
        if self.kind == "client":
            return client.encode()
        wanted = self.name if self.kind == "header" else _AUTHORIZATION
        # Every line of the field, in order: a second line makes another caller.
        return b"\n".join(value for name, value in head.headers if name.lower() == wanted)


DEFAULT_SCOPE = CallerScope()


def digest(scope: CallerScope, head: RequestHead, client: str) -> str:
    """The caller of ``head`` under ``scope``, as a hex sha256 (scope and credential
    length-prefixed: no two pairs collide)."""
    hasher = hashlib.sha256()
    for part in (str(scope).encode(), scope.credential(head, client)):
        hasher.update(_LENGTH.pack(len(part)))
        hasher.update(part)
    return hasher.hexdigest()


def owner(scope: CallerScope, head: RequestHead, client: str) -> str:
    """What the queue keeps with a request bound to its caller: the scope (to ask a
    reader the same way) and the caller's digest."""
    return f"{scope}{_OWNER_SEP}{digest(scope, head, client)}"


def owns(stored_owner: str, head: RequestHead, client: str) -> bool:
    """Whether the reader of ``head`` is the caller ``stored_owner`` names ("": nobody
    was named, the id alone is the capability). An owner that does not parse matches
    no reader."""
    if not stored_owner:
        return True
    text, sep, expected = stored_owner.rpartition(_OWNER_SEP)
    try:
        scope = CallerScope.parse(text)
    except ValueError:
        return False
    return bool(sep) and hmac.compare_digest(digest(scope, head, client), expected)
