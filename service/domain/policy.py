"""What a key may be: input validation for key fields, and the no-escalation rule.

A caller can never create or widen a key beyond itself: the key's permissions must be
implied by the caller's, its scope must lie within the caller's, its workspace must be
the caller's (root: any), and it may not outlive the caller's credential (for a secret
replaced by a rotation, that ends with its grace period), nor be used from networks the caller
may not be used from.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import unicodedata
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta

from .decision import Credential, Network
from .errors import InvalidArgument, PermissionDenied
from .limits import Credits, RateLimit, ensure_limits_within, validate_credits, validate_rate_limits
from .permissions import ROOT, Catalog
from .resources import MAX_SCOPE_ENTRIES, Scope, canonical_pattern

MAX_NAME_LEN = 100
MAX_DESCRIPTION_LEN = 1000
MAX_PERMISSIONS = 200
MAX_METADATA_ENTRIES = 32
MAX_METADATA_KEY_LEN = 64
MAX_METADATA_VALUE_LEN = 512
MAX_GRACE_PERIOD = timedelta(days=30)
MAX_ALLOWED_CIDRS = 100

_WORKSPACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")
_METADATA_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*\Z")


@dataclass(frozen=True, slots=True)
class KeySpec:
    """The caller-controlled fields of a key, validated and normalised."""

    name: str
    workspace_id: str
    permissions: tuple[str, ...]
    resources: tuple[str, ...] = ()
    expire_time: datetime | None = None
    description: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    disabled: bool = False
    allowed_cidrs: tuple[str, ...] = ()  # canonical network spellings; () admits any address
    rate_limits: tuple[RateLimit, ...] = ()
    credits: Credits | None = None

    @property
    def scope(self) -> Scope:
        return Scope.compile(self.resources)

    @property
    def networks(self) -> tuple[Network, ...]:
        return tuple(ipaddress.ip_network(c) for c in self.allowed_cidrs)

    def validated(self, catalog: Catalog, now: datetime, *, check_expiry: bool = True) -> KeySpec:
        """This spec with every field checked; raises InvalidArgument naming the first bad field.

        `check_expiry` is off when an update leaves an already-past expiry untouched.
        """
        if check_expiry and self.expire_time is not None and self.expire_time <= now:
            raise InvalidArgument("expire_time", "must be in the future")
        return replace(
            self,
            name=validate_name(self.name),
            workspace_id=validate_workspace_id(self.workspace_id),
            permissions=validate_permissions(self.permissions, catalog),
            resources=validate_resources(self.resources, catalog),
            description=_validate_text(self.description, "description", MAX_DESCRIPTION_LEN, allow_empty=True),
            metadata=validate_metadata(self.metadata),
            allowed_cidrs=validate_cidrs(self.allowed_cidrs),
            rate_limits=validate_rate_limits(self.rate_limits),
            credits=validate_credits(self.credits),
        )


class Kind(enum.Enum):
    """How a key field travels: the shapes its value takes in the proto, the database and the model."""

    TEXT = "text"
    BOOL = "bool"
    TIME = "time"  # datetime | None; a Timestamp on the wire, unset for None
    LIST = "list"  # tuple[str, ...]; a repeated string, an SQL array (text[], cidr[]) read back as str
    MAP = "map"  # dict[str, str]; a map<string, string>, jsonb
    RATE_LIMITS = "rate_limits"  # tuple[RateLimit, ...]; a repeated RateLimit, jsonb
    CREDITS = "credits"  # Credits | None; a Credits message, unset for None; a key_credits row, not a column


@dataclass(frozen=True, slots=True)
class KeyField:
    """One caller-controlled field of a key. Its `name` is the KeySpec attribute, the ApiKey and
    CreateKeyRequest proto field, the api_keys column and the update_mask path: one name everywhere,
    so converting between shapes is a loop over KEY_FIELDS (api.convert, store.postgres, the CLI)."""

    name: str
    kind: Kind
    updatable: bool = True  # may UpdateKey's mask name it (the workspace never moves)


KEY_FIELDS: tuple[KeyField, ...] = (
    KeyField("name", Kind.TEXT),
    KeyField("workspace_id", Kind.TEXT, updatable=False),
    KeyField("description", Kind.TEXT),
    KeyField("permissions", Kind.LIST),
    KeyField("resources", Kind.LIST),
    KeyField("expire_time", Kind.TIME),
    KeyField("disabled", Kind.BOOL),
    KeyField("metadata", Kind.MAP),
    KeyField("allowed_cidrs", Kind.LIST),
    KeyField("rate_limits", Kind.RATE_LIMITS),
    KeyField("credits", Kind.CREDITS),
)
if sorted(f.name for f in KEY_FIELDS) != sorted(f.name for f in fields(KeySpec)):  # fail at import: one list
    raise RuntimeError("KEY_FIELDS must declare every KeySpec field")
UPDATABLE_FIELDS = tuple(f.name for f in KEY_FIELDS if f.updatable)


def rights_of(credential: Credential) -> KeySpec:
    """A nameless spec holding exactly `credential`'s rights: its permissions (wildcards kept, the
    concrete ones they imply left out), its resource scope, its end, its workspace.

    For a create that names no permissions (Flowise's `{keyName}`): the one default that can never
    exceed the caller, since `ensure_within` checks it like any other spec.
    """
    held = credential.grants - {ROOT}
    wildcards = {p for p in held if p.endswith(":*")}
    permissions = sorted(p for p in held if p in wildcards or f"{p.partition(':')[0]}:*" not in wildcards)
    limits = credential.limits
    return KeySpec(name="", workspace_id=credential.workspace_id, permissions=tuple(permissions),
                   resources=credential.scope.roots, expire_time=credential.ends,
                   allowed_cidrs=tuple(str(n) for n in credential.networks),
                   rate_limits=limits.rate_limits if limits else (), credits=limits.credits if limits else None)


def validate_name(name: str) -> str:
    return _validate_text(name.strip(), "name", MAX_NAME_LEN, allow_empty=False)


def _validate_text(value: str, field_name: str, limit: int, *, allow_empty: bool) -> str:
    if not value and not allow_empty:
        raise InvalidArgument(field_name, "must not be empty")
    if len(value) > limit:
        raise InvalidArgument(field_name, f"must be at most {limit} characters")
    if any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in value):
        raise InvalidArgument(field_name, "must not contain control characters")
    return value


def validate_workspace_id(workspace_id: str, field_name: str = "workspace_id") -> str:
    if not _WORKSPACE_RE.match(workspace_id):
        raise InvalidArgument(field_name, "must be 1-128 letters, digits or '._:-', starting with a letter or digit")
    return workspace_id


def validate_permissions(permissions: Sequence[str], catalog: Catalog) -> tuple[str, ...]:
    if not permissions:
        raise InvalidArgument("permissions", "a key needs at least one permission")
    if len(permissions) > MAX_PERMISSIONS:
        raise InvalidArgument("permissions", f"at most {MAX_PERMISSIONS} entries")
    for i, permission in enumerate(permissions):
        if permission == ROOT:
            raise InvalidArgument(
                f"permissions[{i}]", "'*' is reserved for root keys made by `keygate bootstrap`; use 'category:*'"
            )
        catalog.validate_grant(permission, f"permissions[{i}]")
    return tuple(dict.fromkeys(permissions))


def validate_resources(resources: Sequence[str], catalog: Catalog) -> tuple[str, ...]:
    """The scope entries in their canonical spelling, without repeats."""
    if len(resources) > MAX_SCOPE_ENTRIES:
        raise InvalidArgument("resources", f"at most {MAX_SCOPE_ENTRIES} entries")
    return tuple(dict.fromkeys(canonical_pattern(catalog, p, f"resources[{i}]") for i, p in enumerate(resources)))


def validate_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise InvalidArgument("metadata", f"at most {MAX_METADATA_ENTRIES} entries")
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY_LEN or not _METADATA_KEY_RE.match(key):
            raise InvalidArgument(
                f"metadata[{key[:MAX_METADATA_KEY_LEN]!r}]", "keys are 1-64 letters, digits or '._/-'"
            )
        _validate_text(value, f"metadata[{key!r}]", MAX_METADATA_VALUE_LEN, allow_empty=True)
    return dict(metadata)


def validate_cidrs(cidrs: Sequence[str]) -> tuple[str, ...]:
    """The networks in their canonical spelling (IPv4-mapped IPv6 networks as IPv4), without repeats.
    Host bits must be clear: "10.0.0.1/8" is refused rather than silently read as 10.0.0.0/8."""
    if len(cidrs) > MAX_ALLOWED_CIDRS:
        raise InvalidArgument("allowed_cidrs", f"at most {MAX_ALLOWED_CIDRS} entries")
    return tuple(dict.fromkeys(str(_network(c, f"allowed_cidrs[{i}]")) for i, c in enumerate(cidrs)))


def _network(text: str, field_name: str) -> Network:
    try:
        network = ipaddress.ip_network(text.strip())
    except ValueError:
        raise InvalidArgument(field_name, "must be a network such as 203.0.113.0/24 or 2001:db8::/32, "
                                          "with no bits set after the prefix") from None
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:  # ::ffff:10.0.0.0/104 is 10.0.0.0/8: the allow-list compares IPv4 clients as IPv4
            return ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - 96}")
    return network


def validate_grace_period(grace: timedelta) -> timedelta:
    if grace < timedelta(0) or grace > MAX_GRACE_PERIOD:
        raise InvalidArgument("grace_period", "must be between 0 and 30 days")
    return grace


def parse_id(value: str, field_name: str = "id") -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(field_name, "must be a UUID such as '3f2a6c1e-...'") from None


def _latest(limits: list[datetime | None]) -> datetime | None:
    """The furthest of several expiries, None (never) beating any date."""
    return None if None in limits else max(t for t in limits if t is not None)


def _later(a: datetime | None, b: datetime | None) -> bool:
    """Does expiry `a` come after expiry `b`? None means never."""
    return b is not None and (a is None or a > b)


def ensure_not_retired(caller: Credential, what: str) -> None:
    """A retired secret (replaced by a rotation, answering for its grace period) may not `what`:
    whatever would let it outlive or replace the secret that retired it."""
    if caller.retired:
        raise PermissionDenied(f"a secret replaced by a rotation cannot {what}; use the key's current secret")


def ensure_within(caller: Credential, spec: KeySpec, baseline: Credential | None = None) -> None:
    """Refuse (PermissionDenied) whatever `spec` would grant beyond both the caller and `baseline`.

    `baseline` is what the key already holds when it is being updated: narrowing a key, or
    keeping what it had, is always allowed; only what is new must lie within the caller.
    Creating, rotating (the caller receives the key) and re-enabling pass no baseline.

    Rights are (permission, resource, time) triples, so each permission on each scope entry
    must be covered, up to the new expiry, by one source that holds both: the caller or the
    baseline. Checking the dimensions separately would let an update combine the key's
    permission with the caller's wider scope or longer life.
    """
    if not caller.root and spec.workspace_id != caller.workspace_id:
        raise PermissionDenied("a key can only manage keys of its own workspace")
    _ensure_networks_within(caller, spec, baseline)
    sources = [caller] if baseline is None else [caller, baseline]
    ensure_limits_within(spec.rate_limits, spec.credits,
                         [(s.limits.rate_limits, s.limits.credits) if s.limits else ((), None) for s in sources])
    pieces = [Scope((root,)) for root in spec.scope.roots] or [Scope()]
    for permission in spec.permissions:
        holders = [s for s in sources if permission in s.grants]
        if not holders:
            raise PermissionDenied(f"cannot grant {permission!r}: the calling key does not hold it")
        for piece in pieces:
            covering = [s.ends for s in holders if s.scope.covers(piece)]
            if not covering:
                raise PermissionDenied(
                    f"cannot grant {permission!r} on a resource scope wider than the calling key's own"
                )
            if _later(spec.expire_time, _latest(covering)):
                raise PermissionDenied("expire_time must be set and no later than the calling key's own expiry "
                                       "(or its secret's, for a secret replaced by a rotation)")


def _ensure_networks_within(caller: Credential, spec: KeySpec, baseline: Credential | None) -> None:
    """A caller limited to some networks gives no key a wider reach: each of the key's networks must lie
    inside one of the caller's (or, for an update, of what the key already had), and a key with no list
    (any address) only from an unlimited caller or a key that was already unlimited."""
    sources = [c for c in (caller, baseline) if c is not None]
    if any(not s.networks for s in sources):
        return
    networks = spec.networks
    if not networks:
        raise PermissionDenied("allowed_cidrs must be set, each within the calling key's own allowed_cidrs")
    for i, network in enumerate(networks):
        # subnet_of's stub wants both sides of one IP version, which the version test ensures
        if not any(network.version == own.version and network.subnet_of(own)  # type: ignore[arg-type]
                   for s in sources for own in s.networks):
            raise PermissionDenied(f"cannot allow allowed_cidrs[{i}] {network}: it is not within the calling "
                                   "key's own allowed_cidrs")
