-- PostgreSQL only: the hot transactions (claim, record, the replay commit), each one statement
-- over arrays (unnest), run by store/pghot.py (scale-out research 4.2 and 7.2). One statement is
-- one round trip and one transaction; a statement per row costs three times the server CPU.
-- Two shapes EXPLAIN showed to be quadratic are avoided: a join between two CTEs (the planner
-- estimates a data-modifying CTE at one row and loops over the other), and an UPDATE by key of
-- rows a CTE picked (a hash join over a scan of the table): rows are updated by ctid instead.
--
-- The lease fence (store/leases.py) is in each statement, as the CTE `lease`: with %(fenced)s,
-- only shards whose row still names us (%(me)s) at the epoch we hold are written. It locks
-- those rows FOR SHARE (not FOR KEY SHARE: owner and epoch are not key columns) until the
-- statement commits, so a thief's epoch bump waits for us, and we see its epoch if it won.

-- name: claim_batch
-- Up to n queued tasks of each (shard, n), oldest workflow first, marked with our claim; their
-- steps count an attempt. Nothing is claimed once the stored epoch has moved past ours.
WITH lease AS (          -- the shards we still own at the epochs we hold (store/leases.owned)
    SELECT l.shard FROM shard_leases AS l
    JOIN unnest(%(lshards)s::bigint[], %(lepochs)s::bigint[]) AS e (shard, epoch)
      ON l.shard = e.shard AND l.epoch = e.epoch
    WHERE %(fenced)s AND l.owner = %(me)s
    FOR SHARE OF l
), want AS (
    SELECT w.shard, w.n FROM unnest(%(shards)s::bigint[], %(limits)s::bigint[]) AS w (shard, n)
    WHERE (SELECT value FROM meta WHERE key = 'epoch') = %(epoch)s
      AND (NOT %(fenced)s OR w.shard = ANY (ARRAY(SELECT shard FROM lease)))
), picked AS (
    SELECT t.ctid AS tid FROM want AS w CROSS JOIN LATERAL (
        SELECT ctid FROM tasks
        WHERE shard = w.shard AND claim_token IS NULL AND parked IS NULL
          AND not_before <= %(now)s
        ORDER BY order_rid, run_rid, pos
        LIMIT w.n
        FOR UPDATE SKIP LOCKED
    ) AS t
), claimed AS (
    UPDATE tasks AS t
    SET claim_token = %(token)s, claim_engine = %(engine)s, claim_epoch = %(epoch)s,
        claimed_at = %(now)s
    WHERE t.ctid = ANY (ARRAY(SELECT tid FROM picked))
    RETURNING t.run_rid, t.pos, t.shard, t.attempt, t.order_rid, t.not_before < 0 AS unparked
)
UPDATE steps AS s SET attempts = s.attempts + 1, started_at = coalesce(s.started_at, %(now)s)
FROM claimed AS c JOIN runs AS r ON r.rid = c.run_rid
WHERE s.run_rid = c.run_rid AND s.pos = c.pos
RETURNING s.run_rid, s.pos, c.shard, c.attempt, s.name, s.args, s.limit_key, r.id, r.workflow,
          c.unparked, r.concurrency_key, c.order_rid;

