"""keygate.client's retry rule: only UNAVAILABLE and a draining server's CANCELLED are retried, with
jittered pauses that never outlast the attempts or the call's one deadline; every other failure is raised
at once."""

from __future__ import annotations

import time

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from keygate.client import KeygateRequestError, KeygateUnavailable, Retry
from keygate.client.authorizer import after_failure
from keygate.domain.errors import InvalidArgument

RETRY = Retry(attempts=3, base=0.1, cap=0.3)


@given(st.integers(min_value=1, max_value=64))
def test_pauses_are_jittered_within_the_exponential_cap(failed: int) -> None:
    assert 0 <= RETRY.pause(failed) <= min(RETRY.cap, RETRY.base * 2 ** (failed - 1))


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED])
def test_unavailable_and_cancelled_are_retried_while_attempts_and_time_last(code: grpc.StatusCode) -> None:
    far = time.monotonic() + 60
    assert 0 <= after_failure(code, "down", 1, far, RETRY) <= 0.1
    with pytest.raises(KeygateUnavailable, match="3 attempt") as spent:
        after_failure(code, "down", 3, far, RETRY)
    assert spent.value.code is code
    with pytest.raises(KeygateUnavailable):  # attempts left, but no time: the deadline wins
        after_failure(code, "down", 1, time.monotonic() - 1, Retry(attempts=9))


@pytest.mark.parametrize("code", [c for c in grpc.StatusCode if c not in (
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED)])
def test_nothing_else_is_retried(code: grpc.StatusCode) -> None:
    with pytest.raises(KeygateRequestError) as raised:
        after_failure(code, "why", 1, time.monotonic() + 60, RETRY)
    assert raised.value.code is code and raised.value.message == "why"


def test_a_spent_deadline_is_unavailable() -> None:
    with pytest.raises(KeygateUnavailable):
        after_failure(grpc.StatusCode.DEADLINE_EXCEEDED, None, 1, time.monotonic() + 60, RETRY)


@pytest.mark.parametrize("fields", [{"attempts": 0}, {"base": -1.0}, {"base": 1.0, "cap": 0.5}])
def test_nonsense_retry_settings_are_refused(fields: dict[str, float]) -> None:
    with pytest.raises(InvalidArgument):
        Retry(**fields)  # type: ignore[arg-type]
