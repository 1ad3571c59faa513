"""The records keygate keeps, as plain values shared by the store and the API layer."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from .decision import Credential
from .limits import limits_of
from .permissions import Catalog
from .policy import KeySpec
from .resources import Scope


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One API key as stored: never the key, never its digest."""

    id: UUID
    spec: KeySpec
    display: str
    create_time: datetime
    update_time: datetime
    version: int = 1
    created_by: UUID | None = None
    last_used_time: datetime | None = None
    usage_count: int = 0
    previous_secret_expire_time: datetime | None = None  # when the last retired secret still working stops

    @property
    def root(self) -> bool:
        return not self.spec.workspace_id

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'

    def credential(self, catalog: Catalog, secret_expire_time: datetime | None = None) -> Credential:
        """What Check needs of this key, precomputed."""
        spec = self.spec
        return Credential(
            key_id=self.id,
            key_name=spec.name,
            workspace_id=spec.workspace_id,
            grants=catalog.expand(spec.permissions),
            scope=Scope.compile(spec.resources),
            expire_time=spec.expire_time,
            disabled=spec.disabled,
            secret_expire_time=secret_expire_time,
            limits=limits_of(spec.rate_limits, spec.credits),
            networks=spec.networks,
        )


@dataclass(frozen=True, slots=True)
class BindingRecord:
    workspace_id: str
    resource: str
    key_id: UUID
    actions: tuple[str, ...]
    create_time: datetime
    created_by: UUID | None


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audited mutation or refusal. Carries ids and field names, never key material."""

    action: str
    outcome: str  # "OK" or "DENIED"
    workspace_id: str
    actor_key_id: UUID | None = None
    target_key_id: UUID | None = None
    resource: str = ""
    changed_fields: tuple[str, ...] = ()
    reason: str = ""
    request_id: str = ""
    id: int = 0
    event_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class AuditQuery:
    workspace_id: str | None = None  # None: every workspace (root callers only)
    key_id: UUID | None = None
    actor_key_id: UUID | None = None
    action: str = ""
    start_time: datetime | None = None
    end_time: datetime | None = None
