"""`Authorizer` (grpc.aio) and `SyncAuthorizer` (grpc): AuthzService.Check and BatchCheck as typed calls.

Fail closed: a check returns a Decision only when keygate answered one. When keygate cannot be reached
within the deadline (retries included), it raises `KeygateUnavailable`; any other RPC error (a malformed
resource or action, too many items) raises `KeygateRequestError`. Neither is ever turned into an allowed
answer, and no exception or message carries the key.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, Self, TypeVar

import grpc

from ..v1 import authz_pb2, authz_pb2_grpc
from .cache import DecisionCache, LocalCache, question
from .decision import Decision
from .settings import ClientSettings, Retry
from .watch import AsyncWatcher, ThreadWatcher


class KeygateClientError(Exception):
    """keygate gave no decision. `code` is the gRPC status; the message is the server's, without any key."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code, self.message = code, message


class KeygateUnavailable(KeygateClientError):
    """keygate could not be reached, or did not answer, within the deadline: refuse the request (503)."""


class KeygateRequestError(KeygateClientError):
    """keygate refused the request itself (INVALID_ARGUMENT naming a field, ...): a caller's bug, refuse."""


class CheckItem(NamedTuple):
    """One question of a check_many; a plain (resource, action) tuple works as well."""

    resource: str
    action: str
    workspace_id: str = ""
    cost: int = 1  # what the item spends of the key's rate limits and credits, if it is allowed


def check_request(key: str, resource: str, action: str, workspace_id: str, client_address: str,
                  cost: int) -> authz_pb2.CheckRequest:
    return authz_pb2.CheckRequest(api_key=key, resource=resource, action=action, workspace_id=workspace_id,
                                  client_address=client_address, cost=cost)


def batch_request(key: str, items: Iterable[CheckItem | tuple[str, str]],
                  client_address: str) -> authz_pb2.BatchCheckRequest:
    return authz_pb2.BatchCheckRequest(api_key=key, client_address=client_address, items=[
        authz_pb2.BatchCheckItem(resource=item.resource, action=item.action, workspace_id=item.workspace_id,
                                 cost=item.cost)
        for item in (CheckItem(*raw) for raw in items)])


# What a client retries: failures that mean keygate's handler never ran the call. UNAVAILABLE: nothing
# reached keygate. CANCELLED: a draining keygate's grpc stopped serving with the call queued, before
# keygate saw it (a caller's own cancellation is asyncio.CancelledError, never a status).
RETRIED = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})


def after_failure(code: grpc.StatusCode, details: str | None, failed: int, deadline: float, retry: Retry) -> float:
    """The pause before the next attempt, or the error to raise: only RETRIED codes are retried, while
    attempts and the deadline last (the pause must end early enough to leave the next attempt time)."""
    details = details or code.name.lower()
    if code in RETRIED:
        pause = retry.pause(failed)
        if failed < retry.attempts and time.monotonic() + pause < deadline:
            return pause
        raise KeygateUnavailable(code, f"keygate unreachable after {failed} attempt(s): {details}") from None
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        raise KeygateUnavailable(code, "keygate did not answer within the deadline") from None
    raise KeygateRequestError(code, details) from None


_R = TypeVar("_R")


def _decisions(response: authz_pb2.BatchCheckResponse) -> list[Decision]:
    return [Decision.from_response(result) for result in response.results]


class _Client:
    """What both clients share: their settings, the local decision cache if one is wanted (`cache`), and
    building them from the environment."""

    def __init__(self, settings: ClientSettings | None = None, *, cache: LocalCache | None = None) -> None:
        self.settings = settings or ClientSettings()
        self._cache = cache
        # The decisions kept in-process; None: the local cache is off (the default), every check asks keygate.
        self.decisions = None if cache is None else DecisionCache(cache.max_entries, cache.ttl)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, timeout: float = 1.0,
                 retry: Retry | None = None, cache: LocalCache | None = None) -> Self:
        """Settings from KEYGATE_SERVER and KEYGATE_TLS*, as the `keygate` command line reads them."""
        return cls(ClientSettings.from_env(env, timeout=timeout, retry=retry), cache=cache)


