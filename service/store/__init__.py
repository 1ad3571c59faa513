"""Storage: PostgreSQL through asyncpg. The only package that writes SQL."""
