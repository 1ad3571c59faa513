"""Page sizes and opaque, tamper-evident page tokens."""

import base64
import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keygate.domain import paging
from keygate.domain.errors import InvalidArgument

QUERY = ("keys", "ws1")
TOKENS = paging.PageTokens(b"k" * 32)
KEY_CURSOR = ["2025-06-01T12:00:00.123456+00:00", "3f2a6c1e-8b1d-4c47-9b5e-0d2f1c3a4b5c"]


def _parse(cursor):
    time, key_id = cursor  # ValueError on the wrong arity, like the servicers' parsers
    return str(time), str(key_id)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _refused(token, query=QUERY, parse=_parse, tokens=TOKENS):
    with pytest.raises(InvalidArgument) as err:
        tokens.decode(token, query, parse)
    assert err.value.field == "page_token"
    return err.value


@pytest.mark.parametrize(("requested", "size"), [(0, 50), (1, 1), (50, 50), (999, 999), (1000, 1000)])
def test_page_size(requested, size):
    assert paging.page_size(requested) == size


@pytest.mark.parametrize("requested", [-1, -50, 1001, 10**9])
def test_page_size_out_of_range(requested):
    with pytest.raises(InvalidArgument) as err:
        paging.page_size(requested)
    assert err.value.field == "page_size"


@pytest.mark.parametrize("cursor", [KEY_CURSOR, ["", ""], ["é/ü?&=", "x" * 64]])
def test_round_trip(cursor):
    token = TOKENS.encode(cursor, QUERY)
    assert token and "=" not in token
    assert all(c.isalnum() or c in "-_" for c in token)  # URL-safe
    assert TOKENS.decode(token, QUERY, _parse) == tuple(cursor)
    assert TOKENS.decode(token, list(QUERY), _parse) == tuple(cursor)


def test_tokens_stay_short():
    assert len(TOKENS.encode(KEY_CURSOR, QUERY)) < 130
    assert len(TOKENS.encode([2**62], ("audit", None, "CreateKey"))) < 60


def test_empty_token_is_first_page():
    assert TOKENS.decode("", QUERY, _parse) is None


def test_the_secret_must_be_a_secret():
    with pytest.raises(ValueError):
        paging.PageTokens(b"short")


def _unsigned(cursor, query):
    """A token in the old unsigned format, fingerprint and all: everything a caller could compute."""
    fingerprint = hashlib.sha256(repr(list(query)).encode()).hexdigest()[:16]
    return _b64(json.dumps({"c": cursor, "q": fingerprint}).encode())


@pytest.mark.parametrize("cursor", [KEY_CURSOR, [10**30], ["a", "b"]])
def test_forged_token_is_refused_before_its_cursor_is_read(cursor):
    def parse(_):
        raise AssertionError("a forged cursor reached the parser")

    _refused(_unsigned(cursor, QUERY), parse=parse)


def test_token_of_another_deployment_is_refused():
    _refused(paging.PageTokens(b"o" * 32).encode(KEY_CURSOR, QUERY))


@pytest.mark.parametrize("other", [("keys", "ws2"), ("keys", None), ("audit", "ws1"), ()])
def test_token_for_another_query(other):
    assert "this query" in _refused(TOKENS.encode(["a", "b"], QUERY), other).description


@pytest.mark.parametrize("cursor", [[10**30], [-(2**63) - 1], [True], [1.5], [None], ["x" * 65], [["nested"]], {}])
def test_a_genuine_token_with_a_cursor_out_of_type_or_range_is_refused(cursor):
    """The tag proves we issued a token, not that this version of us reads it the same way."""
    _refused(TOKENS.encode(cursor, QUERY), parse=lambda c: c)


@pytest.mark.parametrize(
    "token",
    [
        "not a token!",
        "%%%",
        "a",
        "é",
        "A" * 100_000,
        _b64(b"\xff\xfe\x00garbage"),
        _b64(b"[" * 100_000),
        _b64(b'{"c": ["a", "b"], "q": "0123456789abcdef"}'),
        TOKENS.encode(["a", "b"], QUERY)[:-3],  # truncated
        TOKENS.encode(["only-one"], QUERY),  # genuine, but a cursor the parser rejects
    ],
)
def test_junk_token(token):
    _refused(token)


@settings(max_examples=300, deadline=None)
@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_altered_bit_is_refused(position, bit):
    raw = bytearray(base64.urlsafe_b64decode(TOKENS.encode(KEY_CURSOR, QUERY) + "=="))
    raw[position % len(raw)] ^= 1 << bit
    _refused(_b64(bytes(raw)))


@settings(max_examples=300, deadline=None)
@given(token=st.one_of(st.text(max_size=600), st.binary(max_size=400).map(_b64)))
def test_any_token_is_a_page_or_invalid_argument(token):
    """Whatever a caller sends, the answer is a position or InvalidArgument; nothing else escapes."""
    try:
        TOKENS.decode(token, QUERY, _parse)
    except InvalidArgument as err:
        assert err.field == "page_token"
