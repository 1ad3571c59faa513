"""AuthzService.WatchChanges: the change feed as a stream, for clients that cache decisions (keygate.client).

The caller authenticates like ListPermissions (`authorization: Bearer <key>`) and needs `apikeys:view`
(the events name key ids and bound resources, which that permission already shows through ListKeys and
ListBindings) over its whole workspace: a key limited to some resources would see events beyond them.
A workspace key sees its workspace's events, a root key every workspace's.

The boundary does not translate a stream's errors, so this servicer turns its own refusals into statuses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from ..authz import Authorizer
from ..cache.feed import BindingEvent, Ended, Event, Feed, KeyEvent
from ..domain.decision import Credential
from ..domain.errors import KeygateError, PermissionDenied
from ..v1 import authz_pb2, authz_pb2_grpc
from .errors import to_status
from .keys import bearer_token, peer_address

WATCH_PERMISSION = "apikeys:view"


def watcher_workspace(credential: Credential) -> str | None:
    """The workspace whose events `credential` may watch (None: every one); PermissionDenied if none."""
    if WATCH_PERMISSION not in credential.grants:
        raise PermissionDenied(f"watching changes needs {WATCH_PERMISSION}")
    if credential.scope.roots:
        raise PermissionDenied("a key limited to resources may not watch changes: events cover its whole workspace")
    return None if credential.root else credential.workspace_id


def to_message(event: Event, workspace: str | None) -> authz_pb2.ChangeEvent:
    """The wire form of an event: ids and names only. A RESYNC says which workspace the stream covers."""
    if isinstance(event, KeyEvent):
        return authz_pb2.ChangeEvent(kind=authz_pb2.KEY_CHANGED, key_id=str(event.key_id),
                                     workspace_id=event.workspace_id)
    if isinstance(event, BindingEvent):
        return authz_pb2.ChangeEvent(kind=authz_pb2.BINDING_CHANGED, workspace_id=event.workspace_id,
                                     resource=event.resource)
    return authz_pb2.ChangeEvent(kind=authz_pb2.RESYNC, listening=event.listening, workspace_id=workspace or "")


class WatchServicer(authz_pb2_grpc.AuthzServiceServicer):
    """Serves WatchChanges alone: registered beside AuthzServicer under the same service (server.py), so the
    stream stays out of the Check servicer's code."""

    def __init__(self, authorizer: Authorizer, feed: Feed) -> None:
        self._authorizer = authorizer
        self._feed = feed

    async def WatchChanges(self, request: authz_pb2.WatchChangesRequest,
                           context: grpc.aio.ServicerContext) -> AsyncIterator[authz_pb2.ChangeEvent]:
        workspace = await self._admit(context)
        try:
            subscriber = self._feed.subscribe(workspace)
        except Ended:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "keygate is shutting down; resubscribe elsewhere")
        try:
            while True:
                try:
                    event = await subscriber.next()
                except Ended as ended:
                    if ended.slow:
                        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                            "this subscriber fell behind the change feed; resubscribe")
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "keygate is shutting down; resubscribe")
                # The key may have been revoked, disabled, narrowed or expired since the stream began: it is
                # admitted again before each event (a cached read; events are rare), never trusted for good.
                if await self._admit(context) != workspace:
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, "this key's workspace changed; resubscribe")
                yield to_message(event, workspace)
        finally:
            self._feed.unsubscribe(subscriber)

    async def _admit(self, context: grpc.aio.ServicerContext) -> str | None:
        """The workspace the caller's key may watch now; aborts the call with the key's refusal."""
        try:
            credential = await self._authorizer.authenticate(bearer_token(context), peer_address(context))
            return watcher_workspace(credential)
        except KeygateError as exc:
            status = to_status(exc)
            await context.abort(status.code, status.details, status.trailing_metadata)
            raise  # abort raises; this line only tells mypy the function ends here
