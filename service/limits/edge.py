"""What the HTTP door says about limits: the IETF RateLimit headers, Retry-After, and the key's limits in
Envoy's dynamic metadata (for Envoy's own global rate-limit service at the edge).

Headers follow draft-ietf-httpapi-ratelimit-headers (structured fields, one named policy: the key's
tightest rate limit): `RateLimit-Policy: "minute";q=100;w=60` (quota, window in seconds) and
`RateLimit: "minute";r=42;t=17` (remaining, seconds until the window resets).

Metadata (namespace envoy.filters.http.ext_authz): `rate_limits`, the key's limits as a list of
{name, limit, window_seconds}; and for each of Envoy's units (SECOND, MINUTE, HOUR, DAY) the tightest
limit whose window is exactly one unit, as `rate_limit_<unit>: {requests_per_unit, unit}`: the shape of
Envoy's RateLimit.Override.DynamicMetadata, which deploy/envoy/ratelimit-config.yaml feeds to
envoyproxy/ratelimit. Limits with other windows are enforced by keygate only.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from ..domain.decision import Code, Decision
from ..domain.limits import Limits, Usage

ENVOY_UNITS = {timedelta(seconds=1): "SECOND", timedelta(minutes=1): "MINUTE", timedelta(hours=1): "HOUR",
               timedelta(days=1): "DAY"}


def _seconds_until(when: datetime, now: datetime) -> int:
    return max(0, math.ceil((when - now).total_seconds()))


def limit_headers(usage: Usage, now: datetime) -> list[tuple[str, str]]:
    """RateLimit-Policy and RateLimit for the tightest rate limit; none for a key with credits only."""
    state = usage.rate_limit
    if state is None:
        return []
    name = '"' + state.name + '"'  # a validated name: [a-z0-9_.-], nothing to escape
    return [("ratelimit-policy", f"{name};q={state.limit};w={int(state.window.total_seconds())}"),
            ("ratelimit", f"{name};r={state.remaining};t={_seconds_until(state.reset_time, now)}")]


def retry_after(decision: Decision, now: datetime) -> str | None:
    """Seconds until a refused request may succeed: the refusing window's reset, or the next refill of
    the credits; None for credits that never refill (waiting does not help)."""
    usage = decision.usage
    if usage is None:
        return None
    if decision.code is Code.RATE_LIMITED and usage.rate_limit is not None:
        return str(max(1, _seconds_until(usage.rate_limit.reset_time, now)))
    if decision.code is Code.USAGE_EXCEEDED and usage.credits_refill_time is not None:
        return str(max(1, _seconds_until(usage.credits_refill_time, now)))
    return None


def limits_metadata(limits: Limits) -> dict[str, Any]:
    """The key's limits for Envoy's dynamic metadata (see the module docstring); the values a
    google.protobuf.Struct takes."""
    out: dict[str, Any] = {
        "rate_limits": [{"name": r.name, "limit": r.limit, "window_seconds": int(r.window.total_seconds())}
                        for r in limits.rate_limits],
    }
    for window, unit in ENVOY_UNITS.items():
        fitting = [r.limit for r in limits.rate_limits if r.window == window]
        if fitting:
            out[f"rate_limit_{unit.lower()}"] = {"requests_per_unit": min(fitting), "unit": unit}
    return out
