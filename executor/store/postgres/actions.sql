-- Repairing runs (executor/store/actions.py), PostgreSQL: the statements of
-- store/sqlite/actions.sql with the same names and parameters. The working sets of a retry and a
-- purge are session temp tables here too (pg_temp), created once per connection.
-- Parameters that may be NULL, or are text compared with NULL, carry a cast: PostgreSQL cannot
-- infer the type of a bare `$1 IS NULL`.

-- --- retry in place ------------------------------------------------------------------------------

-- name: retry_in_create
CREATE TEMP TABLE IF NOT EXISTS retry_in (
    rid   bigint PRIMARY KEY,
    point bigint NOT NULL      -- the first journal position dropped (run again)
);

-- name: retry_in_clear
DELETE FROM pg_temp.retry_in;

-- name: retry_in_fill
-- The runs (rids as a JSON array) that can be retried, with the position to restart from: by
-- default the first one that did not succeed; else the given from_step, lowered to the first position
-- still waiting for a result, so no kept step is pending (it would have no task).
INSERT INTO pg_temp.retry_in (rid, point)
SELECT r.rid,
       CASE WHEN %(from_step)s::bigint IS NULL THEN
           coalesce((SELECT min(s.pos) FROM steps AS s
                     WHERE s.run_rid = r.rid AND s.status != 'succeeded'),
                    (SELECT count(*) FROM steps AS s WHERE s.run_rid = r.rid))
       ELSE
           least(%(from_step)s, coalesce((SELECT min(s.pos) FROM steps AS s
                                          WHERE s.run_rid = r.rid AND s.status = 'pending'),
                                         %(from_step)s))
       END
FROM runs AS r
WHERE r.rid IN (SELECT value::bigint FROM jsonb_array_elements_text(%(rids)s::jsonb))
  AND r.status IN ('failed', 'cancelled', 'parked')
-- Several writers here (SQLite has one): the runs stay locked until the retry commits, so an
-- engine recording a parked run's step, or a purge, waits for it and then sees the new state.
-- Locked in rid order, as every batch of runs is.
ORDER BY r.rid
FOR UPDATE OF r;

-- name: retry_drop_steps
DELETE FROM steps
WHERE run_rid IN (SELECT rid FROM pg_temp.retry_in)
  AND pos >= (SELECT point FROM pg_temp.retry_in WHERE rid = steps.run_rid);

-- name: retry_drop_tasks
-- In-flight ones too: their claim no longer holds a task, so a late result is dropped.
DELETE FROM tasks WHERE run_rid IN (SELECT rid FROM pg_temp.retry_in);

-- name: retry_drop_timers
DELETE FROM timers WHERE run_rid IN (SELECT rid FROM pg_temp.retry_in);

-- name: retry_drop_replays
DELETE FROM replays WHERE run_rid IN (SELECT rid FROM pg_temp.retry_in);

-- name: retry_drop_waits
DELETE FROM waits WHERE run_rid IN (SELECT rid FROM pg_temp.retry_in);

-- name: retry_unread_messages
-- Messages taken by waits at dropped positions are unread again: the new attempt's waits take
-- them (as a reset reapplies signals).
UPDATE mailbox SET consumed_pos = NULL
WHERE run_rid IN (SELECT rid FROM pg_temp.retry_in)
  AND consumed_pos >= (SELECT point FROM pg_temp.retry_in WHERE rid = mailbox.run_rid);

-- name: retry_drop_events
-- Values published from dropped positions: the new attempt publishes its own.
DELETE FROM run_events
WHERE run_rid IN (SELECT rid FROM pg_temp.retry_in)
  AND pos >= (SELECT point FROM pg_temp.retry_in WHERE rid = run_events.run_rid);

-- name: retry_children_create
CREATE TEMP TABLE IF NOT EXISTS retry_children (rid bigint PRIMARY KEY);

-- name: retry_children_clear
DELETE FROM pg_temp.retry_children;

-- name: retry_children_fill
-- The children (and theirs, however deep) started at dropped positions: they go away with them.
INSERT INTO pg_temp.retry_children (rid)
WITH RECURSIVE tree (rid) AS (
    SELECT c.rid FROM runs AS c JOIN pg_temp.retry_in AS b ON c.parent_rid = b.rid
    WHERE c.parent_pos >= b.point
    UNION ALL
    SELECT r.rid FROM runs AS r JOIN tree AS t ON r.parent_rid = t.rid
)
SELECT DISTINCT rid FROM tree
ON CONFLICT DO NOTHING;

-- name: retry_cancel_children
UPDATE runs SET status = 'cancelled', finished_at = %(now)s, updated_at = %(now)s,
                error = %(error)s
