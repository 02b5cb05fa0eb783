-- The engine's sample row and metrics snapshot per heartbeat, and their readers
-- (executor/store/samples.py), on PostgreSQL: the names and parameters of ../sqlite/samples.sql.

-- name: sample_queued
SELECT count(*) FROM tasks WHERE claim_token IS NULL AND parked IS NULL;

-- name: sample_oldest_queued_rid
SELECT min(run_rid) FROM tasks WHERE shard = %s AND claim_token IS NULL AND parked IS NULL;

-- name: sample_replay_backlog
SELECT count(*) FROM replays;

-- name: insert_sample
INSERT INTO samples (engine_id, at, steps, step_failures, runs_finished, queued,
    oldest_queued_s, in_flight, slots, replay_backlog, rate_limited, limits)
VALUES (%(engine_id)s, %(at)s, %(steps)s, %(step_failures)s, %(runs_finished)s, %(queued)s,
    %(oldest_queued_s)s, %(in_flight)s, %(slots)s, %(replay_backlog)s, %(rate_limited)s,
    %(limits)s)
ON CONFLICT (at, engine_id) DO UPDATE SET
    steps = excluded.steps, step_failures = excluded.step_failures,
    runs_finished = excluded.runs_finished, queued = excluded.queued,
    oldest_queued_s = excluded.oldest_queued_s, in_flight = excluded.in_flight,
    slots = excluded.slots, replay_backlog = excluded.replay_backlog,
    rate_limited = excluded.rate_limited, limits = excluded.limits;

-- name: delete_old_samples
DELETE FROM samples WHERE at < %s;

-- name: upsert_engine_metrics
INSERT INTO engine_metrics (engine_id, snapshot, updated_at) VALUES (%s, %s, %s)
ON CONFLICT (engine_id) DO UPDATE SET snapshot = excluded.snapshot, updated_at = excluded.updated_at;

-- name: select_samples
SELECT engine_id, at, steps, step_failures, runs_finished, queued, oldest_queued_s, in_flight,
       slots, replay_backlog, rate_limited, limits
FROM samples WHERE at >= %s ORDER BY at;

-- name: select_engine_metrics
SELECT m.engine_id, m.snapshot, m.updated_at, e.state, e.started_at
FROM engine_metrics AS m JOIN engines AS e ON e.id = m.engine_id
ORDER BY m.engine_id;
