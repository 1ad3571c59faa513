"""Pure decisions: no I/O, no grpc, no asyncpg. Everything here is unit-testable with plain values."""
