"""AuthzService: Check and BatchCheck, rendered from the shared identify/decide path; ListPermissions."""

from __future__ import annotations

import grpc

from .. import metrics
from ..authz import Authorizer, CheckItem
from ..domain.decision import Code, Decision
from ..domain.descriptions import list_permissions
from ..domain.limits import validate_cost
from ..domain.permissions import Catalog
from ..v1 import authz_pb2, authz_pb2_grpc
from .convert import check_response
from .keys import bearer_token, peer_address
from .replies import Rendered, Replies


class AuthzServicer(authz_pb2_grpc.AuthzServiceServicer):
    def __init__(self, authorizer: Authorizer, catalog: Catalog) -> None:
        self._authorizer = authorizer
        self._rendered: Replies[Rendered] = Replies()
        # The catalog is fixed for the life of the process: render its listing once.
        self._permissions = authz_pb2.ListPermissionsResponse(permissions=[
            authz_pb2.Permission(name=p.name, description=p.description, implies=p.implies,
                                 collections=p.collections)
            for p in list_permissions(catalog)
        ])

    async def Check(
        self, request: authz_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> authz_pb2.CheckResponse | bytes:
        item = CheckItem(request.resource, request.action, request.workspace_id, request.client_address)
        cost = request.cost
        if cost:  # 0: unset, one credit
            validate_cost(cost)
        found = (self._authorizer.recall(request.api_key, item)
                 or await self._authorizer.check(request.api_key, item, cost or 1))
        metrics.decision.set(found.code._value_)  # `_value_`: `.value` is a Python-level property
        return self._render(found)

    def _render(self, decision: Decision) -> authz_pb2.CheckResponse | bytes:
        """The reply for `decision`, built and serialized once per Decision object (see replies.py): building
        it was about a quarter of a cached Check in-process."""
        if decision.usage is not None:  # metered: a new Decision every time, not worth keeping
            return check_response(decision)
        held = self._rendered.get(id(decision))
        if held is not None and held.decision is decision:
            return held.sent
        return self._rendered.keep(Rendered(decision, check_response(decision).SerializeToString())).sent

    async def BatchCheck(
        self, request: authz_pb2.BatchCheckRequest, context: grpc.aio.ServicerContext
    ) -> authz_pb2.BatchCheckResponse:
        address = request.client_address
        items = [CheckItem(i.resource, i.action, i.workspace_id, address) for i in request.items]
        costs = [validate_cost(i.cost, f"items[{n}].cost") for n, i in enumerate(request.items)]
        decisions = await self._authorizer.check_batch(request.api_key, items, costs)
        metrics.decision.set(next((d.code for d in decisions if not d.allowed), Code.OK).value)
        return authz_pb2.BatchCheckResponse(results=[check_response(d) for d in decisions])

    async def ListPermissions(
        self, request: authz_pb2.ListPermissionsRequest, context: grpc.aio.ServicerContext
    ) -> authz_pb2.ListPermissionsResponse:
        """Any live key may read the catalog: it is the same for every caller and holds no secret, but an
        anonymous caller learns nothing about the deployment (an operator's categories included)."""
        await self._authorizer.authenticate(bearer_token(context), peer_address(context))
        return self._permissions
