-- Secrets the server keeps for itself, created once and shared by every replica (they all read them
-- at start-up). 'page_token' signs page tokens (HMAC-SHA256), so a caller cannot forge a cursor.
-- 32 bytes from two gen_random_uuid() calls: core PostgreSQL's only strong random source without
-- pgcrypto (pg_strong_random), 244 random bits in all.

CREATE TABLE server_secrets (
    name    text PRIMARY KEY,
    value   bytea NOT NULL CHECK (length(value) >= 16)
);

INSERT INTO server_secrets (name, value)
VALUES ('page_token', decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'));
