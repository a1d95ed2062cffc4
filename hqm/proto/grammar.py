"""h11's grammar (h11/_abnf.py) as byte patterns, for the code that must take exactly
what h11 takes (the fast paths, the shared answer writer), and the request engines'
names (``--parser``).

h11 matches each field with ``fullmatch``; so do its users here.
"""

from __future__ import annotations

#: ``--parser``: ``auto`` is the httptools fast path when it imports; ``h11`` alone.
PARSERS = ("auto", "h11")
DEFAULT_PARSER = PARSERS[0]

#: token (RFC 9110 5.6.2): a method, a field name.
TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
#: A character h11 takes in a field value or a reason phrase: visible ASCII, obs-text
#: and the control characters other than NUL and whitespace.
VCHAR = rb"[^\x00\s]"
#: A field value as h11 reads it: words of VCHAR separated by SP/HTAB runs (no leading
#: or trailing whitespace: that is OWS, outside the value).
FIELD_VALUE = rb"(?:%s+(?:[ \t]+%s+)*)?" % (VCHAR, VCHAR)
#: A reason phrase: SP, HTAB and VCHAR.
REASON = rb"(?:[ \t]|%s)*" % VCHAR
