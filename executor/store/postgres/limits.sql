-- Queries of the limits area (executor/engine/limits/) on PostgreSQL: the names and parameters
-- of ../sqlite/limits.sql.

-- name: set_step_limit_key
UPDATE steps SET limit_key = %s WHERE run_rid = %s AND pos = %s;

-- name: unpark_tasks
UPDATE tasks SET parked = NULL, not_before = -1
WHERE (run_rid, pos) IN (
    SELECT run_rid, pos FROM tasks
    WHERE parked = %(parked)s AND claim_token IS NULL
    ORDER BY run_rid, pos
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
);

-- name: unpark_all
UPDATE tasks SET parked = NULL WHERE parked IS NOT NULL;

-- name: parked_by_group
-- 'unregistered' is not a quota: those tasks wait for a deploy and `executor resume`.
SELECT parked, count(*) FROM tasks WHERE parked IS NOT NULL AND parked <> 'unregistered'
GROUP BY parked;

-- name: upsert_limit_state
INSERT INTO limit_state (engine_id, snapshot, updated_at) VALUES (%(engine)s, %(snapshot)s, %(now)s)
ON CONFLICT (engine_id) DO UPDATE SET snapshot = excluded.snapshot, updated_at = excluded.updated_at;

-- name: live_limit_states
SELECT s.engine_id, s.snapshot, s.updated_at FROM limit_state AS s
JOIN engines AS e ON e.id = s.engine_id
WHERE e.state IN ('running', 'draining')
ORDER BY s.engine_id;

-- name: stats_parked
SELECT shard, parked, count(*) FROM tasks WHERE parked IS NOT NULL GROUP BY shard, parked;
