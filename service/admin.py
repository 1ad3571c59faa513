"""KeyService's rules: who may see and change which key, and the audit trail of both.

Each mutation is one transaction with its audit row. A refused request (PermissionDenied)
is audited in a transaction of its own, since the request's own rolls back.
A workspace key never learns that another workspace's key exists: such ids are NOT_FOUND.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from .clock import Clock, utcnow
from .domain import paging
from .domain.decision import CODES, Code, Credential
from .domain.errors import Aborted, InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from .domain.evaluators import CheckItem, Pipeline, Question
from .domain.keys import KeyFormat, digest
from .domain.permissions import ROOT, Catalog
from .domain.policy import (
    UPDATABLE_FIELDS,
    KeySpec,
    ensure_not_retired,
    ensure_within,
    validate_grace_period,
    validate_workspace_id,
)
from .domain.records import AuditEvent, AuditQuery, BindingRecord, KeyRecord
from .domain.resources import canonical_resource, target
from .store.interface import AdminStore, Reads, Writes

DEFAULT_BINDING_ACTIONS = ("predictions:create",)
_AUDIT_ACTION_RE = re.compile(r"^[A-Za-z]{1,64}\Z")  # audit rows name the call: CreateKey, RotateKey, ...


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated KeyService caller."""

    credential: Credential
    request_id: str = ""
    client_address: str = ""  # the caller's IP address (gRPC peer), "" when not an IP connection


