"""The queue envelope: binary-safe round trips, and EnvelopeError for anything corrupt."""

from __future__ import annotations

import contextlib
import struct

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hqm.proto.envelope import (
    ENVELOPE_VERSION,
    RequestRecord,
    ResponseRecord,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    error_response,
)
from hqm.proto.errors import EnvelopeError

PREFIX = struct.Struct(">3sBBI")
KIND_REQUEST, KIND_RESPONSE = 1, 2

ANY_BYTES = st.binary(max_size=64)
HEADERS = st.lists(st.tuples(ANY_BYTES, ANY_BYTES), max_size=8).map(tuple)
FINITE = st.floats(allow_nan=False, allow_infinity=False)
TEXT = st.text(max_size=40)

request_records = st.builds(
    RequestRecord,
    id=TEXT,
    method=ANY_BYTES,
    target=st.binary(max_size=200),
    headers=HEADERS,
    body=st.binary(max_size=4096),
    http_version=ANY_BYTES,
    client=TEXT,
    scheme=TEXT,
    received_at=FINITE,
    reply_to=TEXT,
    mode=TEXT,
    upstream=TEXT,
)
response_records = st.builds(
    ResponseRecord,
    status=st.integers(-(2**63), 2**63 - 1),
    reason=ANY_BYTES,
    headers=HEADERS,
    body=st.binary(max_size=4096),
    http_version=ANY_BYTES,
    attempts=st.integers(-(2**63), 2**63 - 1),
    completed_at=FINITE,
    error=st.none() | TEXT,
)

PROPERTY = settings(deadline=None, max_examples=300)


def head_end(encoded: bytes) -> int:
    return PREFIX.size + PREFIX.unpack_from(encoded)[3]


# --- round trips ----------------------------------------------------------------------


@PROPERTY
@given(request_records)
def test_request_round_trip(record):
    encoded = encode_request(record)
    assert decode_request(encoded) == record
    assert decode_request(bytearray(encoded)) == record
    assert decode_request(memoryview(encoded)) == record


@PROPERTY
@given(response_records)
def test_response_round_trip(record):
    encoded = encode_response(record)
    assert decode_response(encoded) == record


@PROPERTY
@given(request_records)
def test_request_body_stored_raw(record):
    encoded = encode_request(record)
    assert encoded.startswith(b"HQM" + bytes([ENVELOPE_VERSION, KIND_REQUEST]))
    assert encoded.endswith(record.body)
    assert encoded[head_end(encoded) :] == record.body


@PROPERTY
@given(response_records)
def test_response_body_stored_raw(record):
    encoded = encode_response(record)
    assert encoded.startswith(b"HQM" + bytes([ENVELOPE_VERSION, KIND_RESPONSE]))
    assert encoded[head_end(encoded) :] == record.body


def test_every_byte_value_round_trips_in_every_bytes_field():
    every = bytes(range(256))
    record = RequestRecord(
        id="r1",
        method=every,
        target=every,
        headers=((every, every), (b"X-Dup", b"1"), (b"x-dup", b"2")),
        body=every * 4,
        http_version=every,
    )
    encoded = encode_request(record)
    assert decode_request(encoded) == record
    assert encoded.endswith(every * 4)
    # the body is never escaped or base64-encoded into the head
    assert len(encoded) == head_end(encoded) + len(every) * 4


def test_one_mib_binary_body_round_trips():
    body = bytes(range(256)) * 4096
    record = ResponseRecord(status=200, reason=b"OK", headers=(), body=body)
    encoded = encode_response(record)
    assert decode_response(encoded).body == body
    assert len(encoded) - len(body) < 200


def test_defaults_round_trip():
    request = RequestRecord(id="x", method=b"GET", target=b"/", headers=())
    assert decode_request(encode_request(request)) == request
    response = ResponseRecord(status=204, reason=b"", headers=())
    assert decode_response(encode_response(response)) == response


def test_error_response_round_trips():
    record = error_response(502, "upstream down", attempts=3, now=12.5)
    assert record.error == "upstream down"
    assert orjson.loads(record.body) == {"error": "upstream down", "status": 502}
    assert decode_response(encode_response(record)) == record


# --- corrupt input --------------------------------------------------------------------

