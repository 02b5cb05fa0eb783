-- Repairing runs (executor/store/actions.py): retry in place, fork, purge, and the bookkeeping of
-- actions on runs by filter. Each per-run change is conditional on the run's status, so repeating
-- it is harmless.

-- --- retry in place ------------------------------------------------------------------------------

-- name: retry_in_create
CREATE TEMP TABLE IF NOT EXISTS retry_in (
    rid   INTEGER PRIMARY KEY,
    point INTEGER NOT NULL      -- the first journal position dropped (run again)
);

-- name: retry_in_clear
DELETE FROM temp.retry_in;

-- name: retry_in_fill
-- The runs (rids as a JSON array) that can be retried, with the position to restart from: by
-- default the first one that did not succeed; else :from_step, lowered to the first position
-- still waiting for a result, so no kept step is pending (it would have no task).
INSERT INTO temp.retry_in (rid, point)
SELECT r.rid,
       CASE WHEN :from_step IS NULL THEN
           coalesce((SELECT min(s.pos) FROM steps AS s
                     WHERE s.run_rid = r.rid AND s.status != 'succeeded'),
                    (SELECT count(*) FROM steps AS s WHERE s.run_rid = r.rid))
       ELSE
           min(:from_step, coalesce((SELECT min(s.pos) FROM steps AS s
                                     WHERE s.run_rid = r.rid AND s.status = 'pending'),
                                    :from_step))
       END
FROM runs AS r
WHERE r.rid IN (SELECT value FROM json_each(:rids))
  AND r.status IN ('failed', 'cancelled', 'parked');

-- name: retry_drop_steps
DELETE FROM steps
WHERE run_rid IN (SELECT rid FROM temp.retry_in)
  AND pos >= (SELECT point FROM temp.retry_in WHERE rid = steps.run_rid);

-- name: retry_drop_tasks
-- In-flight ones too: their claim no longer holds a task, so a late result is dropped.
DELETE FROM tasks WHERE run_rid IN (SELECT rid FROM temp.retry_in);

-- name: retry_drop_timers
DELETE FROM timers WHERE run_rid IN (SELECT rid FROM temp.retry_in);

-- name: retry_drop_replays
DELETE FROM replays WHERE run_rid IN (SELECT rid FROM temp.retry_in);

-- name: retry_drop_waits
DELETE FROM waits WHERE run_rid IN (SELECT rid FROM temp.retry_in);

-- name: retry_unread_messages
-- Messages taken by waits at dropped positions are unread again: the new attempt's waits take
-- them (as a reset reapplies signals).
UPDATE mailbox SET consumed_pos = NULL
WHERE run_rid IN (SELECT rid FROM temp.retry_in)
  AND consumed_pos >= (SELECT point FROM temp.retry_in WHERE rid = mailbox.run_rid);

-- name: retry_drop_events
-- Values published from dropped positions: the new attempt publishes its own.
DELETE FROM run_events
WHERE run_rid IN (SELECT rid FROM temp.retry_in)
  AND pos >= (SELECT point FROM temp.retry_in WHERE rid = run_events.run_rid);

-- name: retry_children_create
CREATE TEMP TABLE IF NOT EXISTS retry_children (rid INTEGER PRIMARY KEY);

-- name: retry_children_clear
DELETE FROM temp.retry_children;

-- name: retry_children_fill
-- The children (and theirs, however deep) started at dropped positions: they go away with them.
INSERT OR IGNORE INTO temp.retry_children (rid)
WITH RECURSIVE tree (rid) AS (
    SELECT c.rid FROM runs AS c JOIN temp.retry_in AS b ON c.parent_rid = b.rid
    WHERE c.parent_pos >= b.point
    UNION ALL
    SELECT r.rid FROM runs AS r JOIN tree AS t ON r.parent_rid = t.rid
)
SELECT rid FROM tree;

-- name: retry_cancel_children
UPDATE runs SET status = 'cancelled', finished_at = :now, updated_at = :now, error = :error
WHERE rid IN (SELECT rid FROM temp.retry_children) AND status IN ('running', 'parked');

