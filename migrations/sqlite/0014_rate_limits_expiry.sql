-- Rate limits and expiry.
--
-- A rate limit is a named budget of job starts (`rate` per `per_ms`, `burst`
-- at once), enforced when jobs are claimed by the generic cell rate
-- algorithm. Each key of a limit in use has one row holding its theoretical
-- arrival time (`tat_us`, microseconds since the epoch) and the end of a
-- hold a `Retry-After` put on it (`held_until_us`). A row whose both times
-- have passed means the same as no row; the prune deletes such rows.

CREATE TABLE rate_limits (
    name        TEXT PRIMARY KEY NOT NULL,
    rate        INTEGER NOT NULL,
    per_ms      INTEGER NOT NULL,
    burst       INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) STRICT;

-- `key` is '' for jobs that name the limit without a key.
CREATE TABLE rate_limit_keys (
    limit_name      TEXT NOT NULL,
    key             TEXT NOT NULL,
    tat_us          INTEGER NOT NULL,
    held_until_us   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (limit_name, key)
) STRICT, WITHOUT ROWID;

-- A job's limit (`rate_limit` names it, `rate_limit_key` scopes it) and the
-- instant it expires if not started by then.
ALTER TABLE jobs ADD COLUMN rate_limit TEXT;
ALTER TABLE jobs ADD COLUMN rate_limit_key TEXT;
ALTER TABLE jobs ADD COLUMN expires_at INTEGER;

-- A queue's defaults for both.
ALTER TABLE queues ADD COLUMN rate_limit TEXT;
ALTER TABLE queues ADD COLUMN rate_limit_key TEXT;
ALTER TABLE queues ADD COLUMN expires_after_ms INTEGER;

-- "Does this queue have limited jobs waiting": like keyed jobs, they send a
-- claim down the walk; queues without them keep their single UPDATE.
CREATE INDEX jobs_ready_rate_limit ON jobs (queue)
    WHERE state = 'queued' AND rate_limit IS NOT NULL;

-- The next job to expire: one seek, however many jobs wait. Only jobs that
-- can still expire (never started, not finished) are in it.
CREATE INDEX jobs_expiring ON jobs (expires_at)
    WHERE expires_at IS NOT NULL AND started_at IS NULL AND finished_at IS NULL;
