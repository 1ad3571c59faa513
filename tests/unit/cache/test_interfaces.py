"""Both stores implement the interfaces (mypy checks the typed assignments below), and a read cannot write."""

from __future__ import annotations

from keygate.store.interface import (
    AdminStore,
    ChangeFeed,
    KeyLookups,
    KeySource,
    Listening,
    Reads,
    UsageStore,
    UsageWrites,
    Writes,
)
from keygate.store.postgres import Listening as PostgresListening
from keygate.store.postgres import Reader, Store, Tx

from .fakes import MemoryListening, MemoryReader, MemoryStore, MemoryTx


def conforms(store: Store, reader: Reader, tx: Tx, listening: PostgresListening, memory: MemoryStore,
             memory_reader: MemoryReader, memory_tx: MemoryTx, memory_listening: MemoryListening) -> None:
    """Never called: mypy checks these assignments."""
    key_sources: list[KeySource] = [store, memory]
    feeds: list[ChangeFeed] = [store, memory]
    admin: list[AdminStore] = [store, memory]
    usage: list[UsageStore] = [store, memory]
    reads: list[Reads] = [reader, tx, memory_reader, memory_tx]
    lookups: list[KeyLookups] = [reader, memory_reader]
    writes: list[Writes] = [tx, memory_tx]
    usage_writes: list[UsageWrites] = [tx, memory_tx]
    listenings: list[Listening] = [listening, memory_listening]
    del key_sources, feeds, admin, usage, reads, lookups, writes, usage_writes, listenings


def test_what_a_read_hands_out_has_no_write() -> None:
    writes = {name for name in dir(Writes) if not name.startswith("_")} - set(dir(Reads))
    assert writes and not writes & set(dir(Reader)) and not writes & set(dir(MemoryReader))
    assert writes <= set(dir(Tx)) and writes <= set(dir(MemoryTx))
