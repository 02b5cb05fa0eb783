-- Schedules (executor/store/schedules.py), PostgreSQL.

-- name: select_schedule
SELECT name, workflow, cron, timezone, args, catchup, overlap, source, paused, next_fire_at,
       last_fire_at, last_run_id, fired, skipped
FROM schedules WHERE name = %s;

-- name: list_schedules
SELECT name, workflow, cron, timezone, args, catchup, overlap, source, paused, next_fire_at,
       last_fire_at, last_run_id, fired, skipped
FROM schedules ORDER BY name;

-- name: upsert_schedule
INSERT INTO schedules (name, workflow, cron, timezone, args, catchup, overlap, source,
                       next_fire_at, created_at, updated_at)
VALUES (%(name)s, %(workflow)s, %(cron)s, %(timezone)s, %(args)s, %(catchup)s, %(overlap)s,
        %(source)s, %(next)s, %(now)s, %(now)s)
ON CONFLICT (name) DO UPDATE
SET workflow = excluded.workflow, cron = excluded.cron, timezone = excluded.timezone,
    args = excluded.args, catchup = excluded.catchup, overlap = excluded.overlap,
    source = excluded.source, updated_at = excluded.updated_at,
    -- A new expression starts from now; the same one keeps its place (no tick fired twice,
    -- none lost to a reload).
    next_fire_at = CASE WHEN schedules.cron = excluded.cron AND schedules.timezone = excluded.timezone
                        THEN schedules.next_fire_at ELSE excluded.next_fire_at END;

-- name: config_schedule_names
SELECT name FROM schedules WHERE source = %s;

-- name: delete_schedule
DELETE FROM schedules WHERE name = %s;

-- name: pause_schedule
UPDATE schedules SET paused = 1, updated_at = %(now)s WHERE name = %(name)s;

-- name: resume_schedule
-- Ticks that passed while paused are not caught up: the schedule goes on from now.
UPDATE schedules SET paused = 0, next_fire_at = %(next)s, updated_at = %(now)s
WHERE name = %(name)s AND paused = 1;

-- name: due_schedules
SELECT name FROM schedules WHERE paused = 0 AND next_fire_at <= %s ORDER BY next_fire_at LIMIT %s;

-- name: advance_schedule
-- Compare-and-set on the tick it planned from: of two engines firing the same tick, the second
-- finds the schedule moved on and starts nothing (the tick's run id would refuse it anyway).
UPDATE schedules
SET next_fire_at = %(next)s, updated_at = %(now)s, skipped = skipped + %(skipped)s,
    fired = fired + %(fired)s,
    last_fire_at = coalesce(%(last_fire_at)s, last_fire_at),
    last_run_id = coalesce(%(last_run)s, last_run_id)
WHERE name = %(name)s AND next_fire_at = %(due)s;

-- name: note_schedule_run
UPDATE schedules SET last_run_id = %(run)s, fired = fired + 1, updated_at = %(now)s
WHERE name = %(name)s;

-- name: insert_scheduled_run
INSERT INTO runs (id, workflow, version, shard, status, args, idempotency_key, created_at,
                  updated_at)
VALUES (%(id)s, %(workflow)s, NULL, %(shard)s, 'running', %(args)s, %(id)s, %(now)s, %(now)s)
ON CONFLICT DO NOTHING
RETURNING rid;