class KeyAdmin:
    def __init__(self, store: AdminStore, catalog: Catalog, key_format: KeyFormat, clock: Clock = utcnow,
                 page_tokens: paging.PageTokens | None = None) -> None:
        """`page_tokens` signs list pages with the secret every replica shares (`serve` passes it); without
        it, tokens hold only within this process, which is enough for `bootstrap` and first starts."""
        self._store = store
        self._catalog = catalog
        self._format = key_format
        self._clock = clock
        self._tokens = page_tokens or paging.PageTokens(os.urandom(32))
        self._pipeline = Pipeline()

    # --- authorization helpers ------------------------------------------------------

    def _authorize(self, caller: Caller, action: str, resource: str = "", workspace_id: str = "") -> None:
        """The same decision Check makes, without the binding rule (bindings govern use, not management)."""
        credential = caller.credential
        item = CheckItem(resource, action, workspace_id, caller.client_address)
        question = Question(item, target(self._catalog, resource, action), workspace_id or credential.workspace_id,
                            self._clock())
        decision = self._pipeline.decide(credential, question)
        if decision.allowed:
            return
        if CODES[decision.code].rpc == "UNAUTHENTICATED":
            raise Unauthenticated(decision.reason)
        if decision.code is Code.WORKSPACE_MISMATCH:
            raise PermissionDenied("a key can only manage its own workspace")
        raise PermissionDenied(f"the calling key may not do this: {decision.reason}")

    def _require_permission(self, caller: Caller, action: str) -> None:
        """Refuse before any lookup, so a caller without the verb learns nothing about ids."""
        if action not in caller.credential.grants:
            raise PermissionDenied(f"the calling key lacks {action!r}")

    @staticmethod
    def _visible(caller: Caller, record: KeyRecord | None, key_id: UUID) -> KeyRecord:
        credential = caller.credential
        if record is None or (not credential.root and record.spec.workspace_id != credential.workspace_id):
            raise NotFound("key", str(key_id))
        return record

    async def _load(self, tx: Reads, caller: Caller, key_id: UUID, action: str) -> KeyRecord:
        self._require_permission(caller, action)
        return self._authorized(caller, action, await tx.get_key(key_id), key_id)

    async def _lock(self, tx: Writes, caller: Caller, key_id: UUID, action: str) -> KeyRecord:
        """As `_load`, to change the key: its row stays locked until the transaction ends."""
        self._require_permission(caller, action)
        return self._authorized(caller, action, await tx.lock_key(key_id), key_id)

    def _authorized(self, caller: Caller, action: str, record: KeyRecord | None, key_id: UUID) -> KeyRecord:
        found = self._visible(caller, record, key_id)
        self._authorize(caller, action, f"apikeys/{key_id}", found.spec.workspace_id)
        return found

    @asynccontextmanager
    async def _audited(self, caller: Caller, action: str, workspace_id: str, *,
                       target: UUID | None = None, resource: str = "") -> AsyncIterator[None]:
        """Record a refusal of this request in the audit trail, then let it propagate.

        `workspace_id` is the caller's: its own auditors must see what their key attempted.
        """
        try:
            yield
        except PermissionDenied as denied:
            async with self._store.transaction() as tx:
                await tx.audit(self._event(caller, action, "DENIED", workspace_id, target_key_id=target,
                                           resource=resource, reason=denied.message))
            raise

    @staticmethod
    def _event(caller: Caller, action: str, outcome: str, workspace_id: str, **fields: Any) -> AuditEvent:
        return AuditEvent(action=action, outcome=outcome, workspace_id=workspace_id,
                          actor_key_id=caller.credential.key_id, request_id=caller.request_id, **fields)

    # --- keys -----------------------------------------------------------------------

    async def create_root_key(self, name: str = "root") -> tuple[KeyRecord, str]:
        """A key holding `*` in every workspace: only `keygate bootstrap` and a first start make one."""
        spec = KeySpec(name=name, workspace_id="", permissions=(ROOT,), description="created by bootstrap")
        api_key = self._format.generate()
        key_id = uuid.uuid4()
        async with self._store.transaction() as tx:
            record = await tx.insert_key(key_id, spec, digest(api_key), self._format.display(api_key), None)
            await tx.audit(AuditEvent(action="Bootstrap", outcome="OK", workspace_id="", target_key_id=key_id,
                                      changed_fields=set_fields(spec)))
        return record, api_key

    async def has_root_key(self) -> bool:
        async with self._store.read() as tx:
            return await tx.has_root_key()

    async def create_key(self, caller: Caller, spec: KeySpec) -> tuple[KeyRecord, str]:
        """Issue a key; the plaintext is returned here and nowhere else."""
        if not spec.workspace_id:
            if caller.credential.root:
                raise InvalidArgument("workspace_id", "root callers must name the workspace of the new key")
            spec = replace(spec, workspace_id=caller.credential.workspace_id)
        spec = spec.validated(self._catalog, self._clock())
        async with self._audited(caller, "CreateKey", caller.credential.workspace_id):
            self._authorize(caller, "apikeys:create", "", spec.workspace_id)
            ensure_within(caller.credential, spec)
        api_key = self._format.generate()
        key_id = uuid.uuid4()
        async with self._store.transaction() as tx:
            record = await tx.insert_key(key_id, spec, digest(api_key), self._format.display(api_key),
                                         caller.credential.key_id)
            await tx.audit(self._event(caller, "CreateKey", "OK", spec.workspace_id, target_key_id=key_id,
                                       changed_fields=set_fields(spec)))
        return record, api_key

    async def get_key(self, caller: Caller, key_id: UUID) -> KeyRecord:
        async with self._audited(caller, "GetKey", caller.credential.workspace_id, target=key_id):
            async with self._store.read() as tx:
                return await self._load(tx, caller, key_id, "apikeys:view")

    async def list_keys(self, caller: Caller, workspace_id: str, page_size: int,
                        page_token: str) -> tuple[list[KeyRecord], str]:
        size = paging.page_size(page_size)
        if workspace_id:
            validate_workspace_id(workspace_id)
        credential = caller.credential
        async with self._audited(caller, "ListKeys", credential.workspace_id):
            self._require_permission(caller, "apikeys:view")
            if workspace_id and not credential.root and workspace_id != credential.workspace_id:
                raise PermissionDenied("a key can only manage its own workspace")
        workspace = workspace_id or (None if credential.root else credential.workspace_id)
        query = ("keys", workspace)
        after = self._tokens.decode(page_token, query, _key_cursor)
        async with self._store.read() as tx:
            rows = await tx.list_keys(workspace, after, size + 1, _viewable_ids(credential))
        return self._tokens.page(rows, size, lambda last: [last.create_time.isoformat(), str(last.id)], query)

    async def update_key(self, caller: Caller, key_id: UUID, fields: Mapping[str, object], mask: Sequence[str],
                         etag: str) -> KeyRecord:
        paths = _resolve_mask(mask)
        async with self._audited(caller, "UpdateKey", caller.credential.workspace_id, target=key_id):
            async with self._store.transaction() as tx:
                record = await self._lock(tx, caller, key_id, "apikeys:update")
                if etag and etag != record.etag:
                    raise Aborted("the key changed since it was read (etag mismatch); get it again and retry")
                old = record.spec
                changes: dict[str, Any] = {p: fields[p] for p in paths}  # validated below, as a whole
                new = replace(old, **changes)
                new = new.validated(self._catalog, self._clock(), check_expiry=new.expire_time != old.expire_time)
                changed = tuple(p for p in paths if getattr(new, p) != getattr(old, p))
                reenabled = old.disabled and not new.disabled
                if reenabled:
                    ensure_not_retired(caller.credential, "re-enable keys")
                if key_id == caller.credential.key_id:
                    ensure_not_retired(caller.credential, "change the key that retired it")
                ensure_within(caller.credential, new, None if reenabled else record.credential(self._catalog))
                if not changed:
                    return record
                updated = await tx.update_key(key_id, new, changed)
                await tx.audit(self._event(caller, "UpdateKey", "OK", new.workspace_id, target_key_id=key_id,
                                           changed_fields=changed))
                return updated

    async def delete_key(self, caller: Caller, key_id: UUID) -> None:
        async with self._audited(caller, "DeleteKey", caller.credential.workspace_id, target=key_id):
            async with self._store.transaction() as tx:
                record = await self._lock(tx, caller, key_id, "apikeys:delete")
                if key_id == caller.credential.key_id:
                    ensure_not_retired(caller.credential, "delete the key that retired it")
                await tx.delete_key(key_id)
                await tx.audit(self._event(caller, "DeleteKey", "OK", record.spec.workspace_id,
                                           target_key_id=key_id))

    async def rotate_key(self, caller: Caller, key_id: UUID, grace: timedelta,
                         etag: str = "") -> tuple[KeyRecord, str]:
        """A new secret for the same key. The caller receives the key's rights, so it must hold them all,
        and must not be a retired secret itself.

        Of two rotations of one key that overlap, the one that waited for the other's lock fails
        (ABORTED): both answering OK would hand one caller a secret that the other had just retired.
        `etag`, when given, extends that to "the key has not changed since I read it".
        """
        grace = validate_grace_period(grace)
        api_key = self._format.generate()
        async with self._audited(caller, "RotateKey", caller.credential.workspace_id, target=key_id):
            async with self._store.transaction() as tx:
                seen = await tx.get_key(key_id)
                record = await self._lock(tx, caller, key_id, "apikeys:update")
                if seen is None or seen.version != record.version or (etag and etag != record.etag):
                    raise Aborted("the key changed while this rotation waited (another rotation or update won); "
                                  "get it again and retry")
                ensure_not_retired(caller.credential, "rotate keys")
                ensure_within(caller.credential, record.spec)
                rotated = await tx.replace_secret(key_id, digest(api_key), self._format.display(api_key),
                                                  self._clock() + grace)
                await tx.audit(self._event(caller, "RotateKey", "OK", record.spec.workspace_id,
                                           target_key_id=key_id, changed_fields=("secret",)))
        return rotated, api_key

    # --- bindings -------------------------------------------------------------------

    def _binding_target(self, resource: str, verb: str) -> tuple[str, str]:
        """(canonical resource, the `<collection>:<verb>` permission that governs binding it)."""
        resource = canonical_resource(self._catalog, resource)
        if not resource:
            raise InvalidArgument("resource", "name one resource, such as 'chatflows/<id>'")
        collection = resource.partition("/")[0]
        action = f"{collection}:{verb}"
        if verb not in self._catalog.verbs.get(collection, ()):
            raise InvalidArgument("resource", f"collection {collection!r} has no {action!r} in the catalog")
        return resource, action

    def _binding_actions(self, resource: str, actions: Sequence[str]) -> tuple[str, ...]:
        """The actions a binding governs: each must act on the resource's collection. Default: using it
        (`predictions:create`), for the collections that action acts on."""
        if not actions:
            wanted = tuple(a for a in DEFAULT_BINDING_ACTIONS if self._applies(a, resource))
            if not wanted:
                raise InvalidArgument("actions", f"name the actions the binding governs; {resource!r} has no default")
            return wanted
        for i, action in enumerate(actions):
            self._catalog.validate_action(action, f"actions[{i}]")
            if not self._applies(action, resource):
                raise InvalidArgument(f"actions[{i}]", f"{action!r} does not act on {resource!r}")
        return tuple(dict.fromkeys(actions))

    def _applies(self, action: str, resource: str) -> bool:
        return resource.partition("/")[0] in self._catalog.collections(action)

    async def bind(self, caller: Caller, resource: str, key_id: UUID,
                   actions: Sequence[str]) -> BindingRecord:
        resource, action = self._binding_target(resource, "update")
        wanted = self._binding_actions(resource, actions)
        async with self._audited(caller, "BindResource", caller.credential.workspace_id, target=key_id,
                                 resource=resource), self._store.transaction() as tx:
            self._require_permission(caller, action)
            record = self._visible(caller, await tx.lock_key(key_id), key_id)
            if record.root:
                raise InvalidArgument("key_id", "root keys belong to no workspace and cannot be bound")
            workspace = record.spec.workspace_id
            self._authorize(caller, action, resource, workspace)
            binding = await tx.upsert_binding(workspace, resource, key_id, wanted, caller.credential.key_id)
            await tx.audit(self._event(caller, "BindResource", "OK", workspace, target_key_id=key_id,
                                       resource=resource, changed_fields=("bindings",)))
            return binding

    async def unbind(self, caller: Caller, resource: str, key_id: UUID) -> None:
        resource, action = self._binding_target(resource, "update")
        async with self._audited(caller, "UnbindResource", caller.credential.workspace_id, target=key_id,
                                 resource=resource), self._store.transaction() as tx:
            self._require_permission(caller, action)
            record = self._visible(caller, await tx.lock_key(key_id), key_id)
            workspace = record.spec.workspace_id
            self._authorize(caller, action, resource, workspace)
            if not await tx.delete_binding(workspace, resource, key_id):
                raise NotFound("binding", f"{resource} -> {key_id}")
            await tx.audit(self._event(caller, "UnbindResource", "OK", workspace, target_key_id=key_id,
                                       resource=resource, changed_fields=("bindings",)))

    async def list_bindings(self, caller: Caller, *, resource: str = "", key_id: UUID | None = None,
                            workspace_id: str = "") -> list[BindingRecord]:
        if workspace_id:
            validate_workspace_id(workspace_id)
        action = ""
        if key_id is None:
            resource, action = self._binding_target(resource, "view")
        async with self._audited(caller, "ListBindings", caller.credential.workspace_id, target=key_id,
                                 resource=resource), self._store.read() as tx:
            if key_id is not None:
                record = await self._load(tx, caller, key_id, "apikeys:view")
                return await tx.list_bindings(workspace_id=record.spec.workspace_id, key_id=key_id)
            workspace = workspace_id or caller.credential.workspace_id
            if not workspace:
                raise InvalidArgument("workspace_id", "root callers must name the workspace whose bindings to list")
            self._authorize(caller, action, resource, workspace)
            return await tx.list_bindings(workspace_id=workspace, resource=resource)

    # --- audit ----------------------------------------------------------------------

    async def list_audit(self, caller: Caller, query: AuditQuery, page_size: int,
                         page_token: str) -> tuple[list[AuditEvent], str]:
        size = paging.page_size(page_size)
        if query.workspace_id:
            validate_workspace_id(query.workspace_id)
        if query.action and not _AUDIT_ACTION_RE.match(query.action):
            raise InvalidArgument("action", "must be the name of an audited call, such as 'CreateKey'")
        async with self._audited(caller, "ListAuditEvents", caller.credential.workspace_id):
            self._authorize(caller, "logs:view", "", query.workspace_id or "")
        if not caller.credential.root:
            query = replace(query, workspace_id=caller.credential.workspace_id)
        fingerprint = ("audit", query.workspace_id, str(query.key_id), str(query.actor_key_id), query.action,
                       str(query.start_time), str(query.end_time))
        before = self._tokens.decode(page_token, fingerprint, _audit_cursor)
        async with self._store.read() as tx:
            rows = await tx.list_audit(query, before, size + 1)
        return self._tokens.page(rows, size, lambda last: [last.id], fingerprint)


