-- Every SQL statement the package runs, by name. executor/store/sql.py loads this file into
-- a mapping; a block starts with a line "-- name: NAME" and runs to the next one.

-- name: begin_write
-- Every write transaction (database.transaction). IMMEDIATE takes the write lock up front, so a
-- transaction never fails half-way because another writer got there first.
BEGIN IMMEDIATE;

-- name: begin_read
-- A read of several statements that must see one snapshot (load_runs, history, stats).
BEGIN;

-- name: select_epoch
SELECT value FROM meta WHERE key = 'epoch';

-- name: bump_epoch
UPDATE meta SET value = value + 1 WHERE key = 'epoch' RETURNING value;

-- name: select_shards
SELECT value FROM meta WHERE key = 'shards';

-- name: insert_shards
INSERT INTO meta (key, value) VALUES ('shards', :shards);

-- name: max_rid
SELECT coalesce(max(rid), 0) FROM runs;

-- name: insert_run
INSERT INTO runs (id, workflow, version, shard, status, args, idempotency_key, created_at, updated_at,
                  concurrency_key, labels)
VALUES (:id, :workflow, :version, :shard, 'running', :args, :key, :now, :now, :concurrency_key,
        :labels)
ON CONFLICT (idempotency_key) DO NOTHING;

-- name: insert_runs_json
-- insert_run for a whole batch in one statement, each run a JSON array [id, workflow, version,
-- shard, args as text, key, concurrency_key, labels] (repository.create_runs): a third of the
-- CPU of executemany (14.4 -> 5.4 ms per 1,000 runs), and the write lock is held through one
-- statement that runs without the GIL, where executemany took the GIL back after each row and
-- queued behind the engine's threads for it while holding the lock (its transaction at W=10^6:
-- 43 ms of wall for 19 ms of CPU). `WHERE true`: SQLite's parser needs it before ON CONFLICT.
INSERT INTO runs (id, workflow, version, shard, status, args, idempotency_key, created_at, updated_at,
                  concurrency_key, labels)
SELECT j.value ->> 0, j.value ->> 1, j.value ->> 2, j.value ->> 3, 'running',
       CAST(j.value ->> 4 AS BLOB), j.value ->> 5, :now, :now, j.value ->> 6, j.value ->> 7
FROM json_each(:runs) AS j WHERE true
ON CONFLICT (idempotency_key) DO NOTHING;

-- name: run_id_by_key
SELECT id, workflow, args, status FROM runs WHERE idempotency_key = ?;

-- name: queue_new_runs
INSERT INTO replays (run_rid, shard, seq, created_at)
SELECT rid, shard, 0, created_at FROM runs WHERE rid > ?;

-- name: delete_queued_task
DELETE FROM tasks WHERE run_rid = ? AND pos = ? AND claim_token IS NULL;

-- name: delete_timer
DELETE FROM timers WHERE run_rid = ? AND pos = ?;

-- name: record_step
UPDATE steps
SET status = :status, result = :result, error = coalesce(:error, error), finished_at = :now,
    seq = (SELECT last_seq + 1 FROM runs WHERE rid = :rid)
WHERE run_rid = :rid AND pos = :pos AND status = 'pending'
  -- A parked run's steps still complete: resume replays them instead of waiting forever.
  AND EXISTS (SELECT 1 FROM runs WHERE rid = :rid AND status IN ('running', 'parked'))
RETURNING seq;

-- name: advance_run
UPDATE runs SET last_seq = :seq, updated_at = :now WHERE rid = :rid RETURNING shard;

-- name: queue_replay
INSERT INTO replays (run_rid, shard, seq, created_at) VALUES (:rid, :shard, :seq, :now)
ON CONFLICT (run_rid) DO UPDATE SET seq = max(seq, excluded.seq);

-- name: retry_task
UPDATE tasks
SET claim_token = NULL, claim_engine = NULL, claim_epoch = NULL, claimed_at = NULL,
    attempt = attempt + :bump, not_before = :not_before, parked = :parked
