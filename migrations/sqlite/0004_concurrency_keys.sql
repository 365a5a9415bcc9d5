-- Concurrency keys: at most `concurrency_limit` running jobs of a tenant share
-- a `concurrency_key`, across every queue. Both columns are set or neither.

ALTER TABLE jobs ADD COLUMN concurrency_key TEXT;
ALTER TABLE jobs ADD COLUMN concurrency_limit INTEGER;

-- "How many running jobs hold key K": a count over a few index entries. Only
-- keyed jobs are in it, so jobs without a key cost nothing more.
CREATE INDEX jobs_running_concurrency_key ON jobs (tenant, concurrency_key)
    WHERE state = 'running' AND concurrency_key IS NOT NULL;

-- "Does this queue have keyed jobs waiting": the claim's one extra probe,
-- which keeps claims of queues without keyed jobs on their single UPDATE.
CREATE INDEX jobs_ready_concurrency_key ON jobs (queue)
    WHERE state = 'queued' AND concurrency_key IS NOT NULL;
