-- Quotas for API-bound steps (executor/engine/limits.py, docs/LIMITS.md).

-- The concurrency key a run was started with (Client.start(concurrency_key=...)); a claim reads
-- it for each of the run's tasks, so a per-key cap can hold the key's steps back.
ALTER TABLE runs ADD COLUMN concurrency_key TEXT;
-- The limit key a step was scheduled with (ctx.step(..., limit_key=...)): its own budget.
ALTER TABLE steps ADD COLUMN limit_key TEXT;
-- Parked: the name of the group whose room the task waits for (a concurrency key at its cap, a
-- limit at its concurrency, or whose next opening is too far off). A parked task is queued but
-- not claimable. Unparking sets not_before to -1, which the claim reports: the task waited
-- already, so it goes before newcomers of its group.
ALTER TABLE tasks ADD COLUMN parked TEXT;

-- The claim's index leaves parked tasks out, so a big parked backlog is never scanned, and holds
-- not_before, so skipping tasks that are not due needs no table lookup.
DROP INDEX tasks_queued;
CREATE INDEX tasks_queued ON tasks (shard, run_rid, pos, not_before)
    WHERE claim_token IS NULL AND parked IS NULL;
-- Unparking: oldest first within a group.
CREATE INDEX tasks_parked ON tasks (parked, run_rid, pos) WHERE parked IS NOT NULL;

-- Each engine's latest limits snapshot (Engine.limits_snapshot), rewritten every heartbeat
-- interval, so `executor stats` in another process can show it.
CREATE TABLE limit_state (
    engine_id  INTEGER PRIMARY KEY,
    snapshot   BLOB NOT NULL,          -- JSON
    updated_at REAL NOT NULL
);
