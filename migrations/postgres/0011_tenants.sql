-- Quotas per tenant: the table of migrations/sqlite/0011_tenants.sql with
-- the same columns and meanings. Admission of a tenant with a `max_pending`
-- locks its row (FOR UPDATE), which serialises the tenant's admissions
-- across instances while each counts its pending jobs
-- (store/postgres/admit.rs).
CREATE TABLE tenants (
    name            TEXT PRIMARY KEY,
    max_pending     BIGINT,
    submit_rate     DOUBLE PRECISION,
    submit_burst    BIGINT,
    updated_at      BIGINT NOT NULL
);

-- A tenant's scheduled and queued jobs, counted by admission of a tenant
-- with a `max_pending`. Each job has one entry per time it enters
-- `scheduled` or `queued` (its admission, a promotion, a retry, a rescue);
-- a claim or an end writes none (the new row version is not waiting).
CREATE INDEX jobs_tenant_pending ON jobs (tenant)
    WHERE state IN ('scheduled', 'queued');
