"""What the HTTP door says about limits: RateLimit headers, Retry-After, Envoy metadata."""

from datetime import UTC, datetime, timedelta

from keygate.domain.decision import Code, Decision
from keygate.domain.limits import Credits, LimitState, RateLimit, Usage, limits_of
from keygate.limits.edge import limit_headers, limits_metadata, retry_after

NOW = datetime(2026, 1, 1, 12, 0, 0, 500_000, tzinfo=UTC)
MINUTE = LimitState("per-minute", 100, timedelta(minutes=1), 0, datetime(2026, 1, 1, 12, 1, tzinfo=UTC))


def test_headers_name_the_tightest_limit_with_its_quota_window_remaining_and_reset():
    assert limit_headers(Usage(MINUTE, None), NOW) == [
        ("ratelimit-policy", '"per-minute";q=100;w=60'), ("ratelimit", '"per-minute";r=0;t=60')]
    assert limit_headers(Usage(None, 5), NOW) == []  # credits only: no rate-limit policy to describe


def test_retry_after_is_the_window_reset_or_the_next_refill_and_never_zero():
    assert retry_after(Decision(Code.RATE_LIMITED, "", None, Usage(MINUTE, None)), NOW) == "60"
    refill = Usage(None, 0, NOW + timedelta(seconds=0.2))
    assert retry_after(Decision(Code.USAGE_EXCEEDED, "", None, refill), NOW) == "1"
    assert retry_after(Decision(Code.USAGE_EXCEEDED, "", None, Usage(None, 0)), NOW) is None  # never refills
    assert retry_after(Decision(Code.PERMISSION_DENIED, ""), NOW) is None


def test_metadata_gives_envoy_the_tightest_limit_of_each_whole_unit():
    limits = limits_of((RateLimit("a", 10, timedelta(seconds=1)), RateLimit("b", 5, timedelta(seconds=1)),
                        RateLimit("c", 7, timedelta(seconds=90)), RateLimit("d", 1000, timedelta(days=1))),
                       Credits(3))
    assert limits is not None
    metadata = limits_metadata(limits)
    assert metadata["rate_limit_second"] == {"requests_per_unit": 5, "unit": "SECOND"}
    assert metadata["rate_limit_day"] == {"requests_per_unit": 1000, "unit": "DAY"}
    assert "rate_limit_minute" not in metadata and "rate_limit_hour" not in metadata
    assert [r["window_seconds"] for r in metadata["rate_limits"]] == [1, 1, 90, 86400]  # type: ignore[index]
