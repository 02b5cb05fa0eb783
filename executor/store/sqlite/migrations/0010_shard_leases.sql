-- Shard leases (issue 17): which engine owns which shard, and the fencing token of that ownership.
-- Only the owner claims, records, replays and fires timers for a shard, and every one of those
-- transactions checks (shard, owner, epoch) here: a paused old owner cannot write after losing
-- it. On SQLite one engine owns every shard (the epoch of a shard still rises on every change of
-- owner), so the engine has one code path. Rows are created for every shard when an engine
-- starts (store/leases.ensure): a new file learns its shard count after its migrations ran.
CREATE TABLE shard_leases (
    shard      INTEGER PRIMARY KEY,
    owner      INTEGER,                    -- engines.id; NULL: free
    epoch      INTEGER NOT NULL DEFAULT 0, -- +1 on every change of owner, never down
    expires_at REAL                        -- unix seconds; NULL when free
);
