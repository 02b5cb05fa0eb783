-- The invariant checker's queries (executor/check.py), PostgreSQL: the same invariants as
-- store/sqlite/check.sql. Each one reads a snapshot and returns the rows that break one
-- invariant; a clean database returns no rows from any of them. SQLite's PRAGMA reads
-- (check_header, check_integrity) have no counterpart: the reader (store/reader.py) checks meta
-- when it opens the session, and PostgreSQL checks its own pages (data checksums, amcheck).

-- name: check_count_runs
SELECT count(*) FROM runs;

-- name: check_stuck_runs
-- A running run must have something that makes it progress: a task, a timer or a replay entry,
-- or be legitimately idle: waiting for a signal (with no timeout, it may wait forever) or for a
-- child that is still running (or parked).
SELECT r.id, r.last_seq,
       (SELECT count(*) FROM steps AS s WHERE s.run_rid = r.rid AND s.status = 'pending')
FROM runs AS r
WHERE r.status = 'running'
  AND NOT EXISTS (SELECT 1 FROM tasks AS t WHERE t.run_rid = r.rid)
  AND NOT EXISTS (SELECT 1 FROM timers AS m WHERE m.run_rid = r.rid)
  AND NOT EXISTS (SELECT 1 FROM replays AS p WHERE p.run_rid = r.rid)
  AND NOT EXISTS (SELECT 1 FROM waits AS w WHERE w.run_rid = r.rid)
  AND NOT EXISTS (SELECT 1 FROM runs AS c
                  WHERE c.parent_rid = r.rid AND c.status IN ('running', 'parked'))
ORDER BY r.rid;

-- name: check_lost_steps
-- A pending step of a running run must have its task (a step), its timer (a sleep) or its wait
-- rows (a wait for a signal); so must one of a parked run, since resuming it replays the
-- workflow, which waits for that step.
SELECT r.id, s.pos, s.kind, s.name, r.status
FROM steps AS s JOIN runs AS r ON r.rid = s.run_rid
WHERE r.status IN ('running', 'parked') AND s.status = 'pending'
  AND NOT EXISTS (SELECT 1 FROM tasks AS t WHERE t.run_rid = s.run_rid AND t.pos = s.pos)
  AND NOT EXISTS (SELECT 1 FROM timers AS m WHERE m.run_rid = s.run_rid AND m.pos = s.pos)
  AND NOT EXISTS (SELECT 1 FROM waits AS w WHERE w.run_rid = s.run_rid AND w.pos = s.pos)
  AND NOT EXISTS (SELECT 1 FROM runs AS c WHERE c.parent_rid = s.run_rid AND c.parent_pos = s.pos)
ORDER BY s.run_rid, s.pos;

-- name: check_tasks_of_recorded_steps
-- Recording a result deletes its task in the same transaction.
SELECT r.id, t.pos, s.name, s.status, (t.claim_token IS NOT NULL)::int
FROM tasks AS t JOIN steps AS s ON s.run_rid = t.run_rid AND s.pos = t.pos
JOIN runs AS r ON r.rid = t.run_rid
WHERE s.status != 'pending'
ORDER BY t.run_rid, t.pos;

-- name: check_timers_of_recorded_steps
SELECT r.id, m.pos, s.status
FROM timers AS m JOIN steps AS s ON s.run_rid = m.run_rid AND s.pos = m.pos
JOIN runs AS r ON r.rid = m.run_rid
WHERE s.status != 'pending'
ORDER BY m.run_rid, m.pos;

-- name: check_waits_of_recorded_steps
-- Recording a wait (a message or its timeout) deletes its wait rows in the same transaction.
SELECT r.id, w.pos, w.topic, s.status
FROM waits AS w JOIN steps AS s ON s.run_rid = w.run_rid AND s.pos = w.pos
JOIN runs AS r ON r.rid = w.run_rid
WHERE s.status != 'pending'
ORDER BY w.run_rid, w.pos;

