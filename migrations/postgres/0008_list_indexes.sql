-- Indexes for the other filters of `GET /v1/jobs` (store/lists.rs), as in
-- migrations/sqlite/0008_list_indexes.sql: each ends in `id`, so that a
-- list walks it newest first and stops at its page. Before, a `queue`,
-- `status`, `kind` or `key` filter walked every job newer than its page's
-- last match: a rare value read the whole table.
--
-- Every update of a job is a new row version with entries in every index
-- whose condition it meets (none is HOT: `state` is in partial-index
-- conditions). So none of these holds queued or running jobs, the states
-- of every claim and most outcomes: jobs enter them when they end or wait
-- (`scheduled`), and `jobs_key` holds keyed jobs only. Lists of active
-- jobs read their ids from `jobs_ready` and `jobs_running` instead
-- (bounded by the queues' capacity and concurrency). Measured on 100 000
-- jobs inserted queued, then claimed, then ended, 512 per statement
-- (medians of 5): full (kind, id) and (queue, id) indexes made the whole
-- 68 % dearer (the claims twice as dear); these four make the end 51 %
-- dearer (5.5 µs a job), the insert 7 % and the claim 2 %: a fifth more
-- in all.
--
-- Built while the migration holds the table (sqlx runs each migration in a
-- transaction, which rules out CONCURRENTLY): 0.7 s over 110 000 ended
-- jobs on the development machine.

CREATE INDEX jobs_key ON jobs (key, id) WHERE key IS NOT NULL;

-- The condition is the one the lists state (AT_REST in store/lists.rs).
CREATE INDEX jobs_at_rest_state ON jobs (state, id)
    WHERE state <> 'queued' AND state <> 'running';
CREATE INDEX jobs_at_rest_kind ON jobs (kind, id)
    WHERE state <> 'queued' AND state <> 'running';
CREATE INDEX jobs_at_rest_queue ON jobs (queue, id)
    WHERE state <> 'queued' AND state <> 'running';
