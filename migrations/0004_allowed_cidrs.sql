-- A key's IP allow-list: the client networks (IPv4 or IPv6) it may be used from; empty: any address.
-- cidr, not text: PostgreSQL refuses a malformed network or one with host bits set, so a row can never
-- hold a list the server would read differently.

ALTER TABLE api_keys ADD COLUMN allowed_cidrs cidr[] NOT NULL DEFAULT '{}';
