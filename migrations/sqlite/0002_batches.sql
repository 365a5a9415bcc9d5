-- Batches, and the dependencies between jobs (pipelines).

CREATE TABLE batches (
    id                  TEXT PRIMARY KEY NOT NULL,
    tenant              TEXT NOT NULL,
    total               INTEGER NOT NULL,
    -- As submitted (0..1), and as the number of succeeded jobs it takes,
    -- computed once at submission so no float comparison decides a status.
    success_threshold   REAL NOT NULL,
    success_required    INTEGER NOT NULL,
    metadata            TEXT NOT NULL DEFAULT '{}',
    callback_url        TEXT,
    status              TEXT NOT NULL DEFAULT 'running',
    cancel_requested    INTEGER NOT NULL DEFAULT 0,
    scheduled           INTEGER NOT NULL DEFAULT 0,
    queued              INTEGER NOT NULL DEFAULT 0,
    running             INTEGER NOT NULL DEFAULT 0,
    succeeded           INTEGER NOT NULL DEFAULT 0,
    failed              INTEGER NOT NULL DEFAULT 0,
    cancelled           INTEGER NOT NULL DEFAULT 0,
    -- Last number handed to a finishing job (jobs.batch_seq): the order of
    -- partial results. Only ever grows, so a result cursor never skips.
    finish_seq          INTEGER NOT NULL DEFAULT 0,
    created_at          INTEGER NOT NULL,
    finished_at         INTEGER
) STRICT;
CREATE INDEX batches_finished ON batches (finished_at) WHERE finished_at IS NOT NULL;

ALTER TABLE jobs ADD COLUMN batch_id TEXT;
-- The job's place in the submitted array.
ALTER TABLE jobs ADD COLUMN batch_index INTEGER;
-- Set when the job finishes: its place among the batch's finished jobs.
ALTER TABLE jobs ADD COLUMN batch_seq INTEGER;
-- Every dependency as submitted (JSON array of ids), for display and to hand
-- their results to the job.
ALTER TABLE jobs ADD COLUMN depends_on TEXT NOT NULL DEFAULT '[]';
-- Dependencies not yet succeeded. A job with any stays `scheduled`.
ALTER TABLE jobs ADD COLUMN deps_pending INTEGER NOT NULL DEFAULT 0;

CREATE INDEX jobs_batch ON jobs (batch_id, batch_index) WHERE batch_id IS NOT NULL;
CREATE INDEX jobs_batch_results ON jobs (batch_id, batch_seq) WHERE batch_seq IS NOT NULL;

-- A job waiting on a dependency must not be promoted by its run_at.
DROP INDEX jobs_due;
CREATE INDEX jobs_due ON jobs (run_at) WHERE state = 'scheduled' AND deps_pending = 0;

-- Edges from a dependency to the jobs waiting on it; removed once the
-- dependency finished and its dependents were released or cancelled.
CREATE TABLE job_deps (
    depends_on_id   TEXT NOT NULL,
    job_id          TEXT NOT NULL,
    PRIMARY KEY (depends_on_id, job_id)
) STRICT, WITHOUT ROWID;

-- A batch's counts follow its jobs' states, whoever moves them (workers,
-- cancels, rescues, dependency cascades), in the same transaction.
CREATE TRIGGER jobs_batch_counts AFTER UPDATE OF state ON jobs
WHEN OLD.state <> NEW.state AND NEW.batch_id IS NOT NULL BEGIN
    UPDATE batches SET
        scheduled = scheduled + (NEW.state = 'scheduled') - (OLD.state = 'scheduled'),
        queued    = queued    + (NEW.state = 'queued')    - (OLD.state = 'queued'),
        running   = running   + (NEW.state = 'running')   - (OLD.state = 'running'),
        succeeded = succeeded + (NEW.state = 'succeeded') - (OLD.state = 'succeeded'),
        failed    = failed    + (NEW.state = 'failed')    - (OLD.state = 'failed'),
        cancelled = cancelled + (NEW.state = 'cancelled') - (OLD.state = 'cancelled'),
        finish_seq = finish_seq + (NEW.finished_at IS NOT NULL AND OLD.finished_at IS NULL)
    WHERE id = NEW.batch_id;
    UPDATE jobs SET batch_seq = (SELECT finish_seq FROM batches WHERE id = NEW.batch_id)
    WHERE id = NEW.id AND NEW.finished_at IS NOT NULL AND OLD.finished_at IS NULL;
    -- The last job to finish decides the batch's status.
    UPDATE batches SET
        finished_at = NEW.finished_at,
        status = CASE WHEN cancel_requested = 1 THEN 'cancelled'
                      WHEN succeeded >= success_required THEN 'succeeded'
                      ELSE 'failed' END
    WHERE id = NEW.batch_id AND finished_at IS NULL
      AND succeeded + failed + cancelled = total;
END;
