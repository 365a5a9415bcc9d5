-- Scheduled and queued jobs per tenant, for `max_pending` and
-- GET /v1/tenants/{tenant}: counters kept like queue_counts (each
-- transaction adds its changes to its connection's shard, written last; see
-- src/store/postgres/counts.rs), instead of the partial index
-- `jobs_tenant_pending`. That index served only those counts, yet a claim
-- planned while the table's statistics were stale (a burst of admissions
-- into a table analyzed when it was small) read the tenant's every waiting
-- job through it and sorted them: 30 to 350 ms per claim of 64 jobs, and
-- shared mode drained 4 times slower than with the index gone (auto_explain
-- and `spool bench --drain --postgres`, docs/benchmarks.md). Shards may go
-- negative; only sums mean anything.
CREATE TABLE tenant_counts (
    tenant  TEXT NOT NULL,
    shard   BIGINT NOT NULL,
    n       BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, shard)
);

INSERT INTO tenant_counts (tenant, shard, n)
SELECT tenant, 0, count(*) FROM jobs WHERE state IN ('scheduled', 'queued') GROUP BY tenant;

DROP INDEX jobs_tenant_pending;
