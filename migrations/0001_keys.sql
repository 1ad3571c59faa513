-- API keys, their secrets (digests only), resource bindings and the audit trail.

CREATE TABLE api_keys (
    id              uuid PRIMARY KEY,
    workspace_id    text NOT NULL,                 -- '' only for root keys
    name            text NOT NULL,
    description     text NOT NULL DEFAULT '',
    permissions     text[] NOT NULL,
    resources       text[] NOT NULL DEFAULT '{}',
    display         text NOT NULL,                 -- masked form of the current secret
    metadata        jsonb NOT NULL DEFAULT '{}',
    disabled        boolean NOT NULL DEFAULT false,
    expire_time     timestamptz,
    create_time     timestamptz NOT NULL DEFAULT now(),
    update_time     timestamptz NOT NULL DEFAULT now(),
    last_used_time  timestamptz,
    usage_count     bigint NOT NULL DEFAULT 0,
    created_by      uuid,
    version         bigint NOT NULL DEFAULT 1
);
CREATE INDEX api_keys_workspace_order ON api_keys (workspace_id, create_time, id);
CREATE INDEX api_keys_order ON api_keys (create_time, id);

-- One row per secret: the current one, and those replaced by rotation (expire_time set; once it
-- passes they answer KEY_EXPIRED rather than KEY_NOT_FOUND, so an operator can tell why).
CREATE TABLE key_secrets (
    digest          bytea PRIMARY KEY CHECK (length(digest) = 32),   -- SHA-256 of the whole key
    key_id          uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    expire_time     timestamptz,                   -- set when a rotation replaced this secret
    create_time     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX key_secrets_key ON key_secrets (key_id);

CREATE TABLE resource_bindings (
    workspace_id    text NOT NULL,
    resource        text NOT NULL,
    key_id          uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    actions         text[] NOT NULL,
    create_time     timestamptz NOT NULL DEFAULT now(),
    created_by      uuid,
    PRIMARY KEY (workspace_id, resource, key_id)
);
CREATE INDEX resource_bindings_key ON resource_bindings (key_id);

CREATE TABLE audit_events (
    id              bigserial PRIMARY KEY,
    event_time      timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor_key_id    uuid,
    workspace_id    text NOT NULL,
    action          text NOT NULL,
    outcome         text NOT NULL CHECK (outcome IN ('OK', 'DENIED')),
    target_key_id   uuid,
    resource        text NOT NULL DEFAULT '',
    changed_fields  text[] NOT NULL DEFAULT '{}',
    reason          text NOT NULL DEFAULT '',
    request_id      text NOT NULL DEFAULT ''
);
CREATE INDEX audit_events_target ON audit_events (target_key_id, id);
CREATE INDEX audit_events_actor ON audit_events (actor_key_id, id);
CREATE INDEX audit_events_time ON audit_events (event_time);
