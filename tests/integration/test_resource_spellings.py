"""No spelling of a bound chatflow lets another key through, at any door (property-based).

A chatflow is bound to key A. Key B holds `predictions:create` everywhere. For any spelling
that the platform would resolve to the bound chatflow (PostgreSQL itself decides: Flowise keeps
chatflow ids as `uuid`, so the oracle is `SELECT $1::uuid`), and any case of the collection and
of Flowise's route, B must be refused by Check, BatchCheck and Envoy's ext_authz, while A is
allowed and a key C scoped to the chatflow (in yet another spelling) passes its scope. Spellings PostgreSQL
does not read as that id may name another record (or none), so they may answer anything.

Hypothesis runs synchronously, so the server and the oracle's connection live on an event loop
in a background thread, and the doors are called through synchronous gRPC stubs.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import asyncpg
import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keygate.config import Settings
from keygate.server import App
from keygate.v1 import authz_pb2, authz_pb2_grpc, keys_pb2, keys_pb2_grpc

T = TypeVar("T")
BOUND = uuid.UUID("9b2c1d3e-4f5a-4b6c-8d7e-0f1a2b3c4d5e")
HEX = "0123456789abcdefABCDEF"


class Background:
    """An event loop in a thread: run coroutines on it from synchronous code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


class Doors:
    """A running keygate with key A bound to the chatflow, key B unbound, key C scoped to it."""

    def __init__(self, background: Background, app: App, oracle: asyncpg.Connection, channel: grpc.Channel,
                 keys: dict[str, str]) -> None:
        self.background = background
        self.app = app
        self.oracle = oracle
        self.authz = authz_pb2_grpc.AuthzServiceStub(channel)
        self.envoy = external_auth_pb2_grpc.AuthorizationStub(channel)
        self.keys = keys

    def resolves_to_bound(self, spelling: str) -> bool:
        """Would PostgreSQL (where Flowise keeps chatflows) read `spelling` as the bound chatflow's id?"""
        async def ask() -> bool:
            try:
                return await self.oracle.fetchval("SELECT $1::uuid", spelling) == BOUND
            except asyncpg.DataError:
                return False
        return self.background.run(ask())

    def check(self, who: str, resource: str) -> str:
        try:
            response = self.authz.Check(authz_pb2.CheckRequest(api_key=self.keys[who], resource=resource,
                                                               action="predictions:create"), timeout=10)
        except grpc.RpcError as err:
            return err.code().name
        return authz_pb2.DecisionCode.Name(response.code)

    def batch(self, who: str, resource: str) -> str:
        try:
            response = self.authz.BatchCheck(authz_pb2.BatchCheckRequest(
                api_key=self.keys[who],
                items=[authz_pb2.BatchCheckItem(resource=resource, action="predictions:create")]),
                timeout=10)
        except grpc.RpcError as err:
            return err.code().name
        return authz_pb2.DecisionCode.Name(response.results[0].code)

    def envoy_check(self, who: str, path: str) -> int:
        request = external_auth_pb2.CheckRequest()
        http = request.attributes.request.http
        http.method, http.path = "POST", path
        http.headers["authorization"] = f"Bearer {self.keys[who]}"
        response = self.envoy.Check(request, timeout=10)
        return 200 if response.HasField("ok_response") else response.denied_response.status.code


