"""Every stored resource name in its canonical spelling (keygate.domain.resources).

Before this, scope entries and bindings were stored as typed: `Chatflows/9B2C…` and
`chatflows/9b2c…` were two resources, so a binding could be stepped around by spelling the
chatflow differently. Scopes are rewritten in place (repeats dropped); a binding whose
canonical name is already bound to the same key is merged into it (the union of actions).
Names under a collection the catalog does not know are left as they are: no request can
name them any more, so they match nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
import structlog

from keygate.domain.errors import InvalidArgument
from keygate.domain.permissions import Catalog
from keygate.domain.resources import canonical_pattern, canonical_resource

log = structlog.get_logger(__name__)

_MOVE_BINDING = """
    WITH old AS (DELETE FROM resource_bindings WHERE workspace_id = $1 AND resource = $2 AND key_id = $3
                 RETURNING *)
    INSERT INTO resource_bindings (workspace_id, resource, key_id, actions, create_time, created_by)
    SELECT workspace_id, $4, key_id, actions, create_time, created_by FROM old
    ON CONFLICT (workspace_id, resource, key_id) DO UPDATE
    SET actions = ARRAY(SELECT DISTINCT unnest(resource_bindings.actions || EXCLUDED.actions) ORDER BY 1)"""


def _canonical(spell: Callable[[str], str], name: str) -> str:
    try:
        return spell(name)
    except InvalidArgument:
        return name


async def apply(conn: asyncpg.Connection, catalog: Catalog) -> None:
    def pattern(name: str) -> str:
        return _canonical(lambda p: canonical_pattern(catalog, p, "resources"), name)

    def resource(name: str) -> str:
        return _canonical(lambda r: canonical_resource(catalog, r), name)

    keys = await conn.fetch("SELECT id, resources FROM api_keys WHERE resources <> '{}'")
    for row in keys:
        resources = list(dict.fromkeys(pattern(p) for p in row["resources"]))
        if resources != list(row["resources"]):
            await conn.execute("UPDATE api_keys SET resources = $2 WHERE id = $1", row["id"], resources)
    moved = 0
    for row in await conn.fetch("SELECT workspace_id, resource, key_id FROM resource_bindings"):
        canonical = resource(row["resource"])
        if canonical != row["resource"]:
            moved += 1
            await conn.execute(_MOVE_BINDING, row["workspace_id"], row["resource"], row["key_id"], canonical)
    log.info("resources_canonicalized", scoped_keys=len(keys), bindings_moved=moved)