WHERE run_rid = :rid AND pos = :pos AND claim_token = :token;

-- name: note_step_error
UPDATE steps SET error = ? WHERE run_rid = ? AND pos = ?;

-- name: due_timers
SELECT run_rid, pos, kind FROM timers WHERE fire_at <= ? ORDER BY fire_at LIMIT ?;

-- name: run_status_of_rid
SELECT status FROM runs WHERE rid = ?;

-- name: select_runs_for_replay
-- Each run of a batch as a full replay needs it (journal.load_runs), with the rid first; the
-- rids as a JSON array.
SELECT rid, id, workflow, version, shard, status, args, created_at, last_seq, generation,
       coalesce(seed, id), coalesce(clock_origin, created_at), coalesce(forked_at, 0)
FROM runs WHERE rid IN (SELECT value FROM json_each(?));

-- name: select_journals
-- The journals of a batch of runs, each run's entries in position order after its rid. A
-- child's result is not copied into its parent's journal: it is read from the child's row.
SELECT s.run_rid, s.pos, s.kind, s.name, s.fingerprint, s.status,
       CASE WHEN s.kind = 'child' AND s.status = 'succeeded'
            THEN (SELECT c.result FROM runs AS c
                  WHERE c.parent_rid = s.run_rid AND c.parent_pos = s.pos)
            ELSE s.result END,
       s.error, s.seq, s.finished_at
FROM steps AS s WHERE s.run_rid IN (SELECT value FROM json_each(?)) ORDER BY s.run_rid, s.pos;

-- name: select_journal_after
-- The results recorded after a seq, for a live instance to catch up (repository.load_deliveries).
SELECT s.pos, s.seq, s.status,
       CASE WHEN s.kind = 'child' AND s.status = 'succeeded'
            THEN (SELECT c.result FROM runs AS c
                  WHERE c.parent_rid = s.run_rid AND c.parent_pos = s.pos)
            ELSE s.result END,
       s.error, s.finished_at
FROM steps AS s WHERE s.run_rid = ? AND s.seq > ? ORDER BY s.seq;

-- name: insert_step
INSERT OR IGNORE INTO steps (run_rid, pos, kind, name, fingerprint, args, status, created_at)
VALUES (?, ?, ?, ?, ?, ?, 'pending', ?);

-- name: insert_task
-- order_rid: the run's root (itself for a root run), the task's place in its shard's FIFO queue.
INSERT INTO tasks (run_rid, pos, shard, order_rid)
SELECT ?1, ?2, ?3, coalesce(root_rid, rid) FROM runs WHERE rid = ?1;

-- name: claim_next_task
-- insert_task, already claimed (as mark_claimed would) for a slot its run holds, if FIFO allows:
-- no unclaimed task of its shard that a claim would take first (an older workflow's, or an
-- earlier step of its run) is queued, due or not (one probe of tasks_queued). Else nothing.
INSERT INTO tasks (run_rid, pos, shard, order_rid, claim_token, claim_engine, claim_epoch,
                   claimed_at)
SELECT r.rid, :pos, :shard, coalesce(r.root_rid, r.rid), :token, :engine, :epoch, :now
FROM runs AS r
WHERE r.rid = :rid
  AND NOT EXISTS (
    SELECT 1 FROM tasks AS t
    WHERE t.shard = :shard AND t.claim_token IS NULL AND t.parked IS NULL
      AND (t.order_rid, t.run_rid, t.pos) < (coalesce(r.root_rid, r.rid), r.rid, :pos)
  );

-- name: insert_timer
INSERT OR IGNORE INTO timers (run_rid, pos, shard, fire_at) VALUES (?, ?, ?, ?);

-- name: finish_run
UPDATE runs SET status = :status, result = :result, error = :error, finished_at = :now,
    updated_at = :now
WHERE rid = :rid AND status = 'running';

-- name: park_run
UPDATE runs SET status = 'parked', error = :error, updated_at = :now
WHERE rid = :rid AND status = 'running';

