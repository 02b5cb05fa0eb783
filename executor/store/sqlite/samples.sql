-- The engine's sample row and metrics snapshot per heartbeat, and their readers
-- (executor/store/samples.py).

-- name: sample_queued
SELECT count(*) FROM tasks WHERE claim_token IS NULL AND parked IS NULL;

-- name: sample_oldest_queued_rid
-- Per shard, so the claim index (shard, run_rid, ...) answers it with one seek.
SELECT min(run_rid) FROM tasks WHERE shard = ? AND claim_token IS NULL AND parked IS NULL;

-- name: sample_replay_backlog
SELECT count(*) FROM replays;

-- name: insert_sample
INSERT OR REPLACE INTO samples (engine_id, at, steps, step_failures, runs_finished, queued,
    oldest_queued_s, in_flight, slots, replay_backlog, rate_limited, limits)
VALUES (:engine_id, :at, :steps, :step_failures, :runs_finished, :queued, :oldest_queued_s,
    :in_flight, :slots, :replay_backlog, :rate_limited, :limits);

-- name: delete_old_samples
DELETE FROM samples WHERE at < ?;

-- name: upsert_engine_metrics
INSERT INTO engine_metrics (engine_id, snapshot, updated_at) VALUES (?, ?, ?)
ON CONFLICT (engine_id) DO UPDATE SET snapshot = excluded.snapshot, updated_at = excluded.updated_at;

-- name: select_samples
SELECT engine_id, at, steps, step_failures, runs_finished, queued, oldest_queued_s, in_flight,
       slots, replay_backlog, rate_limited, limits
FROM samples WHERE at >= ? ORDER BY at;

-- name: select_engine_metrics
SELECT m.engine_id, m.snapshot, m.updated_at, e.state, e.started_at
FROM engine_metrics AS m JOIN engines AS e ON e.id = m.engine_id
ORDER BY m.engine_id;
