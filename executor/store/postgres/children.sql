-- Child workflows (executor/store/children.py) on PostgreSQL: the names and parameters of
-- ../sqlite/children.sql.

-- name: insert_child_run
-- A child (or a detached start) of the run %(parent)s. Its id is derived from the parent's id
-- and journal position, so a replayed commit never starts it twice.
INSERT INTO runs (id, workflow, version, shard, status, args, created_at, updated_at,
                  concurrency_key, parent_rid, parent_pos, root_rid)
SELECT %(id)s, %(workflow)s, NULL, %(shard)s, 'running', %(args)s, %(now)s, %(now)s,
       p.concurrency_key,
       CASE WHEN %(attached)s::boolean THEN p.rid END,
       CASE WHEN %(attached)s::boolean THEN %(pos)s::bigint END,
       CASE WHEN %(attached)s::boolean THEN coalesce(p.root_rid, p.rid) END
FROM runs AS p WHERE p.rid = %(parent)s
ON CONFLICT DO NOTHING
RETURNING rid, shard;

-- name: insert_first_replay
INSERT INTO replays (run_rid, shard, seq, created_at) VALUES (%s, %s, 0, %s)
ON CONFLICT (run_rid) DO NOTHING;

-- name: family_of_run
-- Whether the run has children (most have none: the walk below is then skipped), and its
-- parent's entry if it is an attached child.
SELECT EXISTS (SELECT 1 FROM runs AS c WHERE c.parent_rid = r.rid), r.id, r.parent_rid, r.parent_pos
FROM runs AS r WHERE r.rid = %s;

-- name: cancel_descendants
-- Every running or parked run below %(rid)s, however deep, in one statement. A child's replay
-- commit locks its run (run_state_for_commit), so this waits for one creating a grandchild;
-- store/children.py repeats the statement until it finds nothing more, so that grandchild,
-- committed after this statement's snapshot, is cancelled too.
WITH RECURSIVE tree (rid) AS (
    SELECT rid FROM runs WHERE parent_rid = %(rid)s
    UNION ALL
    SELECT r.rid FROM runs AS r JOIN tree AS t ON r.parent_rid = t.rid
)
UPDATE runs SET status = 'cancelled', finished_at = %(now)s, updated_at = %(now)s,
    error = %(error)s
WHERE rid IN (SELECT rid FROM tree) AND status IN ('running', 'parked')
RETURNING rid;

-- name: children_of_run
SELECT c.id, c.parent_pos, c.workflow, c.status, c.created_at, c.finished_at
FROM runs AS p JOIN runs AS c ON c.parent_rid = p.rid
WHERE p.id = %s ORDER BY c.parent_pos;