class Authorizer(_Client):
    """asyncio client; one per process, shared by all requests (it holds one HTTP/2 channel, opened on the
    first check so that it belongs to the event loop that serves, whenever the Authorizer was made; with
    a local cache, the WatchChanges subscription starts then too).

        async with Authorizer.from_env() as authz:
            decision = await authz.check(key, "chatflows/abc", "predictions:create")
    """

    def __init__(self, settings: ClientSettings | None = None, *, cache: LocalCache | None = None) -> None:
        super().__init__(settings, cache=cache)
        tls = self.settings.tls
        self._credentials = tls.credentials() if tls.enabled else None  # TLS files read and checked now
        self._channel: grpc.aio.Channel | None = None
        self._stub_of_channel: authz_pb2_grpc.AuthzServiceStub | None = None
        self._watcher: AsyncWatcher | None = None

    def _stub(self) -> authz_pb2_grpc.AuthzServiceStub:
        if self._channel is None or self._stub_of_channel is None:
            server = self.settings.server
            self._channel = (grpc.aio.insecure_channel(server) if self._credentials is None else
                             grpc.aio.secure_channel(server, self._credentials, options=self.settings.tls.options()))
            self._stub_of_channel = authz_pb2_grpc.AuthzServiceStub(self._channel)
            if self._cache is not None and self.decisions is not None:
                self._watcher = AsyncWatcher(self._stub_of_channel, self.decisions, self._cache)
                self._watcher.start()
        return self._stub_of_channel

    async def check(self, key: str, resource: str, action: str, *, workspace_id: str = "",
                    client_address: str = "", cost: int = 1) -> Decision:
        decisions = self.decisions
        if decisions is None or cost != 1:
            request = check_request(key, resource, action, workspace_id, client_address, cost)
            return Decision.from_response(await self._call(self._stub().Check, request))
        asked = question(key, resource, action, workspace_id, client_address)
        found = decisions.get(asked)
        if found is not None:
            return found
        sent = decisions.now()
        response = await self._call(self._stub().Check, check_request(key, resource, action, workspace_id,
                                                                      client_address, cost))
        decision = Decision.from_response(response)
        decisions.keep(asked, response, decision, sent)
        return decision

    async def check_many(self, key: str, items: Iterable[CheckItem | tuple[str, str]], *,
                         client_address: str = "") -> list[Decision]:
        """One BatchCheck: a Decision per item, in order (at most 100 items)."""
        request = batch_request(key, items, client_address)
        return _decisions(await self._call(self._stub().BatchCheck, request))

    async def _call(self, method: grpc.aio.UnaryUnaryMultiCallable[Any, _R], request: object) -> _R:
        deadline = time.monotonic() + self.settings.timeout
        failed = 0
        while True:
            try:
                return await method(request, timeout=max(deadline - time.monotonic(), 0.0))
            except grpc.aio.AioRpcError as error:
                failed += 1
                await asyncio.sleep(after_failure(error.code(), error.details(), failed, deadline, self.settings.retry))

    async def close(self) -> None:
        if self._watcher is not None:
            await self._watcher.stop()
            self._watcher = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class SyncAuthorizer(_Client):
    """Blocking client for threaded services (WSGI, grpc's thread-pool server); same API as Authorizer.
    With a local cache, a daemon thread holds the WatchChanges subscription from construction on."""

    def __init__(self, settings: ClientSettings | None = None, *, cache: LocalCache | None = None) -> None:
        super().__init__(settings, cache=cache)
        self._channel = self.settings.tls.channel(self.settings.server)
        self._stub = authz_pb2_grpc.AuthzServiceStub(self._channel)
        self._watcher = None
        if cache is not None and self.decisions is not None:
            self._watcher = ThreadWatcher(self._stub, self.decisions, cache)
            self._watcher.start()

    def check(self, key: str, resource: str, action: str, *, workspace_id: str = "",
              client_address: str = "", cost: int = 1) -> Decision:
        decisions = self.decisions
        if decisions is None or cost != 1:
            request = check_request(key, resource, action, workspace_id, client_address, cost)
            return Decision.from_response(self._call(self._stub.Check, request))
        asked = question(key, resource, action, workspace_id, client_address)
        found = decisions.get(asked)
        if found is not None:
            return found
        sent = decisions.now()
        response = self._call(self._stub.Check, check_request(key, resource, action, workspace_id, client_address,
                                                              cost))
        decision = Decision.from_response(response)
        decisions.keep(asked, response, decision, sent)
        return decision

    def check_many(self, key: str, items: Iterable[CheckItem | tuple[str, str]], *,
                   client_address: str = "") -> list[Decision]:
        return _decisions(self._call(self._stub.BatchCheck, batch_request(key, items, client_address)))

    def _call(self, method: grpc.UnaryUnaryMultiCallable[Any, _R], request: object) -> _R:
        deadline = time.monotonic() + self.settings.timeout
        failed = 0
        while True:
            try:
                return method(request, timeout=max(deadline - time.monotonic(), 0.0))
            except grpc.RpcError as error:
                failed += 1
                code, details = (error.code(), error.details()) if isinstance(error, grpc.Call) else (
                    grpc.StatusCode.UNKNOWN, None)
                time.sleep(after_failure(code, details, failed, deadline, self.settings.retry))

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