-- name: record_batch
-- Finished steps (journal.record_one's fences, for the whole batch): our claim still holds the
-- task (its row goes in this statement: invariants 1 and 3), the step is still pending, the run
-- running or parked; each result gets the run's next seq, and the run a replay entry (invariant
-- 2). Other writers (a signal, a cancel) may change a run after this statement's snapshot: the
-- runs are numbered in `bumped`, which re-reads each row under its lock (its status and
-- last_seq as committed now), and the steps take their seqs from what it returns, looked up by
-- rid in one JSON object (joining the two CTEs would be a nested loop of one over the other).
-- A step whose run is no longer running or parked loses its task and writes nothing. Returns
-- each recorded result's place in the batch and seq, and a last row with the shards the fence
-- let through.
WITH lease AS (          -- the shards we still own at the epochs we hold (store/leases.owned)
    SELECT l.shard FROM shard_leases AS l
    JOIN unnest(%(lshards)s::bigint[], %(lepochs)s::bigint[]) AS e (shard, epoch)
      ON l.shard = e.shard AND l.epoch = e.epoch
    WHERE %(fenced)s AND l.owner = %(me)s
    FOR SHARE OF l
), b AS (
    SELECT * FROM unnest(%(i)s::bigint[], %(rid)s::bigint[], %(pos)s::bigint[],
                         %(token)s::bigint[], %(status)s::text[], %(result)s::bytea[],
                         %(error)s::bytea[], %(shard)s::bigint[])
        AS b (i, rid, pos, token, status, result, error, shard)
    WHERE NOT %(fenced)s OR b.shard = ANY (ARRAY(SELECT shard FROM lease))
), firsts AS (          -- a step twice in one batch (with one claim) counts once
    SELECT DISTINCT ON (rid, pos, token) * FROM b ORDER BY rid, pos, token, i
), fenced AS (
    DELETE FROM tasks AS t USING firsts AS b
    WHERE t.run_rid = b.rid AND t.pos = b.pos AND t.claim_token = b.token
    RETURNING b.*
), ok AS (              -- k: the step's place among the run's results in this batch
    SELECT f.i, f.rid, f.pos, f.status, f.result, f.error,
           row_number() OVER (PARTITION BY f.rid ORDER BY f.i) AS k
    FROM fenced AS f
    JOIN steps AS s ON s.run_rid = f.rid AND s.pos = f.pos AND s.status = 'pending'
), bumped AS (
    UPDATE runs AS r SET last_seq = r.last_seq + m.n, updated_at = %(now)s
    FROM (SELECT rid, count(*) AS n FROM ok GROUP BY rid) AS m
    WHERE r.rid = m.rid AND r.status IN ('running', 'parked')
    RETURNING r.rid, r.shard, r.last_seq, r.last_seq - m.n AS base
), base AS (           -- rid -> the run's last seq before this batch
    SELECT coalesce(jsonb_object_agg(rid, base), jsonb_build_object()) AS of FROM bumped
), upd AS (
    UPDATE steps AS s
    SET status = n.status, result = n.result, error = coalesce(n.error, s.error),
        finished_at = %(now)s, seq = (m.of ->> n.rid::text)::bigint + n.k
    FROM ok AS n, base AS m
    WHERE s.run_rid = n.rid AND s.pos = n.pos AND (m.of ->> n.rid::text) IS NOT NULL
), rep AS (
    INSERT INTO replays (run_rid, shard, seq, created_at)
    SELECT rid, shard, last_seq, %(now)s FROM bumped
    ON CONFLICT (run_rid) DO UPDATE SET seq = greatest(replays.seq, excluded.seq)
)
SELECT n.i, (m.of ->> n.rid::text)::bigint + n.k, NULL::bigint[]
FROM ok AS n, base AS m
WHERE (m.of ->> n.rid::text) IS NOT NULL
UNION ALL               -- and the shards the fence let through (i = -1)
SELECT -1, NULL, ARRAY(SELECT shard FROM lease);

