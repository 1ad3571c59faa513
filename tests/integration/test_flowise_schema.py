"""The Flowise databases the import tests build (tests/flowise_db.py) against Flowise 3.1.4 itself: its
own migrations, run by its own TypeORM from an installed Flowise, give the same `apikey` and `chat_flow`,
and the import reads a database so made.

Needs an installed Flowise (`npm install --ignore-scripts flowise@3.1.4`): FLOWISE_DIST names its dist
directory (default: /work/cache/flowise-3.1.4/..., where this workplace keeps one) and FLOWISE_NODE the
node binary (default: node on PATH; Node 20 runs the migrations). Skipped, saying why, without them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from keygate.domain.keys import KeyFormat
from keygate.domain.permissions import Catalog
from keygate.flowise_import import import_flowise
from keygate.store.flowise import open_source
from keygate.store.postgres import DatabaseSettings, Store
from tests.flowise_db import POSTGRES_DDL, Flow, Key, postgres_flowise

from ..conftest import Postgres

DIST = Path(os.environ.get("FLOWISE_DIST", "/work/cache/flowise-3.1.4/node_modules/flowise/dist"))
NODE = os.environ.get("FLOWISE_NODE") or shutil.which("node")
MIGRATE = Path(__file__).parents[1] / "flowise_migrate.js"
pytestmark = pytest.mark.skipif(not (DIST / "database" / "migrations" / "postgres").is_dir() or not NODE,
                                reason="no installed Flowise (FLOWISE_DIST) or node (FLOWISE_NODE)")
COLUMNS = """SELECT table_name, column_name, data_type, is_nullable, column_default
             FROM information_schema.columns WHERE table_name IN ('apikey', 'chat_flow')
             ORDER BY table_name, column_name"""


@pytest.fixture(scope="module")
def migrated_by_flowise(postgres: Postgres) -> str:
    """The name of a database Flowise's own migrations made (about 30 s): a template for the tests."""
    url = asyncio.run(postgres.fresh_database(template="template0"))

    async def prepare() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(POSTGRES_DDL[0])  # uuid_generate_v4(), which pgserver lacks
        finally:
            await conn.close()

    asyncio.run(prepare())
    done = subprocess.run([str(NODE), str(MIGRATE)], env={**os.environ, "DATABASE_URL": url, "FLOWISE_DIST": str(DIST)},
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0 and "applied" in done.stdout, done.stderr
    return urlsplit(url).path.lstrip("/")


async def columns(url: str) -> list[tuple[object, ...]]:
    conn = await asyncpg.connect(url)
    try:
        return [tuple(r) for r in await conn.fetch(COLUMNS)]
    finally:
        await conn.close()


async def test_the_test_ddl_makes_the_tables_flowise_makes(postgres: Postgres, migrated_by_flowise: str) -> None:
    real = await postgres.fresh_database(template=migrated_by_flowise)
    ours = await postgres.fresh_database(template="template0")
    await postgres_flowise(ours, [], [])
    assert await columns(ours) == await columns(real)


async def test_a_database_migrated_by_flowise_imports(postgres: Postgres, migrated_by_flowise: str,
                                                     database_url: str) -> None:
    flowise = await postgres.fresh_database(template=migrated_by_flowise)
    workspace = str(uuid.uuid4())
    key = Key("from a real schema", workspace, ["chatflows:view"])
    await postgres_flowise(flowise, [key], [Flow(workspace, key.id)], ddl=False)
    store = await Store.connect(database_url)
    try:
        report = await import_flowise(store, open_source(flowise, DatabaseSettings()), Catalog.build(), KeyFormat())
    finally:
        await store.close()
    assert [k.spec.name for k in report.imported] == ["from a real schema"] and len(report.bound) == 1
    assert report.complete