WHERE rid IN (SELECT rid FROM pg_temp.retry_children) AND status IN ('running', 'parked');

-- name: retry_children_queued_tasks
DELETE FROM tasks
WHERE run_rid IN (SELECT rid FROM pg_temp.retry_children) AND claim_token IS NULL;

-- name: retry_children_timers
DELETE FROM timers WHERE run_rid IN (SELECT rid FROM pg_temp.retry_children);

-- name: retry_children_waits
DELETE FROM waits WHERE run_rid IN (SELECT rid FROM pg_temp.retry_children);

-- name: retry_children_replays
DELETE FROM replays WHERE run_rid IN (SELECT rid FROM pg_temp.retry_children);

-- name: retry_detach_children
-- The new attempt starts its own children at those positions (their ids carry the generation);
-- the old ones no longer report to the parent.
UPDATE runs SET parent_rid = NULL, parent_pos = NULL
WHERE parent_rid IN (SELECT rid FROM pg_temp.retry_in)
  AND parent_pos >= (SELECT point FROM pg_temp.retry_in WHERE rid = runs.parent_rid);

-- name: retry_renumber
-- The kept results keep their relative order, numbered 1..k.
UPDATE steps SET seq = n.rn
FROM (
    SELECT s.run_rid AS rid, s.pos AS pos,
           row_number() OVER (PARTITION BY s.run_rid ORDER BY s.seq) AS rn
    FROM steps AS s
    WHERE s.run_rid IN (SELECT rid FROM pg_temp.retry_in) AND s.seq IS NOT NULL
) AS n
WHERE steps.run_rid = n.rid AND steps.pos = n.pos;

-- name: retry_runs
UPDATE runs
SET status = 'running', result = NULL, error = NULL, finished_at = NULL, updated_at = %(now)s,
    generation = generation + 1,
    last_seq = (SELECT count(*) FROM steps AS s WHERE s.run_rid = runs.rid AND s.seq IS NOT NULL)
WHERE rid IN (SELECT rid FROM pg_temp.retry_in);

-- name: retry_queue_replays
INSERT INTO replays (run_rid, shard, seq, created_at)
SELECT rid, shard, last_seq, %(now)s FROM runs WHERE rid IN (SELECT rid FROM pg_temp.retry_in);

-- name: retry_done
SELECT rid, point FROM pg_temp.retry_in ORDER BY rid;

-- --- fork ----------------------------------------------------------------------------------------

-- name: fork_source
SELECT rid, id, workflow, version, args, concurrency_key, labels, coalesce(seed, id),
       coalesce(clock_origin, created_at),
       (SELECT count(*) FROM steps AS s WHERE s.run_rid = runs.rid),
       (SELECT min(s.pos) FROM steps AS s WHERE s.run_rid = runs.rid AND s.status = 'pending')
FROM runs WHERE id = %s
-- The journal copied is the one read here: a retry of the source (which locks it) waits.
FOR SHARE;

-- name: fork_insert_run
INSERT INTO runs (id, workflow, version, shard, status, args, created_at, updated_at,
                  concurrency_key, labels, seed, clock_origin, forked_from, forked_at)
VALUES (%(id)s, %(workflow)s, %(version)s, %(shard)s, 'running', %(args)s, %(now)s, %(now)s,
        %(concurrency_key)s, %(labels)s, %(seed)s, %(clock_origin)s, %(forked_from)s,
        %(forked_at)s)
RETURNING rid;

-- name: fork_copy_steps
-- The kept prefix, results numbered 1..k in their recorded order.
INSERT INTO steps (run_rid, pos, kind, name, fingerprint, args, status, attempts, result, error,
                   seq, created_at, finished_at, limit_key)
SELECT %(new_rid)s, pos, kind, name, fingerprint, args, status, attempts, result, error,
       row_number() OVER (ORDER BY seq), created_at, finished_at, limit_key
FROM steps WHERE run_rid = %(old_rid)s AND pos < %(point)s AND seq IS NOT NULL;

-- name: fork_finish
UPDATE runs SET last_seq = (SELECT count(*) FROM steps WHERE run_rid = %(rid)s)
WHERE rid = %(rid)s
RETURNING shard, last_seq;

-- --- cancel, resume, fail, purge by rid -------------------------------------------------------------

-- name: cancel_run_by_rid
UPDATE runs SET status = 'cancelled', finished_at = %(now)s, updated_at = %(now)s,
                error = %(error)s
WHERE rid = %(rid)s AND status IN ('running', 'parked')
RETURNING rid;

-- name: resume_run_by_rid
UPDATE runs SET status = 'running', error = NULL, updated_at = %(now)s
WHERE rid = %(rid)s AND status = 'parked'
RETURNING rid, shard, last_seq;

