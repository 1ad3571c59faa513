"""The decision: its codes, what each code answers on every door, and the values a decision rests on.

The rules themselves live in `evaluators/`, one file per rule, run in order by `evaluators.pipeline`.
`CODES` is the one table saying, per code, the HTTP status, the gRPC status a KeyService caller gets,
and the Envoy reply; a code without a row fails at import, so no door ever falls back to a guess.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from ipaddress import IPv4Network, IPv6Network
from typing import NamedTuple
from uuid import UUID

from .limits import Limits, Usage
from .resources import Scope

Network = IPv4Network | IPv6Network


class Code(enum.Enum):
    """Decision codes; the names match keygate.v1.DecisionCode (checked where the proto is imported)."""

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

    @property
    def http_status(self) -> int:
        return CODES[self].http_status


@dataclass(frozen=True, slots=True)
class Answer:
    """What one code answers on each door.

    `rpc` names the gRPC status (grpc.StatusCode / google.rpc.Code member) a KeyService caller gets and
    Envoy's ext_authz status carries; `challenge`: the HTTP reply carries `WWW-Authenticate`;
    `retry_after`: it carries `Retry-After` (a rule that knows when to retry supplies the value).
    """

    http_status: int
    rpc: str
    challenge: bool = False
    retry_after: bool = False


_WHO = Answer(401, "UNAUTHENTICATED", challenge=True)  # the caller is not who it must be
_MAY_NOT = Answer(403, "PERMISSION_DENIED")  # it is, but may not
_EXHAUSTED = Answer(429, "RESOURCE_EXHAUSTED", retry_after=True)

CODES: dict[Code, Answer] = {
    Code.OK: Answer(200, "OK"),
    Code.KEY_MISSING: _WHO,
    Code.KEY_MALFORMED: _WHO,
    Code.KEY_NOT_FOUND: _WHO,
    Code.KEY_EXPIRED: _WHO,
    Code.KEY_DISABLED: _WHO,
    Code.RESOURCE_BOUND_TO_OTHER_KEY: _WHO,  # Flowise answers 401 when a chatflow's assigned key is another
    Code.PERMISSION_DENIED: _MAY_NOT,
    Code.RESOURCE_OUT_OF_SCOPE: _MAY_NOT,
    Code.WORKSPACE_MISMATCH: _MAY_NOT,
    Code.IP_NOT_ALLOWED: _MAY_NOT,
    Code.RATE_LIMITED: _EXHAUSTED,
    Code.USAGE_EXCEEDED: _EXHAUSTED,
}
if CODES.keys() != set(Code):  # fail at import, not on the first request that meets the code
    raise RuntimeError(f"decision codes without an answer: {sorted(c.name for c in set(Code) - CODES.keys())}")


@dataclass(frozen=True, slots=True)
class Credential:
    """What one key digest resolves to, precomputed for deciding."""

    key_id: UUID
    key_name: str
    workspace_id: str  # "" for root keys
    grants: frozenset[str]  # Catalog.expand() of the key's permissions
    scope: Scope
    expire_time: datetime | None
    disabled: bool
    secret_expire_time: datetime | None = None  # set on a secret replaced by RotateKey
    networks: tuple[Network, ...] = ()  # the key's allowed_cidrs; () admits any address
    limits: Limits | None = None  # rate limits and credits: None for a key with neither (no meter applies)
    key_id_text: str = field(init=False)  # str(key_id), rendered once rather than on every Check
    # The one OK this credential ever gets, made once: an allowed request allocates no Decision.
    allowed_decision: Decision = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_id_text", str(self.key_id))
        object.__setattr__(self, "allowed_decision", Decision(Code.OK, "allowed", self))

    @property
    def root(self) -> bool:
        return not self.workspace_id

    @property
    def retired(self) -> bool:
        """Is this a secret that a rotation replaced (answering only for its grace period)?"""
        return self.secret_expire_time is not None

    @property
    def ends(self) -> datetime | None:
        """When this credential stops working: the key's expiry or the secret's own, whichever is first.
        This, not the key's expiry, bounds what the credential may grant."""
        return min((t for t in (self.expire_time, self.secret_expire_time) if t is not None), default=None)


@dataclass(frozen=True, slots=True)
class Binding:
    """Only bound keys may perform `actions` on `resource` in `workspace_id`."""

    resource: str
    key_id: UUID
    actions: tuple[str, ...]
    workspace_id: str


class Decision(NamedTuple):
    """What the rules answered. A NamedTuple: immutable like a frozen dataclass, and made in C rather
    than through a frozen dataclass's `object.__setattr__` per field (6.5k of the 14k instructions a
    decision took under callgrind). Made for every uncached Check and remembered for the cached ones."""

    code: Code
    reason: str
    credential: Credential | None = None
    usage: Usage | None = None  # set by the limits meter, for a key with rate limits or credits

    @property
    def allowed(self) -> bool:
        return self.code is Code.OK
