-- Webhooks: a durable outbox of terminal events to deliver.

ALTER TABLE jobs ADD COLUMN callback_url TEXT;

-- One row per webhook to deliver. It is written by the triggers below in the
-- same transaction as the state change it reports, so a crash can lose
-- neither; its id (the `webhook-id` header) never changes afterwards.
CREATE TABLE webhooks (
    id                  TEXT PRIMARY KEY NOT NULL,
    tenant              TEXT NOT NULL,
    job_id              TEXT,
    batch_id            TEXT,
    event               TEXT NOT NULL,
    url                 TEXT NOT NULL,
    -- The JSON body, rendered at the first attempt and then sent unchanged.
    body                TEXT,
    status              TEXT NOT NULL DEFAULT 'pending',
    attempts            INTEGER NOT NULL DEFAULT 0,
    last_error          TEXT,
    created_at          INTEGER NOT NULL,
    next_attempt_at     INTEGER NOT NULL,
    last_attempt_at     INTEGER,
    delivered_at        INTEGER,
    -- A deliverer's claim: others leave the row alone until it passes.
    locked_until        INTEGER
) STRICT;
CREATE INDEX webhooks_due ON webhooks (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhooks_job ON webhooks (job_id, created_at) WHERE job_id IS NOT NULL;
CREATE INDEX webhooks_batch ON webhooks (batch_id, created_at) WHERE batch_id IS NOT NULL;

-- A job with a callback_url that ends (finished_at set) gets its webhook,
-- whoever ended it: worker, cancel, cascade, rescue. A retried job that
-- ends again gets a new one. Jobs are never inserted ended (one born
-- cancelled is inserted, then cancelled by the cascade), so there is no
-- insert trigger: one on the hot insert would cost every submission.
CREATE TRIGGER jobs_webhook_on_end AFTER UPDATE OF finished_at ON jobs
WHEN NEW.callback_url IS NOT NULL AND OLD.finished_at IS NULL AND NEW.finished_at IS NOT NULL BEGIN
    INSERT INTO webhooks (id, tenant, job_id, event, url, created_at, next_attempt_at)
    VALUES ('msg_' || lower(hex(randomblob(16))), NEW.tenant, NEW.id, 'job.' || NEW.state,
            NEW.callback_url, NEW.finished_at, NEW.finished_at);
END;

-- A batch finishes once (batches do not reopen), so its webhook fires once.
CREATE TRIGGER batches_webhook_on_finish AFTER UPDATE OF finished_at ON batches
WHEN NEW.callback_url IS NOT NULL AND OLD.finished_at IS NULL AND NEW.finished_at IS NOT NULL BEGIN
    INSERT INTO webhooks (id, tenant, batch_id, event, url, created_at, next_attempt_at)
    VALUES ('msg_' || lower(hex(randomblob(16))), NEW.tenant, NEW.id, 'batch.finished',
            NEW.callback_url, NEW.finished_at, NEW.finished_at);
END;
