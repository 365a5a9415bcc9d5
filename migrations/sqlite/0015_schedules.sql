-- Schedules (PUT /v1/schedules/{id}): a job spec fired on a cron or fixed
-- cadence. `config` holds the settings as JSON (domain::ScheduleConfig),
-- read and written whole; the columns beside it are what the firing loop
-- and the lists query. `next_fire_at` is NULL while a schedule is paused
-- or past its `end_at`, so the due index holds only schedules that fire.
-- `revision` counts changes of the settings: a fire decided on older
-- settings is refused (store/plan/schedules.rs).
CREATE TABLE schedules (
    id              TEXT PRIMARY KEY NOT NULL,
    tenant          TEXT NOT NULL,
    config          TEXT NOT NULL,
    revision        INTEGER NOT NULL,
    next_fire_at    INTEGER,
    last_fire_at    INTEGER,
    last_job_id     TEXT,
    fires_recorded  INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
) STRICT;

-- The firing loop's one query: due schedules, earliest first, and the
-- earliest fire time it sleeps until. Never a scan of every schedule.
CREATE INDEX schedules_due ON schedules (next_fire_at)
    WHERE next_fire_at IS NOT NULL;
-- A non-admin's list: its tenant's schedules.
CREATE INDEX schedules_tenant ON schedules (tenant, id);

-- Each fire time handled (fired, skipped, missed, refused) and each
-- trigger, numbered per schedule; the oldest beyond the last 1 000 are
-- deleted as new ones come (domain::FIRES_KEPT).
CREATE TABLE schedule_fires (
    schedule_id     TEXT NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    seq             INTEGER NOT NULL,
    fire_at         INTEGER NOT NULL,
    outcome         TEXT NOT NULL,
    reason          TEXT,
    job_id          TEXT,
    recorded_at     INTEGER NOT NULL,
    PRIMARY KEY (schedule_id, seq)
) STRICT;
