"""Check load on a keygate process, every answer recorded with when it was asked, and the calls it
makes: shared by the outage tests (test_outage.py) and the chaos suite (tests/chaos)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc

from keygate.domain.keys import KeyFormat
from keygate.v1 import authz_pb2, keys_pb2

from .support import Client, auth

BOUND = 1.0  # seconds: how fast a change reaches another replica while the listener is up
POLL = 0.005
RPC_TIMEOUT = 2.0  # a Check that hangs this long is a failure too (it shows as DEADLINE_EXCEEDED)
FORMAT = KeyFormat()
UNAVAILABLE = "UNAVAILABLE"  # an RPC error's status, as Answer.outcome


# --- recording answers ------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    asked: float  # time.monotonic() when the Check was sent
    outcome: str  # the decision code's name, or the RPC error's status name
    took: float  # seconds until it was answered


async def outcome(call: Callable[[], object]) -> str:
    try:
        response = await call()
    except grpc.aio.AioRpcError as error:
        return error.code().name
    return authz_pb2.DecisionCode.Name(response.code) if hasattr(response, "code") else "OK"


@dataclass
class Load:
    """Concurrent loops Checking keys through one client, every answer recorded."""

    client: Client
    answers: dict[str, list[Answer]] = field(default_factory=dict)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def add(self, name: str, api_key: Callable[[], str], loops: int = 1) -> None:
        self.answers[name] = []
        self._tasks += [asyncio.create_task(self._loop(name, api_key)) for _ in range(loops)]

    async def _loop(self, name: str, api_key: Callable[[], str]) -> None:
        while not self._stopping.is_set():
            asked = time.monotonic()
            got = await outcome(check(self.client, api_key()))
            self.answers[name].append(Answer(asked, got, time.monotonic() - asked))
            await asyncio.sleep(POLL)

    async def stop(self) -> None:
        self._stopping.set()
        await asyncio.gather(*self._tasks)

    def between(self, name: str, start: float, end: float = float("inf")) -> set[str]:
        """The outcomes of the Checks of `name` sent in [start, end)."""
        return {a.outcome for a in self.answers[name] if start <= a.asked < end}

    def slowest(self, name: str, start: float, end: float = float("inf")) -> float:
        """The longest wait for an answer among the Checks of `name` sent in [start, end)."""
        return max((a.took for a in self.answers[name] if start <= a.asked < end), default=0.0)

    def last(self, name: str, wanted: str, before: float = float("inf")) -> float:
        """When the last Check of `name` sent before `before` that answered `wanted` was sent."""
        return max((a.asked for a in self.answers[name] if a.outcome == wanted and a.asked < before), default=-1.0)


@contextlib.asynccontextmanager
async def load(client: Client) -> AsyncIterator[Load]:
    running = Load(client)
    try:
        yield running
    finally:
        await running.stop()


async def eventually(check: Callable[[], object], want: str, within: float) -> float:
    """Seconds until `check` (an RPC) gives `want`; fails after `within`."""
    started = time.monotonic()
    while (got := await outcome(check)) != want:
        assert time.monotonic() - started < within, f"still {got} after {within}s (want {want})"
        await asyncio.sleep(POLL)
    return time.monotonic() - started


def check(client: Client, api_key: str) -> Callable[[], object]:
    return lambda: client.authz.Check(authz_pb2.CheckRequest(api_key=api_key, action="chatflows:view"),
                                      timeout=RPC_TIMEOUT)


def disable(client: Client, key: keys_pb2.CreateKeyResponse, timeout: float = RPC_TIMEOUT) -> Callable[[], object]:
    request = keys_pb2.UpdateKeyRequest(key=keys_pb2.ApiKey(id=key.key.id, disabled=True))
    request.update_mask.paths.append("disabled")
    return lambda: client.keys.UpdateKey(request, metadata=auth(client.root), timeout=timeout)


def delete(client: Client, key: keys_pb2.CreateKeyResponse) -> Callable[[], object]:
    request = keys_pb2.DeleteKeyRequest(id=key.key.id)
    return lambda: client.keys.DeleteKey(request, metadata=auth(client.root), timeout=RPC_TIMEOUT)
