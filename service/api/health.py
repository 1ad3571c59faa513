"""grpc.health.v1, derived from two facts: whether the process is draining, whether the database is reachable.

- "" (the process): SERVING until a shutdown begins. It says nothing about the database, so a liveness
  probe on it never restarts a replica whose caches are what still answers during an outage.
- KeyService and FlowiseApiKeyService (its second door): also NOT_SERVING while the database is known
  unreachable (every admin call would fail).
- AuthzService and Envoy's Authorization: SERVING through a database outage. Cached keys answer for
  the outage grace and unknown keys are refused with UNAVAILABLE (fail closed); every replica shares the
  database, so taking them out of rotation would only add connection errors to those answers.

A shutdown turns every service NOT_SERVING and ends every Watch stream after it has said so, so the
drain never waits for a stream that would otherwise last as long as its client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import TypeAlias

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
Status: TypeAlias = health_pb2.HealthCheckResponse.ServingStatus


class HealthServicer(health_pb2_grpc.HealthServicer):
    def __init__(self, services: Iterable[str], *, needs_database: Iterable[str]) -> None:
        self._services = frozenset(("", *services))
        self._needs_database = frozenset(needs_database)
        self._database_reachable = True
        self._draining = False
        self._changed = asyncio.Event()  # replaced by a fresh one at each change; waiters hold the old one

    def status(self, service: str) -> Status | None:
        """The service's status now; None for a service keygate does not serve."""
        if service not in self._services:
            return None
        if self._draining or (service in self._needs_database and not self._database_reachable):
            return NOT_SERVING
        return SERVING

    def database_reachable(self, reachable: bool) -> None:
        """The store's verdict, each time it changes."""
        self._database_reachable = reachable
        self._announce()

    def drain(self) -> None:
        """Every service NOT_SERVING from now on, for good."""
        self._draining = True
        self._announce()

    def _announce(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def Check(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        status = self.status(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "keygate serves no service of that name")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        """The status now, then each change; SERVICE_UNKNOWN for a service keygate does not serve (as the
        protocol asks: it may appear later). Ends once NOT_SERVING for a shutdown has been sent."""
        last = None
        while True:
            changed = self._changed
            status = self.status(request.service)
            if status is None:
                status = SERVICE_UNKNOWN
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            if self._draining:
                return
            await changed.wait()
