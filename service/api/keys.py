"""KeyService: authenticate the caller from `authorization: Bearer`, translate, delegate to KeyAdmin."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import grpc

from ..admin import Caller, KeyAdmin
from ..authz import Authorizer
from ..domain.errors import InvalidArgument
from ..domain.policy import KeySpec, parse_id
from ..domain.records import AuditQuery
from ..v1 import keys_pb2, keys_pb2_grpc
from . import convert
from .boundary import current_request_id


def bearer_token(context: grpc.aio.ServicerContext) -> str:
    """The key from `authorization: Bearer <key>` metadata; empty when absent or not Bearer."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return ""


def peer_address(context: grpc.aio.ServicerContext) -> str:
    """The caller's IP address from the gRPC peer (`ipv4:10.0.0.1:5000`, `ipv6:[::1]:5000`, the brackets
    sometimes percent-encoded); "" for any other transport (a Unix socket). Behind a proxy this is the
    proxy's address: a key with allowed_cidrs manages keys only from where keygate sees it connect."""
    scheme, _, rest = unquote(context.peer() or "").partition(":")
    if scheme == "ipv4":
        return rest.rpartition(":")[0]
    if scheme == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    return ""


async def authenticated(authorizer: Authorizer, context: grpc.aio.ServicerContext) -> Caller:
    """The calling key, from `authorization: Bearer`: Unauthenticated when missing or not working,
    PermissionDenied from outside its allowed_cidrs. Every door onto KeyAdmin (KeyService,
    FlowiseApiKeyService) starts here."""
    address = peer_address(context)
    credential = await authorizer.authenticate(bearer_token(context), address)
    return Caller(credential, current_request_id(), address)


class KeyServicer(keys_pb2_grpc.KeyServiceServicer):
    def __init__(self, authorizer: Authorizer, admin: KeyAdmin) -> None:
        self._authorizer = authorizer
        self._admin = admin

    async def _caller(self, context: grpc.aio.ServicerContext) -> Caller:
        return await authenticated(self._authorizer, context)

    async def CreateKey(self, request: keys_pb2.CreateKeyRequest, context: Any) -> keys_pb2.CreateKeyResponse:
        caller = await self._caller(context)
        spec = KeySpec(**convert.spec_fields(request))
        record, api_key = await self._admin.create_key(caller, spec)
        return keys_pb2.CreateKeyResponse(key=convert.api_key(record), api_key=api_key)

    async def GetKey(self, request: keys_pb2.GetKeyRequest, context: Any) -> keys_pb2.ApiKey:
        caller = await self._caller(context)
        return convert.api_key(await self._admin.get_key(caller, parse_id(request.id)))

    async def ListKeys(self, request: keys_pb2.ListKeysRequest, context: Any) -> keys_pb2.ListKeysResponse:
        caller = await self._caller(context)
        records, token = await self._admin.list_keys(caller, request.workspace_id, request.page_size,
                                                     request.page_token)
        return keys_pb2.ListKeysResponse(keys=[convert.api_key(r) for r in records], next_page_token=token)

    async def UpdateKey(self, request: keys_pb2.UpdateKeyRequest, context: Any) -> keys_pb2.ApiKey:
        caller = await self._caller(context)
        key = request.key
        fields = convert.spec_fields(key)
        record = await self._admin.update_key(caller, parse_id(key.id, "key.id"), fields,
                                              list(request.update_mask.paths), key.etag)
        return convert.api_key(record)

    async def DeleteKey(self, request: keys_pb2.DeleteKeyRequest, context: Any) -> keys_pb2.DeleteKeyResponse:
        caller = await self._caller(context)
        await self._admin.delete_key(caller, parse_id(request.id))
        return keys_pb2.DeleteKeyResponse()

    async def RotateKey(self, request: keys_pb2.RotateKeyRequest, context: Any) -> keys_pb2.CreateKeyResponse:
        caller = await self._caller(context)
        record, api_key = await self._admin.rotate_key(caller, parse_id(request.id),
                                                       convert.from_duration(request, "grace_period"), request.etag)
        return keys_pb2.CreateKeyResponse(key=convert.api_key(record), api_key=api_key)

    async def BindResource(self, request: keys_pb2.BindResourceRequest, context: Any) -> keys_pb2.Binding:
        caller = await self._caller(context)
        record = await self._admin.bind(caller, request.resource, parse_id(request.key_id, "key_id"),
                                        list(request.actions))
        return convert.binding(record)

    async def UnbindResource(self, request: keys_pb2.UnbindResourceRequest,
                             context: Any) -> keys_pb2.UnbindResourceResponse:
        caller = await self._caller(context)
        await self._admin.unbind(caller, request.resource, parse_id(request.key_id, "key_id"))
        return keys_pb2.UnbindResourceResponse()

    async def ListBindings(self, request: keys_pb2.ListBindingsRequest,
                           context: Any) -> keys_pb2.ListBindingsResponse:
        caller = await self._caller(context)
        target = request.WhichOneof("target")
        if target is None:
            raise InvalidArgument("target", "set either resource or key_id")
        if target == "key_id":
            records = await self._admin.list_bindings(caller, key_id=parse_id(request.key_id, "key_id"))
        else:
            records = await self._admin.list_bindings(caller, resource=request.resource,
                                                      workspace_id=request.workspace_id)
        return keys_pb2.ListBindingsResponse(bindings=[convert.binding(r) for r in records])

    async def ListAuditEvents(self, request: keys_pb2.ListAuditEventsRequest,
                              context: Any) -> keys_pb2.ListAuditEventsResponse:
        caller = await self._caller(context)
        query = AuditQuery(
            workspace_id=request.workspace_id or None,
            key_id=parse_id(request.key_id, "key_id") if request.key_id else None,
            actor_key_id=parse_id(request.actor_key_id, "actor_key_id") if request.actor_key_id else None,
            action=request.action,
            start_time=convert.from_timestamp(request, "start_time"),
            end_time=convert.from_timestamp(request, "end_time"),
        )
        events, token = await self._admin.list_audit(caller, query, request.page_size, request.page_token)
        return keys_pb2.ListAuditEventsResponse(events=[convert.audit_event(e) for e in events],
                                                next_page_token=token)
