"""The bounded maps and the key index stay in step through evictions and drops."""

from __future__ import annotations

import uuid

from keygate.cache.entries import Entries
from keygate.domain.decision import Credential
from keygate.domain.resources import Scope


def credential(key_id: uuid.UUID) -> Credential:
    return Credential(key_id=key_id, key_name="k", workspace_id="w", grants=frozenset(), scope=Scope.compile(()),
                      expire_time=None, disabled=False)


def test_credentials_are_bounded_and_eviction_keeps_the_key_index_in_step() -> None:
    entries = Entries(max_keys=3, max_negative=3, max_bindings=3)
    for i in range(10):
        entries.keep_credential(bytes([i]), credential(uuid.uuid4()), float(i))
    assert len(entries.credentials) == 3 and entries.credentials.evictions == 7
    assert entries.indexed() == 3
    assert entries.credentials.peek(bytes([9])) is not None and entries.credentials.peek(bytes([0])) is None


def test_dropping_a_key_drops_every_digest_of_it() -> None:
    entries = Entries(10, 10, 10)
    key, other = uuid.uuid4(), uuid.uuid4()
    entries.keep_credential(b"current", credential(key), 1.0)
    entries.keep_credential(b"retired", credential(key), 1.0)
    entries.keep_credential(b"other", credential(other), 1.0)
    entries.drop_key(key)
    assert len(entries.credentials) == 1 and entries.credentials.peek(b"other") is not None
    assert entries.indexed() == 1


def test_a_digest_is_either_known_or_unknown_never_both() -> None:
    entries = Entries(10, 10, 10)
    key = uuid.uuid4()
    entries.keep_credential(b"d", None, 1.0)
    assert entries.negative.peek(b"d") == 1.0
    entries.keep_credential(b"d", credential(key), 2.0)
    assert entries.negative.peek(b"d") is None and entries.credentials.peek(b"d") is not None
    entries.keep_credential(b"d", None, 3.0)
    assert entries.credentials.peek(b"d") is None and entries.indexed() == 0


def test_unknown_keys_and_bindings_are_bounded() -> None:
    entries = Entries(2, 2, 2)
    for i in range(5):
        entries.keep_credential(bytes([i]), None, float(i))
        entries.keep_bindings(("w", f"chatflows/{i}"), (), float(i))
    assert len(entries.negative) == 2 and len(entries.bindings) == 2
    entries.clear()
    assert len(entries.negative) == len(entries.bindings) == len(entries.credentials) == 0
