-- Child workflows (ctx.child, ctx.start).
-- steps.kind gains two values: child (ctx.child: recorded when the child finishes) and start
-- (ctx.start, a detached run: settled when written).

-- A child run's parent and the parent's journal position that waits for it; NULL for a root
-- (and for a detached start, which is a root of its own).
ALTER TABLE runs ADD COLUMN parent_rid INTEGER;
ALTER TABLE runs ADD COLUMN parent_pos INTEGER;
-- The root of a child's tree (NULL: the run is a root): its tasks queue by the root's creation.
ALTER TABLE runs ADD COLUMN root_rid INTEGER;
CREATE UNIQUE INDEX runs_parent ON runs (parent_rid, parent_pos) WHERE parent_rid IS NOT NULL;

-- The FIFO key of a task: its run's root (the run itself for roots). A child started late by an
-- old parent queues with its parent's generation of work, not behind every run started since.
ALTER TABLE tasks ADD COLUMN order_rid INTEGER NOT NULL DEFAULT 0;
UPDATE tasks SET order_rid = run_rid;
DROP INDEX tasks_queued;
CREATE INDEX tasks_queued ON tasks (shard, order_rid, run_rid, pos, not_before)
    WHERE claim_token IS NULL AND parked IS NULL;
