"""Page sizes and opaque page tokens."""

import base64
import json

import pytest

from keygate.domain import paging
from keygate.domain.errors import InvalidArgument

QUERY = ("keys", "ws1")


def _parse(cursor):
    time, key_id = cursor  # ValueError on the wrong arity, like the servicers' parsers
    return str(time), str(key_id)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(("requested", "size"), [(0, 50), (1, 1), (50, 50), (999, 999), (1000, 1000)])
def test_page_size(requested, size):
    assert paging.page_size(requested) == size


@pytest.mark.parametrize("requested", [-1, -50, 1001, 10**9])
def test_page_size_out_of_range(requested):
    with pytest.raises(InvalidArgument) as err:
        paging.page_size(requested)
    assert err.value.field == "page_size"


@pytest.mark.parametrize("cursor", [["2025-06-01T12:00:00+00:00", "3f2a"], ["", ""], ["é/ü?&=", "x" * 200]])
def test_round_trip(cursor):
    token = paging.encode(cursor, QUERY)
    assert token and "=" not in token
    assert all(c.isalnum() or c in "-_" for c in token)  # URL-safe
    assert paging.decode(token, QUERY, _parse) == tuple(cursor)
    assert paging.decode(token, list(QUERY), _parse) == tuple(cursor)


def test_empty_token_is_first_page():
    assert paging.decode("", QUERY, _parse) is None


@pytest.mark.parametrize(
    "token",
    [
        "not a token!",
        "%%%",
        "a",
        "é",
        _b64(b"\xff\xfe\x00garbage"),
        _b64(b"hello, world"),
        _b64(b'"a string"'),
        _b64(b"42"),
        _b64(b"null"),
        _b64(b"[1, 2]"),
        _b64(b"{}"),
        _b64(b'{"c": ["a", "b"]}'),
        _b64(b'{"q": "0123456789abcdef"}'),
        _b64(b'{"c": "ab", "q": "0123456789abcdef"}'),
        _b64(b'{"c": {"a": 1}, "q": "0123456789abcdef"}'),
        _b64(json.dumps({"c": ["only-one"], "q": "x"}).encode()),  # cursor the parser rejects
        paging.encode(["a", "b"], QUERY)[:-3],  # truncated
    ],
)
def test_junk_token(token):
    with pytest.raises(InvalidArgument) as err:
        paging.decode(token, QUERY, _parse)
    assert err.value.field == "page_token"


@pytest.mark.parametrize("other", [("keys", "ws2"), ("keys", None), ("audit", "ws1"), ()])
def test_token_for_another_query(other):
    token = paging.encode(["a", "b"], QUERY)
    with pytest.raises(InvalidArgument) as err:
        paging.decode(token, other, _parse)
    assert err.value.field == "page_token"
    assert "different query" in err.value.description


def test_tampered_fingerprint():
    raw = json.loads(base64.urlsafe_b64decode(paging.encode(["a", "b"], QUERY) + "=="))
    raw["q"] = "0" * 16
    with pytest.raises(InvalidArgument) as err:
        paging.decode(_b64(json.dumps(raw).encode()), QUERY, _parse)
    assert err.value.field == "page_token"


def test_deeply_nested_token():
    with pytest.raises(InvalidArgument):
        paging.decode(_b64(b"[" * 100_000), QUERY, _parse)
