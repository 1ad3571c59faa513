"""AuthzService.ListPermissions through a real channel: the catalog a key-creation UI offers."""

from __future__ import annotations

from pathlib import Path

import grpc

from keygate.config import Settings
from keygate.domain.permissions import Catalog
from keygate.v1 import authz_pb2, keys_pb2

from .support import Client, auth, rpc_error, running

CATALOG = Catalog.build()


async def listed(client: Client, api_key: str) -> dict[str, authz_pb2.Permission]:
    response = await client.authz.ListPermissions(authz_pb2.ListPermissionsRequest(), metadata=auth(api_key))
    names = [p.name for p in response.permissions]
    assert names == sorted(names)
    return {p.name: p for p in response.permissions}


async def test_every_grantable_permission_is_listed_with_what_it_implies_and_acts_on(client: Client) -> None:
    permissions = await listed(client, client.root)
    wildcards = {f"{category}:*" for category in CATALOG.verbs}
    assert set(permissions) == set(CATALOG.permissions()) | wildcards
    for name, permission in permissions.items():
        assert permission.description
        assert set(permission.implies) == CATALOG.expand([name]) - {name}
        assert tuple(permission.collections) == CATALOG.collections(name)
    assert list(permissions["chatflows:update"].implies) == ["chatflows:view"]
    assert list(permissions["predictions:create"].collections) == ["chatflows", "agentflows"]
    assert not permissions["predictions:create"].implies  # predictions has no `view`


async def test_any_live_key_may_list_and_no_one_else(client: Client) -> None:
    """The narrowest key of another workspace sees the same catalog; a missing, unknown or disabled key none."""
    narrow = await client.create(permissions=["tools:view"], workspace_id="ws2")
    assert await listed(client, narrow.api_key) == await listed(client, client.root)

    for api_key in ("", "fl_" + "A" * 49):
        err = await rpc_error(client.authz.ListPermissions(authz_pb2.ListPermissionsRequest(),
                                                            metadata=auth(api_key)))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED

    disabled = keys_pb2.ApiKey(id=narrow.key.id, disabled=True)
    request = keys_pb2.UpdateKeyRequest(key=disabled)
    request.update_mask.paths.append("disabled")
    await client.keys.UpdateKey(request, metadata=auth(client.root))
    err = await rpc_error(client.authz.ListPermissions(authz_pb2.ListPermissionsRequest(),
                                                        metadata=auth(narrow.api_key)))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_an_operators_category_gets_a_generic_description(database_url: str, tmp_path: Path) -> None:
    catalog_file = tmp_path / "catalog.yaml"
    catalog_file.write_text("categories:\n  billing: [view, charge]\n  chatflows: [archive]\n")
    async with running(Settings(listen="127.0.0.1:0", catalog_file=catalog_file), database_url) as (_, client):
        permissions = await listed(client, client.root)
    assert permissions["billing:charge"].description == "'charge' on billing (defined by this deployment's catalog)"
    assert list(permissions["billing:charge"].implies) == ["billing:view"]
    assert list(permissions["billing:*"].collections) == ["billing"]
    assert "defined by this deployment" in permissions["chatflows:archive"].description
    assert "defined by this deployment" not in permissions["chatflows:view"].description
