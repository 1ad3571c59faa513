"""The fuzz's own rules: the README's status table is found and never admits a failure."""

from __future__ import annotations

import grpc

from .oracle import ANSWERS, spellings


def test_the_readme_table_is_read_and_admits_no_failure() -> None:
    assert {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED} <= ANSWERS
    assert not ANSWERS & {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}


def test_a_digest_is_looked_for_in_every_spelling() -> None:
    found = spellings(bytes(range(32)))
    assert "000102" in found[0] and "0A0B" in found[1] and "AAECAwQF" in found[2]
    assert any("-" in s or "_" in s for s in spellings(b"\xfb\xff" * 16))  # the URL-safe alphabet