@pytest.fixture(scope="module")
def doors(postgres: Any) -> Iterator[Doors]:
    background = Background()
    url = background.run(postgres.fresh_database())
    app = background.run(App.start(Settings(listen="127.0.0.1:0"), url))
    oracle = background.run(asyncpg.connect(url))
    _, root = background.run(app.admin.create_root_key())
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    admin = keys_pb2_grpc.KeyServiceStub(channel)
    meta = (("authorization", f"Bearer {root}"),)

    def create(name: str, resources: tuple[str, ...] = ()) -> keys_pb2.CreateKeyResponse:
        return admin.CreateKey(keys_pb2.CreateKeyRequest(
            name=name, workspace_id="ws1", permissions=["predictions:create"], resources=resources), metadata=meta)

    a, b = create("A"), create("B")
    c = create("C", (f"chatflows/{str(BOUND).upper()}",))  # scoped, in another spelling than the binding
    # Bound through the admin door in a third spelling: it must land on the canonical name.
    admin.BindResource(keys_pb2.BindResourceRequest(resource=f"Chatflows/{BOUND.hex}", key_id=a.key.id), metadata=meta)
    listed = admin.ListBindings(keys_pb2.ListBindingsRequest(resource=f"CHATFLOWS/{str(BOUND).upper()}",
                                                            workspace_id="ws1"), metadata=meta)
    assert [b.resource for b in listed.bindings] == [f"chatflows/{BOUND}"]
    try:
        yield Doors(background, app, oracle, channel, {"A": a.api_key, "B": b.api_key, "C": c.api_key})
    finally:
        channel.close()
        background.run(oracle.close())
        background.run(app.stop(grace=0))
        background.close()


def any_case(word: str) -> st.SearchStrategy[str]:
    return st.tuples(*[st.sampled_from(sorted({ch.lower(), ch.upper()})) for ch in word]).map("".join)


@st.composite
def spellings(draw: st.DrawFn) -> str:
    """Spellings of the bound id, most of which PostgreSQL accepts: any case, hyphens after any group
    of four digits; then, sometimes, a mutation (a hyphen or brace added, a digit dropped or changed)."""
    out = []
    for i, digit in enumerate(BOUND.hex):
        out.append(digit.upper() if draw(st.booleans()) else digit)
        if i % 4 == 3 and i < 31 and draw(st.booleans()):
            out.append("-")
    text = "".join(out)
    mutation = draw(st.sampled_from(["none", "none", "insert", "delete", "replace", "braces"]))
    at = draw(st.integers(0, len(text) - 1))
    if mutation == "insert":
        text = text[:at] + draw(st.sampled_from(["-", "--", "0", "{"])) + text[at:]
    elif mutation == "delete":
        text = text[:at] + text[at + 1:]
    elif mutation == "replace":
        text = text[:at] + draw(st.sampled_from(HEX + "-")) + text[at + 1:]
    elif mutation == "braces":
        text = "{" + text + "}"
    return text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spelling=spellings(), collection=any_case("chatflows"), route=any_case("/api/v1/prediction/"))
def test_no_spelling_of_a_bound_chatflow_lets_another_key_through(doors: Doors, spelling: str, collection: str,
                                                                  route: str) -> None:
    resource, path = f"{collection}/{spelling}", f"{route}{spelling}"
    b = {"Check": doors.check("B", resource), "BatchCheck": doors.batch("B", resource),
         "Envoy": doors.envoy_check("B", path)}
    if doors.resolves_to_bound(spelling) and spelling.startswith("-"):
        # PostgreSQL reads a leading hyphen away; keygate's resource syntax refuses the segment outright: no key
        # gets through with it, the owner included (fail closed, never another spelling of the bound id).
        for who in ("A", "B", "C"):
            assert (doors.check(who, resource), doors.batch(who, resource), doors.envoy_check(who, path)) \
                == ("INVALID_ARGUMENT", "INVALID_ARGUMENT", 400)
    elif doors.resolves_to_bound(spelling):
        assert b == {"Check": "RESOURCE_BOUND_TO_OTHER_KEY", "BatchCheck": "RESOURCE_BOUND_TO_OTHER_KEY",
                     "Envoy": 401}
        assert (doors.check("A", resource), doors.batch("A", resource), doors.envoy_check("A", path)) \
            == ("OK", "OK", 200)
        # C's scope names the chatflow in another spelling: it passes the scope rule (else it would be
        # RESOURCE_OUT_OF_SCOPE, 403) and meets the binding like any unbound key.
        assert (doors.check("C", resource), doors.batch("C", resource), doors.envoy_check("C", path)) \
            == ("RESOURCE_BOUND_TO_OTHER_KEY", "RESOURCE_BOUND_TO_OTHER_KEY", 401)