-- name: commit_batch
-- What a batch of replays produced, for outputs whose new steps are all plain steps (a task
-- each) and that finish with no new step or do not finish: store/pghot.py sends the rest through
-- the statements of repository.commit_each. `live` locks each run still running in the
-- generation its replay read (run_state_for_commit's lock); only those are written. A finished
-- run's queued tasks, timers and waits go with it, in this statement; a finished run with a
-- parent or children is left alone here ("deferred": its tree is finished by
-- children.run_left, in the transaction of the per-row path). Returns each live run, whether
-- it was deferred, and the tasks queued; a row with the shards the fence let through (rid -1);
-- and a row per task claimed here (-2, its run and position, the run's id, workflow and
-- concurrency key).
-- Claiming (%(stake)s, per new step: a slot its run holds; pghot._to_claim): the step's task is
-- inserted already claimed with %(token)s, as claim_batch would claim it, and its step counts
-- the attempt, when the stored epoch is still ours and no unclaimed task of its shard that a
-- claim would take first is queued (one probe of tasks_queued; this statement's own inserts
-- are not in its snapshot, and pghot._to_claim keeps a run's claimed steps a prefix of its new
-- ones). Rows this statement inserts cannot be updated by it: hence claimed when inserted.
WITH lease AS (          -- the shards we still own at the epochs we hold (store/leases.owned)
    SELECT l.shard FROM shard_leases AS l
    JOIN unnest(%(lshards)s::bigint[], %(lepochs)s::bigint[]) AS e (shard, epoch)
      ON l.shard = e.shard AND l.epoch = e.epoch
    WHERE %(fenced)s AND l.owner = %(me)s
    FOR SHARE OF l
), o AS (
    SELECT * FROM unnest(%(rid)s::bigint[], %(gen)s::bigint[], %(consumed)s::bigint[],
                         %(finished)s::text[], %(result)s::bytea[], %(error)s::bytea[],
                         %(shard)s::bigint[])
        AS o (rid, gen, consumed, finished, result, error, shard)
    WHERE NOT %(fenced)s OR o.shard = ANY (ARRAY(SELECT shard FROM lease))
), live AS (
    SELECT r.rid,
           o.finished IS NOT NULL
           AND (r.parent_rid IS NOT NULL
                OR EXISTS (SELECT 1 FROM runs AS c WHERE c.parent_rid = r.rid)) AS deferred
    FROM o JOIN runs AS r ON r.rid = o.rid
    WHERE r.rid = ANY (%(rid)s::bigint[])    -- an index scan of runs, not a hash of all of it
      AND r.status = 'running' AND r.generation = o.gen
    FOR NO KEY UPDATE OF r
), act AS (             -- the live runs this statement writes
    SELECT rid FROM live WHERE NOT deferred
), n AS MATERIALIZED (  -- materialized: `take` is read twice below, computed once
    SELECT n.*,
           CASE WHEN n.stake THEN
               (SELECT value FROM meta WHERE key = 'epoch') = %(epoch)s::bigint
               AND NOT EXISTS (  -- the shard's first queued task goes before this one
                   SELECT 1 FROM (
                       SELECT t.order_rid, t.run_rid, t.pos FROM tasks AS t
                       WHERE t.shard = r.shard AND t.claim_token IS NULL AND t.parked IS NULL
                       ORDER BY t.order_rid, t.run_rid, t.pos
                       LIMIT 1
                   ) AS f
                   WHERE (f.order_rid, f.run_rid, f.pos) < (coalesce(r.root_rid, r.rid), r.rid, n.pos))
           ELSE false END AS take
    FROM unnest(%(srid)s::bigint[], %(spos)s::bigint[], %(sname)s::text[],
                %(sfp)s::text[], %(sargs)s::bytea[], %(skey)s::text[], %(stake)s::boolean[])
        AS n (rid, pos, name, fp, args, limit_key, stake)
    JOIN runs AS r ON r.rid = n.rid
    WHERE n.rid = ANY (ARRAY(SELECT rid FROM act))
), ins AS (
    INSERT INTO steps (run_rid, pos, kind, name, fingerprint, args, status, created_at, limit_key,
                       attempts, started_at)
    SELECT rid, pos, 'step', name, fp, args, 'pending', %(now)s, limit_key,
           CASE WHEN take THEN 1 ELSE 0 END,
           CASE WHEN take THEN %(now)s::double precision END
    FROM n
    ON CONFLICT DO NOTHING
    RETURNING run_rid, pos, attempts > 0 AS take
), tk AS (
    INSERT INTO tasks (run_rid, pos, shard, order_rid, claim_token, claim_engine, claim_epoch,
                       claimed_at)
    SELECT i.run_rid, i.pos, r.shard, coalesce(r.root_rid, r.rid),
           CASE WHEN i.take THEN %(token)s::bigint END,
           CASE WHEN i.take THEN %(engine)s::bigint END,
           CASE WHEN i.take THEN %(epoch)s::bigint END,
           CASE WHEN i.take THEN %(now)s::double precision END
    FROM ins AS i JOIN runs AS r ON r.rid = i.run_rid
    RETURNING run_rid, pos, claim_token IS NOT NULL AS claimed
), gone AS (            -- finished here
    UPDATE runs AS r
    SET status = o.finished, result = o.result, error = o.error, finished_at = %(now)s,
        updated_at = %(now)s
    FROM o
    WHERE r.rid = ANY (ARRAY(SELECT rid FROM act))
      AND r.rid = o.rid AND o.finished IS NOT NULL AND r.status = 'running'
    RETURNING r.rid
), drop_tasks AS (
    DELETE FROM tasks WHERE run_rid = ANY (ARRAY(SELECT rid FROM gone)) AND claim_token IS NULL
), drop_timers AS (
    DELETE FROM timers WHERE run_rid = ANY (ARRAY(SELECT rid FROM gone))
), drop_waits AS (
    DELETE FROM waits WHERE run_rid = ANY (ARRAY(SELECT rid FROM gone))
), done AS (            -- the replay entries consumed: all of a finished run's
    DELETE FROM replays AS p USING o
    WHERE p.run_rid = ANY (ARRAY(SELECT rid FROM act))
      AND p.run_rid = o.rid AND (o.finished IS NOT NULL OR p.seq <= o.consumed)
)
SELECT rid, deferred, (SELECT count(*) FROM tk), NULL::bigint[], NULL::bigint, NULL::text,
       NULL::text, NULL::text
FROM live
UNION ALL               -- the shards the fence let through (rid = -1)
SELECT -1, false, 0, ARRAY(SELECT shard FROM lease), NULL, NULL, NULL, NULL
UNION ALL               -- the tasks claimed here (-2)
SELECT -2, false, c.run_rid, NULL, c.pos, r.id, r.workflow, r.concurrency_key
FROM tk AS c JOIN runs AS r ON r.rid = c.run_rid
WHERE c.claimed;

-- name: select_runs_for_replay
-- Each run of a batch as a full replay needs it (journal.load_runs), with the rid first.
SELECT rid, id, workflow, version, shard, status, args, created_at, last_seq, generation,
       coalesce(seed, id), coalesce(clock_origin, created_at), coalesce(forked_at, 0)
FROM runs WHERE rid = ANY (%s::bigint[]);

-- name: select_journals
-- The journals of a batch of runs, each run's entries in position order after its rid. A
-- child's result is not copied into its parent's journal: it is read from the child's row.
SELECT s.run_rid, s.pos, s.kind, s.name, s.fingerprint, s.status,
       CASE WHEN s.kind = 'child' AND s.status = 'succeeded'
            THEN (SELECT c.result FROM runs AS c
                  WHERE c.parent_rid = s.run_rid AND c.parent_pos = s.pos)
            ELSE s.result END,
       s.error, s.seq, s.finished_at
FROM steps AS s WHERE s.run_rid = ANY (%s::bigint[]) ORDER BY s.run_rid, s.pos;
