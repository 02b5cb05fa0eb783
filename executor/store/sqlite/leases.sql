-- Shard leases (store/leases.py, migration 0010). Sets of shards travel as one JSON array
-- parameter (the same parameter in both dialects: json_each here, jsonb on PostgreSQL).

-- name: lease_ensure
INSERT OR IGNORE INTO shard_leases (shard, owner, epoch, expires_at) VALUES (?, NULL, 0, NULL);

-- name: lease_beat
-- An engine that was marked dead while it was paused (a VM stall, SIGSTOP) and ticks again is
-- alive: it has lost its claims and its leases, and takes shards like a newcomer.
UPDATE engines SET state = :state, heartbeat_at = :now WHERE id = :me AND state != 'stopped';

-- name: lease_renew
-- By shard and epoch: what comes back is what we still own. An expired lease nobody took yet is
-- still ours (nobody holds a newer epoch).
UPDATE shard_leases SET expires_at = :now + :lease_s
WHERE owner = :me
  AND (shard, epoch) IN (SELECT value ->> 0, value ->> 1 FROM json_each(:held))
RETURNING shard, epoch;

-- name: lease_release
UPDATE shard_leases SET owner = NULL, expires_at = NULL
WHERE shard = :shard AND epoch = :epoch AND owner = :me;

-- name: lease_release_all
UPDATE shard_leases SET owner = NULL, expires_at = NULL WHERE owner = :me;

-- name: lease_candidates
-- Engines that should share the shards: running (not draining), a fresh heartbeat, and not
-- started before the latest `executor bump-epoch`.
SELECT id FROM engines
WHERE state = 'running' AND heartbeat_at >= :now - :lease_s
  AND epoch >= (SELECT value FROM meta WHERE key = 'epoch')
ORDER BY id;

-- name: lease_shards
SELECT shard FROM shard_leases ORDER BY shard;

-- name: lease_acquire
-- Free, expired, or ours at an epoch we do not know (a commit whose answer was lost): a new epoch.
UPDATE shard_leases SET owner = :me, epoch = epoch + 1, expires_at = :now + :lease_s
WHERE shard IN (SELECT value FROM json_each(:shards))
  AND (owner IS NULL OR expires_at < :now OR owner = :me)
RETURNING shard, epoch;

-- name: lease_requeue_claims
-- The previous owner's claims in shards just acquired go back to the queue, in the same
-- transaction: its late results then find no claim to record under.
UPDATE tasks SET claim_token = NULL, claim_engine = NULL, claim_epoch = NULL, claimed_at = NULL
WHERE shard IN (SELECT value FROM json_each(:shards)) AND claim_token IS NOT NULL;

-- name: lease_fence
-- Inside a claim, record, replay commit or timer transaction: the shards we still own, at
-- which epoch (PostgreSQL locks them FOR SHARE until the commit).
SELECT shard, epoch FROM shard_leases WHERE owner = ?;

-- name: lease_table
SELECT l.shard, l.owner, l.epoch, l.expires_at, e.pid, e.host, e.state
FROM shard_leases AS l LEFT JOIN engines AS e ON e.id = l.owner
ORDER BY l.shard;

-- name: pending_replays_owned
-- pending_replays, for the shards this engine owns. `+p.shard`: not through replays_shard, which
-- reads every entry of the owned shards and sorts them (185 ms a poll with 100,000 runs waiting);
-- in run order the LIMIT stops the scan (1 ms).
SELECT p.run_rid, p.seq, r.generation
FROM replays AS p JOIN runs AS r ON r.rid = p.run_rid
WHERE +p.shard IN (SELECT shard FROM shard_leases WHERE owner = ?)
ORDER BY p.run_rid LIMIT ?;

-- name: due_timers_owned
-- due_timers, for the shards this engine owns.
SELECT run_rid, pos, kind, shard FROM timers
WHERE fire_at <= ? AND shard IN (SELECT shard FROM shard_leases WHERE owner = ?)
ORDER BY fire_at LIMIT ?;

-- name: lease_of_shard
-- `executor show`: which engine owns a run's shard.
SELECT l.owner, e.pid, e.host
FROM shard_leases AS l LEFT JOIN engines AS e ON e.id = l.owner
WHERE l.shard = ?;
