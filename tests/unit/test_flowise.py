"""The rules for taking a Flowise key into keygate (domain/flowise.py)."""

from __future__ import annotations

import json
import uuid

from hypothesis import given
from hypothesis import strategies as st

from keygate.domain.flowise import (
    ALWAYS_GRANTED,
    FlowBinding,
    FlowiseFlow,
    FlowiseKey,
    FlowLeft,
    Importable,
    Refused,
    examine,
    flow_bindings,
    key_id,
    scrub,
    secret_matches,
)
from keygate.domain.keys import KeyFormat, Shape
from keygate.domain.permissions import Catalog
from tests.flowise_db import flowise_key, flowise_secret

CATALOG = Catalog.build()
FORMAT = KeyFormat()
WS = "5b7c2f0e-8d7a-4e55-9d7e-0c1f6d3a9b21"
# Computed by Node 20's crypto.scryptSync(key, salt, 64), which Flowise's generateSecretHash calls.
NODE_KEY = "kG3yXq_flowise-key-0123456789abcdefABCDEF-_x"
NODE_SECRET = ("c5abbeeae795cc2ba8680c3e4f83ad1a837443c25a8e08b20ced774811db2ae731a13bda15fa6fa28a260367ae582497b4"
               "e351918fff78075e34a25ffa8343fd.0011223344556677")


def examine_(rows: list[FlowiseKey], catalog: Catalog, key_format: KeyFormat) -> list[Importable | Refused]:
    return examine(rows, [secret_matches(r.api_key, r.api_secret) for r in rows], catalog, key_format)


def row(api_key: str = "", *, permissions: object = ("chatflows:view",), workspace: str | None = WS,
        name: str = "prod", id_: str = "", secret: str = "") -> FlowiseKey:
    api_key = api_key or flowise_key()
    text = None if permissions is None else json.dumps(list(permissions))
    return FlowiseKey(id_ or str(uuid.uuid4()), api_key, secret or flowise_secret(api_key), name, text, workspace)


def test_flowise_secrets_verify_as_node_computes_them() -> None:
    assert secret_matches(NODE_KEY, NODE_SECRET)
    assert not secret_matches(NODE_KEY + "x", NODE_SECRET)
    assert not secret_matches(NODE_KEY, "no-dot-here")
    assert not secret_matches(NODE_KEY, "zz.salt")


def test_a_flowise_key_is_foreign_and_keeps_its_id_name_workspace_and_permissions() -> None:
    source = row(permissions=["chatflows:view", "tools:update"])
    (key,) = examine_([source], CATALOG, FORMAT)
    assert isinstance(key, Importable)
    assert FORMAT.shape(source.api_key) is Shape.FOREIGN
    assert key.key_id == uuid.UUID(source.id)
    assert (key.spec.name, key.spec.workspace_id) == ("prod", WS)
    assert key.spec.permissions == ("chatflows:view", "tools:update", *ALWAYS_GRANTED)
    assert key.added == ALWAYS_GRANTED
    assert source.api_key not in repr(key)


def test_non_uuid_ids_map_to_a_stable_uuid() -> None:
    assert key_id("0123456789abcdef0123456789ABCDEF") == uuid.UUID("0123456789abcdef0123456789abcdef")
    assert key_id("legacy-id") == key_id("legacy-id") != key_id("legacy-id2")


def test_a_database_before_the_permissions_column_grants_what_flowise_migration_gave() -> None:
    (key,) = examine_([row(permissions=None)], CATALOG, FORMAT)
    assert isinstance(key, Importable) and "documentStores:upsert-config" in key.spec.permissions


def refusal(*rows: FlowiseKey) -> list[str]:
    found = examine_(list(rows), CATALOG, FORMAT)
    assert all(isinstance(k, Refused) for k in found), found
    return [k.reason for k in found]


def test_what_flowise_itself_refuses_is_refused_with_its_reason() -> None:
    assert "workspace" in refusal(row(workspace=None))[0]
    assert "apiSecret" in refusal(row(secret=flowise_secret("another key entirely")))[0]
    twin = flowise_key()
    assert all("2 rows" in r for r in refusal(row(twin), row(twin)))


def test_unknown_permissions_refuse_the_key_naming_them() -> None:
    (reason,) = refusal(row(permissions=["chatflows:view", "billing:charge"]))
    assert "'billing:charge'" in reason and "--catalog" in reason
    assert isinstance(examine_([row(permissions=["billing:charge"])], Catalog.build({"billing": ["charge"]}),
                              FORMAT)[0], Importable)
    assert "'*'" in refusal(row(permissions=["*"]))[0]


def test_keys_keygate_cannot_look_up_are_refused_without_quoting_them() -> None:
    for bad, why in (("short-key", "shorter"), ("has a space in it here", "printable"), ("x" * 300, "longer"),
                     ("fl_" + "A" * 40, "prefix")):
        (reason,) = refusal(row(bad))
        assert why in reason and bad not in reason


def test_a_name_holding_a_key_is_refused() -> None:
    secret = flowise_key()
    assert "keyName" in refusal(row(secret, name=f"key {secret}"))[0]


@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=16, max_size=80),
       st.text(max_size=40))
def test_scrub_removes_every_key_from_any_text(secret: str, around: str) -> None:
    assert secret not in scrub(f"{around}{secret}{around}", [secret])


def test_flow_restrictions_become_bindings_only_where_flowise_enforced_them_for_an_imported_key() -> None:
    good, bad = row(), row(permissions=["nope:nope"])
    keys = examine_([good, bad], CATALOG, FORMAT)
    flow_id = str(uuid.uuid4()).upper()
    flows = [FlowiseFlow(flow_id, good.id.upper(), WS), FlowiseFlow("f2", bad.id, WS),
             FlowiseFlow("f3", good.id, "another-ws"), FlowiseFlow("f4", str(uuid.uuid4()), WS)]
    bound, *left = flow_bindings(flows, keys, CATALOG)
    assert bound == FlowBinding(flow_id, good.id.upper(), WS, f"chatflows/{flow_id.lower()}", uuid.UUID(good.id))
    assert [type(x) for x in left] == [FlowLeft] * 3
    assert ["not imported" in left[0].reason, "another workspace" in left[1].reason,
            "no key" in left[2].reason] == [True] * 3
