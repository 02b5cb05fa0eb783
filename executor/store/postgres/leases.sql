-- Shard leases (store/leases.py): the PostgreSQL statements of ../sqlite/leases.sql, same names
-- and parameters. Expiry is on the server's clock (now()): the `now` parameter is ignored where a
-- lease expires or is renewed. Sets of shards arrive as one JSON array (jsonb here).

-- name: lease_ensure
INSERT INTO shard_leases (shard, owner, epoch, expires_at) VALUES (%s, NULL, 0, NULL)
ON CONFLICT (shard) DO NOTHING;

-- name: lease_beat
UPDATE engines SET state = %(state)s, heartbeat_at = %(now)s
WHERE id = %(me)s AND state <> 'stopped';

-- name: lease_renew
UPDATE shard_leases AS l
SET expires_at = extract(epoch FROM now())::double precision + %(lease_s)s
FROM jsonb_array_elements(%(held)s::jsonb) AS h(v)
WHERE l.owner = %(me)s AND l.shard = (h.v ->> 0)::int AND l.epoch = (h.v ->> 1)::bigint
RETURNING l.shard, l.epoch;

-- name: lease_release
UPDATE shard_leases SET owner = NULL, expires_at = NULL
WHERE shard = %(shard)s AND epoch = %(epoch)s AND owner = %(me)s;

-- name: lease_release_all
UPDATE shard_leases SET owner = NULL, expires_at = NULL WHERE owner = %(me)s;

-- name: lease_candidates
SELECT id FROM engines
WHERE state = 'running' AND heartbeat_at >= %(now)s - %(lease_s)s
  AND epoch >= (SELECT value FROM meta WHERE key = 'epoch')
ORDER BY id;

-- name: lease_shards
SELECT shard FROM shard_leases ORDER BY shard;

-- name: lease_acquire
UPDATE shard_leases
SET owner = %(me)s, epoch = epoch + 1,
    expires_at = extract(epoch FROM now())::double precision + %(lease_s)s
WHERE shard IN (SELECT jsonb_array_elements_text(%(shards)s::jsonb)::int)
  AND (owner IS NULL OR expires_at < extract(epoch FROM now())::double precision
       OR owner = %(me)s)
RETURNING shard, epoch;

-- name: lease_requeue_claims
UPDATE tasks SET claim_token = NULL, claim_engine = NULL, claim_epoch = NULL, claimed_at = NULL
WHERE shard IN (SELECT jsonb_array_elements_text(%(shards)s::jsonb)::bigint)
  AND claim_token IS NOT NULL;

-- name: lease_fence
-- FOR SHARE, not FOR KEY SHARE: owner and epoch are not key columns, and the lock must conflict
-- with a thief's epoch bump, which then waits for our commit (research scale-out.md 4.2).
SELECT shard, epoch FROM shard_leases WHERE owner = %s FOR SHARE;

-- name: lease_table
SELECT l.shard, l.owner, l.epoch, l.expires_at, e.pid, e.host, e.state
FROM shard_leases AS l LEFT JOIN engines AS e ON e.id = l.owner
ORDER BY l.shard;

-- name: pending_replays_owned
SELECT p.run_rid, p.seq, r.generation
FROM replays AS p JOIN runs AS r ON r.rid = p.run_rid
WHERE p.shard IN (SELECT shard FROM shard_leases WHERE owner = %s)
ORDER BY p.run_rid LIMIT %s;

-- name: due_timers_owned
SELECT run_rid, pos, kind, shard FROM timers
WHERE fire_at <= %s AND shard IN (SELECT shard FROM shard_leases WHERE owner = %s)
ORDER BY fire_at LIMIT %s;

-- name: lease_of_shard
SELECT l.owner, e.pid, e.host
FROM shard_leases AS l LEFT JOIN engines AS e ON e.id = l.owner
WHERE l.shard = %s;