SAMPLE_REQUEST = RequestRecord(
    id="abc",
    method=b"POST",
    target=b"/x?y=%ZZ",
    headers=((b"Host", b"a"), (b"Content-Length", b"4")),
    body=b"body",
)
SAMPLE_RESPONSE = ResponseRecord(status=200, reason=b"OK", headers=((b"A", b"b"),), body=b"ok")
ENCODED_REQUEST = encode_request(SAMPLE_REQUEST)
ENCODED_RESPONSE = encode_response(SAMPLE_RESPONSE)

DECODERS = [
    pytest.param(decode_request, ENCODED_REQUEST, id="request"),
    pytest.param(decode_response, ENCODED_RESPONSE, id="response"),
]


@pytest.mark.parametrize(("decode", "encoded"), DECODERS)
@pytest.mark.parametrize("magic", [b"HQX", b"hqm", b"\x00\x00\x00", b"GET"])
def test_wrong_magic(decode, encoded, magic):
    with pytest.raises(EnvelopeError):
        decode(magic + encoded[3:])


@pytest.mark.parametrize(("decode", "encoded"), DECODERS)
@pytest.mark.parametrize("version", [0, ENVELOPE_VERSION + 1, 255])
def test_wrong_version(decode, encoded, version):
    with pytest.raises(EnvelopeError, match="version"):
        decode(encoded[:3] + bytes([version]) + encoded[4:])


def test_wrong_kind():
    with pytest.raises(EnvelopeError):
        decode_response(ENCODED_REQUEST)
    with pytest.raises(EnvelopeError):
        decode_request(ENCODED_RESPONSE)


@pytest.mark.parametrize(("decode", "encoded"), DECODERS)
def test_truncated_prefix_or_head(decode, encoded):
    for cut in range(head_end(encoded)):
        with pytest.raises(EnvelopeError):
            decode(encoded[:cut])


@pytest.mark.parametrize(("decode", "encoded"), DECODERS)
def test_truncated_body(decode, encoded):
    with pytest.raises(EnvelopeError):
        decode(encoded[:-1])


def _with_head(kind: int, head: bytes, body: bytes = b"") -> bytes:
    return PREFIX.pack(b"HQM", ENVELOPE_VERSION, kind, len(head)) + head + body


def _request_head(**changes) -> dict:
    head = orjson.loads(ENCODED_REQUEST[PREFIX.size : head_end(ENCODED_REQUEST)])
    head.update(changes)
    return head


def _response_head(**changes) -> dict:
    head = orjson.loads(ENCODED_RESPONSE[PREFIX.size : head_end(ENCODED_RESPONSE)])
    head.update(changes)
    return head


CORRUPT_HEADS = [
    b"",
    b"{",
    b"{not json}",
    b'{"id": "x",',
    b"\xff\xfe{}",
    b'{"id": "\xff"}',
    b"null",
    b"[]",
    b"5",
    b'"string"',
    b"{}",
    b"NaN",
]


@pytest.mark.parametrize("head", CORRUPT_HEADS)
def test_corrupt_json_head(head):
    with pytest.raises(EnvelopeError):
        decode_request(_with_head(KIND_REQUEST, head, b"body"))
    with pytest.raises(EnvelopeError):
        decode_response(_with_head(KIND_RESPONSE, head, b"body"))


def test_head_length_beyond_data():
    encoded = bytearray(ENCODED_REQUEST)
    struct.pack_into(">I", encoded, 5, 2**32 - 1)
    with pytest.raises(EnvelopeError):
        decode_request(bytes(encoded))


@pytest.mark.parametrize(
    "changes",
    [
        {"method": 5},
        {"method": None},
        {"target": ["a"]},
        {"target": "\u0100"},  # not latin-1
        {"headers": 5},
        {"headers": None},
        {"headers": [None]},
        {"headers": [[1, 2]]},
        {"headers": [["\u20ac", "v"]]},
        {"http_version": {}},
    ],
    ids=repr,
)
def test_wrong_field_in_request_head(changes):
    with pytest.raises(EnvelopeError):
        decode_request(_with_head(KIND_REQUEST, orjson.dumps(_request_head(**changes))))


@pytest.mark.parametrize("missing", ["id", "method", "target", "headers", "mode", "upstream"])
def test_missing_field_in_request_head(missing):
    head = _request_head()
    del head[missing]
    with pytest.raises(EnvelopeError):
        decode_request(_with_head(KIND_REQUEST, orjson.dumps(head)))


