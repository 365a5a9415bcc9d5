-- Jobs, queues, per-queue state counts and idempotency keys.
-- Timestamps are integer milliseconds since the Unix epoch (UTC).

CREATE TABLE queues (
    name                TEXT PRIMARY KEY NOT NULL,
    concurrency         INTEGER NOT NULL,
    capacity            INTEGER NOT NULL,
    paused              INTEGER NOT NULL DEFAULT 0,
    max_attempts        INTEGER NOT NULL,
    timeout_ms          INTEGER NOT NULL,
    backoff_base_ms     INTEGER NOT NULL,
    backoff_max_ms      INTEGER NOT NULL,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
) STRICT;

CREATE TABLE jobs (
    id                  TEXT PRIMARY KEY NOT NULL,
    tenant              TEXT NOT NULL,
    queue               TEXT NOT NULL REFERENCES queues(name),
    kind                TEXT NOT NULL,
    payload             TEXT NOT NULL,
    state               TEXT NOT NULL CHECK (state = 'scheduled' OR state = 'queued' OR state = 'running'
                        OR state = 'succeeded' OR state = 'failed' OR state = 'cancelled'),
    priority            INTEGER NOT NULL,
    attempt             INTEGER NOT NULL DEFAULT 0,
    max_attempts        INTEGER NOT NULL,
    timeout_ms          INTEGER NOT NULL,
    backoff_base_ms     INTEGER NOT NULL,
    backoff_max_ms      INTEGER NOT NULL,
    key                 TEXT,
    metadata            TEXT NOT NULL DEFAULT '{}',
    progress            TEXT,
    result              TEXT,
    error               TEXT,
    errors              TEXT NOT NULL DEFAULT '[]',
    cancel_requested    INTEGER NOT NULL DEFAULT 0,
    created_at          INTEGER NOT NULL,
    run_at              INTEGER NOT NULL,
    started_at          INTEGER,
    finished_at         INTEGER,
    lease_owner         TEXT,
    lease_expires_at    INTEGER
) STRICT;

-- Claim order: best priority first, then the order jobs became ready.
CREATE INDEX jobs_ready ON jobs (queue, priority DESC, run_at, id) WHERE state = 'queued';
CREATE INDEX jobs_due ON jobs (run_at) WHERE state = 'scheduled';
CREATE INDEX jobs_leases ON jobs (lease_owner, lease_expires_at) WHERE state = 'running';
-- finished_at is set exactly when a job is terminal. Partial-index conditions
-- avoid IN lists: SQLite evaluates those with a temporary b-tree on every
-- insert and update.
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
-- No (tenant, id) index: lists walk the primary key newest first and filter,
-- as they do for every other filter; an index per insert is the dearer side.
-- Revisit when many tenants share one database.
-- A key is held by at most one active (not finished) job of a tenant. A
-- running holder that was asked to cancel (on_conflict: replace) releases its
-- key at once.
CREATE UNIQUE INDEX jobs_active_key ON jobs (tenant, key)
    WHERE key IS NOT NULL AND finished_at IS NULL AND cancel_requested = 0;

-- Jobs per queue and state, kept by triggers (and the writer, for inserts) so
-- that admission control and GET /v1/queues never count rows.
CREATE TABLE queue_counts (
    queue   TEXT NOT NULL,
    state   TEXT NOT NULL,
    n       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, state)
) STRICT, WITHOUT ROWID;

CREATE TRIGGER queues_counts_init AFTER INSERT ON queues BEGIN
    INSERT OR IGNORE INTO queue_counts (queue, state, n) VALUES
        (NEW.name, 'scheduled', 0), (NEW.name, 'queued', 0), (NEW.name, 'running', 0),
        (NEW.name, 'succeeded', 0), (NEW.name, 'failed', 0), (NEW.name, 'cancelled', 0);
END;

-- Inserts are counted by the writer, once per queue and group commit
-- (src/store/sqlite/counts.rs): a trigger here would cost each insert a
-- second write and a statement journal.

CREATE TRIGGER jobs_count_update AFTER UPDATE OF state ON jobs WHEN OLD.state <> NEW.state BEGIN
    UPDATE queue_counts SET n = n - 1 WHERE queue = OLD.queue AND state = OLD.state;
    UPDATE queue_counts SET n = n + 1 WHERE queue = NEW.queue AND state = NEW.state;
END;

CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs BEGIN
    UPDATE queue_counts SET n = n - 1 WHERE queue = OLD.queue AND state = OLD.state;
END;

CREATE TABLE idempotency_keys (
    tenant          TEXT NOT NULL,
    key             TEXT NOT NULL,
    request_hash    TEXT NOT NULL,
    status          INTEGER NOT NULL,
    body            TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (tenant, key)
) STRICT;
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