-- name: delete_queued_tasks_of_run
DELETE FROM tasks WHERE run_rid = ? AND claim_token IS NULL;

-- name: delete_timers_of_run
DELETE FROM timers WHERE run_rid = ?;

-- name: delete_replay_through
DELETE FROM replays WHERE run_rid = ? AND seq <= ?;

-- name: delete_inactive_replay
DELETE FROM replays WHERE run_rid = ? AND seq <= ?
  AND EXISTS (SELECT 1 FROM runs WHERE rid = ? AND status != 'running');

-- name: delete_replay
DELETE FROM replays WHERE run_rid = ?;

-- name: pending_replays
-- With the run's generation: a live instance of an older one is rebuilt, not fed.
SELECT p.run_rid, p.seq, r.generation
FROM replays AS p JOIN runs AS r ON r.rid = p.run_rid
ORDER BY p.run_rid LIMIT ?;

-- name: run_state_for_commit
SELECT status, generation FROM runs WHERE rid = ?;

-- name: insert_engine
INSERT INTO engines (epoch, pid, host, state, started_at, heartbeat_at)
VALUES (?, ?, ?, 'running', ?, ?)
RETURNING id;

-- name: heartbeat
UPDATE engines SET heartbeat_at = ?, state = ? WHERE id = ? AND state IN ('running', 'draining');

-- name: expire_engines
UPDATE engines SET state = 'dead'
WHERE state IN ('running', 'draining') AND heartbeat_at < ? AND id != ?
RETURNING id;

-- name: release_engine_claims
UPDATE tasks
SET claim_token = NULL, claim_engine = NULL, claim_epoch = NULL, claimed_at = NULL
WHERE claim_engine = ? AND claim_token IS NOT NULL;

-- name: stop_engine
UPDATE engines SET state = 'stopped', heartbeat_at = ? WHERE id = ?;

-- name: orphaned_claims
SELECT t.run_rid, t.pos FROM tasks AS t JOIN runs AS r ON r.rid = t.run_rid
WHERE t.claim_engine = ? AND t.claim_token IS NOT NULL
  AND r.status NOT IN ('running', 'parked');

-- name: select_run_by_id
SELECT rid, id, workflow, version, shard, status, result, error, created_at, updated_at,
       finished_at, last_seq, labels, generation, forked_from
FROM runs WHERE id = ?;

-- name: list_runs
SELECT rid, id, workflow, version, shard, status, result, error, created_at, updated_at,
       finished_at, last_seq, labels, generation, forked_from
FROM runs WHERE (:status IS NULL OR status = :status)
ORDER BY rid DESC LIMIT :limit;

-- name: cancel_run
UPDATE runs SET status = 'cancelled', finished_at = :now, updated_at = :now,
    error = :error
WHERE id = :id AND status IN ('running', 'parked')
RETURNING rid;

-- name: resume_run
UPDATE runs SET status = 'running', error = NULL, updated_at = :now
WHERE id = :id AND status = 'parked'
RETURNING rid, shard, last_seq;

-- name: fail_parked_run
UPDATE runs SET status = 'failed', error = :error, finished_at = :now, updated_at = :now
WHERE id = :id AND status = 'parked'
RETURNING rid;

-- name: queued_tasks_of_shard
SELECT run_rid, pos FROM tasks WHERE shard = ? AND claim_token IS NULL ORDER BY run_rid, pos;

-- name: replays_of_shard
SELECT run_rid FROM replays WHERE shard = ?;

-- name: delete_replays_of_shard
DELETE FROM replays WHERE shard = ?;

-- name: fail_running_run
UPDATE runs SET status = 'failed', error = :error, finished_at = :now, updated_at = :now
WHERE rid = :rid AND status = 'running';

-- name: stats_tasks
SELECT shard,
       sum(claim_token IS NULL AND parked IS NULL AND not_before <= :now) AS queued,
       sum(claim_token IS NULL AND not_before > :now) AS waiting,
       sum(claim_token IS NOT NULL) AS in_flight,
       min(CASE WHEN claim_token IS NULL THEN run_rid END) AS oldest_rid
