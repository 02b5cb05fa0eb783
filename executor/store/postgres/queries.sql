-- The engine's and the client's statements on PostgreSQL: the same names and parameters as
-- ../sqlite/queries.sql (psycopg style: %s in the order of SQLite's ?, %(name)s for :name).
-- Differences in meaning, all because several processes write at once here (SQLite has one
-- writer): a journal writer locks the run row before it numbers a result, so two writers never
-- give one seq twice; the replay commit locks the run it writes for, so a cancel cannot miss a
-- child it creates.

-- name: begin_write
-- Row locks (FOR UPDATE, the fences in the statements) do what SQLite's write lock does.
BEGIN;

-- name: begin_read
-- One snapshot for every statement of the read (READ COMMITTED would take one per statement).
BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;

-- name: select_epoch
SELECT value FROM meta WHERE key = 'epoch';

-- name: bump_epoch
UPDATE meta SET value = value + 1 WHERE key = 'epoch' RETURNING value;

-- name: select_shards
SELECT value FROM meta WHERE key = 'shards';

-- name: insert_shards
INSERT INTO meta (key, value) VALUES ('shards', %(shards)s);

-- name: max_rid
SELECT coalesce(max(rid), 0) FROM runs;

-- name: insert_run
INSERT INTO runs (id, workflow, version, shard, status, args, idempotency_key, created_at, updated_at,
                  concurrency_key, labels)
VALUES (%(id)s, %(workflow)s, %(version)s, %(shard)s, 'running', %(args)s, %(key)s, %(now)s, %(now)s,
        %(concurrency_key)s, %(labels)s)
ON CONFLICT (idempotency_key) DO NOTHING;

-- name: run_id_by_key
SELECT id, workflow, args, status FROM runs WHERE idempotency_key = %s;

-- name: queue_new_runs
-- Another client's runs committed meanwhile may have rids above ours: it queues them itself.
INSERT INTO replays (run_rid, shard, seq, created_at)
SELECT rid, shard, 0, created_at FROM runs WHERE rid > %s
ON CONFLICT (run_rid) DO NOTHING;

-- name: delete_queued_task
DELETE FROM tasks WHERE run_rid = %s AND pos = %s AND claim_token IS NULL;

-- name: delete_timer
DELETE FROM timers WHERE run_rid = %s AND pos = %s;

-- name: record_step
-- The run row is locked first and read as committed now, so its next seq is ours alone until
-- we commit (advance_run); the step's pending state is checked again on the locked row.
WITH r AS (
    SELECT rid, last_seq FROM runs
    WHERE rid = %(rid)s AND status IN ('running', 'parked')
    FOR NO KEY UPDATE
)
UPDATE steps
SET status = %(status)s, result = %(result)s, error = coalesce(%(error)s, steps.error),
    finished_at = %(now)s, seq = r.last_seq + 1
FROM r
WHERE steps.run_rid = r.rid AND steps.pos = %(pos)s AND steps.status = 'pending'
RETURNING steps.seq;

-- name: advance_run
UPDATE runs SET last_seq = %(seq)s, updated_at = %(now)s WHERE rid = %(rid)s RETURNING shard;

-- name: queue_replay
INSERT INTO replays (run_rid, shard, seq, created_at) VALUES (%(rid)s, %(shard)s, %(seq)s, %(now)s)
ON CONFLICT (run_rid) DO UPDATE SET seq = greatest(replays.seq, excluded.seq);

-- name: retry_task
UPDATE tasks
SET claim_token = NULL, claim_engine = NULL, claim_epoch = NULL, claimed_at = NULL,
    attempt = attempt + %(bump)s, not_before = %(not_before)s, parked = %(parked)s
WHERE run_rid = %(rid)s AND pos = %(pos)s AND claim_token = %(token)s;

-- name: note_step_error
UPDATE steps SET error = %s WHERE run_rid = %s AND pos = %s;

-- name: due_timers
SELECT run_rid, pos, kind FROM timers WHERE fire_at <= %s ORDER BY fire_at LIMIT %s;

-- name: run_status_of_rid
SELECT status FROM runs WHERE rid = %s;

-- name: select_journal_after
-- The results recorded after a seq, for a live instance to catch up (repository.load_deliveries).
SELECT s.pos, s.seq, s.status,
       CASE WHEN s.kind = 'child' AND s.status = 'succeeded'
            THEN (SELECT c.result FROM runs AS c
                  WHERE c.parent_rid = s.run_rid AND c.parent_pos = s.pos)
            ELSE s.result END,
       s.error, s.finished_at
FROM steps AS s WHERE s.run_rid = %s AND s.seq > %s ORDER BY s.seq;

-- name: insert_step
INSERT INTO steps (run_rid, pos, kind, name, fingerprint, args, status, created_at)
VALUES (%s, %s, %s, %s, %s, %s, 'pending', %s)
ON CONFLICT DO NOTHING;

-- name: insert_task
-- order_rid: the run's root (itself for a root run), the task's place in its shard's FIFO queue.
INSERT INTO tasks (run_rid, pos, shard, order_rid)
SELECT r.rid, v.pos, v.shard, coalesce(r.root_rid, r.rid)
FROM (VALUES (%s::bigint, %s::bigint, %s::bigint)) AS v (rid, pos, shard)
JOIN runs AS r ON r.rid = v.rid;

-- name: insert_timer
INSERT INTO timers (run_rid, pos, shard, fire_at) VALUES (%s, %s, %s, %s)
ON CONFLICT DO NOTHING;

-- name: finish_run
UPDATE runs SET status = %(status)s, result = %(result)s, error = %(error)s, finished_at = %(now)s,
    updated_at = %(now)s
WHERE rid = %(rid)s AND status = 'running';

-- name: park_run
UPDATE runs SET status = 'parked', error = %(error)s, updated_at = %(now)s
WHERE rid = %(rid)s AND status = 'running';

-- name: delete_queued_tasks_of_run
DELETE FROM tasks WHERE run_rid = %s AND claim_token IS NULL;

-- name: delete_timers_of_run
DELETE FROM timers WHERE run_rid = %s;

-- name: delete_replay_through
DELETE FROM replays WHERE run_rid = %s AND seq <= %s;

-- name: delete_inactive_replay
DELETE FROM replays WHERE run_rid = %s AND seq <= %s
  AND EXISTS (SELECT 1 FROM runs WHERE rid = %s AND status <> 'running');

-- name: delete_replay
DELETE FROM replays WHERE run_rid = %s;

-- name: pending_replays
-- With the run's generation: a live instance of an older one is rebuilt, not fed.
SELECT p.run_rid, p.seq, r.generation
FROM replays AS p JOIN runs AS r ON r.rid = p.run_rid
ORDER BY p.run_rid LIMIT %s;

-- name: run_state_for_commit
-- Locked until the commit: a cancel (or a retry) waits for it and then sees what it wrote (a
-- child it started), and a cancel committed first is seen here.
SELECT status, generation FROM runs WHERE rid = %s FOR NO KEY UPDATE;

-- name: insert_engine
INSERT INTO engines (epoch, pid, host, state, started_at, heartbeat_at)
VALUES (%s, %s, %s, 'running', %s, %s)
RETURNING id;

-- name: heartbeat
UPDATE engines SET heartbeat_at = %s, state = %s WHERE id = %s AND state IN ('running', 'draining');

-- name: expire_engines
UPDATE engines SET state = 'dead'
WHERE state IN ('running', 'draining') AND heartbeat_at < %s AND id <> %s
RETURNING id;

-- name: release_engine_claims
UPDATE tasks
SET claim_token = NULL, claim_engine = NULL, claim_epoch = NULL, claimed_at = NULL
WHERE claim_engine = %s AND claim_token IS NOT NULL;

-- name: stop_engine
UPDATE engines SET state = 'stopped', heartbeat_at = %s WHERE id = %s;

-- name: orphaned_claims
SELECT t.run_rid, t.pos FROM tasks AS t JOIN runs AS r ON r.rid = t.run_rid
WHERE t.claim_engine = %s AND t.claim_token IS NOT NULL
  AND r.status NOT IN ('running', 'parked');

-- name: select_run_by_id
SELECT rid, id, workflow, version, shard, status, result, error, created_at, updated_at,
       finished_at, last_seq, labels, generation, forked_from
FROM runs WHERE id = %s;

-- name: list_runs
SELECT rid, id, workflow, version, shard, status, result, error, created_at, updated_at,
       finished_at, last_seq, labels, generation, forked_from
FROM runs WHERE (%(status)s::text IS NULL OR status = %(status)s::text)
ORDER BY rid DESC LIMIT %(limit)s;

-- name: cancel_run
UPDATE runs SET status = 'cancelled', finished_at = %(now)s, updated_at = %(now)s,
    error = %(error)s
WHERE id = %(id)s AND status IN ('running', 'parked')
RETURNING rid;

-- name: resume_run
UPDATE runs SET status = 'running', error = NULL, updated_at = %(now)s
WHERE id = %(id)s AND status = 'parked'
RETURNING rid, shard, last_seq;

-- name: fail_parked_run
UPDATE runs SET status = 'failed', error = %(error)s, finished_at = %(now)s, updated_at = %(now)s
WHERE id = %(id)s AND status = 'parked'
RETURNING rid;

-- name: queued_tasks_of_shard
SELECT run_rid, pos FROM tasks WHERE shard = %s AND claim_token IS NULL ORDER BY run_rid, pos;

-- name: replays_of_shard
SELECT run_rid FROM replays WHERE shard = %s;

-- name: delete_replays_of_shard
DELETE FROM replays WHERE shard = %s;

-- name: fail_running_run
UPDATE runs SET status = 'failed', error = %(error)s, finished_at = %(now)s, updated_at = %(now)s
WHERE rid = %(rid)s AND status = 'running';

-- name: stats_tasks
SELECT shard,
       count(*) FILTER (WHERE claim_token IS NULL AND parked IS NULL
                        AND not_before <= %(now)s) AS queued,
       count(*) FILTER (WHERE claim_token IS NULL AND not_before > %(now)s) AS waiting,
       count(*) FILTER (WHERE claim_token IS NOT NULL) AS in_flight,
       min(CASE WHEN claim_token IS NULL THEN run_rid END) AS oldest_rid
FROM tasks GROUP BY shard;

-- name: stats_replays
SELECT shard, count(*) FROM replays GROUP BY shard;

-- name: stats_timers
SELECT shard, count(*), count(*) FILTER (WHERE fire_at <= %(now)s) FROM timers GROUP BY shard;

-- name: stats_runs
SELECT status, count(*) FROM runs GROUP BY status;

-- name: created_at_of_rid
SELECT created_at FROM runs WHERE rid = %s;

-- name: list_engines
SELECT id, epoch, pid, host, state, started_at, heartbeat_at FROM engines ORDER BY id;

-- name: live_engines_on_host
SELECT id, pid FROM engines WHERE host = %s AND state IN ('running', 'draining');

-- name: mark_engine_dead
UPDATE engines SET state = 'dead' WHERE id = %s AND state IN ('running', 'draining');
