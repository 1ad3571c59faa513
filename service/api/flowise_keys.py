"""FlowiseApiKeyService: Flowise's `/api/v1/apikey`, a second door onto KeyAdmin.

Nothing here decides: the caller is authenticated as KeyService's are (`authenticated`), and every call
is KeyAdmin's (create_key, list_keys, list_bindings, update_key, delete_key), so the no-escalation rule,
validation, audit rows and errors are KeyService's own. What this module adds is shape: Flowise's field
names (in messages and in the field an INVALID_ARGUMENT names), its page/limit listing, its defaults.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import orjson
from google.api import httpbody_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from ..admin import Caller, KeyAdmin
from ..authz import Authorizer
from ..domain.errors import InvalidArgument
from ..domain.paging import MAX_PAGE_SIZE
from ..domain.policy import KeySpec, parse_id, rights_of
from ..domain.records import BindingRecord, KeyRecord
from ..v1 import flowise_pb2, flowise_pb2_grpc
from . import convert
from .keys import authenticated

# KeyAdmin's field names as a Flowise client spells them (the JSON names of flowise.proto).
FLOWISE_FIELDS = {"name": "keyName", "workspace_id": "workspaceId"}
UPDATED = ("name", "permissions")  # what Flowise's PUT replaces: both, always


@contextmanager
def flowise_fields() -> Iterator[None]:
    """Re-raise KeyAdmin's InvalidArgument with the field as the Flowise client sent it (`name` -> `keyName`)."""
    try:
        yield
    except InvalidArgument as exc:
        head, bracket, rest = exc.field.partition("[")
        raise InvalidArgument(FLOWISE_FIELDS.get(head, head) + bracket + rest, exc.description) from None


def json_body(value: Message | list[Message]) -> httpbody_pb2.HttpBody:
    """JSON rendered from flowise.proto's messages as Envoy's transcoder renders the typed answers
    (lowerCamelCase names, empty fields printed), for the one answer whose shape depends on the query."""
    def render(message: Message) -> dict[str, Any]:
        return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)

    data = [render(m) for m in value] if isinstance(value, list) else render(value)
    return httpbody_pb2.HttpBody(content_type="application/json", data=orjson.dumps(data))


class FlowiseKeyServicer(flowise_pb2_grpc.FlowiseApiKeyServiceServicer):
    def __init__(self, authorizer: Authorizer, admin: KeyAdmin) -> None:
        self._authorizer = authorizer
        self._admin = admin

    async def CreateApiKey(self, request: flowise_pb2.CreateApiKeyRequest, context: Any) -> flowise_pb2.FlowiseApiKey:
        caller = await authenticated(self._authorizer, context)
        # Flowise cannot send limits: a key made here carries the caller's own (rate limits, credits), the
        # one choice a limited caller is always allowed (no escalation) and an unlimited one keeps none.
        inherited = rights_of(caller.credential)
        spec = (KeySpec(name="", workspace_id="", permissions=tuple(request.permissions),
                        rate_limits=inherited.rate_limits, credits=inherited.credits) if request.permissions
                else inherited)
        # An empty workspace: the caller's own (KeyAdmin's default; root callers must name one).
        spec = replace(spec, name=request.key_name, workspace_id=request.workspace_id)
        with flowise_fields():
            record, api_key = await self._admin.create_key(caller, spec)
        return convert.flowise_key(record, api_key)

    async def ListApiKeys(self, request: flowise_pb2.ListApiKeysRequest, context: Any) -> httpbody_pb2.HttpBody:
        caller = await authenticated(self._authorizer, context)
        for field in ("page", "limit"):
            if getattr(request, field) < 0:
                raise InvalidArgument(field, "cannot be negative")
        records = await self._every_key(caller)
        records.sort(key=lambda r: r.update_time, reverse=True)  # Flowise's order: latest change first
        if request.page > 0 and request.limit > 0:
            start = (request.page - 1) * request.limit
            data = [await self._key(caller, r) for r in records[start:start + request.limit]]
            return json_body(flowise_pb2.FlowiseApiKeyPage(total=len(records), data=data))
        return json_body([await self._key(caller, r) for r in records])

    async def UpdateApiKey(self, request: flowise_pb2.UpdateApiKeyRequest, context: Any) -> flowise_pb2.FlowiseApiKey:
        caller = await authenticated(self._authorizer, context)
        fields = {"name": request.key_name, "permissions": tuple(request.permissions)}
        with flowise_fields():
            record = await self._admin.update_key(caller, parse_id(request.id), fields, UPDATED, etag="")
        return await self._key(caller, record)

    async def DeleteApiKey(self, request: flowise_pb2.DeleteApiKeyRequest,
                           context: Any) -> flowise_pb2.DeleteApiKeyResponse:
        caller = await authenticated(self._authorizer, context)
        await self._admin.delete_key(caller, parse_id(request.id))
        return flowise_pb2.DeleteApiKeyResponse(affected=1)

    async def _every_key(self, caller: Caller) -> list[KeyRecord]:
        """Every key the caller may list (Flowise lists and counts them all), a page at a time."""
        records, token = await self._admin.list_keys(caller, "", MAX_PAGE_SIZE, "")
        while token:
            page, token = await self._admin.list_keys(caller, "", MAX_PAGE_SIZE, token)
            records.extend(page)
        return records

    async def _key(self, caller: Caller, record: KeyRecord) -> flowise_pb2.FlowiseApiKey:
        """The key with its chatflow bindings, Flowise's `chatFlows`."""
        bindings = await self._admin.list_bindings(caller, key_id=record.id)
        return convert.flowise_key(record, chatflows=[b for b in bindings if _chatflow(b)])


def _chatflow(binding: BindingRecord) -> bool:
    return binding.resource.startswith("chatflows/")