FROM tasks GROUP BY shard;

-- name: stats_replays
SELECT shard, count(*) FROM replays GROUP BY shard;

-- name: stats_timers
SELECT shard, count(*), sum(fire_at <= :now) FROM timers GROUP BY shard;

-- name: stats_runs
SELECT status, count(*) FROM runs GROUP BY status;

-- name: created_at_of_rid
SELECT created_at FROM runs WHERE rid = ?;

-- name: list_engines
SELECT id, epoch, pid, host, state, started_at, heartbeat_at FROM engines ORDER BY id;

-- name: live_engines_on_host
SELECT id, pid FROM engines WHERE host = ? AND state IN ('running', 'draining');

-- name: mark_engine_dead
UPDATE engines SET state = 'dead' WHERE id = ? AND state IN ('running', 'draining');

-- name: mark_claimed
UPDATE tasks
SET claim_token = :token, claim_engine = :engine, claim_epoch = :epoch, claimed_at = :now
WHERE (run_rid, pos) IN (
    SELECT run_rid, pos FROM tasks
    WHERE shard = :shard AND claim_token IS NULL AND parked IS NULL AND not_before <= :now
    ORDER BY order_rid, run_rid, pos
    LIMIT :limit
);

-- name: claimed_by_shard
-- The tasks a replay commit claimed so far under :token (its runs' own next steps), by shard:
-- one pass over them for the whole batch (the LIMIT of the heads' mark_claimed, per shard, is
-- computed from it).
SELECT shard, count(*) FROM tasks WHERE claim_token = ? GROUP BY shard;

-- name: count_claimed_attempts
UPDATE steps SET attempts = attempts + 1, started_at = coalesce(started_at, :now)
WHERE (run_rid, pos) IN (SELECT run_rid, pos FROM tasks WHERE claim_token = :token);

-- name: count_claimed_attempts_new
-- count_claimed_attempts for the steps a commit claimed that commit_in_steps_insert did not
-- count (the per-row path's, new: no attempt yet).
UPDATE steps SET attempts = 1, started_at = coalesce(started_at, :now)
WHERE (run_rid, pos) IN (SELECT run_rid, pos FROM tasks WHERE claim_token = :token)
  AND attempts = 0;

-- name: select_claimed
-- A negative not_before marks a task just unparked (see migration 0002): the limiter lets it go
-- before newcomers. Read here for the whole batch, not per task.
SELECT t.run_rid, t.pos, t.shard, t.attempt, s.name, s.args, s.limit_key, r.id, r.workflow,
    t.not_before < 0, r.concurrency_key
FROM tasks AS t JOIN steps AS s ON s.run_rid = t.run_rid AND s.pos = t.pos
JOIN runs AS r ON r.rid = t.run_rid
WHERE t.claim_token = ?
ORDER BY t.order_rid, t.run_rid, t.pos;

-- Recording a batch of finished steps, set-based (journal.record_many): the outcomes go into
-- a temporary table, and each fence and write is one statement over the whole batch.

-- name: record_in_create
-- Keyed by step, then place in the batch: no second index to keep.
CREATE TEMP TABLE IF NOT EXISTS record_in (
    rid    INTEGER NOT NULL,
    pos    INTEGER NOT NULL,
    i      INTEGER NOT NULL,  -- place in the batch
    token  INTEGER,
    status TEXT NOT NULL,
    result BLOB,
    error  BLOB,
    k      INTEGER NOT NULL,  -- place among the run's outcomes in the batch, from 1
    shard  INTEGER,           -- the run's (from the fence)
    last   INTEGER NOT NULL DEFAULT 1,  -- 1: the run's last recorded outcome of the batch
    ok     INTEGER NOT NULL DEFAULT 0,  -- 1: our claim still holds the task; 2: recorded
    seq    INTEGER,
    PRIMARY KEY (rid, pos, i)
) WITHOUT ROWID;

-- name: record_in_clear
DELETE FROM temp.record_in;

-- name: record_in_add
-- journal.record_many leaves out a later copy of an outcome with the same step and claim (a
-- step twice in one batch counts once; with two claims, at most one still holds the task).
INSERT INTO temp.record_in (i, rid, pos, token, status, result, error, k)
VALUES (?, ?, ?, ?, ?, ?, ?, ?);

-- name: record_in_add_plain
-- A batch with a result per run and no error (the common case): k is 1 and the error NULL, two
-- parameters fewer a row to bind.
INSERT INTO temp.record_in (i, rid, pos, token, status, result, k)
VALUES (?, ?, ?, ?, ?, ?, 1);

-- name: record_in_fence
-- Our claim must still hold the task (else ok = 0, and the task is not ours to delete); the step
-- must still be pending and its run running (or parked: a resumed run finds the results of
-- steps that finished meanwhile) for the result to be recorded (ok = 2), with the seq that
-- follows the run's last one, by its place k among the run's outcomes in the batch.
UPDATE temp.record_in SET (ok, seq, shard) = (
    SELECT CASE
               WHEN t.run_rid IS NULL THEN 0
               WHEN s.run_rid IS NULL OR r.rid IS NULL THEN 1
               ELSE 2
           END,
           r.last_seq + record_in.k,
           r.shard
    FROM (SELECT 1)
    LEFT JOIN tasks AS t
        ON t.run_rid = record_in.rid AND t.pos = record_in.pos
        AND t.claim_token = record_in.token
    LEFT JOIN steps AS s
        ON s.run_rid = record_in.rid AND s.pos = record_in.pos AND s.status = 'pending'
    LEFT JOIN runs AS r ON r.rid = record_in.rid AND r.status IN ('running', 'parked')
);

-- name: record_in_number
-- When a run has several outcomes in the batch (one of them may not have been recorded):
-- number its recorded ones without a gap, in batch order, and mark the last of them.
UPDATE temp.record_in SET seq = n.seq, last = n.last
FROM (
    SELECT b.rid, b.pos, b.i,
           r.last_seq + row_number() OVER (PARTITION BY b.rid ORDER BY b.i) AS seq,
           row_number() OVER (PARTITION BY b.rid ORDER BY b.i DESC) = 1 AS last
    FROM temp.record_in AS b JOIN runs AS r ON r.rid = b.rid
    WHERE b.ok = 2
) AS n
WHERE record_in.rid = n.rid AND record_in.pos = n.pos AND record_in.i = n.i;

-- name: record_in_delete_tasks
-- Every task our claim still held goes, recorded or not (invariant 3).
DELETE FROM tasks
WHERE (run_rid, pos) IN (SELECT rid, pos FROM temp.record_in WHERE ok > 0);

-- name: record_in_steps
UPDATE steps
SET status = b.status, result = b.result, error = coalesce(b.error, steps.error),
    finished_at = :now, seq = b.seq
FROM temp.record_in AS b
WHERE b.ok = 2 AND steps.run_rid = b.rid AND steps.pos = b.pos;

-- name: record_in_runs
-- From each run's last recorded outcome (one row a run: no grouping, nothing materialized).
UPDATE runs SET last_seq = b.seq, updated_at = :now
FROM temp.record_in AS b
WHERE b.ok = 2 AND b.last AND runs.rid = b.rid;

-- name: record_in_replays
-- The shard came with the fence: no second look-up of the run.
INSERT INTO replays (run_rid, shard, seq, created_at)
SELECT rid, shard, seq, :now FROM temp.record_in WHERE ok = 2 AND last
ON CONFLICT (run_rid) DO UPDATE SET seq = max(seq, excluded.seq);

-- name: record_in_recorded
-- One row, not one hand-off of the GIL per recorded step: the places in the batch and the seqs
-- of the recorded outcomes, in the same order.
SELECT json_group_array(i), json_group_array(seq) FROM temp.record_in WHERE ok = 2;

-- Committing the plain outputs of a batch of replays, set-based (store/commitbatch.py): the
-- outputs and their new steps go into temporary tables from two JSON arrays, and each fence
-- and write is one statement over the whole batch (repository.commit_each's, for each output).

-- name: commit_in_create
CREATE TEMP TABLE IF NOT EXISTS commit_in (
    rid      INTEGER PRIMARY KEY,
    gen      INTEGER NOT NULL,          -- the generation the replay read
    consumed INTEGER NOT NULL,          -- the seq it consumed
    finished TEXT,                      -- the run ends: its status, result and error
    result   BLOB,
    error    BLOB,
    live     INTEGER NOT NULL DEFAULT 0, -- 1: still running in that generation: written
    family   INTEGER NOT NULL DEFAULT 0  -- 1: it ends with a parent or children: per row
);

-- name: commit_in_steps_create
CREATE TEMP TABLE IF NOT EXISTS commit_in_steps (
    rid       INTEGER NOT NULL,
    pos       INTEGER NOT NULL,
    shard     INTEGER NOT NULL,
    name      TEXT NOT NULL,
    fp        TEXT NOT NULL,
    args      BLOB,
    limit_key TEXT,
    take      INTEGER NOT NULL,          -- 1: to claim for a slot its run holds
    new       INTEGER NOT NULL DEFAULT 0, -- 1: not in the journal yet: written now
    PRIMARY KEY (rid, pos)
);

-- name: commit_in_add
INSERT INTO temp.commit_in (rid, gen, consumed, finished, result, error)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
       json_extract(value, '$[3]'), CAST(json_extract(value, '$[4]') AS BLOB),
       CAST(json_extract(value, '$[5]') AS BLOB)
FROM json_each(?);

-- name: commit_in_steps_add
INSERT INTO temp.commit_in_steps (rid, pos, shard, name, fp, args, limit_key, take)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
       json_extract(value, '$[3]'), json_extract(value, '$[4]'),
       CAST(json_extract(value, '$[5]') AS BLOB), json_extract(value, '$[6]'),
       json_extract(value, '$[7]')
FROM json_each(?);

-- name: commit_in_live
-- run_state_for_commit's fence for the batch: only runs still running in the generation their
-- replay read are written.
UPDATE temp.commit_in SET live = 1
WHERE EXISTS (SELECT 1 FROM runs AS r
              WHERE r.rid = commit_in.rid AND r.status = 'running' AND r.generation = commit_in.gen);

-- name: commit_in_family
-- A run that ends with a parent (its end goes into the parent's journal) or children (they are
-- cancelled with it) is left to the per-row path (children.run_left).
UPDATE temp.commit_in SET live = 0, family = 1
WHERE live = 1 AND finished IS NOT NULL
  AND EXISTS (SELECT 1 FROM runs AS r
              WHERE r.rid = commit_in.rid
                AND (r.parent_rid IS NOT NULL
                     OR EXISTS (SELECT 1 FROM runs AS c WHERE c.parent_rid = r.rid)));

-- name: commit_in_stale
SELECT rid, family FROM temp.commit_in WHERE live = 0;

-- name: commit_in_steps_new
-- insert_step's OR IGNORE: a step already in the journal (another replay of the run wrote it)
-- gets no second task.
UPDATE temp.commit_in_steps SET new = 1
WHERE rid IN (SELECT rid FROM temp.commit_in WHERE live = 1)
  AND NOT EXISTS (SELECT 1 FROM steps AS s
                  WHERE s.run_rid = commit_in_steps.rid AND s.pos = commit_in_steps.pos);

-- name: commit_in_steps_insert
-- After their tasks (commit_in_queue, commit_in_claim, commit_in_queue_rest). With :counted
-- (the claim took every step marked to take, under a token of its own), those are written with
-- their first attempt counted: count_claimed_attempts' update of the same rows, folded in.
INSERT INTO steps (run_rid, pos, kind, name, fingerprint, args, status, created_at, limit_key,
                   attempts, started_at)
SELECT rid, pos, 'step', name, fp, args, 'pending', :now, limit_key, :counted AND take,
       CASE WHEN :counted AND take THEN :now END
FROM temp.commit_in_steps WHERE new = 1;

-- name: commit_in_queue
-- insert_task for the new steps not to be claimed here.
INSERT INTO tasks (run_rid, pos, shard, order_rid)
SELECT s.rid, s.pos, s.shard, coalesce(r.root_rid, r.rid)
FROM temp.commit_in_steps AS s JOIN runs AS r ON r.rid = s.rid
WHERE s.new = 1 AND s.take = 0;

-- name: commit_in_claim
-- claim_next_task for the batch: inserted claimed when no unclaimed task of its shard that a
-- claim would take first is queued (a seek of tasks_queued each). The SELECT reads tasks, so
-- SQLite runs it whole before inserting: the probes see the queue as the statement found it.
INSERT INTO tasks (run_rid, pos, shard, order_rid, claim_token, claim_engine, claim_epoch,
                   claimed_at)
SELECT s.rid, s.pos, s.shard, coalesce(r.root_rid, r.rid), :token, :engine, :epoch, :now
FROM temp.commit_in_steps AS s JOIN runs AS r ON r.rid = s.rid
WHERE s.new = 1 AND s.take = 1
  AND NOT EXISTS (
    SELECT 1 FROM tasks AS t
    WHERE t.shard = s.shard AND t.claim_token IS NULL AND t.parked IS NULL
      AND (t.order_rid, t.run_rid, t.pos) < (coalesce(r.root_rid, r.rid), r.rid, s.pos)
  );

-- name: commit_in_queue_rest
-- The steps to claim that FIFO held back: queued.
INSERT INTO tasks (run_rid, pos, shard, order_rid)
SELECT s.rid, s.pos, s.shard, coalesce(r.root_rid, r.rid)
FROM temp.commit_in_steps AS s JOIN runs AS r ON r.rid = s.rid
WHERE s.new = 1 AND s.take = 1
  AND NOT EXISTS (SELECT 1 FROM tasks AS t WHERE t.run_rid = s.rid AND t.pos = s.pos);

-- name: commit_in_finish
-- finish_run for the batch, by rid (`+status`: not a walk of runs_status, every running run).
UPDATE runs
SET (status, result, error) = (SELECT o.finished, o.result, o.error
                               FROM temp.commit_in AS o WHERE o.rid = runs.rid),
    finished_at = :now, updated_at = :now
WHERE rid IN (SELECT rid FROM temp.commit_in WHERE live = 1 AND finished IS NOT NULL)
  AND +status = 'running';

-- name: commit_in_finished_tasks
-- journal.drop_pending_work for the runs that ended here: steps started but never awaited.
DELETE FROM tasks
WHERE run_rid IN (SELECT rid FROM temp.commit_in WHERE live = 1 AND finished IS NOT NULL)
  AND claim_token IS NULL;

-- name: commit_in_finished_timers
DELETE FROM timers
WHERE run_rid IN (SELECT rid FROM temp.commit_in WHERE live = 1 AND finished IS NOT NULL);

-- name: commit_in_finished_waits
DELETE FROM waits
WHERE run_rid IN (SELECT rid FROM temp.commit_in WHERE live = 1 AND finished IS NOT NULL);

-- name: commit_in_replays
-- delete_replay_through for the batch; every entry of a run that ended (delete_replay).
DELETE FROM replays
WHERE run_rid IN (SELECT rid FROM temp.commit_in WHERE live = 1)
  AND (SELECT o.finished IS NOT NULL OR replays.seq <= o.consumed
       FROM temp.commit_in AS o WHERE o.rid = replays.run_rid);

-- name: commit_in_steps_clear
DELETE FROM temp.commit_in_steps;

-- name: commit_in_clear
DELETE FROM temp.commit_in;