-- name: check_unread_messages_of_waits
-- A pending wait and an unread message on its topic cannot both exist: the wait takes the
-- message when it is created, and the message goes to the wait when it is sent. Both together
-- mean a message the run will never see.
SELECT r.id, w.pos, w.topic, m.id
FROM waits AS w JOIN mailbox AS m
  ON m.run_rid = w.run_rid AND m.topic = w.topic AND m.consumed_pos IS NULL
JOIN runs AS r ON r.rid = w.run_rid
WHERE r.status IN ('running', 'parked')
ORDER BY w.run_rid, w.pos;

-- name: check_leftovers_of_finished_runs
-- Finishing or cancelling a run deletes its queued tasks and timers in the same transaction
-- (in-flight tasks stay until their engine's heartbeat cancels them).
SELECT r.id, r.status, 'queued task', t.pos
FROM tasks AS t JOIN runs AS r ON r.rid = t.run_rid
WHERE r.status IN ('succeeded', 'failed', 'cancelled') AND t.claim_token IS NULL
UNION ALL
SELECT r.id, r.status, 'timer', m.pos
FROM timers AS m JOIN runs AS r ON r.rid = m.run_rid
WHERE r.status IN ('succeeded', 'failed', 'cancelled')
UNION ALL
SELECT r.id, r.status, 'wait on ' || w.topic, w.pos
FROM waits AS w JOIN runs AS r ON r.rid = w.run_rid
WHERE r.status IN ('succeeded', 'failed', 'cancelled')
ORDER BY 1, 4;

-- name: check_seq_mismatches
-- A step has a seq exactly when its result is recorded: never a result without its place in the
-- delivery order, never a place without a result. Published values (kind event), detached
-- starts (start) and patch markers (patch) are settled when written and never delivered:
-- succeeded, without a seq.
SELECT r.id, s.pos, s.name, s.status, s.seq
FROM steps AS s JOIN runs AS r ON r.rid = s.run_rid
WHERE (s.kind NOT IN ('event', 'start', 'patch')
       AND (s.status IN ('succeeded', 'failed')) != (s.seq IS NOT NULL))
   OR (s.kind IN ('event', 'start', 'patch') AND (s.status != 'succeeded' OR s.seq IS NOT NULL))
   OR s.status NOT IN ('pending', 'succeeded', 'failed')
ORDER BY s.run_rid, s.pos;

-- name: check_duplicate_seqs
SELECT r.id, s.seq, count(*), string_agg(s.pos::text, ',' ORDER BY s.pos)
FROM steps AS s JOIN runs AS r ON r.rid = s.run_rid
WHERE s.seq IS NOT NULL
GROUP BY s.run_rid, r.id, s.seq
HAVING count(*) > 1
ORDER BY s.run_rid, s.seq;

-- name: check_seq_gaps
-- The recorded results of a run carry seqs 1..last_seq, each once.
SELECT r.id, r.last_seq, count(DISTINCT s.seq), min(s.seq), max(s.seq)
FROM runs AS r LEFT JOIN steps AS s ON s.run_rid = r.rid AND s.seq IS NOT NULL
GROUP BY r.rid
HAVING count(DISTINCT s.seq) != r.last_seq
    OR coalesce(max(s.seq), 0) != r.last_seq
    OR coalesce(min(s.seq), 1) != 1
ORDER BY r.rid;

-- name: check_position_gaps
-- A run's journal holds positions 0..n-1: the workflow numbers its calls in order.
SELECT r.id, count(*), min(s.pos), max(s.pos)
FROM steps AS s JOIN runs AS r ON r.rid = s.run_rid
GROUP BY r.rid
HAVING min(s.pos) != 0 OR max(s.pos) != count(*) - 1
ORDER BY r.rid;

-- name: check_stale_claims
-- A claim belongs to an engine that is alive: state running or draining, with a heartbeat no
-- older than the lease. Stopping or expiring an engine releases its claims in the same
-- transaction, so a claim of a stopped, dead or unknown engine is broken too.
SELECT r.id, t.pos, t.claim_engine, e.state, e.heartbeat_at
FROM tasks AS t JOIN runs AS r ON r.rid = t.run_rid
LEFT JOIN engines AS e ON e.id = t.claim_engine
WHERE t.claim_token IS NOT NULL
  AND (e.id IS NULL OR e.state NOT IN ('running', 'draining') OR e.heartbeat_at < %(stale_before)s)
ORDER BY t.run_rid, t.pos;

-- name: check_bad_replays
-- A finished run has no replay entry (finishing or cancelling deletes it), and no entry is ahead
-- of its run's journal. (A parked run may have one: a step finishing while the run is parked is
-- still recorded, and its entry is consumed without running the code.)
SELECT r.id, r.status, p.seq, r.last_seq
FROM replays AS p JOIN runs AS r ON r.rid = p.run_rid
WHERE r.status IN ('succeeded', 'failed', 'cancelled') OR p.seq > r.last_seq
ORDER BY p.run_rid;

