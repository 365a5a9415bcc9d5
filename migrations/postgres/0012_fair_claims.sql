-- Fair share: a claim serves the tenants with ready jobs in a queue
-- round-robin, each tenant's jobs by priority then the order they became
-- ready. This index replaces `jobs_ready` (same entries, the tenant after
-- the queue): a claim finds a queue's tenants by skipping through it, walks
-- one tenant's jobs in claim order, and a queue of one tenant is claimed
-- with `tenant = ?` in the same single statement as before, so one index
-- is kept per ready job, not two.
DROP INDEX jobs_ready;
CREATE INDEX jobs_ready_tenant ON jobs (queue, tenant, priority DESC, run_at, id)
    WHERE state = 'queued';
