"""Watching grpc.health.v1 from a test: every status a Watch stream sends, with when it arrived."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING, NOT_SERVING = "SERVING", "NOT_SERVING"


def name(status: int) -> str:
    return health_pb2.HealthCheckResponse.ServingStatus.Name(status)


@dataclass
class Watched:
    """One Watch stream: every status it sent, when it arrived, and how the stream ended."""

    seen: list[tuple[float, str]] = field(default_factory=list)
    ended: str | None = None  # "OK", an error's status name, or None while open

    def first(self, status: str, after: float) -> float | None:
        return next((at for at, got in self.seen if got == status and at >= after), None)

    def statuses(self) -> list[str]:
        return [got for _, got in self.seen]


async def watch(channel: grpc.aio.Channel, service: str, into: Watched) -> None:
    try:
        async for response in health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=service)):
            into.seen.append((time.monotonic(), name(response.status)))
        into.ended = "OK"
    except grpc.aio.AioRpcError as error:
        into.ended = error.code().name


async def until(watched: Watched, status: str, after: float, within: float) -> float | None:
    """When `watched` first said `status` at or after `after`; None if not within `within` seconds."""
    deadline = time.monotonic() + within
    while (at := watched.first(status, after)) is None and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return at
