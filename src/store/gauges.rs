//! The statement both backends run for a queue's oldest ready job
//! (`oldest_ready_at`, `spool_queue_oldest_ready_age_seconds`).

/// The `run_at` of the oldest ready job of the queue bound to `queue` (the
/// backend's placeholder: `?1` or `$1`), NULL when none waits.
///
/// One seek of `jobs_ready` (queue, priority DESC, run_at, id) per distinct
/// priority among the queue's ready jobs: the first entry of each priority
/// is its oldest, so the oldest of those firsts is the queue's. A walk of
/// every ready job (`min(run_at) … GROUP BY queue`, until 2026-12) read a
/// million entries every second the figures were asked for, with a million
/// jobs waiting (`spool bench --preload`).
pub fn oldest_ready_sql(queue: &str) -> String {
    let next = |column: &str| {
        format!(
            "(SELECT j.{column} FROM jobs AS j WHERE j.state = 'queued' AND j.queue = {queue} \
             AND j.priority < p.priority ORDER BY j.priority DESC, j.run_at LIMIT 1)"
        )
    };
    format!(
        "WITH RECURSIVE p(priority, run_at) AS ( \
             SELECT priority, run_at FROM (SELECT priority, run_at FROM jobs \
                 WHERE state = 'queued' AND queue = {queue} \
                 ORDER BY priority DESC, run_at LIMIT 1) AS first \
             UNION ALL \
             SELECT {}, {} FROM p WHERE p.priority IS NOT NULL) \
         SELECT min(run_at) FROM p",
        next("priority"),
        next("run_at")
    )
}
