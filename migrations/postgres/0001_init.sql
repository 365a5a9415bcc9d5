-- Jobs, queues, per-queue pending counts and idempotency keys: the tables of
-- migrations/sqlite/0001_init.sql with the same columns and meanings.
--
-- Timestamps are BIGINT milliseconds since the Unix epoch (UTC) and every
-- integer is BIGINT, as on SQLite: one row mapping (src/store/rows.rs) reads
-- both backends, and sqlx decodes an i64 only from INT8. JSON values (payload,
-- metadata, result, error, errors, progress) are TEXT, kept byte for byte as
-- written; metadata filters cast to jsonb when they read.

CREATE TABLE queues (
    name                TEXT PRIMARY KEY,
    concurrency         BIGINT NOT NULL,
    capacity            BIGINT NOT NULL,
    paused              BOOLEAN NOT NULL DEFAULT false,
    max_attempts        BIGINT NOT NULL,
    timeout_ms          BIGINT NOT NULL,
    backoff_base_ms     BIGINT NOT NULL,
    backoff_max_ms      BIGINT NOT NULL,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL
);

-- `queue` has no foreign key: admission checks the queue while it holds the
-- queue's row lock, queues are never deleted, and the referential check would
-- be a per-row trigger on the hottest insert.
-- Ids compare bytewise (COLLATE "C"): UUIDv7 strings sort by time that way,
-- as on SQLite, whatever the database's collation.
CREATE TABLE jobs (
    id                  TEXT COLLATE "C" PRIMARY KEY,
    tenant              TEXT NOT NULL,
    queue               TEXT NOT NULL,
    kind                TEXT NOT NULL,
    payload             TEXT NOT NULL,
    state               TEXT NOT NULL CHECK (state IN ('scheduled', 'queued', 'running',
                        'succeeded', 'failed', 'cancelled')),
    priority            BIGINT NOT NULL,
    attempt             BIGINT NOT NULL DEFAULT 0,
    max_attempts        BIGINT NOT NULL,
    timeout_ms          BIGINT NOT NULL,
    backoff_base_ms     BIGINT NOT NULL,
    backoff_max_ms      BIGINT NOT NULL,
    key                 TEXT,
    metadata            TEXT NOT NULL DEFAULT '{}',
    progress            TEXT,
    result              TEXT,
    error               TEXT,
    errors              TEXT NOT NULL DEFAULT '[]',
    cancel_requested    BOOLEAN NOT NULL DEFAULT false,
    created_at          BIGINT NOT NULL,
    run_at              BIGINT NOT NULL,
    started_at          BIGINT,
    finished_at         BIGINT,
    lease_owner         TEXT,
    lease_expires_at    BIGINT
);

-- Claim order: best priority first, then the order jobs became ready.
CREATE INDEX jobs_ready ON jobs (queue, priority DESC, run_at, id) WHERE state = 'queued';
CREATE INDEX jobs_due ON jobs (run_at) WHERE state = 'scheduled';
CREATE INDEX jobs_leases ON jobs (lease_owner, lease_expires_at) WHERE state = 'running';
-- `running` of GET /v1/queues is counted here rather than in a counter row:
-- a shared counter of running jobs would be updated by every claim and every
-- completion of every instance, serialising them all on one row lock. The
-- running set is small (bounded by the queues' concurrency).
CREATE INDEX jobs_running ON jobs (queue) WHERE state = 'running';
-- finished_at is set exactly when a job is terminal.
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
-- A key is held by at most one active (not finished) job of a tenant. A
-- running holder that was asked to cancel (on_conflict: replace) releases its
-- key at once. Concurrent submitters of one key meet here: the later insert
-- waits for the earlier transaction and fails with 23505 if it committed;
-- the store then runs the submission again, which sees the holder.
CREATE UNIQUE INDEX jobs_active_key ON jobs (tenant, key)
    WHERE key IS NOT NULL AND finished_at IS NULL AND NOT cancel_requested;

-- Scheduled and queued jobs per queue: admission control reads them instead
-- of counting rows. Each transaction adds its changes to the shard of its
-- connection (src/store/postgres/counts.rs), so instances that claim from the
-- same queue at once do not wait for each other's counter row; a count is the
-- sum over the shards. Shards may go negative (a job counted in on one shard
-- leaves from another); only sums mean anything.
-- Terminal states are not counted (nothing reads them) and `running` is
-- counted from jobs_running, see above.
CREATE TABLE queue_counts (
    queue   TEXT NOT NULL,
    state   TEXT NOT NULL CHECK (state IN ('scheduled', 'queued')),
    shard   BIGINT NOT NULL,
    n       BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, state, shard)
);

CREATE TABLE idempotency_keys (
    tenant          TEXT NOT NULL,
    key             TEXT NOT NULL,
    request_hash    TEXT NOT NULL,
    status          BIGINT NOT NULL,
    body            TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (tenant, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
