//! The statement both backends run for a queue's oldest ready job
//! (`oldest_ready_at`, `spool_queue_oldest_ready_age_seconds`).

/// The `run_at` of the oldest ready job of the queue bound to `queue` (the
/// backend's placeholder: `?1` or `$1`), NULL when none waits.
///
/// One seek of `jobs_ready_tenant` (queue, tenant, priority DESC, run_at,
/// id) per distinct tenant and priority among the queue's ready jobs: the
/// first entry of each is its oldest, so the oldest of those firsts is the
/// queue's. Each step finds the next group's first job from the current
/// one's: a lower priority of the same tenant, else the next tenant. A
/// walk of every ready job (`min(run_at) … GROUP BY queue`, until 2026-12)
/// read a million entries every second the figures were asked for, with a
/// million jobs waiting (`spool bench --preload`); so does any form whose
/// order is not the index's (priority without the tenant first: 640 ms a
/// read on PostgreSQL, seen with auto_explain).
pub fn oldest_ready_sql(queue: &str) -> String {
    let first_of = |condition: &str| {
        format!(
            "(SELECT j.id FROM jobs AS j WHERE j.state = 'queued' AND j.queue = {queue} \
             AND {condition} ORDER BY j.tenant, j.priority DESC, j.run_at, j.id LIMIT 1)"
        )
    };
    format!(
        "WITH RECURSIVE g(id) AS ( \
             SELECT id FROM (SELECT id FROM jobs WHERE state = 'queued' AND queue = {queue} \
                 ORDER BY tenant, priority DESC, run_at, id LIMIT 1) AS first \
             UNION ALL \
             SELECT coalesce({}, {}) FROM g JOIN jobs AS c ON c.id = g.id) \
         SELECT min(jobs.run_at) FROM g JOIN jobs ON jobs.id = g.id",
        first_of("j.tenant = c.tenant AND j.priority < c.priority"),
        first_of("j.tenant > c.tenant")
    )
}
