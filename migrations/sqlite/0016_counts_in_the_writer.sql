-- State changes are counted by the writer (src/store/sqlite/counts.rs),
-- once per queue and state per group commit, as inserts already were: the
-- trigger cost every claimed and finished job two more updates and a
-- trigger program, about a tenth of a drained job's write. Deletes (prune)
-- keep their trigger.
DROP TRIGGER jobs_count_update;
