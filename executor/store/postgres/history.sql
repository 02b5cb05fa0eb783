-- Reads for `executor show`, Client.history and the dashboard (executor/store/history.py),
-- PostgreSQL. Every one is read-only.

-- name: history_run
SELECT rid, id, workflow, version, shard, status, result, error, created_at, updated_at,
       finished_at, last_seq, concurrency_key
FROM runs WHERE id = %s;

-- name: history_steps
-- A pending step's task or timer says what it waits for; a finished step has neither.
SELECT s.pos, s.kind, s.name, s.status, s.attempts, s.error, s.created_at, s.started_at,
       s.finished_at, s.seq, s.limit_key,
       t.attempt, t.not_before, t.claim_engine, t.claimed_at, t.parked, m.fire_at,
       (t.run_rid IS NOT NULL)::int, c.id, c.status
FROM steps AS s
LEFT JOIN tasks AS t ON t.run_rid = s.run_rid AND t.pos = s.pos
LEFT JOIN timers AS m ON m.run_rid = s.run_rid AND m.pos = s.pos
LEFT JOIN runs AS c ON c.parent_rid = s.run_rid AND c.parent_pos = s.pos
WHERE s.run_rid = %s
ORDER BY s.pos;

-- name: history_replay
SELECT seq, created_at FROM replays WHERE run_rid = %s;

-- name: current_step
-- The latest position of a run that has not finished, else the latest one: what `status` shows.
SELECT pos, kind, name, status, attempts, error FROM steps
WHERE run_rid = %s
ORDER BY status = 'pending' DESC, pos DESC
LIMIT 1;

-- name: runs_by_workflow
SELECT workflow, status, count(*) FROM runs GROUP BY workflow, status ORDER BY workflow, status;
