"""The logging pipeline keeps key material out, whoever logs it, and bounds what a peer can make it write."""

import io
import json
import logging
import string

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from keygate import logs
from keygate.api.boundary import acceptable_request_id
from keygate.domain.keys import KeyFormat

KEY = KeyFormat().generate()
OTHER_PREFIX_KEY = KeyFormat("acme").generate()


@pytest.fixture
def captured():
    stream = io.BytesIO()
    logs.configure(stream=stream)
    yield stream
    logs.configure()


def lines(stream: io.BytesIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().decode().splitlines()]


@pytest.mark.parametrize("key", [KEY, OTHER_PREFIX_KEY])
def test_application_events_have_key_shaped_text_replaced(captured, key):
    log = structlog.get_logger("t")
    log.warning("oops", detail=f"Bearer {key}")
    try:
        raise ValueError(f"bad key {key}")
    except ValueError:
        log.exception("failed")
    text = captured.getvalue().decode()
    assert key.partition("_")[2] not in text and key.partition("_")[2][:20] not in text
    assert [e["event"] for e in lines(captured)] == ["oops", "failed"]  # still one JSON object a line
    assert "[redacted]" in lines(captured)[0]["detail"]


def test_standard_library_records_withhold_bytes_and_redact(captured):
    grpc_log = logging.getLogger("grpc._cython.cygrpc")
    grpc_log.error("Invalid encoding on %s", b"Bearer " + KEY.encode()[:20] + b"\xff" + KEY.encode()[20:])
    logging.getLogger("asyncpg").warning("saw %s", KEY)
    text = captured.getvalue().decode()
    assert KEY[:15] not in text and KEY[20:35] not in text
    first, second = lines(captured)
    assert first["event"] == "Invalid encoding on <60 bytes withheld>"
    assert "[redacted]" in second["event"]


def test_a_peers_undecodable_bytes_log_no_traceback(captured):
    try:
        b"\xff".decode()
    except UnicodeDecodeError:
        logging.getLogger("grpc._cython.cygrpc").exception("Invalid encoding on %s", b"\xff")
    (entry,) = lines(captured)
    assert entry["level"] == "warning" and entry["error"] == "UnicodeDecodeError" and "exception" not in entry


def test_our_own_failures_keep_their_traceback(captured):
    try:
        raise RuntimeError("a bug")
    except RuntimeError:
        logging.getLogger("asyncpg").exception("failed")
    assert "exception" in lines(captured)[0]


def test_a_flood_from_one_call_site_is_bounded(captured):
    for _ in range(100):
        logging.getLogger("grpc").error("peer did something %d", 1)
    assert len(lines(captured)) == logs.THROTTLE_LIMIT


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_throttle_admits_a_few_per_window_and_counts_the_rest():
    clock = FakeClock()
    throttle = logs.Throttle(limit=2, window=10.0, clock=clock)
    assert [throttle.admit("a") for _ in range(5)] == [0, 0, None, None, None]
    assert throttle.admit("b") == 0  # kinds are counted apart
    clock.now = 10.0
    assert throttle.admit("a") == 3  # the first line of the next window tells what was dropped
    assert throttle.admit("a") == 0


def test_throttle_reports_each_ended_window_with_drops_once():
    clock = FakeClock()
    throttle = logs.Throttle(limit=1, window=1.0, clock=clock)
    for kind in ("a", "a", "a", "b", "c", "c"):
        throttle.admit(kind)
    assert throttle.ended() == []  # the window is still open
    assert throttle.ended(all_windows=True) == [("a", 2), ("c", 1)]  # at shutdown: every drop so far
    throttle.admit("a")
    throttle.admit("a")
    clock.now = 1.0
    assert throttle.ended() == [("a", 1)]
    assert throttle.ended() == [] and throttle.admit("a") == 0  # told once, and not again by the next line


def test_throttle_memory_is_bounded():
    throttle = logs.Throttle(limit=1, window=10.0, max_kinds=3, clock=FakeClock())
    for kind in range(100):
        throttle.admit(kind)
    assert len(throttle._kinds) <= 3


@pytest.mark.parametrize("value", ["3f2a6c1e-8b1d-4c47-9b5e-0d2f1c3a4b5c", "req-1", "a" * 42, "ab." * 21,
                                   "4bf92f3577b34da6a3ce929d0e0e4736"])
def test_ordinary_request_ids_are_accepted(value):
    assert acceptable_request_id(value)


# "ab-" * 21: 43+ base64url characters, the shape of an imported Flowise key.
@pytest.mark.parametrize("value", [KEY, OTHER_PREFIX_KEY, f"r-{KEY}", KEY[3:], "a" * 43, "ab-" * 21, "", "a b", "é",
                                   "x" * 65])
def test_request_ids_that_could_carry_a_key_are_not_accepted(value):
    assert not acceptable_request_id(value)


@settings(max_examples=200, deadline=None)
@given(prefix=st.tuples(st.sampled_from(string.ascii_lowercase),
                        st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=8)).map("".join),
       head=st.text("abc-._:", max_size=4))
def test_no_key_of_any_prefix_is_a_request_id(prefix, head):
    assert not acceptable_request_id(head + KeyFormat(prefix).generate())
