-- Quotas per tenant (PUT /v1/tenants/{tenant}, `[tenants.NAME]` in the
-- config file). A NULL limit is no limit; a tenant without a row has none.
-- `submit_rate` (jobs per second) and `submit_burst` are enforced in memory
-- per API key; `max_pending` by admission, in the write transaction.
CREATE TABLE tenants (
    name            TEXT PRIMARY KEY NOT NULL,
    max_pending     INTEGER,
    submit_rate     REAL,
    submit_burst    INTEGER,
    updated_at      INTEGER NOT NULL
) STRICT;

-- A tenant's scheduled and queued jobs, for `max_pending`: admission of a
-- tenant with a limit counts its entries (store/sqlite/admit.rs), and
-- GET /v1/tenants/{tenant} shows the count. Admission of a tenant without a
-- limit reads nothing here; what every job pays is one entry while it is
-- waiting (inserted on admission or promotion, removed on the claim). The
-- condition is the one the counts state: SQLite uses a partial index only
-- for a query that states its condition.
CREATE INDEX jobs_tenant_pending ON jobs (tenant)
    WHERE state IN ('scheduled', 'queued');
