-- Schedules (executor/store/schedules.py).

-- name: select_schedule
SELECT name, workflow, cron, timezone, args, catchup, overlap, source, paused, next_fire_at,
       last_fire_at, last_run_id, fired, skipped
FROM schedules WHERE name = ?;

-- name: list_schedules
SELECT name, workflow, cron, timezone, args, catchup, overlap, source, paused, next_fire_at,
       last_fire_at, last_run_id, fired, skipped
FROM schedules ORDER BY name;

-- name: upsert_schedule
INSERT INTO schedules (name, workflow, cron, timezone, args, catchup, overlap, source,
                       next_fire_at, created_at, updated_at)
VALUES (:name, :workflow, :cron, :timezone, :args, :catchup, :overlap, :source, :next, :now, :now)
ON CONFLICT (name) DO UPDATE
SET workflow = excluded.workflow, cron = excluded.cron, timezone = excluded.timezone,
    args = excluded.args, catchup = excluded.catchup, overlap = excluded.overlap,
    source = excluded.source, updated_at = excluded.updated_at,
    -- A new expression starts from now; the same one keeps its place (no tick fired twice,
    -- none lost to a reload).
    next_fire_at = CASE WHEN schedules.cron = excluded.cron AND schedules.timezone = excluded.timezone
                        THEN schedules.next_fire_at ELSE excluded.next_fire_at END;

-- name: config_schedule_names
SELECT name FROM schedules WHERE source = ?;

-- name: delete_schedule
DELETE FROM schedules WHERE name = ?;

-- name: pause_schedule
UPDATE schedules SET paused = 1, updated_at = :now WHERE name = :name;

-- name: resume_schedule
-- Ticks that passed while paused are not caught up: the schedule goes on from now.
UPDATE schedules SET paused = 0, next_fire_at = :next, updated_at = :now
WHERE name = :name AND paused = 1;

-- name: due_schedules
SELECT name FROM schedules WHERE paused = 0 AND next_fire_at <= ? ORDER BY next_fire_at LIMIT ?;

-- name: advance_schedule
-- Compare-and-set on the tick it planned from: of two engines firing the same tick, the second
-- finds the schedule moved on and starts nothing (the tick's run id would refuse it anyway).
UPDATE schedules
SET next_fire_at = :next, updated_at = :now, skipped = skipped + :skipped, fired = fired + :fired,
    last_fire_at = coalesce(:last_fire_at, last_fire_at), last_run_id = coalesce(:last_run, last_run_id)
WHERE name = :name AND next_fire_at = :due;

-- name: note_schedule_run
UPDATE schedules SET last_run_id = :run, fired = fired + 1, updated_at = :now WHERE name = :name;

-- name: insert_scheduled_run
INSERT INTO runs (id, workflow, version, shard, status, args, idempotency_key, created_at,
                  updated_at)
VALUES (:id, :workflow, NULL, :shard, 'running', :args, :id, :now, :now)
ON CONFLICT DO NOTHING
RETURNING rid;
