-- Child workflows (executor/store/children.py).

-- name: insert_child_run
-- A child (or a detached start) of the run :parent. Its id is derived from the parent's id and
-- journal position, so a replayed commit never starts it twice.
INSERT INTO runs (id, workflow, version, shard, status, args, created_at, updated_at,
                  concurrency_key, parent_rid, parent_pos, root_rid)
SELECT :id, :workflow, NULL, :shard, 'running', :args, :now, :now,
       p.concurrency_key,
       CASE WHEN :attached THEN p.rid END,
       CASE WHEN :attached THEN :pos END,
       CASE WHEN :attached THEN coalesce(p.root_rid, p.rid) END
FROM runs AS p WHERE p.rid = :parent
ON CONFLICT DO NOTHING
RETURNING rid, shard;

-- name: insert_first_replay
INSERT INTO replays (run_rid, shard, seq, created_at) VALUES (?, ?, 0, ?)
ON CONFLICT (run_rid) DO NOTHING;

-- name: family_of_run
-- Whether the run has children (most runs have none: the walk below is then skipped, it costs
-- ten times this look-up), and its parent's entry if it is an attached child.
SELECT EXISTS (SELECT 1 FROM runs AS c WHERE c.parent_rid = r.rid), r.id, r.parent_rid, r.parent_pos
FROM runs AS r WHERE r.rid = ?;

-- name: cancel_descendants
-- Every running or parked run below :rid, however deep, in one statement: with the parent's own
-- cancel in the same transaction, no grandchild can be created after the walk (a child's replay
-- commit checks that its run is still running, and SQLite runs one writer at a time).
WITH RECURSIVE tree (rid) AS (
    SELECT rid FROM runs WHERE parent_rid = :rid
    UNION ALL
    SELECT r.rid FROM runs AS r JOIN tree AS t ON r.parent_rid = t.rid
)
UPDATE runs SET status = 'cancelled', finished_at = :now, updated_at = :now, error = :error
WHERE rid IN (SELECT rid FROM tree) AND status IN ('running', 'parked')
RETURNING rid;

-- name: children_of_run
SELECT c.id, c.parent_pos, c.workflow, c.status, c.created_at, c.finished_at
FROM runs AS p JOIN runs AS c ON c.parent_rid = p.rid
WHERE p.id = ? ORDER BY c.parent_pos;