-- name: check_dangling_rows
-- Rows that point at a run (or a step) that does not exist.
SELECT 'step', s.run_rid, s.pos FROM steps AS s
WHERE NOT EXISTS (SELECT 1 FROM runs AS r WHERE r.rid = s.run_rid)
UNION ALL
SELECT 'task', t.run_rid, t.pos FROM tasks AS t
WHERE NOT EXISTS (SELECT 1 FROM steps AS s WHERE s.run_rid = t.run_rid AND s.pos = t.pos)
UNION ALL
SELECT 'timer', m.run_rid, m.pos FROM timers AS m
WHERE NOT EXISTS (SELECT 1 FROM steps AS s WHERE s.run_rid = m.run_rid AND s.pos = m.pos)
UNION ALL
SELECT 'wait', w.run_rid, w.pos FROM waits AS w
WHERE NOT EXISTS (SELECT 1 FROM steps AS s WHERE s.run_rid = w.run_rid AND s.pos = w.pos)
UNION ALL
SELECT 'message', m.run_rid, m.id FROM mailbox AS m
WHERE NOT EXISTS (SELECT 1 FROM runs AS r WHERE r.rid = m.run_rid)
UNION ALL
SELECT 'replay entry', p.run_rid, NULL FROM replays AS p
WHERE NOT EXISTS (SELECT 1 FROM runs AS r WHERE r.rid = p.run_rid)
ORDER BY 2, 3;

-- name: check_children_done_parent_pending
-- Whatever ends a child records it in its parent's journal in the same transaction: a finished
-- child whose parent (running or parked) still waits for it would keep the parent stuck.
SELECT p.id, c.parent_pos, c.id, c.status
FROM runs AS c JOIN runs AS p ON p.rid = c.parent_rid
JOIN steps AS s ON s.run_rid = c.parent_rid AND s.pos = c.parent_pos
WHERE c.status IN ('succeeded', 'failed', 'cancelled') AND p.status IN ('running', 'parked')
  AND s.status = 'pending'
ORDER BY c.parent_rid, c.parent_pos;

-- name: check_orphan_children
-- A run that finishes cancels its unfinished children (and theirs) in the same transaction.
SELECT c.id, p.id, p.status, c.status
FROM runs AS c JOIN runs AS p ON p.rid = c.parent_rid
WHERE c.status IN ('running', 'parked') AND p.status IN ('succeeded', 'failed', 'cancelled')
ORDER BY c.rid;

-- name: check_held_tasks_of_running_runs
-- A step held back because its name was not registered parks its run in the same transaction,
-- and `resume` (or `retry`) releases it: a running run never keeps such a task, which no engine
-- would claim.
SELECT r.id, t.pos, s.name
FROM tasks AS t JOIN runs AS r ON r.rid = t.run_rid
JOIN steps AS s ON s.run_rid = t.run_rid AND s.pos = t.pos
WHERE t.parked = 'unregistered' AND r.status = 'running'
ORDER BY t.run_rid, t.pos;

-- name: check_bad_actions
-- An action by filter never moves its cursor past the last run that existed when it began, and
-- is open or done.
SELECT id, action, phase, cursor_rid, cutoff_rid FROM run_actions
WHERE cursor_rid > cutoff_rid OR phase NOT IN ('open', 'done')
   OR action NOT IN ('cancel', 'retry', 'resume', 'fail', 'purge')
ORDER BY id;
