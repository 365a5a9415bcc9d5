-- Batches, and the dependencies between jobs (pipelines): the tables of
-- migrations/sqlite/0002_batches.sql with the same columns and meanings.

CREATE TABLE batches (
    id                  TEXT COLLATE "C" PRIMARY KEY,
    tenant              TEXT NOT NULL,
    total               BIGINT NOT NULL,
    -- As submitted (0..1), and as the number of succeeded jobs it takes,
    -- computed once at submission so no float comparison decides a status.
    success_threshold   DOUBLE PRECISION NOT NULL,
    success_required    BIGINT NOT NULL,
    metadata            TEXT NOT NULL DEFAULT '{}',
    callback_url        TEXT,
    status              TEXT NOT NULL DEFAULT 'running',
    cancel_requested    BOOLEAN NOT NULL DEFAULT false,
    scheduled           BIGINT NOT NULL DEFAULT 0,
    queued              BIGINT NOT NULL DEFAULT 0,
    running             BIGINT NOT NULL DEFAULT 0,
    succeeded           BIGINT NOT NULL DEFAULT 0,
    failed              BIGINT NOT NULL DEFAULT 0,
    cancelled           BIGINT NOT NULL DEFAULT 0,
    -- Last number handed to a finishing job (jobs.batch_seq): the order of
    -- partial results. Only ever grows, so a result cursor never skips.
    finish_seq          BIGINT NOT NULL DEFAULT 0,
    created_at          BIGINT NOT NULL,
    finished_at         BIGINT
);
CREATE INDEX batches_finished ON batches (finished_at) WHERE finished_at IS NOT NULL;

ALTER TABLE jobs ADD COLUMN batch_id TEXT COLLATE "C";
-- The job's place in the submitted array.
ALTER TABLE jobs ADD COLUMN batch_index BIGINT;
-- Set when the job finishes: its place among the batch's finished jobs.
ALTER TABLE jobs ADD COLUMN batch_seq BIGINT;
-- Every dependency as submitted (JSON array of ids), for display and to hand
-- their results to the job.
ALTER TABLE jobs ADD COLUMN depends_on TEXT NOT NULL DEFAULT '[]';
-- Dependencies not yet succeeded. A job with any stays `scheduled`.
ALTER TABLE jobs ADD COLUMN deps_pending BIGINT NOT NULL DEFAULT 0;
-- PostgreSQL only: set (under the row's lock) on a job that another job is
-- made to wait on, so that ending a job can tell from its own row whether
-- to look for dependents. The row, unlike a subquery on job_deps, is read
-- as it is after any lock wait: a completion that waited for a submission
-- adding a dependent sees the flag that submission set.
ALTER TABLE jobs ADD COLUMN has_dependents BOOLEAN NOT NULL DEFAULT false;

CREATE INDEX jobs_batch ON jobs (batch_id, batch_index) WHERE batch_id IS NOT NULL;
CREATE INDEX jobs_batch_results ON jobs (batch_id, batch_seq) WHERE batch_seq IS NOT NULL;

-- A job waiting on a dependency must not be promoted by its run_at.
DROP INDEX jobs_due;
CREATE INDEX jobs_due ON jobs (run_at) WHERE state = 'scheduled' AND deps_pending = 0;

-- Edges from a dependency to the jobs waiting on it; removed once the
-- dependency finished and its dependents were released or cancelled.
CREATE TABLE job_deps (
    depends_on_id   TEXT COLLATE "C" NOT NULL,
    job_id          TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (depends_on_id, job_id)
);

-- A batch's counts follow its jobs' states, whoever moves them (workers,
-- cancels, rescues, dependency cascades), in the same transaction. A BEFORE
-- trigger, unlike SQLite's AFTER one, sets the finishing job's batch_seq in
-- the row being written instead of updating the row a second time. The
-- batch row's lock serialises the completions of one batch (not of others),
-- which also makes finish_seq a gapless order of finishing.
CREATE FUNCTION spool_jobs_batch_counts() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ended boolean := NEW.finished_at IS NOT NULL AND OLD.finished_at IS NULL;
    seq bigint;
BEGIN
    UPDATE batches SET
        scheduled = scheduled + (NEW.state = 'scheduled')::int - (OLD.state = 'scheduled')::int,
        queued    = queued    + (NEW.state = 'queued')::int    - (OLD.state = 'queued')::int,
        running   = running   + (NEW.state = 'running')::int   - (OLD.state = 'running')::int,
        succeeded = succeeded + (NEW.state = 'succeeded')::int - (OLD.state = 'succeeded')::int,
        failed    = failed    + (NEW.state = 'failed')::int    - (OLD.state = 'failed')::int,
        cancelled = cancelled + (NEW.state = 'cancelled')::int - (OLD.state = 'cancelled')::int,
        finish_seq = finish_seq + ended::int
    WHERE id = NEW.batch_id
    RETURNING finish_seq INTO seq;
    IF ended THEN
        NEW.batch_seq := seq;
        -- The last job to finish decides the batch's status.
        UPDATE batches SET
            finished_at = NEW.finished_at,
            status = CASE WHEN cancel_requested THEN 'cancelled'
                          WHEN succeeded >= success_required THEN 'succeeded'
                          ELSE 'failed' END
        WHERE id = NEW.batch_id AND finished_at IS NULL
          AND succeeded + failed + cancelled = total;
    END IF;
    RETURN NEW;
END
$$;

-- The WHEN clause is evaluated without calling the function: jobs outside
-- batches pay nothing.
CREATE TRIGGER jobs_batch_counts BEFORE UPDATE OF state ON jobs
FOR EACH ROW WHEN (OLD.state <> NEW.state AND NEW.batch_id IS NOT NULL)
EXECUTE FUNCTION spool_jobs_batch_counts();
