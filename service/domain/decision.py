"""The decision: credential + resource + action + workspace -> a code. Pure and total.

Every door (AuthzService.Check, BatchCheck, the KeyService's own caller check, Envoy)
ends here, so a rule fixed in `decide` is fixed everywhere. Checks run in this order,
and the first that fails is the answer: expired, disabled, workspace, scope,
permission, binding. The binding comes last so that a key which could not use the
resource anyway learns nothing about who it is bound to.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from .resources import Scope


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

    @property
    def http_status(self) -> int:
        """The seeds' mapping: 401 when the caller is not who it must be, 403 when it may not."""
        if self is Code.OK:
            return 200
        if self in (Code.PERMISSION_DENIED, Code.RESOURCE_OUT_OF_SCOPE, Code.WORKSPACE_MISMATCH):
            return 403
        return 401


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
    key_id_text: str = field(init=False)  # str(key_id), rendered once rather than on every Check

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_id_text", str(self.key_id))

    @property
    def root(self) -> bool:
        return not self.workspace_id


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


def decide(
    credential: Credential,
    resource: str,
    action: str,
    workspace_id: str,
    bindings: Sequence[Binding],
    now: datetime,
) -> Decision:
    """Decide one request for an identified key. `bindings` are those of (workspace, resource)."""

    def deny(code: Code, reason: str) -> Decision:
        return Decision(code, reason, credential)

    dead = key_state(credential, now)
    if dead is not None:
        return dead
    if workspace_id and not credential.root and workspace_id != credential.workspace_id:
        return deny(Code.WORKSPACE_MISMATCH, "the key belongs to another workspace")
    if not credential.scope.allows(resource, action):
        return deny(Code.RESOURCE_OUT_OF_SCOPE, f"the key is not scoped to {resource or 'this collection'!r}")
    if action not in credential.grants:
        return deny(Code.PERMISSION_DENIED, f"the key lacks {action!r}")
    governing = [b for b in bindings if action in b.actions]
    if governing and all(b.key_id != credential.key_id for b in governing):
        return deny(Code.RESOURCE_BOUND_TO_OTHER_KEY, f"{resource!r} is bound to another key for {action!r}")
    return Decision(Code.OK, "allowed", credential)
