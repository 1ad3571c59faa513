"""What keygate answered, as a typed, immutable value: `Decision`, its `DecisionCode`, its rate-limit state."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ..v1 import authz_pb2


class DecisionCode(enum.StrEnum):
    """The wire enum keygate.v1.DecisionCode by name (a test keeps the two equal). A number this client
    does not know (a newer server) reads as DECISION_CODE_UNSPECIFIED: `allowed` still says what to do."""

    DECISION_CODE_UNSPECIFIED = "DECISION_CODE_UNSPECIFIED"
    OK = "OK"
    KEY_MISSING = "KEY_MISSING"
    KEY_MALFORMED = "KEY_MALFORMED"
    KEY_NOT_FOUND = "KEY_NOT_FOUND"
    KEY_EXPIRED = "KEY_EXPIRED"
    KEY_DISABLED = "KEY_DISABLED"
    RESOURCE_BOUND_TO_OTHER_KEY = "RESOURCE_BOUND_TO_OTHER_KEY"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_OUT_OF_SCOPE = "RESOURCE_OUT_OF_SCOPE"
    WORKSPACE_MISMATCH = "WORKSPACE_MISMATCH"
    RATE_LIMITED = "RATE_LIMITED"
    USAGE_EXCEEDED = "USAGE_EXCEEDED"
    IP_NOT_ALLOWED = "IP_NOT_ALLOWED"

    @classmethod
    def from_wire(cls, number: int) -> DecisionCode:
        try:
            return cls(authz_pb2.DecisionCode.Name(number))
        except ValueError:
            return cls.DECISION_CODE_UNSPECIFIED


@dataclass(frozen=True, slots=True)
class RateLimitState:
    """The tightest of the key's rate limits after this request: what keygate's `RateLimit` header says."""

    name: str
    limit: int
    remaining: int  # at most this many more requests in this window (an estimate across replicas)
    reset_time: datetime | None  # when the window ends
    window: timedelta


@dataclass(frozen=True, slots=True)
class Decision:
    """keygate's answer to one (key, resource, action). `allowed` is the only field to act on; the rest
    says why and for whom. `http_status` is what an HTTP service should answer (200, 401, 403, 429).
    `rate_limit` and `credits_remaining` are set for a key with rate limits or credits, once every other
    rule allowed the request."""

    allowed: bool
    code: DecisionCode
    reason: str
    http_status: int
    key_id: str
    key_name: str
    workspace_id: str
    rate_limit: RateLimitState | None = None
    credits_remaining: int | None = None
    key_expire_time: datetime | None = None  # when the key (or this rotated-out secret) stops working

    @classmethod
    def from_response(cls, response: authz_pb2.CheckResponse) -> Decision:
        rate_limit = None
        if response.HasField("rate_limit"):
            state = response.rate_limit
            rate_limit = RateLimitState(
                name=state.name, limit=state.limit, remaining=state.remaining,
                reset_time=state.reset_time.ToDatetime(UTC) if state.HasField("reset_time") else None,
                window=state.window.ToTimedelta())
        return cls(allowed=response.allowed, code=DecisionCode.from_wire(response.code), reason=response.reason,
                   http_status=response.http_status, key_id=response.key_id, key_name=response.key_name,
                   workspace_id=response.workspace_id, rate_limit=rate_limit,
                   credits_remaining=response.credits_remaining if response.HasField("credits_remaining") else None,
                   key_expire_time=(response.key_expire_time.ToDatetime(UTC) if response.HasField("key_expire_time")
                                    else None))
