"""The decision: credential + target + workspace -> a code. Pure and total.

Every door (AuthzService.Check, BatchCheck, the KeyService's own caller check, Envoy)
ends here, so a rule fixed here is fixed everywhere. Checks run in this order, and the
first that fails is the answer: expired, disabled, workspace, scope, permission
(`decide`), then binding (`bound_elsewhere`). The binding comes last so that a key which
could not use the resource anyway learns nothing about who it is bound to, and so that
the bindings are looked up only for a request every other rule allows.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from .limits import Limits, Usage
from .resources import Scope, Target


class Code(enum.Enum):
    """Decision codes; the names match keygate.v1.DecisionCode."""

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

    @property
    def http_status(self) -> int:
        """What an HTTP gateway answers: the seeds' 401 when the caller is not who it must be, 403 when it
        may not. An explicit row per code, no fallback: a new code must choose its status."""
        return HTTP_STATUS[self]


HTTP_STATUS: dict[Code, int] = {
    Code.OK: 200,
    Code.KEY_MISSING: 401,
    Code.KEY_MALFORMED: 401,
    Code.KEY_NOT_FOUND: 401,
    Code.KEY_EXPIRED: 401,
    Code.KEY_DISABLED: 401,
    Code.RESOURCE_BOUND_TO_OTHER_KEY: 401,  # Flowise answers 401 when a chatflow's assigned key is another
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_OUT_OF_SCOPE: 403,
    Code.WORKSPACE_MISMATCH: 403,
    Code.RATE_LIMITED: 429,
    Code.USAGE_EXCEEDED: 429,
}


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
    limits: Limits | None = None  # rate limits and credits: None for a key with neither (no metering)
    key_id_text: str = field(init=False)  # str(key_id), rendered once rather than on every Check

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_id_text", str(self.key_id))

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


@dataclass(frozen=True, slots=True)
class Decision:
    code: Code
    reason: str
    credential: Credential | None = None
    usage: Usage | None = None  # set by the limits meter, for a key with rate limits or credits

    @property
    def allowed(self) -> bool:
        return self.code is Code.OK


def key_state(credential: Credential, now: datetime) -> Decision | None:
    """The key's own verdict, whatever it asks for: None if it is live, else why not."""
    if credential.secret_expire_time is not None and credential.secret_expire_time <= now:
        return Decision(Code.KEY_EXPIRED, "this key was rotated and its grace period has ended", credential)
    if credential.expire_time is not None and credential.expire_time <= now:
        return Decision(Code.KEY_EXPIRED, "the key has expired", credential)
    if credential.disabled:
        return Decision(Code.KEY_DISABLED, "the key is disabled", credential)
    return None


def decide(credential: Credential, target: Target, workspace_id: str, now: datetime) -> Decision:
    """Every rule but the binding, for an identified key. OK here still needs `bound_elsewhere`
    when the target names a resource."""
    dead = key_state(credential, now)
    if dead is not None:
        return dead
    if workspace_id and not credential.root and workspace_id != credential.workspace_id:
        return Decision(Code.WORKSPACE_MISMATCH, "the key belongs to another workspace", credential)
    if not credential.scope.allows(target):
        where = repr(target.resource) if target.resource else "the whole of " + ", ".join(target.collections)
        return Decision(Code.RESOURCE_OUT_OF_SCOPE, f"the key is not scoped to {where}", credential)
    if target.action not in credential.grants:
        return Decision(Code.PERMISSION_DENIED, f"the key lacks {target.action!r}", credential)
    return Decision(Code.OK, "allowed", credential)


def bound_elsewhere(allowed: Decision, target: Target, bindings: Sequence[Binding]) -> Decision:
    """The binding rule, applied to what `decide` allowed: if any binding of the resource governs the
    action, only a bound key may use it. `bindings` are those of (workspace, resource)."""
    credential = allowed.credential
    governing = [b for b in bindings if target.action in b.actions]
    if credential is None or not governing or any(b.key_id == credential.key_id for b in governing):
        return allowed
    return Decision(Code.RESOURCE_BOUND_TO_OTHER_KEY,
                    f"{target.resource!r} is bound to another key for {target.action!r}", credential)
