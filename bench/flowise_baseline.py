"""Flowise's per-request API-key verification, reimplemented as the baseline keygate replaces.

Flowise (packages/server/src/utils/apiKey.ts and validateKey.ts) keeps every key in plaintext
next to an scrypt hash of it. On each request it reads all API keys, finds the one whose
plaintext equals the presented key (`keys.find(k => k.apiKey === suppliedKey)`), then
verifies the presented key against the stored hash with `scryptSync` (Node's defaults:
N=16384, r=8, p=1; 64-byte output; the salt is 8 random bytes written as hex, and the hash
is stored as `<hex hash>.<salt>`). It caches nothing. `verify` does the same, step by step,
on asyncpg, and runs scrypt synchronously on the event loop, as scryptSync blocks Node's.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.synchronize import Barrier

import asyncpg

from . import procs
from .stats import median, percentile

SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_DKLEN = 16384, 8, 1, 64
SCRYPT_MAXMEM = 64 * 1024 * 1024  # N * r * 128 = 16 MiB, above OpenSSL's default cap on some builds
PRESENTED = 16  # keys the load presents (cycled); each needs a real scrypt hash

SCHEMA = """CREATE TABLE flowise_keys (
    id           text PRIMARY KEY,
    key_name     text NOT NULL,
    api_key      text NOT NULL,
    api_secret   text NOT NULL,
    updated_date timestamptz NOT NULL DEFAULT now()
)"""


def _scrypt(api_key: str, salt: str) -> bytes:
    return hashlib.scrypt(api_key.encode(), salt=salt.encode(), n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                          dklen=SCRYPT_DKLEN, maxmem=SCRYPT_MAXMEM)


def secret_hash(api_key: str) -> str:
    """Flowise's generateSecretHash."""
    salt = secrets.token_bytes(8).hex()
    return f"{_scrypt(api_key, salt).hex()}.{salt}"


def compare_keys(stored: str, supplied: str) -> bool:
    """Flowise's compareKeys: scrypt the supplied key with the stored salt, compare in constant time."""
    hashed, salt = stored.split(".")
    return hmac.compare_digest(bytes.fromhex(hashed), _scrypt(supplied, salt))


async def verify(conn: asyncpg.Connection, supplied: str) -> bool:
    """One request's verification: read every key, find the plaintext, scrypt."""
    rows = await conn.fetch("SELECT id, key_name, api_key, api_secret, updated_date FROM flowise_keys")
    stored = next((row["api_secret"] for row in rows if row["api_key"] == supplied), None)
    return stored is not None and compare_keys(stored, supplied)


def setup(url: str, rows: int) -> list[str]:
    """Create the table with `rows` keys; return the PRESENTED plaintexts the load will use."""
    return asyncio.run(_setup(url, rows))


async def _setup(url: str, rows: int) -> list[str]:
    # Only the keys the load presents get a real scrypt hash (~30-100 ms each: 10k of them would take
    # minutes). The other rows get a random value of the same shape that no key matches; for them
    # only the scan matters, and the scan reads them whatever they hold.
    plaintexts = [secrets.token_urlsafe(32) for _ in range(rows)]  # Flowise: randomBytes(32) as base64url
    presented = set(range(0, rows, max(1, rows // PRESENTED)))
    now = datetime.now(UTC)
    records = [
        (str(uuid.uuid4()), f"key-{i}", key,
         secret_hash(key) if i in presented else f"{secrets.token_hex(SCRYPT_DKLEN)}.{secrets.token_hex(8)}", now)
        for i, key in enumerate(plaintexts)
    ]
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(SCHEMA)
        await conn.copy_records_to_table("flowise_keys", records=records,
                                         columns=["id", "key_name", "api_key", "api_secret", "updated_date"])
        await conn.execute("ANALYZE flowise_keys")
    finally:
        await conn.close()
    return [plaintexts[i] for i in sorted(presented)]


@dataclass(frozen=True, slots=True)
class Baseline:
    rows: int
    p50_ms: float  # one request at a time: the cost of one verification
    p99_ms: float
    rps: float  # median over rounds, `workers` processes verifying flat out
    workers: int


def measure(url: str, keys: list[str], rows: int, *, duration: float, rounds: int, workers: int) -> Baseline:
    """Per-request latency from one worker alone, then throughput of `workers` workers (median of rounds)."""
    alone, _ = _workers(url, keys, duration, 1)
    if not alone:
        raise RuntimeError("the Flowise baseline completed no request")
    throughput = []
    for _ in range(rounds):
        done, elapsed = _workers(url, keys, duration, workers)
        throughput.append(len(done) / elapsed)
    return Baseline(rows, percentile(alone, 50) * 1000, percentile(alone, 99) * 1000, median(throughput), workers)


def _workers(url: str, keys: list[str], duration: float, count: int) -> tuple[list[float], float]:
    """Run `count` processes for `duration` seconds; every request's time, and the time the run took."""
    jobs = [(url, keys[i::count] or keys, duration) for i in range(count)]
    parts, elapsed = procs.fan_out(_worker, jobs, timeout=duration + 60)
    return [t for part in parts for t in part], elapsed


def _worker(url: str, keys: list[str], duration: float, barrier: Barrier) -> list[float]:
    return asyncio.run(_verify_for(url, keys, duration, barrier))


async def _verify_for(url: str, keys: list[str], duration: float, barrier: Barrier) -> list[float]:
    conn = await asyncpg.connect(url)
    try:
        barrier.wait(procs.READY_TIMEOUT)
        times: list[float] = []
        end = time.perf_counter() + duration
        while time.perf_counter() < end:
            started = time.perf_counter()
            if not await verify(conn, keys[len(times) % len(keys)]):
                raise RuntimeError("the Flowise baseline rejected a valid key")
            times.append(time.perf_counter() - started)
        return times
    finally:
        await conn.close()
