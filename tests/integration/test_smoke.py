"""The worked example from the README: create a key, Check it, see 200 / 401 / 403."""

from keygate.v1 import authz_pb2

from .support import Client


async def test_create_then_check_allows_and_denies(client: Client) -> None:
    created = await client.create(permissions=["chatflows:update", "predictions:create"])

    allowed = await client.check(created.api_key, "chatflows/abc", "chatflows:view")
    denied = await client.check(created.api_key, "chatflows/abc", "chatflows:delete")
    unknown = await client.check("fl_" + "x" * 49, "chatflows/abc", "chatflows:view")

    assert (allowed.allowed, allowed.code, allowed.http_status) == (True, authz_pb2.OK, 200)
    assert allowed.key_id == created.key.id and allowed.workspace_id == "ws1"
    assert (denied.allowed, denied.code, denied.http_status) == (False, authz_pb2.PERMISSION_DENIED, 403)
    assert unknown.http_status == 401