-- name: retry_children_queued_tasks
DELETE FROM tasks
WHERE run_rid IN (SELECT rid FROM temp.retry_children) AND claim_token IS NULL;

-- name: retry_children_timers
DELETE FROM timers WHERE run_rid IN (SELECT rid FROM temp.retry_children);

-- name: retry_children_waits
DELETE FROM waits WHERE run_rid IN (SELECT rid FROM temp.retry_children);

-- name: retry_children_replays
DELETE FROM replays WHERE run_rid IN (SELECT rid FROM temp.retry_children);

-- name: retry_detach_children
-- The new attempt starts its own children at those positions (their ids carry the generation);
-- the old ones no longer report to the parent.
UPDATE runs SET parent_rid = NULL, parent_pos = NULL
WHERE parent_rid IN (SELECT rid FROM temp.retry_in)
  AND parent_pos >= (SELECT point FROM temp.retry_in WHERE rid = runs.parent_rid);

-- name: retry_renumber
-- The kept results keep their relative order, numbered 1..k.
UPDATE steps SET seq = n.rn
FROM (
    SELECT s.run_rid AS rid, s.pos AS pos,
           row_number() OVER (PARTITION BY s.run_rid ORDER BY s.seq) AS rn
    FROM steps AS s
    WHERE s.run_rid IN (SELECT rid FROM temp.retry_in) AND s.seq IS NOT NULL
) AS n
WHERE steps.run_rid = n.rid AND steps.pos = n.pos;

-- name: retry_runs
UPDATE runs
SET status = 'running', result = NULL, error = NULL, finished_at = NULL, updated_at = :now,
    generation = generation + 1,
    last_seq = (SELECT count(*) FROM steps AS s WHERE s.run_rid = runs.rid AND s.seq IS NOT NULL)
WHERE rid IN (SELECT rid FROM temp.retry_in);

-- name: retry_queue_replays
INSERT INTO replays (run_rid, shard, seq, created_at)
SELECT rid, shard, last_seq, :now FROM runs WHERE rid IN (SELECT rid FROM temp.retry_in);

-- name: retry_done
SELECT rid, point FROM temp.retry_in ORDER BY rid;

-- --- fork ----------------------------------------------------------------------------------------

-- name: fork_source
SELECT rid, id, workflow, version, args, concurrency_key, labels, coalesce(seed, id),
       coalesce(clock_origin, created_at),
       (SELECT count(*) FROM steps AS s WHERE s.run_rid = runs.rid),
       (SELECT min(s.pos) FROM steps AS s WHERE s.run_rid = runs.rid AND s.status = 'pending')
FROM runs WHERE id = ?;

-- name: fork_insert_run
INSERT INTO runs (id, workflow, version, shard, status, args, created_at, updated_at,
                  concurrency_key, labels, seed, clock_origin, forked_from, forked_at)
VALUES (:id, :workflow, :version, :shard, 'running', :args, :now, :now, :concurrency_key,
        :labels, :seed, :clock_origin, :forked_from, :forked_at)
RETURNING rid;

-- name: fork_copy_steps
-- The kept prefix, results numbered 1..k in their recorded order.
INSERT INTO steps (run_rid, pos, kind, name, fingerprint, args, status, attempts, result, error,
                   seq, created_at, finished_at, limit_key)
SELECT :new_rid, pos, kind, name, fingerprint, args, status, attempts, result, error,
       row_number() OVER (ORDER BY seq), created_at, finished_at, limit_key
FROM steps WHERE run_rid = :old_rid AND pos < :point AND seq IS NOT NULL;

-- name: fork_finish
UPDATE runs SET last_seq = (SELECT count(*) FROM steps WHERE run_rid = :rid)
WHERE rid = :rid
RETURNING shard, last_seq;

-- --- cancel, resume, fail, purge by rid -------------------------------------------------------------

-- name: cancel_run_by_rid
UPDATE runs SET status = 'cancelled', finished_at = :now, updated_at = :now, error = :error
WHERE rid = :rid AND status IN ('running', 'parked')
RETURNING rid;