-- name: fail_parked_run_by_rid
UPDATE runs SET status = 'failed', error = %(error)s, finished_at = %(now)s,
                updated_at = %(now)s
WHERE rid = %(rid)s AND status = 'parked'
RETURNING rid;

-- name: unpark_unregistered_tasks
-- Steps held back because their name was not registered (Engine._execute) may run again.
UPDATE tasks SET parked = NULL WHERE run_rid = %s AND parked = 'unregistered';

-- name: purge_in_create
CREATE TEMP TABLE IF NOT EXISTS purge_in (rid bigint PRIMARY KEY);

-- name: purge_in_clear
DELETE FROM pg_temp.purge_in;

-- name: purge_in_fill
-- Finished runs only. Unlike SQLite, the newest run may go too: rids come from an identity
-- sequence, which never hands out a number twice, whatever is deleted.
INSERT INTO pg_temp.purge_in (rid)
SELECT rid FROM runs
WHERE rid IN (SELECT value::bigint FROM jsonb_array_elements_text(%(rids)s::jsonb))
  AND status IN ('succeeded', 'failed', 'cancelled')
-- Locked until the purge commits: a retry of one of them that committed first made it running
-- again, and the purge, re-reading the row after the wait, leaves it.
ORDER BY rid
FOR UPDATE;

-- name: purge_steps
DELETE FROM steps WHERE run_rid IN (SELECT rid FROM pg_temp.purge_in);

-- name: purge_tasks
DELETE FROM tasks WHERE run_rid IN (SELECT rid FROM pg_temp.purge_in);

-- name: purge_timers
DELETE FROM timers WHERE run_rid IN (SELECT rid FROM pg_temp.purge_in);

-- name: purge_replays
DELETE FROM replays WHERE run_rid IN (SELECT rid FROM pg_temp.purge_in);

-- name: purge_mailbox
DELETE FROM mailbox WHERE run_rid IN (SELECT rid FROM pg_temp.purge_in);

-- name: purge_waits
DELETE FROM waits WHERE run_rid IN (SELECT rid FROM pg_temp.purge_in);

-- name: purge_events
DELETE FROM run_events WHERE run_rid IN (SELECT rid FROM pg_temp.purge_in);

-- name: purge_runs
DELETE FROM runs WHERE rid IN (SELECT rid FROM pg_temp.purge_in);

-- --- actions by filter ---------------------------------------------------------------------------

-- name: lock_action
-- PostgreSQL only: two operators beginning the same action (action and spec) at once take turns
-- here, so the second continues the first's instead of opening another beside it, as SQLite's
-- write lock makes it. Held until the transaction ends; keyed by executor's id and the action
-- (a word) followed by its spec (JSON, which starts with a brace: the two never run together).
SELECT pg_advisory_xact_lock(1163412803, hashtext(%s || %s));

-- name: open_action
SELECT id, cutoff_rid, cursor_rid, filter, acted, skipped FROM run_actions
WHERE action = %s AND spec = %s AND phase = 'open'
ORDER BY id DESC LIMIT 1;

-- name: insert_action
INSERT INTO run_actions (action, spec, filter, phase, cutoff_rid, created_at, updated_at)
VALUES (%(action)s, %(spec)s, %(filter)s, 'open', (SELECT coalesce(max(rid), 0) FROM runs),
        %(now)s, %(now)s)
RETURNING id, cutoff_rid;

-- name: advance_action
UPDATE run_actions
SET cursor_rid = %(cursor)s, acted = acted + %(acted)s, skipped = skipped + %(skipped)s,
    phase = %(phase)s, updated_at = %(now)s
WHERE id = %(id)s;

-- name: select_action
SELECT id, action, spec, filter, phase, cutoff_rid, cursor_rid, acted, skipped, created_at,
       updated_at
FROM run_actions WHERE id = %s;

-- name: run_for_repair
SELECT rid, status, (SELECT count(*) FROM steps AS s WHERE s.run_rid = runs.rid)
FROM runs WHERE id = %s;

-- name: forget_done_actions
DELETE FROM run_actions WHERE phase = 'done' AND updated_at < %s;

-- --- giving space back ---------------------------------------------------------------------------

-- name: vacuum
-- `executor vacuum`: rewrite every table of the database to its smallest size (VACUUM FULL
-- takes each table's exclusive lock while it copies it: for a maintenance window, as on SQLite)
-- and refresh the planner's statistics. Not in a transaction: VACUUM refuses to run inside one.
VACUUM (FULL, ANALYZE);

-- name: page_stats
-- The database's size as (pages, page size), as SQLite reports it.
SELECT pg_database_size(current_database()) / current_setting('block_size')::bigint,
       current_setting('block_size')::bigint;
