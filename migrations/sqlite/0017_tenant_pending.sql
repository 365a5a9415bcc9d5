-- Each tenant's scheduled and queued jobs, for `max_pending` and
-- GET /v1/tenants/{tenant}: a counter kept by the writer
-- (src/store/sqlite/counts.rs), once per tenant per group commit, instead
-- of the partial index `jobs_tenant_pending`, whose entry every job paid
-- for twice (inserted on admission or promotion, removed on its claim) and
-- whose count grew with the tenant's backlog. Only finished jobs are ever
-- deleted, so deletes never change it.
CREATE TABLE tenant_pending (
    tenant  TEXT PRIMARY KEY NOT NULL,
    n       INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

INSERT INTO tenant_pending (tenant, n)
SELECT tenant, count(*) FROM jobs WHERE state IN ('scheduled', 'queued') GROUP BY tenant;

DROP INDEX jobs_tenant_pending;