def set_fields(spec: KeySpec) -> tuple[str, ...]:
    """The fields a new key was given (those not left at their defaults), for its audit row."""
    return tuple(f for f in UPDATABLE_FIELDS if getattr(spec, f))


def _viewable_ids(credential: Credential) -> list[UUID] | None:
    """The keys a scoped caller may see (`apikeys/<id>` entries of its scope), or None for all of them:
    a list shows exactly what GetKey would."""
    scope = credential.scope
    if scope.unrestricted or "apikeys" in scope.roots:
        return None
    ids = []
    for root in scope.roots:
        collection, _, rest = root.partition("/")
        if collection == "apikeys" and "/" not in rest:
            with contextlib.suppress(ValueError):
                ids.append(UUID(rest))
    return ids


def _key_cursor(cursor: paging.Cursor) -> tuple[datetime, UUID]:
    create_time, key_id = cursor
    return datetime.fromisoformat(str(create_time)), UUID(str(key_id))


def _audit_cursor(cursor: paging.Cursor) -> int:
    (event_id,) = cursor
    if not isinstance(event_id, int):
        raise TypeError("audit cursor")
    return event_id


def _resolve_mask(mask: Sequence[str]) -> tuple[str, ...]:
    if not mask:
        raise InvalidArgument("update_mask", f"name the fields to change: {', '.join(UPDATABLE_FIELDS)} or '*'")
    if "*" in mask:
        return UPDATABLE_FIELDS
    for i, path in enumerate(mask):
        if path not in UPDATABLE_FIELDS:
            raise InvalidArgument(f"update_mask.paths[{i}]", f"{path!r} cannot be updated; use one of "
                                  + ", ".join(UPDATABLE_FIELDS))
    return tuple(dict.fromkeys(mask))
