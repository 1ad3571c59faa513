"""AuthzService: Check and BatchCheck, rendered from the shared identify/decide path."""

from __future__ import annotations

import grpc

from ..authz import Authorizer, CheckItem
from ..v1 import authz_pb2, authz_pb2_grpc
from .convert import check_response


class AuthzServicer(authz_pb2_grpc.AuthzServiceServicer):
    def __init__(self, authorizer: Authorizer) -> None:
        self._authorizer = authorizer

    async def Check(
        self, request: authz_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> authz_pb2.CheckResponse:
        item = CheckItem(request.resource, request.action, request.workspace_id)
        return check_response(await self._authorizer.check(request.api_key, item))

    async def BatchCheck(
        self, request: authz_pb2.BatchCheckRequest, context: grpc.aio.ServicerContext
    ) -> authz_pb2.BatchCheckResponse:
        items = [CheckItem(i.resource, i.action, i.workspace_id) for i in request.items]
        decisions = await self._authorizer.check_batch(request.api_key, items)
        return authz_pb2.BatchCheckResponse(results=[check_response(d) for d in decisions])
