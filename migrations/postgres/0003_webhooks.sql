-- Webhooks: a durable outbox of terminal events to deliver, as in
-- migrations/sqlite/0003_webhooks.sql.

ALTER TABLE jobs ADD COLUMN callback_url TEXT;

-- One row per webhook to deliver. It is written by the triggers below in the
-- same transaction as the state change it reports, so a crash can lose
-- neither; its id (the `webhook-id` header) never changes afterwards.
CREATE TABLE webhooks (
    id                  TEXT PRIMARY KEY,
    tenant              TEXT NOT NULL,
    job_id              TEXT COLLATE "C",
    batch_id            TEXT COLLATE "C",
    event               TEXT NOT NULL,
    url                 TEXT NOT NULL,
    -- The JSON body, rendered at the first attempt and then sent unchanged.
    body                TEXT,
    status              TEXT NOT NULL DEFAULT 'pending',
    attempts            BIGINT NOT NULL DEFAULT 0,
    last_error          TEXT,
    created_at          BIGINT NOT NULL,
    next_attempt_at     BIGINT NOT NULL,
    last_attempt_at     BIGINT,
    delivered_at        BIGINT,
    -- A deliverer's claim: others leave the row alone until it passes.
    locked_until        BIGINT,
    -- Insertion order, the tie-break of "latest" where SQLite uses its rowid.
    seq                 BIGINT GENERATED ALWAYS AS IDENTITY
);
CREATE INDEX webhooks_due ON webhooks (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhooks_job ON webhooks (job_id, created_at) WHERE job_id IS NOT NULL;
CREATE INDEX webhooks_batch ON webhooks (batch_id, created_at) WHERE batch_id IS NOT NULL;

-- `msg_` and 32 hex digits, as on SQLite. gen_random_uuid() is built in
-- (no pgcrypto needed); its 122 random bits are as unguessable as needed
-- for a de-duplication id.
CREATE FUNCTION spool_webhook_id() RETURNS text LANGUAGE sql VOLATILE AS $$
    SELECT 'msg_' || replace(gen_random_uuid()::text, '-', '')
$$;

-- A job with a callback_url that ends (finished_at set) gets its webhook,
-- whoever ended it: worker, cancel, cascade, rescue. A retried job that
-- ends again gets a new one. Jobs are never inserted ended, so there is no
-- insert trigger; the WHEN clause keeps jobs without a callback free of
-- any function call.
CREATE FUNCTION spool_job_webhook() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhooks (id, tenant, job_id, event, url, created_at, next_attempt_at)
    VALUES (spool_webhook_id(), NEW.tenant, NEW.id, 'job.' || NEW.state,
            NEW.callback_url, NEW.finished_at, NEW.finished_at);
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_webhook_on_end AFTER UPDATE OF finished_at ON jobs
FOR EACH ROW WHEN (NEW.callback_url IS NOT NULL AND OLD.finished_at IS NULL
                   AND NEW.finished_at IS NOT NULL)
EXECUTE FUNCTION spool_job_webhook();

-- A batch finishes once (batches do not reopen), so its webhook fires once.
CREATE FUNCTION spool_batch_webhook() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhooks (id, tenant, batch_id, event, url, created_at, next_attempt_at)
    VALUES (spool_webhook_id(), NEW.tenant, NEW.id, 'batch.finished',
            NEW.callback_url, NEW.finished_at, NEW.finished_at);
    RETURN NULL;
END
$$;
CREATE TRIGGER batches_webhook_on_finish AFTER UPDATE OF finished_at ON batches
FOR EACH ROW WHEN (NEW.callback_url IS NOT NULL AND OLD.finished_at IS NULL
                   AND NEW.finished_at IS NOT NULL)
EXECUTE FUNCTION spool_batch_webhook();
