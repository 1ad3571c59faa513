"""Protobuf <-> domain values. No rules here: only shapes.

What the wire can carry but a well-formed message cannot (a Timestamp in year 10**11, a Duration
overflowing timedelta) is refused here, as InvalidArgument naming the field, before any rule runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message

from ..domain.decision import CODES, Code, Decision
from ..domain.errors import InvalidArgument
from ..domain.limits import Credits, RateLimit, Usage
from ..domain.policy import KEY_FIELDS, KeySpec, Kind
from ..domain.records import AuditEvent, BindingRecord, KeyRecord
from ..v1 import authz_pb2, flowise_pb2, keys_pb2

MAX_DURATION_SECONDS = 315_576_000_000  # google.protobuf.Duration's own bound: 10,000 years
NANOS_PER_SECOND = 1_000_000_000


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def from_timestamp(message: Message, field: str) -> datetime | None:
    """The field as an aware UTC datetime, or None when it is not set.

    InvalidArgument naming the field for a value outside the Timestamp range (years 1 to 9999, nanos
    0 to 999,999,999): the wire carries any 64-bit seconds and 32-bit nanos.
    """
    if not message.HasField(field):
        return None
    try:
        return getattr(message, field).ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(field, "must be a valid Timestamp, between 0001-01-01 and 9999-12-31 UTC") from None


def from_duration(message: object, field: str) -> timedelta:
    """The field as a timedelta; InvalidArgument naming the field outside the Duration range
    (+-10,000 years, nanos below one second and of the seconds' sign), which timedelta may not hold."""
    value: duration_pb2.Duration = getattr(message, field)
    seconds, nanos = value.seconds, value.nanos
    if abs(seconds) > MAX_DURATION_SECONDS or abs(nanos) >= NANOS_PER_SECOND or seconds * nanos < 0:
        raise InvalidArgument(field, "must be a valid Duration: at most 10,000 years, nanos of the seconds' sign")
    return value.ToTimedelta()


def from_rate_limits(message: object, field: str = "rate_limits") -> tuple[RateLimit, ...]:
    return tuple(RateLimit(r.name, r.limit, from_duration(r, "window")) for r in getattr(message, field))


def from_credits(message: Message, field: str = "credits") -> Credits | None:
    """The credits the caller set (unset: none); `refill_time` is read only and ignored."""
    if not message.HasField(field):
        return None
    value = getattr(message, field)
    return Credits(value.remaining, value.refill_amount, from_duration(value, "refill_interval"))


def _rate_limit(limit: RateLimit) -> keys_pb2.RateLimit:
    window = duration_pb2.Duration()
    window.FromTimedelta(limit.window)
    return keys_pb2.RateLimit(name=limit.name, limit=limit.limit, window=window)


def _credits(credits: Credits | None) -> keys_pb2.Credits | None:
    if credits is None:
        return None
    interval = duration_pb2.Duration()
    interval.FromTimedelta(credits.refill_interval)
    return keys_pb2.Credits(remaining=credits.remaining, refill_amount=credits.refill_amount,
                            refill_interval=interval, refill_time=timestamp(credits.refill_time))


def _id(value: object) -> str:
    return "" if value is None else str(value)


def spec_fields(message: Message) -> dict[str, Any]:
    """The KeySpec fields `message` (an ApiKey or a CreateKeyRequest) carries, by KEY_FIELDS: one loop
    for every request that sets key fields."""
    carried = message.DESCRIPTOR.fields_by_name
    out: dict[str, object] = {}
    for key_field in KEY_FIELDS:
        name, kind = key_field.name, key_field.kind
        if name not in carried:
            continue
        if kind is Kind.TIME:
            out[name] = from_timestamp(message, name)
        elif kind is Kind.RATE_LIMITS:
            out[name] = from_rate_limits(message, name)
        elif kind is Kind.CREDITS:
            out[name] = from_credits(message, name)
        elif kind is Kind.LIST:
            out[name] = tuple(getattr(message, name))
        elif kind is Kind.MAP:
            out[name] = dict(getattr(message, name))
        else:
            out[name] = getattr(message, name)
    return out


def _proto_value(kind: Kind, value: Any) -> object:
    if kind is Kind.TIME:
        return timestamp(value)
    if kind is Kind.RATE_LIMITS:
        return [_rate_limit(r) for r in value]
    if kind is Kind.CREDITS:
        return _credits(value)
    return dict(value) if kind is Kind.MAP else value


def _proto_fields(spec: KeySpec) -> dict[str, Any]:
    """The ApiKey fields KEY_FIELDS declares, as the proto takes them."""
    return {f.name: _proto_value(f.kind, getattr(spec, f.name)) for f in KEY_FIELDS}


def api_key(record: KeyRecord) -> keys_pb2.ApiKey:
    spec = record.spec
    return keys_pb2.ApiKey(
        id=str(record.id),
        display=record.display,
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
        last_used_time=timestamp(record.last_used_time),
        usage_count=record.usage_count,
        created_by=_id(record.created_by),
        etag=record.etag,
        root=record.root,
        previous_secret_expire_time=timestamp(record.previous_secret_expire_time),
        **_proto_fields(spec),
    )


def flowise_key(record: KeyRecord, api_key: str = "",
                chatflows: Sequence[BindingRecord] = ()) -> flowise_pb2.FlowiseApiKey:
    """A key in Flowise's shape: `api_key` is the plaintext for a new key's one showing, else the masked
    display; `chatflows` are the key's bindings to chatflows."""
    spec = record.spec
    return flowise_pb2.FlowiseApiKey(
        id=str(record.id),
        key_name=spec.name,
        api_key=api_key or record.display,
        permissions=spec.permissions,
        workspace_id=spec.workspace_id,
        created_at=timestamp(record.create_time),
        updated_date=timestamp(record.update_time),
        chat_flows=[_flowise_chatflow(b) for b in chatflows],
    )


def _flowise_chatflow(record: BindingRecord) -> flowise_pb2.FlowiseChatflow:
    flow = record.resource.partition("/")[2]
    return flowise_pb2.FlowiseChatflow(id=flow, flow_name=flow, updated_date=timestamp(record.create_time))


def binding(record: BindingRecord) -> keys_pb2.Binding:
    return keys_pb2.Binding(
        resource=record.resource,
        key_id=str(record.key_id),
        actions=record.actions,
        workspace_id=record.workspace_id,
        create_time=timestamp(record.create_time),
        created_by=_id(record.created_by),
    )


def audit_event(event: AuditEvent) -> keys_pb2.AuditEvent:
    return keys_pb2.AuditEvent(
        id=event.id,
        event_time=timestamp(event.event_time),
        actor_key_id=_id(event.actor_key_id),
        workspace_id=event.workspace_id,
        action=event.action,
        outcome=event.outcome,
        target_key_id=_id(event.target_key_id),
        resource=event.resource,
        changed_fields=event.changed_fields,
        reason=event.reason,
        request_id=event.request_id,
    )


_UNSET = {"DECISION_CODE_UNSPECIFIED"}
if set(authz_pb2.DecisionCode.keys()) - _UNSET != {code.value for code in Code}:  # fail at import, never guess
    raise RuntimeError("keygate.v1.DecisionCode and domain.decision.Code must list the same codes")
_DECISION_CODES = {
    code: (cast(authz_pb2.DecisionCode, authz_pb2.DecisionCode.Value(code.value)), CODES[code].http_status)
    for code in Code
}


def check_response(decision: Decision) -> authz_pb2.CheckResponse:
    code, http_status = _DECISION_CODES[decision.code]
    credential = decision.credential
    if credential is None:
        return authz_pb2.CheckResponse(code=code, reason=decision.reason, http_status=http_status)
    response = authz_pb2.CheckResponse(
        allowed=decision.allowed,
        code=code,
        reason=decision.reason,
        http_status=http_status,
        key_id=credential.key_id_text,
        key_name=credential.key_name,
        workspace_id=credential.workspace_id,
        limited=credential.limits is not None,
    )
    ends = credential.ends
    if ends is not None:
        response.key_expire_time.FromDatetime(ends)
    if decision.usage is not None:
        _add_usage(response, decision.usage)
    return response


def _add_usage(response: authz_pb2.CheckResponse, usage: Usage) -> None:
    limit = usage.rate_limit
    if limit is not None:
        state = response.rate_limit
        state.name, state.limit, state.remaining = limit.name, limit.limit, limit.remaining
        state.reset_time.FromDatetime(limit.reset_time)
        state.window.FromTimedelta(limit.window)
    if usage.credits_remaining is not None:
        response.credits_remaining = usage.credits_remaining
