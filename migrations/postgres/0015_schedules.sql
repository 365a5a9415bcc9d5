-- Schedules: the tables of migrations/sqlite/0015_schedules.sql with the
-- same columns and meanings. A fire locks its schedule's row
-- (FOR UPDATE SKIP LOCKED: an instance never waits for another's fire)
-- and checks `revision` and `next_fire_at` before it advances them, in the
-- transaction that inserts the fire's job (store/postgres/schedules.rs).
CREATE TABLE schedules (
    id              TEXT PRIMARY KEY,
    tenant          TEXT NOT NULL,
    config          TEXT NOT NULL,
    revision        BIGINT NOT NULL,
    next_fire_at    BIGINT,
    last_fire_at    BIGINT,
    last_job_id     TEXT,
    fires_recorded  BIGINT NOT NULL DEFAULT 0,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);

CREATE INDEX schedules_due ON schedules (next_fire_at)
    WHERE next_fire_at IS NOT NULL;
CREATE INDEX schedules_tenant ON schedules (tenant, id);

CREATE TABLE schedule_fires (
    schedule_id     TEXT NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    seq             BIGINT NOT NULL,
    fire_at         BIGINT NOT NULL,
    outcome         TEXT NOT NULL,
    reason          TEXT,
    job_id          TEXT,
    recorded_at     BIGINT NOT NULL,
    PRIMARY KEY (schedule_id, seq)
);