-- name: resume_run_by_rid
UPDATE runs SET status = 'running', error = NULL, updated_at = :now
WHERE rid = :rid AND status = 'parked'
RETURNING rid, shard, last_seq;

-- name: fail_parked_run_by_rid
UPDATE runs SET status = 'failed', error = :error, finished_at = :now, updated_at = :now
WHERE rid = :rid AND status = 'parked'
RETURNING rid;

-- name: unpark_unregistered_tasks
-- Steps held back because their name was not registered (Engine._execute) may run again.
UPDATE tasks SET parked = NULL WHERE run_rid = ? AND parked = 'unregistered';

-- name: purge_in_create
CREATE TEMP TABLE IF NOT EXISTS purge_in (rid INTEGER PRIMARY KEY);

-- name: purge_in_clear
DELETE FROM temp.purge_in;

-- name: purge_in_fill
-- Finished runs only. The newest run of the file is never purged: SQLite gives a new row
-- max(rid) + 1, so keeping it keeps rids from ever being reused (caches and the cutoff of an
-- action rely on that).
INSERT INTO temp.purge_in (rid)
SELECT rid FROM runs
WHERE rid IN (SELECT value FROM json_each(:rids))
  AND status IN ('succeeded', 'failed', 'cancelled')
  AND rid < (SELECT max(rid) FROM runs);

-- name: purge_steps
DELETE FROM steps WHERE run_rid IN (SELECT rid FROM temp.purge_in);

-- name: purge_tasks
DELETE FROM tasks WHERE run_rid IN (SELECT rid FROM temp.purge_in);

-- name: purge_timers
DELETE FROM timers WHERE run_rid IN (SELECT rid FROM temp.purge_in);

-- name: purge_replays
DELETE FROM replays WHERE run_rid IN (SELECT rid FROM temp.purge_in);

-- name: purge_mailbox
DELETE FROM mailbox WHERE run_rid IN (SELECT rid FROM temp.purge_in);

-- name: purge_waits
DELETE FROM waits WHERE run_rid IN (SELECT rid FROM temp.purge_in);

-- name: purge_events
DELETE FROM run_events WHERE run_rid IN (SELECT rid FROM temp.purge_in);

-- name: purge_runs
DELETE FROM runs WHERE rid IN (SELECT rid FROM temp.purge_in);

-- name: incremental_vacuum
-- A pragma takes no bound parameters: {pages} is formatted in, an int.
PRAGMA incremental_vacuum({pages});

-- name: freelist_count
SELECT freelist_count FROM pragma_freelist_count;

-- name: auto_vacuum_mode
SELECT auto_vacuum FROM pragma_auto_vacuum;

-- --- actions by filter ---------------------------------------------------------------------------

-- name: open_action
SELECT id, cutoff_rid, cursor_rid, filter, acted, skipped FROM run_actions
WHERE action = ? AND spec = ? AND phase = 'open'
ORDER BY id DESC LIMIT 1;

-- name: insert_action
INSERT INTO run_actions (action, spec, filter, phase, cutoff_rid, created_at, updated_at)
VALUES (:action, :spec, :filter, 'open', (SELECT coalesce(max(rid), 0) FROM runs), :now, :now)
RETURNING id, cutoff_rid;

-- name: advance_action
UPDATE run_actions
SET cursor_rid = :cursor, acted = acted + :acted, skipped = skipped + :skipped,
    phase = :phase, updated_at = :now
WHERE id = :id;

-- name: select_action
SELECT id, action, spec, filter, phase, cutoff_rid, cursor_rid, acted, skipped, created_at,
       updated_at
FROM run_actions WHERE id = ?;

-- name: run_for_repair
SELECT rid, status, (SELECT count(*) FROM steps AS s WHERE s.run_rid = runs.rid)
FROM runs WHERE id = ?;

-- name: set_auto_vacuum_incremental
PRAGMA auto_vacuum = INCREMENTAL;

-- name: vacuum
VACUUM;

-- name: page_stats
SELECT (SELECT page_count FROM pragma_page_count), (SELECT page_size FROM pragma_page_size);

-- name: forget_done_actions
DELETE FROM run_actions WHERE phase = 'done' AND updated_at < ?;
