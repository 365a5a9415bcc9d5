-- Concurrency keys: at most `concurrency_limit` running jobs of a tenant share
-- a `concurrency_key`, across every queue and every instance. Both columns
-- are set or neither. Claims of keyed jobs take a transaction-level advisory
-- lock per key (src/store/postgres/claim.rs), so two instances cannot both
-- see a free slot and take it.

ALTER TABLE jobs ADD COLUMN concurrency_key TEXT;
ALTER TABLE jobs ADD COLUMN concurrency_limit BIGINT;

-- "How many running jobs hold key K": a count over a few index entries.
CREATE INDEX jobs_running_concurrency_key ON jobs (tenant, concurrency_key)
    WHERE state = 'running' AND concurrency_key IS NOT NULL;

-- "Does this queue have keyed jobs waiting": keeps claims of queues without
-- keyed jobs on their single statement.
CREATE INDEX jobs_ready_concurrency_key ON jobs (queue)
    WHERE state = 'queued' AND concurrency_key IS NOT NULL;
