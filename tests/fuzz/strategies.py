"""Requests for any RPC, built from its message descriptor: a field added to a proto is fuzzed unedited.

`requests(descriptor, pools)` walks the message's fields and draws each one by its type: strings from
hostile text (NUL, control characters, huge, path traversal, SQL and template syntax, CIDR garbage,
case variants of the plausible values), integers at their type's extremes, enums in and out of range,
Timestamps and Durations far beyond what their well-known types allow, FieldMask paths both real and
not. Plausible values (`pools`, by field name: a key id, a catalog permission, `ws1`, the keys the test
holds) are mixed in so that requests get past the first checks and reach the service's deeper rules.
Each example has one of three levels: PLAUSIBLE (every field from its pool or in a sane range: calls
that succeed and change state), SPOILED (plausible, a hostile value here and there), HOSTILE throughout.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from google.protobuf import duration_pb2, field_mask_pb2, struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

PLAUSIBLE, SPOILED, HOSTILE = 0, 1, 2
MAX_DEPTH = 6  # deep enough for envoy's attributes.request.http.headers, shallow enough to stay fast
HUGE = 70_000  # longer than any column or name limit keygate has, far below gRPC's 4 MiB message limit
TIMESTAMP_MIN, TIMESTAMP_MAX = -62_135_596_800, 253_402_300_799  # 0001-01-01 and 9999-12-31T23:59:59
INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1), FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1), FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1), FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
HOSTILE_TEXT = [
    "", " ", "\x00", "a\x00b", "\r\nx-injected: 1", "\t", "\u202e\u0000", "\ufeff", "e\u0301", "\U0001d518\U0001f600",
    "../../../../etc/passwd", "..%2F..%2Fetc", "chatflows/../apikeys/x", "chatflows/./a", "/", "//", "\\",
    "*", "%", "_", "' OR '1'='1", "'; DROP TABLE api_keys; --", "${jndi:ldap://x}", "{{7*7}}", "%s%n",
    "10.0.0.0/33", "::/129", "1.2.3.4/-1", "999.1.1.1", "1.2.3.4/8/8", "fe80::1%eth0", "0.0.0.0/0", "::",
    "-1", "1e309", "NaN", "null", "true", "00000000-0000-0000-0000-000000000000", "a" * 256, "x" * HUGE,
]


def hostile_text() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(HOSTILE_TEXT), st.text(max_size=40),
                     st.text(st.characters(codec="utf-8", categories=["Cc", "Cf", "Zs", "Mn", "So"]), max_size=10))


def case_variants(values: Sequence[str]) -> st.SearchStrategy[str]:
    """The plausible values upper-cased, title-cased, padded or with a trailing newline."""
    return st.tuples(st.sampled_from(list(values)),
                     st.sampled_from([str.upper, str.title, str.swapcase, lambda v: f" {v} ", lambda v: v + "\n"])
                     ).map(lambda pair: pair[1](pair[0]))


Pools = Mapping[str, Sequence[str]]  # field name -> plausible values


def _string(field: FieldDescriptor, pools: Pools, level: int) -> st.SearchStrategy[str]:
    plausible = st.sampled_from(list(pools.get(field.name, ())) or ["n"])
    if level == PLAUSIBLE:
        return plausible
    if level == SPOILED:
        return st.one_of(plausible, plausible, plausible, hostile_text())
    return st.one_of(plausible, case_variants(pools.get(field.name, ()) or ["n"]), hostile_text())


def _timestamp(_: Pools, level: int) -> st.SearchStrategy[Message]:
    if level == PLAUSIBLE:  # during 2030: a fixed future, not one relative to now (examples must replay)
        return st.builds(timestamp_pb2.Timestamp, seconds=st.integers(1_893_456_000, 1_924_991_999))
    seconds = st.one_of(st.integers(TIMESTAMP_MIN, TIMESTAMP_MAX), st.sampled_from(
        [TIMESTAMP_MIN - 1, TIMESTAMP_MAX + 1, 0, -1, 2**63 - 1, -(2**63), 1_700_000_000, 4_102_444_800]))
    nanos = st.one_of(st.integers(0, 999_999_999), st.sampled_from([-1, 10**9, 2**31 - 1, -(2**31)]))
    return st.builds(timestamp_pb2.Timestamp, seconds=seconds, nanos=nanos)


def _duration(_: Pools, level: int) -> st.SearchStrategy[Message]:
    if level == PLAUSIBLE:
        return st.builds(duration_pb2.Duration, seconds=st.integers(1, 86_400))
    seconds = st.one_of(st.integers(-10**6, 10**8), st.sampled_from(
        [0, -1, 30 * 86_400, 30 * 86_400 + 1, 315_576_000_000, 315_576_000_001, 2**63 - 1, -(2**63)]))
    nanos = st.one_of(st.integers(-999_999_999, 999_999_999), st.sampled_from([10**9, 2**31 - 1, -(2**31)]))
    return st.builds(duration_pb2.Duration, seconds=seconds, nanos=nanos)


def _field_mask(pools: Pools, level: int) -> st.SearchStrategy[Message]:
    real = list(pools.get("paths", ())) or ["*"]
    wrong = st.sampled_from(["key.name", "name.x", "name,description", "**", "id", "etag", "create_time"])
    path = st.sampled_from(real) if level == PLAUSIBLE else st.one_of(st.sampled_from(real), case_variants(real),
                                                                       hostile_text(), wrong)
    return st.lists(path, max_size=4).map(lambda paths: field_mask_pb2.FieldMask(paths=paths))


def _struct(_: Pools, __: int) -> st.SearchStrategy[Message]:
    value = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False), hostile_text())

    def build(entries: dict[str, object]) -> Message:
        out = struct_pb2.Struct()
        out.update(entries)
        return out

    return st.dictionaries(hostile_text(), value, max_size=3).map(build)


WELL_KNOWN: dict[str, Callable[[Pools, int], st.SearchStrategy[Message]]] = {
    "google.protobuf.Timestamp": _timestamp,
    "google.protobuf.Duration": _duration,
    "google.protobuf.FieldMask": _field_mask,
    "google.protobuf.Struct": _struct,
}


def _scalar(field: FieldDescriptor, pools: Pools, level: int) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return _string(field, pools, level)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(width=32 if kind == FieldDescriptor.TYPE_FLOAT else 64)
    if kind == FieldDescriptor.TYPE_ENUM and level == PLAUSIBLE:
        return st.sampled_from([v.number for v in field.enum_type.values])
    if kind == FieldDescriptor.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]),
                         st.integers(-(2**31), 2**31 - 1))  # proto3 enums are open: unknown numbers arrive as is
    low, high = INT_RANGES[kind]
    if level == PLAUSIBLE:
        return st.integers(0, 100)
    return st.one_of(st.sampled_from([0, 1, -1 if low else 2, low, high]), st.integers(low, high),
                     st.integers(max(low, -1000), min(high, 1000)))


def _value(field: FieldDescriptor, pools: Pools, level: int, depth: int) -> st.SearchStrategy[Any]:
    """A strategy for one element of `field` (the entry of a repeated field)."""
    if field.message_type is None:
        return _scalar(field, pools, level)
    return message(field.message_type, pools, level, depth + 1)


def _many(field: FieldDescriptor, pools: Pools) -> st.SearchStrategy[list[Any]]:
    """101 short, plausible entries: one past the 100-item limits (BatchCheck's items, say)."""
    if field.message_type is not None:
        return st.just([GetMessageClass(field.message_type)()] * 101)
    if field.type == FieldDescriptor.TYPE_STRING:
        return st.sampled_from([*pools.get(field.name, ()), "x"]).map(lambda value: [value] * 101)
    return st.just([field.default_value] * 101)


def message(descriptor: Descriptor, pools: Pools, level: int, depth: int = 0) -> st.SearchStrategy[Message]:
    """A `descriptor` message with each field either left unset or drawn by its type."""
    if descriptor.full_name in WELL_KNOWN:
        return WELL_KNOWN[descriptor.full_name](pools, level)
    cls = GetMessageClass(descriptor)
    if depth >= MAX_DEPTH or descriptor.full_name.startswith("google.protobuf."):  # Any and friends: left empty
        return st.builds(cls)
    fields = {}
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            entry = field.message_type.fields_by_name
            drawn = st.dictionaries(_value(entry["key"], pools, level, depth),
                                    _value(entry["value"], pools, level, depth), max_size=3)
        elif field.is_repeated:
            few = st.lists(_value(field, pools, level, depth), max_size=3)
            drawn = few if level == PLAUSIBLE else st.one_of(few, _many(field, pools))
        else:
            drawn = _value(field, pools, level, depth)
        always = level == PLAUSIBLE and field.name in pools  # a plausible request names its key, resource, ...
        fields[field.name] = drawn if always else st.one_of(st.none(), drawn)
    return st.fixed_dictionaries(fields).map(lambda drawn: _fill(cls(), drawn))


def _fill(out: Message, drawn: Mapping[str, Any]) -> Message:
    for name, value in drawn.items():
        if value is None:
            continue
        target = getattr(out, name)
        if isinstance(value, Message):
            target.CopyFrom(value)
        elif isinstance(value, dict):
            for key, entry in value.items():
                if isinstance(entry, Message):
                    target[key].CopyFrom(entry)
                else:
                    target[key] = entry
        elif isinstance(value, list):
            target.extend(value)
        else:
            setattr(out, name, value)
    return out


def requests(descriptor: Descriptor, pools: Pools) -> st.SearchStrategy[Message]:
    """A request at any of the three levels, plausible the most often (and first: hypothesis shrinks
    towards it), as only those calls get far enough to change anything."""
    return st.one_of(*(message(descriptor, pools, level) for level in (PLAUSIBLE, PLAUSIBLE, SPOILED, HOSTILE)))
