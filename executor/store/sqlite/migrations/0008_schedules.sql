-- Schedules: workflows started on a cron expression (executor/schedules.py).

CREATE TABLE schedules (
    name         TEXT PRIMARY KEY,
    workflow     TEXT NOT NULL,
    cron         TEXT NOT NULL,
    timezone     TEXT NOT NULL,
    args         BLOB NOT NULL,           -- JSON array, after the tick time
    catchup      TEXT NOT NULL,           -- skip | once | all
    overlap      TEXT NOT NULL,           -- skip | allow | cancel
    source       TEXT NOT NULL,           -- config ([schedules.NAME]) | client (Client.schedule)
    paused       INTEGER NOT NULL DEFAULT 0,
    next_fire_at REAL NOT NULL,           -- the first tick not handled yet
    last_fire_at REAL,                    -- the latest tick a run was started for
    last_run_id  TEXT,                    -- that run (the overlap policy looks at it)
    fired        INTEGER NOT NULL DEFAULT 0,  -- runs started
    skipped      INTEGER NOT NULL DEFAULT 0,  -- ticks not started (catch-up or overlap policy)
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL
);
CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE paused = 0;