@pytest.mark.parametrize(
    "changes",
    [{"reason": 1}, {"reason": "\u0394"}, {"headers": [None]}, {"http_version": None}],
    ids=repr,
)
def test_wrong_field_in_response_head(changes):
    with pytest.raises(EnvelopeError):
        decode_response(_with_head(KIND_RESPONSE, orjson.dumps(_response_head(**changes))))


@pytest.mark.parametrize("headers", [[["a"]], [["a", "b", "c"]], "ab", [[]]], ids=repr)
def test_header_entry_not_a_pair(headers):
    with pytest.raises(EnvelopeError):
        decode_request(_with_head(KIND_REQUEST, orjson.dumps(_request_head(headers=headers))))
    with pytest.raises(EnvelopeError):
        decode_response(_with_head(KIND_RESPONSE, orjson.dumps(_response_head(headers=headers))))


@pytest.mark.parametrize(
    ("decode", "kind", "head"),
    [
        (decode_request, KIND_REQUEST, _request_head(id=5)),
        (decode_request, KIND_REQUEST, _request_head(received_at="soon")),
        (decode_request, KIND_REQUEST, _request_head(mode=None)),
        (decode_response, KIND_RESPONSE, _response_head(status="200")),
        (decode_response, KIND_RESPONSE, _response_head(attempts=[])),
    ],
    ids=["id-int", "received_at-str", "mode-null", "status-str", "attempts-list"],
)
def test_wrongly_typed_scalar_fields(decode, kind, head):
    with pytest.raises(EnvelopeError):
        decode(_with_head(kind, orjson.dumps(head)))


def _decode_or_envelope_error(decode, data: bytes) -> None:
    with contextlib.suppress(EnvelopeError):
        decode(data)


@PROPERTY
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_envelope_error(data):
    _decode_or_envelope_error(decode_request, data)
    _decode_or_envelope_error(decode_response, data)
    _decode_or_envelope_error(decode_request, b"HQM\x01\x01" + data)
    _decode_or_envelope_error(decode_response, b"HQM\x01\x02" + data)


@PROPERTY
@given(
    record=request_records,
    flips=st.lists(st.tuples(st.integers(0), st.integers(1, 255)), min_size=1, max_size=4),
)
def test_flipped_bytes_raise_only_envelope_error(record, flips):
    data = bytearray(encode_request(record))
    end = head_end(bytes(data))
    for pos, mask in flips:
        data[pos % end] ^= mask  # damage the prefix and the head; body bytes are opaque
    _decode_or_envelope_error(decode_request, bytes(data))


#: Any JSON value orjson writes: every field of a head may hold any of them.
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=12,
)


def _arbitrary_heads(base: dict) -> st.SearchStrategy:
    """A head as JSON: any value at all, or ``base`` with any fields replaced by any value
    (the decoder must treat every field as hostile, header entries included). ``base``
    says ``body_len`` 0, as the records built with it have no body: only a head that
    changes it fails the length check, the rest reach the field checks."""
    base = {**base, "body_len": 0}
    keys = st.sampled_from(sorted({*base, "request_method"}))
    changed = st.dictionaries(keys, JSON_VALUES, max_size=4).map(lambda d: {**base, **d})
    return changed | JSON_VALUES


@PROPERTY
@given(head=_arbitrary_heads(_request_head()))
def test_arbitrary_json_heads_raise_only_envelope_error(head):
    data = _with_head(KIND_REQUEST, orjson.dumps(head))
    _decode_or_envelope_error(decode_request, data)


@PROPERTY
@given(head=_arbitrary_heads(_response_head()))
def test_arbitrary_json_response_heads_raise_only_envelope_error(head):
    data = _with_head(KIND_RESPONSE, orjson.dumps(head))
    _decode_or_envelope_error(decode_response, data)


def test_arbitrary_heads_reach_the_field_checks():
    """The heads above are not all stopped by the body length check: base heads decode,
    and each field replaced by a wrong value is refused by that field's own check."""
    for kind, base, decode in (
        (KIND_REQUEST, _request_head(), decode_request),
        (KIND_RESPONSE, _response_head(), decode_response),
    ):
        decode(_with_head(kind, orjson.dumps({**base, "body_len": 0})))
        for key in sorted(set(base) - {"body_len", "error"}):
            head = {**base, "body_len": 0, key: [["a"]]}
            with pytest.raises(EnvelopeError, match=key if key != "headers" else "header"):
                decode(_with_head(kind, orjson.dumps(head)))
