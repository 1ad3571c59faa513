"""Bulk-load API keys straight into keygate's tables, as fast as COPY allows.

Keys are made exactly as keygate makes them (KeyFormat.generate, digest, display), in
chunks spread over one process per core; each process COPYs its own chunk, so key
generation (~18 µs a key in Python) and loading overlap. Only the plaintexts a
measurement will present are kept, in memory, and never written anywhere.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from keygate.domain.keys import KeyFormat, digest

WORKSPACE = "bench"
PERMISSIONS = ["predictions:create", "chatflows:view"]
CHUNK = 50_000


@dataclass(frozen=True, slots=True)
class LoadedKeys:
    count: int
    keep: list[str]  # plaintexts of a sample of the keys, spread over the whole table
    seconds: float


def load(url: str, count: int, keep: int) -> LoadedKeys:
    """Insert `count` active keys of workspace WORKSPACE; return `keep` of their plaintexts."""
    started = time.perf_counter()
    chunks = [min(CHUNK, count - start) for start in range(0, count, CHUNK)]
    keep_each = math.ceil(keep / len(chunks))
    context = multiprocessing.get_context("spawn")  # no fork: the parent may hold gRPC or asyncpg state
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1, mp_context=context) as pool:
        kept = [k for part in pool.map(_load_chunk, [url] * len(chunks), chunks, [keep_each] * len(chunks))
                for k in part]
    asyncio.run(_analyze(url))
    return LoadedKeys(count, kept[:keep], time.perf_counter() - started)


def _load_chunk(url: str, size: int, keep: int) -> list[str]:
    return asyncio.run(_copy_chunk(url, size, keep))


async def _copy_chunk(url: str, size: int, keep: int) -> list[str]:
    key_format = KeyFormat()
    now = datetime.now(UTC)
    plaintexts = [key_format.generate() for _ in range(size)]
    ids = [uuid.uuid4() for _ in range(size)]
    pairs = list(zip(ids, plaintexts, strict=True))
    # Sorted by each table's primary key, so that the B-tree inserts of one chunk land in order.
    keys_rows = sorted((key_id, WORKSPACE, f"bench-{key_id.hex[:12]}", PERMISSIONS, key_format.display(key), now, now)
                       for key_id, key in pairs)
    secret_rows = sorted((digest(key), key_id, now) for key_id, key in pairs)
    conn = await asyncpg.connect(url)
    try:
        # Skip the per-row foreign-key trigger on key_secrets: every key_id was just inserted above.
        # (The bench's embedded PostgreSQL runs us as a superuser, which this setting needs.)
        await conn.execute("SET session_replication_role = replica")
        await conn.copy_records_to_table(
            "api_keys",
            columns=["id", "workspace_id", "name", "permissions", "display", "create_time", "update_time"],
            records=keys_rows,
        )
        await conn.copy_records_to_table("key_secrets", columns=["digest", "key_id", "create_time"],
                                         records=secret_rows)
    finally:
        await conn.close()
    return plaintexts[:keep]


async def _analyze(url: str) -> None:
    """Fresh planner statistics, so the first measurement does not depend on autovacuum's timing."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("ANALYZE api_keys; ANALYZE key_secrets")
    finally:
        await conn.close()
