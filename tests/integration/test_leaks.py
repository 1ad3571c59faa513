"""Visibility and cost leaks: a list shows only what a get would; bindings are read only when needed.

- ListKeys honours the caller's scope: a key scoped to `apikeys/<A>` sees A, not the workspace.
- Root's ListBindings(resource) must name the workspace, as the README says.
- A Check refused for permission, scope or workspace reads no bindings; a BatchCheck on new
  resources reads the bindings of all of them in one round trip.
- Resources name a collection the action acts on, and one record: `--resource chatflows` and
  `unknowncoll/x` are INVALID_ARGUMENT, as is an action on a collection it does not act on.
"""

from __future__ import annotations

import grpc
import pytest

from keygate.server import App
from keygate.store.postgres import Reader
from keygate.v1 import authz_pb2, keys_pb2

from .support import Client, auth, field_violations, rpc_error


async def test_list_keys_shows_a_scoped_caller_only_the_keys_it_may_get(client: Client) -> None:
    a = await client.create(name="a")
    b = await client.create(name="b")
    viewer = await client.create(name="viewer", permissions=["apikeys:view"], resources=[f"apikeys/{a.key.id}"])
    whole = await client.create(name="whole", permissions=["apikeys:view"], resources=["apikeys/*"])

    scoped = await client.keys.ListKeys(keys_pb2.ListKeysRequest(), metadata=auth(viewer.api_key))
    named = await client.keys.ListKeys(keys_pb2.ListKeysRequest(workspace_id="ws1"), metadata=auth(viewer.api_key))
    unscoped = await client.keys.ListKeys(keys_pb2.ListKeysRequest(), metadata=auth(whole.api_key))
    refused = await rpc_error(client.keys.GetKey(keys_pb2.GetKeyRequest(id=b.key.id), metadata=auth(viewer.api_key)))

    assert [k.id for k in scoped.keys] == [a.key.id] == [k.id for k in named.keys]
    assert {a.key.id, b.key.id, viewer.key.id, whole.key.id} <= {k.id for k in unscoped.keys}
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_root_must_name_the_workspace_of_the_bindings_it_lists(client: Client) -> None:
    key = await client.create(permissions=["predictions:create"])
    await client.keys.BindResource(keys_pb2.BindResourceRequest(resource="chatflows/x", key_id=key.key.id),
                                   metadata=auth(client.root))
    err = await rpc_error(client.keys.ListBindings(keys_pb2.ListBindingsRequest(resource="chatflows/x"),
                                                   metadata=auth(client.root)))
    named = await client.keys.ListBindings(keys_pb2.ListBindingsRequest(resource="chatflows/x", workspace_id="ws1"),
                                           metadata=auth(client.root))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "workspace_id" in field_violations(err)
    assert [b.key_id for b in named.bindings] == [key.key.id]


@pytest.fixture
def binding_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many slots each bindings query asked for (the real query runs; this only counts)."""
    calls: list[int] = []
    real = Reader.bindings_for_many

    async def counted(self: Reader, slots):
        calls.append(len(slots))
        return await real(self, slots)

    monkeypatch.setattr(Reader, "bindings_for_many", counted)
    return calls


async def test_a_check_refused_anyway_reads_no_bindings(app: App, client: Client, binding_reads: list[int]) -> None:
    viewer = await client.create(permissions=["chatflows:view"])
    scoped = await client.create(permissions=["predictions:create"], resources=["chatflows/mine"])
    codes = set()
    for i in range(50):
        codes.add((await client.check(viewer.api_key, f"chatflows/new-{i}", "predictions:create")).code)
        codes.add((await client.check(scoped.api_key, f"chatflows/new-{i}", "predictions:create")).code)
        codes.add((await client.check(scoped.api_key, f"chatflows/mine/{i}", "predictions:create", "ws2")).code)
    assert codes == {authz_pb2.PERMISSION_DENIED, authz_pb2.RESOURCE_OUT_OF_SCOPE, authz_pb2.WORKSPACE_MISMATCH}
    assert binding_reads == []
    assert app.cache.sizes()["bindings"] == 0


async def test_a_batch_reads_the_bindings_of_new_resources_in_one_round_trip(
    client: Client, binding_reads: list[int]
) -> None:
    user = await client.create(permissions=["predictions:create"])
    other = await client.create(permissions=["predictions:create"])
    await client.keys.BindResource(keys_pb2.BindResourceRequest(resource="chatflows/r7", key_id=other.key.id),
                                   metadata=auth(client.root))
    items = [authz_pb2.BatchCheckItem(resource=f"chatflows/r{i}", action="predictions:create") for i in range(100)]

    answer = await client.authz.BatchCheck(authz_pb2.BatchCheckRequest(api_key=user.api_key, items=items))

    assert binding_reads == [100]
    assert [r.code for r in answer.results].count(authz_pb2.RESOURCE_BOUND_TO_OTHER_KEY) == 1
    assert answer.results[7].code == authz_pb2.RESOURCE_BOUND_TO_OTHER_KEY
    again = await client.authz.BatchCheck(authz_pb2.BatchCheckRequest(api_key=user.api_key, items=items))
    assert binding_reads == [100] and list(again.results) == list(answer.results)  # now from memory


@pytest.mark.parametrize(("resource", "action", "field"), [
    ("chatflows", "chatflows:view", "resource"),
    ("unknowncoll/x", "chatflows:view", "resource"),
    ("agentflows/x", "chatflows:view", "resource"),
    ("tools/x", "predictions:create", "resource"),
])
async def test_a_resource_names_one_record_of_a_collection_the_action_acts_on(
    client: Client, resource: str, action: str, field: str
) -> None:
    err = await rpc_error(client.check(client.root, resource, action))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(err)
