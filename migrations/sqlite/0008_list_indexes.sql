-- Indexes for the other filters of `GET /v1/jobs` (store/lists.rs), each
-- ending in `id` so that a list walks it newest first and stops at its
-- page. Before, a `queue`, `status`, `kind` or `key` filter walked every job
-- newer than its page's last match: a rare value read the whole table.
--
-- None of them costs an admission of a job that starts `queued`, nor a
-- claim: jobs enter `jobs_at_rest_*` when they end or wait (`scheduled`),
-- and `jobs_key` holds keyed jobs only. Every job passes through `queued`
-- and `running`, so an index of those states would be written at every
-- claim and outcome; lists of active jobs read their ids from `jobs_ready`
-- and `jobs_leases` instead (bounded by the queues' capacity and
-- concurrency). Measured on 200 000 jobs inserted queued, then claimed,
-- then ended, one statement each (medians of 5): full (kind, id) and
-- (queue, id) indexes made the insert 34 % dearer, a full (state, id)
-- index the claim and the end 35 % each; these four make the end 38 %
-- dearer (3.6 µs a job) and the insert and the claim about 10 % (their
-- conditions are evaluated). Built in 0.3 s over 110 000 jobs.

CREATE INDEX jobs_key ON jobs (key, id) WHERE key IS NOT NULL;

-- The condition is the one the lists state (AT_REST in store/lists.rs):
-- SQLite uses a partial index only for a query that states its condition.
CREATE INDEX jobs_at_rest_state ON jobs (state, id)
    WHERE state <> 'queued' AND state <> 'running';
CREATE INDEX jobs_at_rest_kind ON jobs (kind, id)
    WHERE state <> 'queued' AND state <> 'running';
CREATE INDEX jobs_at_rest_queue ON jobs (queue, id)
    WHERE state <> 'queued' AND state <> 'running';
