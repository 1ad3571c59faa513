-- Rate limits and credits (service/domain/limits.py explains the arithmetic; these functions are
-- its SQL twins, checked against it by tests/integration/test_limits_store.py).

ALTER TABLE api_keys ADD COLUMN rate_limits jsonb NOT NULL DEFAULT '[]';  -- [{"name", "limit", "window_ms"}]

-- One row per (key, rate limit): the current fixed window (ms since the epoch) and how much of its
-- budget servers have leased (leased counts as consumed). `granted` is the last grant: RETURNING
-- shows only new values. A change of the key's rate limits deletes its rows (fresh windows).
CREATE TABLE rate_windows (
    key_id          uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    name            text NOT NULL,
    window_start    bigint NOT NULL,
    used            bigint NOT NULL CHECK (used >= 0),
    granted         bigint NOT NULL,
    PRIMARY KEY (key_id, name)
);

-- A key's credits. `remaining` excludes credits leased to servers; `epoch` grows with every refill and
-- every set through the API, and a lease's unused part is given back only within its own epoch.
CREATE TABLE key_credits (
    key_id              uuid PRIMARY KEY REFERENCES api_keys (id) ON DELETE CASCADE,
    remaining           bigint NOT NULL CHECK (remaining >= 0),
    refill_amount       bigint NOT NULL DEFAULT 0,
    refill_interval_ms  bigint NOT NULL DEFAULT 0,
    refill_time         timestamptz,
    epoch               bigint NOT NULL DEFAULT 1,
    granted             bigint NOT NULL DEFAULT 0
);

-- domain.limits.lease_grant
CREATE FUNCTION keygate_lease_grant(lim bigint, used bigint, want bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT LEAST(GREATEST(want, LEAST((lim + 15) / 16, (GREATEST(0, lim - used) + 3) / 4)), GREATEST(0, lim - used))
$$;

-- domain.limits.credit_grant
CREATE FUNCTION keygate_credit_grant(balance bigint, want bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT LEAST(GREATEST(want, (balance + 63) / 64), GREATEST(0, balance))
$$;

-- domain.limits.refilled: is a refill due at `at`, and when is the next one after it
CREATE FUNCTION keygate_refill_due(interval_ms bigint, refill_time timestamptz, at timestamptz) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT interval_ms > 0 AND refill_time IS NOT NULL AND refill_time <= at
$$;

CREATE FUNCTION keygate_next_refill(interval_ms bigint, refill_time timestamptz, at timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN keygate_refill_due(interval_ms, refill_time, at)
        THEN refill_time + ((floor(extract(epoch FROM at - refill_time) * 1000 / interval_ms)::bigint + 1)
                            * interval_ms) * interval '1 millisecond'
        ELSE refill_time END
$$;
